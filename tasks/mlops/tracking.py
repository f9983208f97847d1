"""MLflow tracking: every train, evaluate and predict run is an MLflow run (params ``mlflow.enabled``).

- Where: ``MLFLOW_TRACKING_URI`` when set (a server: ``http://host:5000``, credentials in
  ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``), else ``sqlite:///mlruns.db`` in the project
  root (the folder holding dvc.yaml). A SQLite store keeps artefacts in ``mlartifacts/`` beside it.
- What: every parameter (``section.key``), lineage tags (git commit and dirty flag, the dvc.lock hashes
  of the data the stage reads, the Airflow dag and run id), metrics and artefacts.
- Never in a DVC output that another stage reads: run ids only go to ``reports/train_summary.json``,
  which nothing but ``register`` reads (to find the logged model).
- An unreachable server is a one-line :class:`TrafficlipError` naming the URI after a short bounded
  retry, checked before any work starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import yaml

from tasks.core import log
from tasks.core.errors import ServiceError, TrafficlipError, UserError
from tasks.core.labels import METRIC_GROUPS
from tasks.core.paths import TRAIN_SUMMARY_NAME

DEFAULT_DB = "mlruns.db"
ARTIFACTS_DIR = "mlartifacts"
MODEL_NAME = "model"                          # the logged model's name inside a train run
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
METRICS_PER_BATCH = 1000                      # MLflow's limit per log_batch call
# A short bounded retry for an unreachable server (MLflow's defaults retry for minutes).
# No progress bars in logs (Airflow, DVC).
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# What the logged model needs besides the code it carries (pinned to the versions it was made with).
MODEL_REQUIREMENTS = ("torch", "torchvision", "open_clip_torch", "safetensors", "numpy", "pillow",
                      "pandas", "pyyaml")


# --- where -------------------------------------------------------------------------------------

def project_root() -> Path:
    """The nearest folder at or above the working directory that holds dvc.yaml (else the cwd)."""
    cwd = Path.cwd().resolve()
    return next((p for p in (cwd, *cwd.parents) if (p / "dvc.yaml").is_file()), cwd)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DEFAULT_DB}"


def shown_uri(uri: str) -> str:
    """The URI without any user:password part (safe for messages and reports)."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit((parts.scheme, f"{host}:{parts.port}" if parts.port else host, parts.path,
                       parts.query, parts.fragment))


def _tries() -> str:
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", CLIENT_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    try:
        return f"on each of {int(retries) + 1} tries, with exponential backoff"
    except ValueError:
        return "on every try"


def _summary(text: str) -> str | None:
    """What an HTTP failure of the MLflow client comes to, in a few words (None: not one of these)."""
    if "API request to" not in text and "Max retries exceeded" not in text:
        return None
    endpoint = re.search(r"/api/[0-9.]+/mlflow/[\w/-]+", text)
    where = f" from {endpoint.group(0)}" if endpoint else ""
    status = re.search(r"too many (\d{3}) error responses", text)
    if status:
        return f"HTTP {status.group(1)}{where} {_tries()}"
    status = re.search(r"error code (\d{3}) != 200", text)
    if status:
        body = re.search(r"Response body: '?(.{1,120})", text)
        return f"HTTP {status.group(1)}{where}" + (f": {body.group(1).rstrip(chr(39))}" if body else "")
    for pattern, words in ((r"Connection refused", "connection refused"),
                           (r"Name or service not known|nodename nor servname|Temporary failure in name resolution|"
                            r"No address associated", "host name not found"),
                           (r"timed out|Timeout", "no answer within MLFLOW_HTTP_REQUEST_TIMEOUT"),
                           (r"Connection reset|RemoteDisconnected|Connection aborted", "connection dropped")):
        if re.search(pattern, text):
            return f"{words}{where.replace(' from ', ' at ')} {_tries()}"
    return None


def error_text(exc: Exception, limit: int = 300) -> str:
    """An MLflow exception as one short line, with any password in the tracking URI left out; an HTTP
    failure after the client's retries is summed up ("HTTP 500 from /api/... on each of 4 tries, ...")."""
    uri = tracking_uri()
    text = " ".join(str(exc).split()).replace(uri, shown_uri(uri))
    return _summary(text) or text[:limit]


