"""Tests of tasks/orchestration/: one file per module (the DAG files themselves: tests/dags/)."""
