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

.PHONY: venv run test metrics ui ablate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@test -d .git || { echo "make run needs a git checkout (DVC requires one): git init first"; exit 1; }
	@if [ ! -d data/raw ]; then \
	  echo "== generating the demo dataset into data/raw"; \
	  trafficlip synth --out data/raw --vehicles $(DEMO_VEHICLES) --pedestrians $(DEMO_PEDESTRIANS) --seed $(DEMO_SEED) \
	    --val-fraction $(DEMO_HOLDOUT) --test-fraction $(DEMO_HOLDOUT); \
	fi
	@echo "== tracking data/raw with DVC"
	dvc add --quiet data/raw
	@echo "== dvc repro"
	dvc repro
	dvc push --quiet || echo "(dvc push to the local remote failed; the pipeline results are still valid)"
	@echo "== validation metrics (metrics/eval.json)"
	@trafficlip metrics
	@if [ -f data/raw/test/test_ground_truth.txt ]; then \
	  echo "== test submission outputs/submission.json scored against data/raw/test/test_ground_truth.txt"; \
	  trafficlip score --submission outputs/submission.json --ground-truth data/raw/test/test_ground_truth.txt; \
	fi
	@echo "== model registry (promotion decision: reports/promotion.json)"
	@trafficlip models
	@echo "(browse the runs, charts, galleries and the registry: make ui)"

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