def _unreachable(uri: str, exc: Exception) -> TrafficlipError:
    reason = error_text(exc, 200)
    if any(code in reason for code in ("HTTP 401", "HTTP 403", "Unauthorized", "Permission denied")):
        return UserError(f"MLflow at {shown_uri(uri)} refused the credentials ({reason}); "
                               "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if reason.startswith("HTTP 5"):
        return ServiceError(f"MLflow at {shown_uri(uri)} is failing ({reason}); check the server and its "
                               "log, or set mlflow.enabled: false")
    return ServiceError(f"MLflow at {shown_uri(uri)} is unreachable ({reason}); start the server, "
                           "fix MLFLOW_TRACKING_URI, or set mlflow.enabled: false")


def connect():
    """An MlflowClient for :func:`tracking_uri`, after checking that the store answers."""
    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import mlflow
    from mlflow import MlflowClient
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.parent.is_dir():
            raise UserError(f"MLflow at {uri}: folder {db.parent} does not exist")
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # any failure here means "cannot talk to the store"
        raise _unreachable(uri, exc) from None
    return client


def experiment_id(client, name: str) -> str:
    """The experiment's id, created on first use (local stores keep artefacts in mlartifacts/)."""
    from mlflow.exceptions import MlflowException
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):  # a local store: artefacts in a folder beside the database
        location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS_DIR).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created by a concurrent run in the meantime
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# --- lineage -----------------------------------------------------------------------------------

def flat_params(params: dict) -> dict[str, str]:
    return {f"{section}.{key}": str(value) for section, keys in params.items() for key, value in keys.items()}


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}


def dvc_data_hashes(stage: str, root: Path | None = None) -> dict[str, str]:
    """``{path: md5}`` of the data a dvc.yaml stage reads, and of the data that data was made from.

    Data is whatever another stage outputs or a ``.dvc`` file tracks (code deps are covered by the
    git commit). Hashes come from dvc.lock, which DVC updates after each stage, so while a stage
    runs its inputs' entries are current.
    """
    root = root or project_root()
    stages = _yaml(root / "dvc.yaml").get("stages", {})
    locked = _yaml(root / "dvc.lock").get("stages", {})
    produced = {out["path"]: (name, out.get("md5")) for name, entry in locked.items()
                for out in entry.get("outs", []) if isinstance(out, dict) and "path" in out}
    hashes: dict[str, str] = {}

    def visit(path: str) -> None:
        if path in hashes:
            return
        if path in produced:
            upstream, md5 = produced[path]
            if md5:
                hashes[path] = md5
            for dep in locked[upstream].get("deps", []):
                visit(dep["path"])
        elif (root / f"{path}.dvc").is_file():
            outs = _yaml(root / f"{path}.dvc").get("outs", [])
            if outs and outs[0].get("md5"):
                hashes[path] = outs[0]["md5"]

    for dep in stages.get(stage, {}).get("deps", []):
        visit(dep if isinstance(dep, str) else next(iter(dep)))
    return hashes


# written by the pipeline run itself: uncommitted while it runs, and not an input of any stage
RUN_OUTPUTS = ("dvc.lock",)


