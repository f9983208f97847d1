"""Tests of tasks/mlops/: one file per module (the real MLflow server: tests/system/test_mlflow_server.py)."""
