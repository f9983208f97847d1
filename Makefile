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
# the training DAG's run configuration for `make run` (its trigger form's fields: runner, epochs, ...)
RUN_CONF ?= {"runner": "local"}

# the MLflow UI (`make ui`) over the embedded store that `make run` fills
MLFLOW_PORT ?= 5000

# Airflow for `make run` / `make up`: its own home in the checkout, this checkout's DAGs and workspace
AIRFLOW_HOME_DIR := $(CURDIR)/.airflow
AIRFLOW_ENV := mkdir -p $(AIRFLOW_HOME_DIR) && AIRFLOW_HOME=$(AIRFLOW_HOME_DIR) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
  AIRFLOW__CORE__LOAD_EXAMPLES=False TRAFFICLIP_WORKSPACE=$(CURDIR) MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns.db

.PHONY: venv run test test-fast metrics ui ablate clean compose-tool

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
	@echo "== airflow dags test trafficlip_training (runner local; the full log: $(AIRFLOW_HOME_DIR)/dags-test.log)"
	@set -o pipefail; $(AIRFLOW_ENV) airflow dags test trafficlip_training --conf '$(RUN_CONF)' 2>&1 \
	  | $(BIN)/python -m tasks.orchestration.live $(AIRFLOW_HOME_DIR)/dags-test.log $(AIRFLOW_HOME_DIR)/logs \
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
	@if [ -n "$$(git status --porcelain -- data/raw.dvc data/.gitignore dvc.lock)" ]; then \
	  echo "(not committed yet: $$(git status --porcelain -- data/raw.dvc data/.gitignore dvc.lock | cut -c4- | tr '\n' ' ')-" \
	    "commit them to make this data version and pipeline state a revision:" \
	    "git add data/raw.dvc data/.gitignore dvc.lock && git commit -m 'demo data and pipeline state')"; \
	fi

metrics: $(STAMP)
	@trafficlip metrics

ui: $(STAMP)
	@echo "MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) (Ctrl-C stops it)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlruns.db \
	  --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

ablate: $(STAMP)
	@test -f models/model/open_clip_config.json || { echo "make ablate needs a trained model: make run first"; exit 1; }
	trafficlip ablate

# Debian's docker-compose (v1) for tests/system/test_docker.py (`config -q` of docker/compose.yaml); root installs it.
# Without its recommended docker.io: the tests need the compose file checker, not a Docker engine.
compose-tool:
	command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose)

# `make test`: every test but the container ones, the service, browser and end-to-end ones included (17 to 25
# minutes on 2 quiet cores). `make test-fast`: the unit tests only (pyproject.toml's markers: not service, browser, e2e
# or containers), the inner loop. `make test-containers`: the container tests (below).
test: $(STAMP) compose-tool chromium
	$(BIN)/python -m pytest -q --durations=15 -m "not containers"

test-fast: $(STAMP) compose-tool
	$(BIN)/python -m pytest -q -m "not (service or browser or e2e or containers)"

clean:
	rm -rf data/prepared data/augmented models outputs reports metrics

# Debian's Chromium for the browser test (tests/system/test_airflow_ui.py drives it with Playwright; Playwright's own
# browsers are never downloaded). Installed with apt-get when missing (as root, or through sudo).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "== installing Debian's chromium for the browser test"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	} || { echo "could not install chromium (apt-get install chromium): the browser test needs it"; exit 1; }