def uncommitted_files(root: Path) -> list[str]:
    """What the commit does not hold that a run may have used: modified tracked files and untracked,
    not ignored ones (a new data/raw.dvc from `dvc add`), but not the files the run writes (dvc.lock)."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=root,
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    entries = iter(status.stdout.split("\0") if status.returncode == 0 else [])
    paths = []
    for entry in entries:
        if len(entry) > 3:
            paths.append(entry[3:])
            if entry[0] in "RC":        # a rename or copy: the next entry is its old path
                next(entries, None)
    return sorted(path for path in paths if path not in RUN_OUTPUTS)


def lineage_tags(stage: str) -> dict[str, str]:
    root = project_root()
    tags = {"trafficlip.step": stage}
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        uncommitted = uncommitted_files(root)
        tags["git.dirty"] = str(bool(uncommitted)).lower()
        if uncommitted:
            shown = ", ".join(uncommitted[:10]) + (f" and {len(uncommitted) - 10} more" if len(uncommitted) > 10 else "")
            tags["git.uncommitted"] = shown
    hashes = dvc_data_hashes(stage, root)
    tags.update({f"dvc.{path}": md5 for path, md5 in hashes.items()})
    if hashes:  # one name for "which data": the dvc-added source data's hash (the md5 in data/raw.dvc)
        sources = {path: md5 for path, md5 in hashes.items() if (root / f"{path}.dvc").is_file()} or hashes
        tags["data_hash"] = (next(iter(sources.values())) if len(sources) == 1 else
                             hashlib.sha256(json.dumps(sorted(sources.items())).encode()).hexdigest()[:32])
    for variable, tag in (("AIRFLOW_CTX_DAG_ID", "airflow.dag_id"), ("AIRFLOW_CTX_DAG_RUN_ID", "airflow.run_id"),
                          ("AIRFLOW_CTX_TASK_ID", "airflow.task_id")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def metric_items(metrics: dict, prefix: str = "") -> dict[str, float]:
    """evaluate's nested metrics as flat MLflow names: ``map_at_10``, ``vehicle_map_at_10``, ..."""
    flat = {}
    for group in METRIC_GROUPS:
        for key, value in (metrics.get(group) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{prefix}{'' if group == 'overall' else group + '_'}{key}"] = float(value)
    return flat


def train_run_tags(train_summary: str | Path | None, clip) -> dict[str, str]:
    """``{train_run_id}`` linking to the MLflow run that trained ``clip``, when the train summary
    names one and describes this checkpoint (same training fingerprint)."""
    from tasks.core.atomic import read_json
    path = Path(train_summary) if train_summary else None
    if not path or not path.is_file():
        return {}
    summary = read_json(path)
    if summary.get("mlflow_run_id") and summary.get("fingerprint") == clip.info.get("fingerprint"):
        return {"train_run_id": summary["mlflow_run_id"]}
    return {}


# --- runs --------------------------------------------------------------------------------------

class Run:
    """One MLflow run, logged to through the client (metrics in batches, never one call per step)."""

    def __init__(self, client, run_id: str, experiment: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment

    def __bool__(self) -> bool:
        return True

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        self.log_metric_rows([(key, value, step) for key, value in values.items()])

    def log_metric_rows(self, rows: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value, step in rows
                   if value is not None]
        for start in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + METRICS_PER_BATCH], synchronous=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_file(self, path: str | Path, folder: str | None = None) -> None:
        """Log a file as an artefact if it exists (optional reports such as the ablation table)."""
        if Path(path).is_file():
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_dict(self, obj, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_image(self, image, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)


class NullRun:
    """What a step gets when tracking is off: every call does nothing."""

    run_id = None
    experiment_id = None

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


PIPELINE_TAG = "trafficlip.pipeline_run"     # on the parent run of one Airflow DAG run's step runs
SUMMARY_METRICS = ("map_at_10", "vehicle_map_at_10", "pedestrian_map_at_10", "recall_at_1")


def pipeline_run_id(client, experiment: str) -> str | None:
    """The parent run that groups the step runs of one Airflow DAG run (found by its tag, created by
    the first step), so the MLflow UI shows a pipeline run as one row with its steps nested under it
    and its key metrics as columns. None outside Airflow (`dvc repro`, the CLI): steps stand alone."""
    dag_run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if not dag_run:
        return None
    found = client.search_runs([experiment], filter_string=f"tags.`{PIPELINE_TAG}` = '{dag_run}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    tags = {PIPELINE_TAG: dag_run, "airflow.dag_id": os.environ.get("AIRFLOW_CTX_DAG_ID", ""),
            "mlflow.note.content": f"Airflow run {dag_run}: its step runs are nested below."}
    return client.create_run(experiment, run_name=f"pipeline {dag_run}", tags=tags).info.run_id


def log_pipeline_summary(run: Run | NullRun, metrics: dict) -> None:
    """The evaluation's key numbers on the pipeline's parent run too (its columns in the run list)."""
    parent = getattr(run, "parent_id", None)
    if run and parent:
        flat = metric_items(metrics)
        Run(run.client, parent, run.experiment_id).log_metrics({k: flat[k] for k in SUMMARY_METRICS if k in flat})


@contextlib.contextmanager
def start(params: dict, step: str, tags: dict[str, str] | None = None) -> Iterator[Run | NullRun]:
    """An MLflow run for one pipeline step, ended FINISHED, FAILED or KILLED with the block. Under
    Airflow it is nested under the DAG run's parent run and named after both."""
    if not params["mlflow"]["enabled"]:
        yield NullRun()
        return
    import mlflow
    client = connect()
    experiment = experiment_id(client, params["mlflow"]["experiment"])
    logger = log.setup(step)
    parent = pipeline_run_id(client, experiment)
    run_tags = {**lineage_tags(step), **(tags or {})}
    name = step
    if parent:
        run_tags["mlflow.parentRunId"] = parent
        name = f"{step} ({os.environ['AIRFLOW_CTX_DAG_RUN_ID']})"
    active = mlflow.start_run(experiment_id=experiment, run_name=name, tags=run_tags)
    run = Run(client, active.info.run_id, experiment)
    run.parent_id = parent
    status = "FAILED"
    try:
        from mlflow.entities import Param
        items = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
        for begin in range(0, len(items), 100):
            client.log_batch(run.run_id, params=items[begin:begin + 100], synchronous=True)
        logger.info("MLflow run %s in experiment %r at %s", run.run_id, params["mlflow"]["experiment"],
                    shown_uri(tracking_uri()))
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)


# --- the model ---------------------------------------------------------------------------------

def model_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version
    pinned = []
    for dist in MODEL_REQUIREMENTS:
        try:
            pinned.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(dist)
    return pinned


def _example_image_base64(size: int) -> str:
    """A small wide image (so the example shows the padding) as base64 PNG."""
    import base64
    import io

    from PIL import Image, ImageDraw
    image = Image.new("RGB", (2 * size, size), (40, 40, 40))
    ImageDraw.Draw(image).rectangle((size // 2, size // 4, 3 * size // 2, 3 * size // 4), fill=(230, 230, 230))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def log_clip_model(model_dir: str | Path) -> dict:
    """Log a local-dir checkpoint as the pyfunc model of the active run; ``{model_id, model_uri}``.

    The model is :mod:`tasks.pyfunc_model` ("model from code", nothing pickled), the checkpoint folder
    as its ``checkpoint`` artefact and a copy of the ``tasks`` package, so it loads anywhere its pip
    requirements are installed, offline.
    """
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from tasks.core import models
    config = json.loads((Path(model_dir) / models.CONFIG_FILE).read_text())
    embed_dim = config["model_cfg"]["embed_dim"]
    size = config["preprocess_cfg"]["size"]
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "text", required=False), ColSpec("string", "image", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embed_dim))]))
    example = pd.DataFrame({"text": ["This is a white Audi Sedan.", None],
                            "image": [None, _example_image_base64(size)]})
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "tasks"
        shutil.copytree(PYFUNC_FILE.parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info = mlflow.pyfunc.log_model(name=MODEL_NAME, python_model=str(PYFUNC_FILE),
                                       artifacts={"checkpoint": str(model_dir)}, code_paths=[str(code)],
                                       signature=signature, input_example=example,
                                       pip_requirements=model_requirements())
    return {"model_id": info.model_id, "model_uri": info.model_uri}


def checkpoint_of(local_model_dir: str | Path) -> Path:
    """The checkpoint folder inside a downloaded copy of a logged model (from its MLmodel file)."""
    local_model_dir = Path(local_model_dir)
    mlmodel = _yaml(local_model_dir / "MLmodel")
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    path = artifacts.get("checkpoint", {}).get("path")
    if not path or not (local_model_dir / path).is_dir():
        raise UserError(f"{local_model_dir}: not a trafficlip model (no 'checkpoint' artefact in MLmodel)")
    return local_model_dir / path


class TrainTracker:
    """What training reports: per-step loss and learning rate (one batch per epoch), validation
    metrics of the starting model and at every epoch end, and the logged model at the end.
    Does nothing when tracking is off."""

    def __init__(self, run: Run | NullRun, params: dict, data: str | Path):
        self.run = run
        self.logged_rows = 0
        self.seconds = 0.0          # time spent here, left out of the training speed
        self.validation = None
        if run:
            from tasks.core.scoring import validation_for
            self.validation = validation_for(params, data)

    def _log_steps(self, rows: list[dict]) -> None:
        new = rows[self.logged_rows:]
        self.run.log_metric_rows([(name, float(row[name]), int(row["step"])) for row in new for name in ("loss", "lr")])
        self.logged_rows = len(rows)

    def validate(self, clip, step: int) -> None:
        """Score ``clip`` on the validation split and log it at ``step``; the model's mode and the
        random state are left as they were, so tracking never changes the trained weights."""
        if not self.run:
            return
        started = time.monotonic()
        training = clip.model.training
        metrics, _ = self.validation.score(clip)
        clip.model.train(training)
        self.run.log_metrics(metric_items(metrics, prefix="val_"), step)
        self.seconds += time.monotonic() - started

    def epoch_end(self, rows: list[dict], step: int, epoch: int, clip) -> None:
        if not self.run:
            return
        started = time.monotonic()
        self._log_steps(rows)
        self.run.log_metrics({"epoch": epoch}, step)
        self.seconds += time.monotonic() - started
        self.validate(clip, step)

    def interrupted(self, step: int) -> None:
        if self.run:
            self.run.set_tags({"trafficlip.interrupted_at_step": step})

    def finish(self, rows: list[dict], summary: dict, model_dir: Path) -> dict:
        """Log what is left and the model; the ids the summary records for ``register``."""
        if not self.run:
            return {}
        self._log_steps(rows)
        self.run.log_metrics({k: summary[k] for k in ("final_loss", "samples_per_second", "seconds")
                              if summary.get(k) is not None}, summary["steps"])
        logged = log_clip_model(model_dir)
        ids = {"mlflow_run_id": self.run.run_id, "mlflow_experiment_id": self.run.experiment_id,
               "mlflow_model_id": logged["model_id"]}
        self.run.log_dict({**summary, **ids}, TRAIN_SUMMARY_NAME)
        return ids
