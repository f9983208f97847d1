"""Where the pipeline keeps things: every path it reads or writes, named once.

Paths are relative to the workspace (the checkout where `dvc repro` and the DAGs run). The CLI's
defaults, the orchestration, the DAGs and the steps read them from here; dvc.yaml spells the same
paths for DVC, and tests/core/test_paths.py checks that each stage's command gives exactly these.
A renamed folder is a change here and in dvc.yaml, nowhere else.
"""

from __future__ import annotations

PARAMS = "params.yaml"
DVC_YAML = "dvc.yaml"

# the dataset in the challenge's layout, tracked with `dvc add` (commit data/raw.dvc)
RAW = "data/raw"
RAW_DVC = "data/raw.dvc"
SYNTH_TRUTH = "data/raw/synth_truth.json"          # the demo generator's true attributes, when present

# stage outputs
PREPARED = "data/prepared"
AUGMENTED = "data/augmented"
TRAIN_MANIFEST = "data/augmented/train_manifest.json"
MODELS = "models"
MODEL = "models/model"
INITIAL = "models/initial"
CHECKPOINTS = "models/checkpoints"
REPORTS = "reports"
METRICS = "metrics/eval.json"
SUBMISSION = "outputs/submission.json"
SEARCH_SHEET = "outputs/search.png"
CHAMPION_RETRIEVAL = "outputs/champion-retrieval"   # the retrieval DAG's output when a new champion starts it
RAW_TEST_IMAGES = "data/raw/test/test_images"
RAW_TEST_QUERIES = "data/raw/test/test_text.txt"

VALIDATION_REPORT = "reports/validation_report.json"
AUGMENT_REPORT = "reports/augment_report.json"
TRAIN_SUMMARY = "reports/train_summary.json"
TRAIN_STEPS = "reports/train_steps.csv"
EVAL_QUERIES = "reports/eval_queries.json"
PLOTS = "reports/plots"
EVAL_REPORT = "reports/eval_report.html"
PREDICT_REPORT = "reports/predict_report.json"
REGISTRATION = "reports/registration.json"
PROMOTION = "reports/promotion.json"
ROLLBACK = "reports/rollback.json"
ABLATION_WORK = "models/ablation"
ABLATION_REPORT = "reports/ablation"

# file names inside the prepared folder (PREPARED/<split>/MANIFEST, PREPARED/VOCABULARY)
MANIFEST = "manifest.json"
VOCABULARY = "vocabulary.json"
PREPARED_VALIDATION_REPORT = "validation_report.json"
SOURCES = "sources.safetensors"        # PREPARED/<split>/SOURCES: each cached image's file digest (reuse key)
# inside the models folder (MODELS/TRAIN_SUMMARY_NAME is written to the reports folder)
TRAIN_SUMMARY_NAME = "train_summary.json"
TRAIN_STEPS_NAME = "train_steps.csv"

# the params.yaml a manual Airflow run found, kept while the run applies its form values (git-ignored)
PARAMS_BEFORE_RUN = ".trafficlip/params.before-run.yaml"
