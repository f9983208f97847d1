"""The compose stack, run for real: docker/compose.yaml as shipped, with the images docker/engine.sh built, on the
engine's own socket, started by Debian's docker-compose 1.29 with the commands docs/deploy.md gives.

PostgreSQL, Redis and MinIO can only be pulled from a registry, which this machine cannot reach: the test-only
override docker/stack-test/compose.override.yaml swaps in stand-ins built from Debian packages (PostgreSQL 17 from
Debian trixie, bookworm's Redis 7.0, moto's S3 server; docs/deploy.md, section 4), and points the worker's Docker
socket at the engine's. Everything else is compose.yaml's: services, commands, environment, healthchecks, volumes,
network, depends_on.

What a user relies on, in order: a docker/.env made from .env.example with fresh random secrets; the workspace
volume filled from a checkout (`git bundle` into `compose run ... airflow-init`, docs/deploy.md "The workspace"),
the checkout's DVC remote on the stack's S3 bucket; `up -d` brings every long-running service to healthy (Docker
runs the healthchecks) and the three one-shot jobs exit 0; the demo data made and ingested inside the stack
(`trafficlip synth` + `trafficlip ingest` on the worker: validated, `dvc add`, pushed to the S3 bucket, committed);
the training DAG triggered through Airflow's REST API (a JWT from /auth/token with the admin password airflow-init
wrote), `runner=docker`: every task runs on the Celery worker, whose DockerOperator starts the training image as a
sibling container through the engine socket, on the stack's network and the workspace volume, removed after; the
run succeeds; the model is registered and @champion in the stack's MLflow (basic auth on: anonymous calls refused),
its artefacts in the S3 bucket; `down -v` leaves no container, volume or network behind.

The workspace is tiny (tests/support/workspace.py's TINY_WORKSPACE_EDITS: 2 epochs of batch 16, the TrafficCLIP-Tiny
model from random weights; the demo data of tests/conftest.py's tiny_raw: 60 vehicles, 60 pedestrians, seed 3) and
there is no GPU here (TRAFFICLIP_TRAIN_GPUS=0: no device request). The times (stand-in builds from this run's
`docker/engine.sh build`, stack start to healthy, the DAG run, the whole test) are printed at the end.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import ROOT, airflow, net, procs
from tests.support import engine as engine_support
from tests.support.workspace import copy_project
from tests.support.workspace import run as run_checked

pytestmark = pytest.mark.containers

DOCKER = ROOT / "docker"
# the shipped file, then the test-only override (compose v1 resolves both files' paths from docker/)
COMPOSE_FILES = (DOCKER / "compose.yaml", DOCKER / "stack-test" / "compose.override.yaml")
PROJECT = "docker"                       # compose's default project name: the first file's folder
SERVICES = ("postgres", "redis", "minio", "mlflow", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker")
JOBS = ("minio-init", "mlflow-init", "airflow-init")
STANDINS = {"postgres": "trafficlip-test-postgres:17", "redis": "trafficlip-test-redis:7",
            "minio": "trafficlip-test-s3:moto", "minio-init": "trafficlip-test-s3:moto"}
NETWORK = "trafficlip"                    # compose.yaml's network, fixed name
FIXED_VOLUMES = ("trafficlip-workspace", "trafficlip-model-cache")
# the checkout's DVC remote: the stack's DVC bucket (docs/deploy.md, "Data on MinIO")
DVC_REMOTE_URL = "s3://trafficlip-dvc/store"
# docs/deploy.md's command that fills the empty workspace volume from a bundle on stdin (the raw data pulled from
# the DVC remote when the checkout tracks it; this one does not yet: the demo data is ingested in the stack)
CLONE = ("cat > /tmp/ws.bundle && git clone -q /tmp/ws.bundle /workspace && cd /workspace && "
         "{ [ ! -f data/raw.dvc ] || dvc pull -q data/raw.dvc; }")
# the tiny demo dataset (tests/conftest.py's tiny_raw), made and ingested in the stack
DEMO = ("trafficlip synth --out /tmp/demo --vehicles 60 --pedestrians 60 --seed 3 && "
        "trafficlip ingest --source /tmp/demo")
CONF = {"runner": "docker", "epochs": 2, "batch_size": 16, "learning_rate": 0.002, "floor": 0.0}
DAG = airflow.TRAINING
# hang guards only (a stuck stack fails instead of blocking CI); no assertion is about how long anything took
HEALTHY_WITHIN, DAG_WITHIN = 900, 2400


def fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def write_env_file(path: Path, socket: Path) -> dict[str, str]:
    """docker/.env as docs/deploy.md makes it: .env.example with a fresh random value for every change-me (hex;
    a Fernet key for AIRFLOW_FERNET_KEY), DOCKER_GID the engine socket's group; then this machine's settings: free
    host ports, no GPU, the engine's socket for the worker (the override). Mode 600; the values are never printed."""
    values: dict[str, str] = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.lstrip().startswith("#"):
            continue
        if value == "change-me":
            value = fernet_key() if key == "AIRFLOW_FERNET_KEY" else secrets.token_hex(24)
        values[key] = value
    airflow_port = net.free_port()
    values.update({
        "DOCKER_GID": str(socket.stat().st_gid),
        "AIRFLOW_PORT": str(airflow_port), "AIRFLOW_BASE_URL": f"http://localhost:{airflow_port}",
        "MLFLOW_PORT": str(net.free_port()), "MINIO_API_PORT": str(net.free_port()),
        "MINIO_CONSOLE_PORT": str(net.free_port()),
        "TRAFFICLIP_TRAIN_GPUS": "0", "TRAFFICLIP_TRAIN_SHM": "1g",
        "TRAFFICLIP_ENGINE_SOCKET": str(socket),
    })
    unset = [key for key, value in values.items() if value == "change-me"]    # names only: never a value
    assert not unset, unset
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(f"{key}={value}\n" for key, value in values.items()))
    return values


