# Two commands on a fresh clone: `make run` (the whole pipeline on the demo data) and `make test`.
# Both create .venv and install the project into it when it is missing or out of date.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

# demo dataset: totals over train/val/test, 6% each to val and test (480 + 480 images), and the seed
DEMO_VEHICLES ?= 4000
DEMO_PEDESTRIANS ?= 4000
DEMO_HOLDOUT ?= 0.06
DEMO_SEED ?= 0

# the MLflow UI (`make ui`) over the embedded store that `make run` fills
MLFLOW_PORT ?= 5000

# Airflow for `make run` / `make up`: its own home in the checkout, this checkout's DAGs and workspace
AIRFLOW_HOME_DIR := $(CURDIR)/.airflow
AIRFLOW_ENV := mkdir -p $(AIRFLOW_HOME_DIR) && AIRFLOW_HOME=$(AIRFLOW_HOME_DIR) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
  AIRFLOW__CORE__LOAD_EXAMPLES=False TRAFFICLIP_WORKSPACE=$(CURDIR) MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns.db

.PHONY: venv run test metrics ui ablate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# `make run`: the training DAG, headless (`airflow dags test`), on SQLite, with the local runner, in
# this checkout as the workspace. Airflow's home (metadata database, task logs) is .airflow/.
run: $(STAMP)
	@test -d .git || { echo "make run needs a git checkout (DVC requires one): git init first"; exit 1; }
	@if [ ! -d data/raw ]; then \
	  echo "== generating the demo dataset into data/raw"; \
	  trafficlip synth --out data/raw --vehicles $(DEMO_VEHICLES) --pedestrians $(DEMO_PEDESTRIANS) --seed $(DEMO_SEED) \
	    --val-fraction $(DEMO_HOLDOUT) --test-fraction $(DEMO_HOLDOUT); \
	fi
	@echo "== tracking data/raw with DVC"
	dvc add --quiet data/raw
	@echo "== Airflow metadata database and pools ($(AIRFLOW_HOME_DIR))"
	@$(AIRFLOW_ENV) trafficlip airflow-setup > $(AIRFLOW_HOME_DIR)/setup.log 2>&1 || { cat $(AIRFLOW_HOME_DIR)/setup.log; exit 1; }
	@echo "== airflow dags test trafficlip_training (runner local; log: $(AIRFLOW_HOME_DIR)/dags-test.log)"
	@$(AIRFLOW_ENV) airflow dags test trafficlip_training --conf '{"runner": "local"}' > $(AIRFLOW_HOME_DIR)/dags-test.log 2>&1 \
	  || { tail -n 60 $(AIRFLOW_HOME_DIR)/dags-test.log; exit 1; }
	@grep -E "Marking run .* (successful|failed)" $(AIRFLOW_HOME_DIR)/dags-test.log | tail -n 1 | sed 's/.*Marking run/run/' || true
	@grep -q "Marking run .* successful" $(AIRFLOW_HOME_DIR)/dags-test.log \
	  || { echo "the DAG run did not succeed:"; grep -E "ERROR|error|failed" $(AIRFLOW_HOME_DIR)/dags-test.log | tail -n 20; exit 1; }
	dvc push --quiet || echo "(dvc push to the local remote failed; the pipeline results are still valid)"
	@echo "== summary (validation metrics, registry, submission)"
	@trafficlip summary
	@if [ -f data/raw/test/test_ground_truth.txt ]; then \
	  echo "== test submission outputs/submission.json scored against data/raw/test/test_ground_truth.txt"; \
	  trafficlip score --submission outputs/submission.json --ground-truth data/raw/test/test_ground_truth.txt; \
	fi
	@echo "== model registry"
	@trafficlip models
	@echo "(the Airflow UI and the MLflow UI over these runs: make up)"

metrics: $(STAMP)
	@trafficlip metrics

ui: $(STAMP)
	@echo "MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) (Ctrl-C stops it)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlruns.db \
	  --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

ablate: $(STAMP)
	@test -f models/model/open_clip_config.json || { echo "make ablate needs a trained model: make run first"; exit 1; }
	trafficlip ablate

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf data/prepared data/augmented models outputs reports metrics
