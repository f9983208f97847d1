"""Tests of the DAG files in dags/ (structure, trigger form, real `dag.test()` runs)."""
