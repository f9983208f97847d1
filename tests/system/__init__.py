"""Tests of the whole system: `dvc repro` in a workspace, Airflow (browser UI, Celery), the MLflow server,
the containers, torchrun, the README's commands and the reliability items (docs/reliability.md).
Most are marked `e2e`, `service` or `browser`; ddp_probe.py is a script test_distributed.py runs."""