class Compose:
    """Debian's docker-compose 1.29 on the engine's socket, the shipped file plus the override, the generated env
    file; a bare environment, so that nothing of this process overrides the env file (compose prefers the shell's)."""

    def __init__(self, env_file: Path, docker_host: str):
        binary = shutil.which("docker-compose")
        if not binary:
            pytest.fail("docker-compose is not installed: run `make test-containers` (docker/engine.sh install)")
        self.argv = [binary, "--env-file", str(env_file)]
        for path in COMPOSE_FILES:
            self.argv += ["-f", str(path.relative_to(ROOT))]
        self.env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "DOCKER_HOST": docker_host}

    def __call__(self, *args: str, stdin: bytes | None = None, check: bool = True,
                 timeout: float = 1800) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.argv, *args], cwd=ROOT, env=self.env, input=stdin, capture_output=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args[:3])} ... failed ({result.returncode}):\n"
                                 f"{result.stdout.decode(errors='replace')[-3000:]}\n"
                                 f"{result.stderr.decode(errors='replace')[-5000:]}")
        return result

    def text(self, *args: str, **kwargs) -> str:
        return self(*args, **kwargs).stdout.decode(errors="replace")


def make_checkout(target: Path) -> Path:
    """The project as a team's repository holds it, ready for the stack: dvc.yaml, params.yaml (the tiny values),
    tasks/, .dvc/ with the default DVC remote on the stack's DVC bucket (endpoint http://minio:9000, which the
    containers resolve; the keys come from the Airflow services' environment), committed; no data yet."""
    copy_project(target)
    for cmd in (["git", "init", "-q"], ["dvc", "remote", "add", "-d", "-f", "minio", DVC_REMOTE_URL],
                ["dvc", "remote", "modify", "minio", "endpointurl", "http://minio:9000"],
                ["git", "add", "-A"], ["git", "commit", "-q", "-m", "trafficlip: the stack's workspace"]):
        run_checked(cmd, target)
    return target


def containers(engine) -> dict[str, object]:
    """service -> its container, for this compose project (running or exited)."""
    found = engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
    return {c.labels["com.docker.compose.service"]: c for c in found}