# `make up`: `airflow standalone` (UI and API, scheduler, DAG processor, triggerer; SQLite, LocalExecutor) over
# this checkout as the workspace, and the MLflow UI over mlruns.db, in the background; `make down` stops both.
# Airflow's home, the pids and the logs are in .airflow/; the login is admin and the password Airflow generated.
# The MLflow UI is a tracking server, so an alias moved in it sends a signed webhook: `make up` also starts
# `trafficlip webhook-receiver` on WEBHOOK_PORT (records the move, announces a new champion to Airflow) and
# registers the webhook; its secret and the key MLflow encrypts stored webhook secrets with are kept in .airflow/.
AIRFLOW_HOST ?= 127.0.0.1
AIRFLOW_PORT ?= 8080
WEBHOOK_PORT ?= 8765
UP_HOME := $(CURDIR)/.airflow
UP_AIRFLOW_URL := http://$(if $(filter 0.0.0.0,$(AIRFLOW_HOST)),127.0.0.1,$(AIRFLOW_HOST)):$(AIRFLOW_PORT)
UP_MLFLOW_URL := http://127.0.0.1:$(MLFLOW_PORT)
UP_WEBHOOK_URL := http://127.0.0.1:$(WEBHOOK_PORT)
# every process `make up` starts carries TRAFFICLIP_MAKE_UP in its environment: `make down` finds them by it
UP_ENV := TRAFFICLIP_MAKE_UP=$(CURDIR) AIRFLOW_HOME=$(UP_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
  AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__API__HOST=$(AIRFLOW_HOST) AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
  AIRFLOW__CORE__EXECUTION_API_SERVER_URL=$(UP_AIRFLOW_URL)/execution/ AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin \
  TRAFFICLIP_WORKSPACE=$(CURDIR) MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns.db

define UP_WAIT
import json, os, sys, time, urllib.request
from pathlib import Path
home = Path(os.environ["UP_HOME"])
services = {"Airflow": (os.environ["UP_AIRFLOW_URL"] + "/api/v2/monitor/health", "airflow", "standalone.log"),
            "MLflow": (os.environ["UP_MLFLOW_URL"] + "/health", "mlflow", "mlflow.log")}
password = home / "simple_auth_manager_passwords.json.generated"
deadline = time.monotonic() + 300
while services or not password.is_file():
    for name, (url, pid, log) in list(services.items()):
        try:
            urllib.request.urlopen(url, timeout=5).close()
            del services[name]
            continue
        except Exception:
            pass
        try:
            os.kill(int((home / f"{pid}.pid").read_text()), 0)
        except (OSError, ValueError):
            sys.exit(f"{name} did not start; the end of .airflow/{log}:\n" + (home / log).read_text()[-3000:])
    if time.monotonic() > deadline:
        sys.exit(f"{', '.join(services) or 'the Airflow password file'} not up after 300 s: see the logs in .airflow/")
    time.sleep(1)
print(f"Airflow UI  {os.environ['UP_AIRFLOW_URL']}  (user admin, password {json.loads(password.read_text())['admin']})")
print(f"MLflow UI   {os.environ['UP_MLFLOW_URL']}")
print("logs in .airflow/ (standalone.log, mlflow.log); stop both with: make down")
endef
export UP_WAIT

define UP_WEBHOOK_WAIT
import os, sys, time, urllib.request
from pathlib import Path
home, deadline = Path(os.environ["UP_HOME"]), time.monotonic() + 120
while True:
    try:
        urllib.request.urlopen(os.environ["UP_WEBHOOK_URL"] + "/healthz", timeout=5).close()
        break
    except Exception:
        pass
    try:
        os.kill(int((home / "webhook.pid").read_text()), 0)
    except (OSError, ValueError):
        sys.exit("the webhook receiver did not start; the end of .airflow/webhook.log:\n"
                 + (home / "webhook.log").read_text()[-3000:])
    if time.monotonic() > deadline:
        sys.exit("the webhook receiver does not answer after 120 s: see .airflow/webhook.log")
    time.sleep(1)
endef
export UP_WEBHOOK_WAIT


up: $(STAMP)
	@mkdir -p $(UP_HOME)
	@if kill -0 "$$(cat $(UP_HOME)/airflow.pid 2>/dev/null)" 2>/dev/null; then echo "Airflow is already up"; else \
	  echo "== Airflow metadata database and pools (.airflow/setup.log)"; \
	  $(UP_ENV) trafficlip airflow-setup > $(UP_HOME)/setup.log 2>&1 || { cat $(UP_HOME)/setup.log; exit 1; }; \
	  echo "== airflow standalone on $(UP_AIRFLOW_URL) (.airflow/standalone.log)"; \
	  $(UP_ENV) setsid airflow standalone > $(UP_HOME)/standalone.log 2>&1 < /dev/null & echo $$! > $(UP_HOME)/airflow.pid; \
	fi
	@test -s $(UP_HOME)/webhook.secret || (umask 077; $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(32))" \
	  > $(UP_HOME)/webhook.secret)
	@test -s $(UP_HOME)/mlflow-webhooks.key || (umask 077; $(BIN)/python -c \
	  "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())" > $(UP_HOME)/mlflow-webhooks.key)
	@if kill -0 "$$(cat $(UP_HOME)/mlflow.pid 2>/dev/null)" 2>/dev/null; then echo "the MLflow UI is already up"; else \
	  echo "== mlflow ui on $(UP_MLFLOW_URL) (.airflow/mlflow.log)"; \
	  TRAFFICLIP_MAKE_UP=$(CURDIR) MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https \
	    MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY="$$(cat $(UP_HOME)/mlflow-webhooks.key)" \
	    setsid mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
	    > $(UP_HOME)/mlflow.log 2>&1 < /dev/null & echo $$! > $(UP_HOME)/mlflow.pid; \
	fi
	@echo "== waiting for both to answer"
	@UP_HOME=$(UP_HOME) UP_AIRFLOW_URL=$(UP_AIRFLOW_URL) UP_MLFLOW_URL=$(UP_MLFLOW_URL) $(BIN)/python -c "$$UP_WAIT"
	@if kill -0 "$$(cat $(UP_HOME)/webhook.pid 2>/dev/null)" 2>/dev/null; then echo "the webhook receiver is already up"; else \
	  echo "== trafficlip webhook-receiver on $(UP_WEBHOOK_URL) (.airflow/webhook.log)"; \
	  TRAFFICLIP_MAKE_UP=$(CURDIR) TRAFFICLIP_WEBHOOK_SECRET_FILE=$(UP_HOME)/webhook.secret \
	    TRAFFICLIP_AIRFLOW_URL=$(UP_AIRFLOW_URL) TRAFFICLIP_AIRFLOW_PASSWORD_FILE=$(UP_HOME)/simple_auth_manager_passwords.json.generated \
	    MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns.db setsid trafficlip webhook-receiver --port $(WEBHOOK_PORT) \
	    > $(UP_HOME)/webhook.log 2>&1 < /dev/null & echo $$! > $(UP_HOME)/webhook.pid; \
	fi
	@UP_HOME=$(UP_HOME) UP_WEBHOOK_URL=$(UP_WEBHOOK_URL) $(BIN)/python -c "$$UP_WEBHOOK_WAIT"
	@TRAFFICLIP_WEBHOOK_SECRET_FILE=$(UP_HOME)/webhook.secret MLFLOW_TRACKING_URI=$(UP_MLFLOW_URL) \
	  trafficlip register-webhook --url $(UP_WEBHOOK_URL)/mlflow-webhook --test > $(UP_HOME)/webhook-register.log 2>&1 \
	  || { cat $(UP_HOME)/webhook-register.log; exit 1; }
	@echo "MLflow alias moves -> $(UP_WEBHOOK_URL)/mlflow-webhook -> Airflow asset trafficlip-champion (.airflow/webhook.log)"

down:
	@$(BIN)/python -m tasks.orchestration.stop $(UP_HOME) $(CURDIR)

.PHONY: chromium up down

# `make bench`: every benchmarks/*.py (ours against the reference approaches, interleaved in one process,
# same inputs, answers checked) -> benchmarks/results.md. About 8 minutes on 2 quiet cores: run it when
# nothing else is busy. The augmentation benchmark needs `make run`'s trained model (skipped otherwise).
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out benchmarks/results.md

# `make bench-scale`: prepare (1 and 2 decoding processes, three runs each in alternation, and the old
# in-memory way), incremental prepare, augment, evaluate, predict, retrieve and training's memory at 1,000 to
# 20,000 demo images, 224 px (benchmarks/scale.py) -> its own section of benchmarks/results.md, which `make
# bench` keeps. About 35 minutes on 2 quiet cores, ~5 GB of memory and disk at its peak. The issue's sizes
# (up to 153,728 images, torchrun):
# BENCH_SCALE_ARGS="--counts 1000,10000,50000,153728 --train-counts 1000,10000,153728 --torchrun"
# (about an hour and a half; 25 GB of disk).
BENCH_SCALE_ARGS ?=
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py $(BENCH_SCALE_ARGS) --results benchmarks/results.md

.PHONY: bench bench-scale

# `make test-containers`: the images and the pipeline in containers, for real (tests/containers, marker containers).
# docker/engine.sh installs a container engine from Debian's packages (docker.io; podman serving the Docker API
# where docker.io's daemon cannot start), starts it on its own socket, makes the local Debian base image and builds
# on it the three images and the compose stack test's stand-ins for the images that can only be pulled (PostgreSQL
# 17, Redis 7, moto for MinIO: docker/stack-test/); pytest runs against it, the compose stack included
# (tests/containers/test_stack.py); the engine is stopped after (images kept: a second run reuses the build cache).
# As root (it installs packages and starts a daemon). `docker/engine.sh teardown` removes it all.
ENGINE := docker/engine.sh
test-containers: $(STAMP) compose-tool
	$(ENGINE) install
	$(ENGINE) up
	$(ENGINE) build
	@eval "$$($(ENGINE) env)"; status=0; \
	  $(BIN)/python -m pytest -q -m containers tests/containers || status=$$?; \
	  $(ENGINE) down; exit $$status

.PHONY: test-containers
