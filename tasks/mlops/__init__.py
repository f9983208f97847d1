"""MLflow: tracking runs, the model registry (register, promote, roll back) and the pyfunc model.

Imports ``tasks.core`` only."""