def service_states(engine) -> dict[str, str]:
    """service -> 'healthy' / 'starting' / 'unhealthy' (long-running services, by Docker's healthcheck) or
    'exited 0' / 'exited N' / 'running' (the one-shot jobs)."""
    out = {}
    for service, container in containers(engine).items():
        state = container.attrs["State"]
        health = (state.get("Health") or {}).get("Status")
        out[service] = health or (f"exited {state['ExitCode']}" if state["Status"] == "exited" else state["Status"])
    return out


def all_healthy(engine) -> dict[str, str] | None:
    states = service_states(engine)
    failed = {s: st for s, st in states.items() if st == "unhealthy" or (s in JOBS and st.startswith("exited")
                                                                         and st != "exited 0")}
    if failed:
        raise AssertionError(f"services failed: {failed}")
    ok = all(states.get(s) == "healthy" for s in SERVICES) and all(states.get(j) == "exited 0" for j in JOBS)
    return states if ok else None


def last_json(text: str) -> dict:
    """The last JSON object a command printed (the CLI prints each result as indented JSON)."""
    starts = [i for i in range(len(text)) if text[i] == "{" and (i == 0 or text[i - 1] == "\n")]
    assert starts, f"no JSON in the output:\n{text[-2000:]}"
    return json.JSONDecoder().raw_decode(text, starts[-1])[0]


def xcom_value(api: airflow.Api, run_id: str, task_id: str):
    """A task's return value through the REST API (decoded whether the API gives it as JSON or as a string)."""
    value = api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")["value"]
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return ast.literal_eval(value)
    return value


def task_log_tails(compose: Compose, run_id: str, task_ids: list[str]) -> str:
    """The ends of the task logs the worker wrote (the airflow-logs volume), for a failure's diagnosis."""
    out = []
    for task_id in task_ids:
        folder = f"/opt/airflow/logs/dag_id={DAG}/run_id={run_id}/task_id={task_id}"
        result = compose("exec", "-T", "airflow-worker", "bash", "-c",
                         f"for f in '{folder}'/*; do echo \"== $f\"; tail -c 4000 \"$f\"; done", check=False)
        out.append(result.stdout.decode(errors="replace"))
    return "\n".join(out)


def events(engine, since: float, **filters) -> list[dict]:
    """The engine's events since ``since`` (epoch seconds) up to now that match ``filters``."""
    return list(engine.events(since=int(since), until=int(time.time()) + 1, filters=filters, decode=True))


