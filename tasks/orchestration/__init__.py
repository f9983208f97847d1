"""What the Airflow DAGs (dags/) call: the workspace (parameters, DVC stages, ingest), the training
runners and the DAGs' shared defaults.

Imports ``tasks.core`` only, and no torch or mlflow at module import: the DAG parser loads it."""
