"""What the Airflow DAGs (dags/) call: the workspace, its parameters, DVC stages and the training runners.

The DAG files only wire tasks together; every decision they need lives here, importable and tested
without a scheduler. Nothing here imports torch, so a task process stays light.

A *workspace* is a git + DVC checkout of this project (dvc.yaml, params.yaml, data/raw.dvc, tasks/)
where the pipeline runs: ``TRAFFICLIP_WORKSPACE``, by default the project root. Each DVC stage is run
alone (``dvc repro --single-item``) so the DAG shows one task per stage, and a stage whose inputs did
not change is reported as up to date, which the DAG turns into a skipped task.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tasks.core import paths
from tasks.core.atomic import write_bytes
from tasks.core.errors import SERVICE_EXIT, USER_EXIT, ServiceError, StepFailed, TrafficlipError, UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
RAW_DATA = paths.RAW
RAW_DATA_DVC = paths.RAW_DVC
DVC_STAGES = ("prepare", "augment", "train", "evaluate", "register", "promote", "predict")

# Airflow pools (created by `trafficlip airflow-setup`): DVC takes a repository lock and fails rather
# than wait, so all DVC work goes through one slot; promotions are serialised through another.
DVC_POOL = "trafficlip_dvc"
PROMOTION_POOL = "trafficlip_promotion"
POOLS = {DVC_POOL: "DVC commands in the workspace (DVC cannot run twice in one repository)",
         PROMOTION_POOL: "model registry promotions (one at a time)"}

# the training DAG's form fields -> params.yaml keys (types, limits and help come from the params schema)
PARAM_KEYS = {
    "model_name": "model.name",
    "pretrained": "model.pretrained",
    "epochs": "train.epochs",
    "learning_rate": "train.lr",
    "batch_size": "train.batch_size",
    "min_gain": "mlflow.min_gain",
    "confidence": "mlflow.confidence",
    "floor": "mlflow.floor",
}
RUNNERS = ("local", "docker", "kubernetes")
# the Airflow asset that stands for data/raw: updated by trafficlip_ingest, it triggers trafficlip_training
RAW_DATA_ASSET = {"name": "trafficlip-raw-data", "uri": "file:///trafficlip/data/raw"}
# the Airflow asset that stands for the registry's @champion: updated when it moves (a gated promotion in
# the training DAG, or a move by hand that the registry-watch DAG finds); it starts the retrieval DAG
CHAMPION_ASSET = {"name": "trafficlip-champion", "uri": "mlflow-registry://trafficlip/champion"}


def workspace_path(path: str | Path | None = None) -> Path:
    """Where the workspace is (TRAFFICLIP_WORKSPACE, else the project root), checked or not."""
    return Path(path or os.environ.get("TRAFFICLIP_WORKSPACE") or PROJECT_ROOT).resolve()


def workspace(path: str | Path | None = None) -> Path:
    """The workspace, which must hold the pipeline (dvc.yaml)."""
    root = workspace_path(path)
    if not (root / paths.DVC_YAML).is_file():
        raise UserError(f"{root}: not a trafficlip workspace (no dvc.yaml); set TRAFFICLIP_WORKSPACE to a "
                        "checkout of the project")
    return root


def _env() -> dict[str, str]:
    """The environment of every command: this interpreter's bin first (dvc, trafficlip). Hugging Face
    hub access is the deployment's choice (HF_HUB_OFFLINE), as pretrained weights may come from it."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def _error_line(stderr: str, returncode: int) -> str:
    """The line that says what went wrong: DVC's first ERROR line (its last lines are advice), else
    the last line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return errors[0] if errors else (lines[-1] if lines else f"exit status {returncode}")


def _remote(cwd: Path) -> str:
    """The default DVC remote as `name (url)`, any credentials left out, for messages."""
    from urllib.parse import urlsplit, urlunsplit
    try:
        name = subprocess.run(["dvc", "remote", "default"], cwd=cwd, env=_env(), capture_output=True,
                              text=True, timeout=60).stdout.strip()
        listing = subprocess.run(["dvc", "remote", "list"], cwd=cwd, env=_env(), capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "the DVC remote"
    urls = dict(line.split(None, 1) for line in listing.splitlines() if len(line.split(None, 1)) == 2)
    url = urls.get(name, "").strip()
    parts = urlsplit(url)
    if parts.password or parts.username:
        url = urlunsplit((parts.scheme, parts.hostname or "", parts.path, parts.query, parts.fragment))
    return f"DVC remote {name!r} ({url})" if name else "the DVC remote (none is set as default)"


def _echo(stream, lines: list[str]) -> None:
    """Copy a child's output line by line to this process's stdout as it comes (the task log shows a
    step's progress while it runs; stdout, because Airflow logs a task's stderr at ERROR level)."""
    for line in stream:
        lines.append(line)
        sys.stdout.write(line)
        sys.stdout.flush()


def run(args: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    """Run a command, echo its output live (the task log), raise on failure: exit status 2 is a user
    error (UserError, never retried), 75 a ServiceError (a service is down), anything else StepFailed
    (crashed or killed); the DAGs retry both."""
    import threading
    print("$", shlex.join(args), flush=True)
    with subprocess.Popen(args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          bufsize=1) as process:
        out: list[str] = []
        err: list[str] = []
        readers = [threading.Thread(target=_echo, args=(process.stdout, out), daemon=True),
                   threading.Thread(target=_echo, args=(process.stderr, err), daemon=True)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        returncode = process.wait()
    result = subprocess.CompletedProcess(args, returncode, "".join(out), "".join(err))
    if result.returncode != 0:
        line = _error_line(result.stderr, result.returncode)
        if args[0] == "dvc" and args[1:2] and args[1] in ("push", "pull", "fetch"):
            line = f"{_remote(cwd)}: {line}"
        error = {USER_EXIT: UserError, SERVICE_EXIT: ServiceError}.get(result.returncode, StepFailed)
        raise error(f"{what} failed (exit status {result.returncode}): {line}")
    return result


def cli(args: list[str], cwd: Path, what: str) -> dict:
    """Run a `trafficlip` subcommand that prints JSON and return what it printed."""
    result = run([sys.executable, "-m", "tasks", *args], cwd, what)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"output": result.stdout.strip()[-2000:]}


# --- parameters -------------------------------------------------------------------------------------

def form_defaults(root: Path | None = None) -> dict:
    """The training form's defaults: the workspace's params.yaml (falls back to the project's), as a
    scheduled or asset-triggered run trains with it."""
    path = workspace_path(root) / paths.PARAMS
    if not path.is_file():
        path = PROJECT_ROOT / paths.PARAMS
    params = yaml.safe_load(path.read_text())
    out = {}
    for field, dotted in PARAM_KEYS.items():
        section, key = dotted.split(".")
        out[field] = params[section][key]
    return out


def overrides_from_form(form: dict, defaults: dict | None = None) -> dict[str, object]:
    """The params.yaml keys a manual run's form sets: the fields whose value differs from the form's
    default (``defaults``; all fields when None). An emptied text field arrives as null and means ""
    (model.pretrained: random weights)."""
    out = {}
    for field, value in form.items():
        if field not in PARAM_KEYS:
            continue
        value = "" if value is None and field == "pretrained" else value
        if defaults is None or value != defaults.get(field):
            out[PARAM_KEYS[field]] = value
    return out


def _backup(root: Path) -> Path:
    return root / paths.PARAMS_BEFORE_RUN


def restore_params(root: Path) -> dict:
    """Put back the params.yaml a run found (a manual run's form values apply to that run only).

    Idempotent; also called at the start of every run, so a run whose worker died before its
    teardown never leaves its values behind for the next one."""
    backup = _backup(root)
    if not backup.is_file():
        return {"params": str(root / paths.PARAMS), "restored": False}
    write_bytes(root / paths.PARAMS, backup.read_bytes())
    backup.unlink()
    return {"params": str(root / paths.PARAMS), "restored": True}


def configure(root: Path, overrides: dict[str, object]) -> dict:
    """Apply a run's parameters to the workspace's params.yaml, as `dvc exp run -S` does, for this run.

    Comments and layout are kept (ruamel round-trip); the result is validated against the schema
    before it replaces the file, atomically; an unchanged value leaves the file untouched, so DVC
    reruns exactly the stages whose parameters changed. The file as it was is kept beside it
    (``paths.PARAMS_BEFORE_RUN``) until :func:`restore_params` puts it back when the run ends.
    """
    from ruamel.yaml import YAML

    from tasks.core import params as params_mod
    restored = restore_params(root)["restored"]
    path = root / paths.PARAMS
    params_mod.load(path, overrides)      # names the key and the expected type on a bad value
    rt = YAML()
    rt.preserve_quotes = True
    original = path.read_bytes()
    document = rt.load(original.decode())
    changed = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        if document[section][key] != value:
            changed[dotted] = {"from": document[section][key], "to": value}
            document[section][key] = value
    if changed:
        buffer = io.StringIO()
        rt.dump(document, buffer)
        write_bytes(_backup(root), original)
        write_bytes(path, buffer.getvalue().encode())
    return {"params": str(path), "changed": changed, "restored_previous": restored}


def checkout_data(root: Path, revision: str) -> dict:
    """Point data/raw at the version that `revision` (a git commit, tag or branch of the workspace)
    tracked, fetching it from the DVC remote when the cache lacks it. "" keeps the current data."""
    if revision:
        shown = subprocess.run(["git", "show", f"{revision}:{RAW_DATA_DVC}"], cwd=root, env=_env(),
                               capture_output=True, text=True)
        if shown.returncode != 0:
            raise UserError(f"data revision {revision!r}: {RAW_DATA_DVC} not found at that revision of {root} "
                            f"({shown.stderr.strip().splitlines()[-1] if shown.stderr.strip() else 'git show failed'})")
        write_bytes(root / RAW_DATA_DVC, shown.stdout.encode())
        try:
            run(["dvc", "checkout", "--quiet", RAW_DATA_DVC], root, f"dvc checkout of data revision {revision}")
        except TrafficlipError:
            run(["dvc", "pull", "--quiet", RAW_DATA_DVC], root, f"dvc pull of data revision {revision}")
    return {"revision": revision or "current", "data_md5": data_md5(root)}


def _committed_md5(root: Path) -> str | None:
    shown = subprocess.run(["git", "show", f"HEAD:{RAW_DATA_DVC}"], cwd=root, env=_env(), capture_output=True,
                           text=True)
    if shown.returncode != 0:
        return None
    outs = (yaml.safe_load(shown.stdout) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def data_md5(root: Path) -> str | None:
    path = root / RAW_DATA_DVC
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


# --- DVC stages -------------------------------------------------------------------------------------

def stale_stages(root: Path) -> set[str]:
    """Stages whose dependencies, parameters or outputs differ from dvc.lock (`dvc status`)."""
    result = run(["dvc", "status", "--json"], root, "dvc status")
    text = result.stdout.strip()
    status = json.loads(text) if text else {}
    return {name.split(":")[-1] for name in status if not name.endswith(".dvc")}


def repro(root: Path, stage: str) -> dict:
    """Run one DVC stage if it is out of date. Returns {'ran': False} when nothing changed."""
    if stage not in DVC_STAGES:
        raise UserError(f"unknown DVC stage {stage!r} (expected one of {', '.join(DVC_STAGES)})")
    if stage not in stale_stages(root):
        return {"stage": stage, "ran": False}
    started = time.monotonic()
    run(["dvc", "repro", "--single-item", stage], root, f"dvc repro {stage}")
    return {"stage": stage, "ran": True, "seconds": round(time.monotonic() - started, 2)}


def commit(root: Path, stage: str) -> dict:
    """Record in dvc.lock the outputs a runner produced outside `dvc repro` (the training step)."""
    run(["dvc", "commit", "--force", "--quiet", stage], root, f"dvc commit {stage}")
    return {"stage": stage, "committed": True}


def stage_argv(root: Path, stage: str) -> list[str]:
    """The CLI arguments of a DVC stage's command (`python -m tasks train ...` -> ['train', ...]): the
    runners run exactly what `dvc repro` would. An empty workspace (not cloned yet) falls back to the
    project's own dvc.yaml, the same pipeline, so the DAGs still load."""
    dvc_yaml = root / paths.DVC_YAML if (root / paths.DVC_YAML).is_file() else PROJECT_ROOT / paths.DVC_YAML
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    argv = shlex.split(stages[stage]["cmd"])
    if argv[:3] != ["python", "-m", "tasks"]:
        raise UserError(f"{dvc_yaml}: stages.{stage}.cmd: expected `python -m tasks {stage} ...`, "
                        f"got {stages[stage]['cmd']!r}")
    return argv[3:]


# --- the registry after a run -----------------------------------------------------------------------

def read_report(root: Path, relative: str) -> dict:
    path = root / relative
    if not path.is_file():
        raise UserError(f"{path}: not written (the step before did not run)")
    return json.loads(path.read_text())


def summary(root: Path) -> dict:
    """Small metadata about the workspace's last run: metrics, version, aliases, submission."""
    from tasks.core.labels import METRIC_GROUPS
    out: dict = {"workspace": str(root)}
    metrics = root / paths.METRICS
    if metrics.is_file():
        values = json.loads(metrics.read_text())
        out["map_at_10"] = {c: (values.get(c) or {}).get("map_at_10") for c in METRIC_GROUPS}
    for name, relative, keys in (("registration", paths.REGISTRATION, ("registered_model", "version", "created")),
                                 ("promotion", paths.PROMOTION, ("decision", "reason", "champion_after"))):
        path = root / relative
        if path.is_file():
            report = json.loads(path.read_text())
            out[name] = {k: report.get(k) for k in keys if k in report}
    submission = root / paths.SUBMISSION
    out["submission"] = str(submission) if submission.is_file() else None
    return out


# --- ingest -----------------------------------------------------------------------------------------

def ingest(root: Path, source: str | Path, on_error: str = "fail") -> dict:
    """Make ``source`` (a dataset in the challenge's format) the workspace's data/raw, tracked by DVC.

    The source is validated first (``on_error``: fail refuses a dataset with any bad line or image);
    the copy appears at data/raw at once (copied beside it, then swapped in). Then `dvc add`,
    `dvc push` when a remote is configured, and a git commit of data/raw.dvc when the workspace is a
    git repository, so the new version is a data revision the training DAG can name. Returns
    ``changed`` False (and touches nothing) when the content is the version already tracked.
    """
    import shutil
    import tempfile

    from tasks.core.dataset import enforce, scan
    source = Path(source).resolve()
    if not source.is_dir():
        raise UserError(f"{source}: dataset folder not found (expected train/, val/ and test/ in the challenge's "
                        "format)")
    try:
        scanned = scan(source)
        enforce(scanned, on_error, None)
        report = scanned.report
    except TrafficlipError as exc:
        raise UserError(str(exc)) from None
    # what the repository has committed, not the working copy: a retry after a failed push or commit
    # (data/raw.dvc already updated) must still push and commit
    before = _committed_md5(root) if (root / ".git").exists() else data_md5(root)
    target = root / RAW_DATA
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".raw-incoming-", dir=target.parent))
    old = target.parent / f".raw-previous-{os.getpid()}"
    try:
        shutil.copytree(source, staging / "raw")
        if target.exists():
            target.rename(old)
        (staging / "raw").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    run(["dvc", "add", "--quiet", RAW_DATA], root, "dvc add data/raw")
    after = data_md5(root)
    result = {"source": str(source), "data_md5": after, "previous_md5": before, "changed": after != before,
              "problems": report["problems"], "pushed": False, "commit": None}
    if not result["changed"]:
        return result
    remotes = run(["dvc", "remote", "list"], root, "dvc remote list").stdout.strip()
    if remotes:
        run(["dvc", "push", "--quiet", RAW_DATA_DVC], root, "dvc push data/raw")
        result["pushed"] = True
    if (root / ".git").exists():
        files = [f for f in (RAW_DATA_DVC, "data/.gitignore") if (root / f).is_file()]
        run(["git", "add", *files], root, "git add data/raw.dvc")
        run(["git", "commit", "--quiet", "-m", f"data: ingest {source.name} (md5 {after})", "--", *files],
            root, "git commit data/raw.dvc")
        result["commit"] = run(["git", "rev-parse", "HEAD"], root, "git rev-parse").stdout.strip()
    return result


# --- Airflow set-up ---------------------------------------------------------------------------------

def airflow_setup() -> dict:
    """Migrate Airflow's metadata database and create the two one-slot pools the DAGs use
    (idempotent: run it on every deployment). Uses the `airflow` of this environment."""
    airflow = str(Path(sys.executable).parent / "airflow")
    run([airflow, "db", "migrate"], Path.cwd(), "airflow db migrate")
    for name, description in POOLS.items():
        run([airflow, "pools", "set", name, "1", description], Path.cwd(), f"airflow pools set {name}")
    return {"pools": {name: 1 for name in POOLS}}