def s3_keys(endpoint: str, keys: dict, bucket: str) -> list[str]:
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=keys["S3_ACCESS_KEY"], aws_secret_access_key=keys["S3_SECRET_KEY"])
    found, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, **({"ContinuationToken": token} if token else {}))
        found += [item["Key"] for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return found
        token = page["NextContinuationToken"]


def build_report() -> dict[str, str]:
    """The stand-ins' lines of this run's `docker/engine.sh build` report (build time and size), if there is one."""
    report = Path(os.environ.get("TRAFFICLIP_ENGINE_HOME", "/var/lib/trafficlip-engine")) / "build-report.txt"
    lines = report.read_text().splitlines() if report.is_file() else []
    return {image: line for image in set(STANDINS.values()) for line in lines if line.startswith(image)}


def test_compose_stack_trains_on_the_celery_worker_in_a_sibling_container_and_registers(
        tmp_path, monkeypatch, capsys):
    started = time.monotonic()
    engine = engine_support.client(*{engine_support.TRAIN_IMAGE, engine_support.AIRFLOW_IMAGE,
                                     engine_support.MLFLOW_IMAGE, *STANDINS.values()})
    socket = Path(engine_support.docker_host().removeprefix("unix://"))
    env = write_env_file(tmp_path / "stack.env", socket)
    compose = Compose(tmp_path / "stack.env", engine_support.docker_host())
    times: dict[str, float] = {}
    run_id = None
    # a stack left by an interrupted run of this test would hold the fixed-name network and volumes
    compose("down", "-v", "--remove-orphans")
    try:
        # --- the workspace volume, filled from a checkout (docs/deploy.md, "The workspace") ---
        checkout = make_checkout(tmp_path / "checkout")
        bundle = tmp_path / "trafficlip.bundle"
        run_checked(["git", "bundle", "create", "-q", str(bundle), "--all"], checkout)
        compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "bash", "airflow-init", "-c", CLONE,
                stdin=bundle.read_bytes())

        # --- up: every long-running service healthy, every job done ---
        up_started = time.monotonic()
        compose("up", "-d")
        try:
            states = procs.wait_for("every service of the stack to be healthy", lambda: all_healthy(engine),
                                    HEALTHY_WITHIN, interval=3, errors=(),
                                    details=lambda: f"{service_states(engine)}\n{compose.text('logs', '--tail', '40')}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{compose.text('logs', '--tail', '60')}") from None
        times["stack start to healthy"] = time.monotonic() - up_started
        assert set(states) == set(SERVICES) | set(JOBS), states
        # the stand-ins are the same major versions as compose.yaml's images
        listed = containers(engine)
        for service, image in STANDINS.items():
            assert image in listed[service].image.tags, (service, listed[service].image.tags)
        assert "(PostgreSQL) 17." in compose.text("exec", "-T", "postgres", "postgres", "--version")
        assert " v=7." in compose.text("exec", "-T", "redis", "redis-server", "--version")

        # --- the demo data, made and ingested inside the stack (docs/deploy.md) ---
        ingest = compose.text("exec", "-T", "airflow-worker", "bash", "-c", f"cd /workspace && {DEMO}")
        ingested = last_json(ingest)
        assert ingested["changed"] and ingested["pushed"] and ingested["commit"], ingested
        s3_endpoint = f"http://127.0.0.1:{env['MINIO_API_PORT']}"
        assert s3_keys(s3_endpoint, env, env["DVC_BUCKET"]), "dvc push left nothing in the DVC bucket"

        # --- the training DAG, through Airflow's REST API ---
        api = airflow.Api(f"http://127.0.0.1:{env['AIRFLOW_PORT']}")
        assert api.call("GET", f"/api/v2/dags/{DAG}", ok=None)[0] == 401, "Airflow answers without a login"
        api.login(env["AIRFLOW_ADMIN_PASSWORD"], env["AIRFLOW_ADMIN_USER"])
        procs.wait_for(f"the DAG processor to parse {DAG} from the workspace",
                       lambda: api.call("GET", f"/api/v2/dags/{DAG}", ok=None)[0] == 200, 300, interval=5,
                       details=lambda: str(api.get("/api/v2/importErrors")))
        errors = [e for e in api.get("/api/v2/importErrors")["import_errors"] if DAG in e.get("filename", "")]
        assert not errors, errors
        api.call("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
        dag_started = time.time()
        run_id = api.call("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": CONF})[1]["dag_run_id"]
        dag_clock = time.monotonic()
        run = procs.wait_for(f"the DAG run {run_id} to finish",
                             lambda: (lambda r: r if r["state"] in ("success", "failed") else None)(
                                 api.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}")),
                             DAG_WITHIN, interval=10, details=lambda: str(
                                 {t: ti["state"] for t, ti in api.task_instances(run_id).items()}))
        times["DAG run"] = time.monotonic() - dag_clock
        instances = api.task_instances(run_id)
        states = {task: ti["state"] for task, ti in instances.items()}
        if run["state"] != "success":
            bad = [t for t, s in states.items() if s not in ("success", "skipped", "upstream_failed")]
            raise AssertionError(f"the DAG run {run_id} {run['state']}: {states}\n"
                                 f"{task_log_tails(compose, run_id, bad)}")
        assert {t: s for t, s in states.items() if t.startswith("train_")} == {
            "train_docker": "success", "train_local": "skipped", "train_kubernetes": "skipped"}, states
        assert all(s == "success" for t, s in states.items() if not t.startswith("train_")), states
        # only this run: unpausing started no scheduled run beside it
        assert [r["dag_run_id"] for r in api.get(f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]] == [run_id]

        # every task ran on the Celery worker
        worker = containers(engine)["airflow-worker"]
        worker.reload()
        hostname = worker.attrs["Config"]["Hostname"]
        ran = {t: ti["hostname"] for t, ti in instances.items() if ti["state"] == "success"}
        assert set(ran.values()) == {hostname}, (ran, hostname)

        # train_docker started the training image as a sibling container through the engine socket: on the stack's
        # network, the workspace volume at /workspace, removed once done
        started_trainers = [e["id"] for e in events(engine, dag_started, type="container", event="start",
                                                     image=engine_support.TRAIN_IMAGE)]
        assert len(started_trainers) == 1, started_trainers
        trainer = started_trainers[0]
        joined = [e for e in events(engine, dag_started, type="network", event="connect")
                  if e["Actor"]["Attributes"].get("container") == trainer]
        assert [e["Actor"]["Attributes"]["name"] for e in joined] == [NETWORK], joined
        mounted = [e for e in events(engine, dag_started, type="volume", event="mount")
                   if e["Actor"]["Attributes"].get("container") == trainer]
        assert [(e["Actor"]["ID"], e["Actor"]["Attributes"]["destination"]) for e in mounted] == [
            ("trafficlip-workspace", "/workspace")], mounted
        assert events(engine, dag_started, type="container", event="destroy", container=trainer), \
            "the training container was not removed"
        assert not engine_support.leftover_containers(engine, engine_support.TRAIN_IMAGE)

        # --- the model in the stack's MLflow (basic auth), its artefacts in the S3 bucket ---
        mlflow_url = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
        registered = xcom_value(api, run_id, "register")
        assert registered["version"] == 1 and registered["created"], registered
        promoted = xcom_value(api, run_id, "promote")
        assert promoted["decision"] == "promoted" and promoted["champion_after"] == 1, promoted
        name = registered["registered_model"]
        anonymous = net.request(f"{mlflow_url}/api/2.0/mlflow/registered-models/get?name={name}")
        assert anonymous[0] == 401, f"MLflow answers without a login: HTTP {anonymous[0]}"
        from mlflow import MlflowClient
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.version == "1", champion
        train_run_id = xcom_value(api, run_id, "record_train")["mlflow_run_id"]
        train_run = client.get_run(train_run_id)
        assert train_run.info.status == "FINISHED" and train_run.data.metrics, train_run.info
        assert champion.run_id == train_run_id, (champion.run_id, train_run_id)
        # artefacts go through the server (--serve-artifacts) into the bucket: mlflow-artifacts:/PATH is
        # s3://MLFLOW_BUCKET/artifacts/PATH
        model_id = champion.model_id or champion.source.removeprefix("models:/").split("/")[0]
        location = client.get_logged_model(model_id).artifact_location
        assert location.startswith("mlflow-artifacts:"), location
        prefix = "artifacts/" + location.split(":", 1)[1].lstrip("/").rstrip("/")
        keys = s3_keys(s3_endpoint, env, env["MLFLOW_BUCKET"])
        assert f"{prefix}/MLmodel" in keys, (prefix, keys[:40])
        assert any(train_run_id in key for key in keys), "the training run's artefacts are not in the bucket"
    finally:
        failed_logs = ""
        if run_id is None and containers(engine):
            failed_logs = compose.text("logs", "--tail", "60", check=False)
        down_started = time.monotonic()
        compose("down", "-v", "--remove-orphans", check=False)
        times["down -v"] = time.monotonic() - down_started
        if failed_logs:
            print(failed_logs)

    # --- nothing left behind ---
    assert not containers(engine), containers(engine)
    assert not engine.networks.list(names=[NETWORK]), "the network trafficlip is still there"
    volumes = [v.name for v in engine.volumes.list()]
    assert not [v for v in volumes if v in FIXED_VOLUMES or v.startswith(f"{PROJECT}_")], volumes
    times["total (test)"] = time.monotonic() - started
    with capsys.disabled():
        print("\n== the compose stack (tests/containers/test_stack.py)")
        for image, line in sorted(build_report().items()):
            print(f"stand-in build (this run's docker/engine.sh build): {line}")
        for what, seconds in times.items():
            print(f"{what:24s} {seconds:7.1f} s")
