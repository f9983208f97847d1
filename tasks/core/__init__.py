"""The shared library: errors, atomic files, logging, labels and vocabulary, images and the image cache,
models and text encoding, the loss, top-k search, the retrieval rules, metrics, the validation scorer,
the submission format, the params schema and the pipeline's paths.

Imports nothing from the project outside ``tasks.core`` and never mlflow or airflow
(tests/test_layers.py)."""
