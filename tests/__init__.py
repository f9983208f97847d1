"""The test suite. It mirrors the package: tests/core/ tests tasks/core/, tests/steps/ tasks/steps/, and
so on (one test file per module, named after it); tests/dags/ tests the DAG files in dags/; tests/system/
holds the tests of the whole system (`dvc repro`, Airflow with a browser or Celery, the MLflow server,
the containers, torchrun, the README, the reliability items). tests/support/ holds the helpers the
test files share, one copy each; tests/conftest.py the shared fixtures.

Markers (pyproject.toml): `service` (starts or needs a real server), `browser` (headless Chromium),
`e2e` (end to end or slow: a whole pipeline, a DAG run, torchrun, full trainings, concurrent CLI runs).
Unmarked tests are unit tests: `make test-fast` runs only those (a few minutes), `make test` runs
everything (about 15 minutes on 2 cores)."""
