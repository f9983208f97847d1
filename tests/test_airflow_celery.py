"""Scale-out acceptance: the training DAG succeeds under the CeleryExecutor, for real.

Airflow's metadata database is a fresh PostgreSQL database (the machine's, at 127.0.0.1:5432), the
Celery broker a dedicated Redis database (127.0.0.1:6379) and the Celery result backend the same
PostgreSQL database. `airflow scheduler`, `airflow dag-processor`, `airflow api-server` and one
`airflow celery worker` run as separate processes, sharing nothing but that configuration (passed in
their environment) and the machine's files; the worker's tasks reach the API server's execution API
with JWTs the scheduler signs, so they all share one `[api_auth] jwt_secret`.

The run is triggered through the REST API (a JWT from /auth/token of the simple auth manager), with
the `local` runner, in a tiny workspace; the test then checks the run, where its tasks ran (the
worker's own queue, the worker's log, Celery's result table) and what the workspace holds.

Everything is started on free ports and torn down after: every process (and the task processes,
which the task supervisor puts in process groups of their own) is killed, the database dropped and
the Redis database flushed. Fails (with the reason) where PostgreSQL or Redis is not running: the scale-out is not proven then.
About 3 minutes on 2 CPU cores (the run itself about 2): each task is a process of its own, started by
the worker, so it is slower than dag.test.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_workspace, tool_env

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
BIN = Path(sys.executable).parent
DAG_ID = "trafficlip_training"
RUN_TIMEOUT_S = 15 * 60          # generous: every task is a fresh process on a 2-core machine
START_TIMEOUT_S = 180
FINISHED = {"success", "failed"}
GOOD_TASK_STATES = {"success", "skipped", None}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path}: {exc}>"
    return text[-chars:]


# --- the services: a fresh PostgreSQL database, a free Redis database ---------------------------------

@pytest.fixture
def postgres_db():
    """The name of a fresh PostgreSQL database, dropped (connections and all) after the test."""
    import psycopg  # a dev dependency (pyproject)
    try:
        admin = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not running at {PG_HOST}:{PG_PORT}: {exc}")
    name = f"trafficlip_af_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def redis_db():
    """A Redis database number that holds no keys, flushed after the test."""
    import redis  # installed with celery[redis] (pyproject)
    probe = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_connect_timeout=5)
    try:
        probe.ping()
    except redis.exceptions.RedisError as exc:
        pytest.fail(f"Redis is not running at {REDIS_HOST}:{REDIS_PORT}: {exc}")
    try:
        count = int(probe.config_get("databases").get("databases", 16))
    except redis.exceptions.ResponseError:      # CONFIG disabled: the default number
        count = 16
    finally:
        probe.close()
    # the high numbers first: database 0 is where anything else on the machine keeps its keys
    for number in range(count - 1, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        pytest.fail("every Redis database holds keys: none is free for the Celery broker")
    try:
        yield number
    finally:
        client.flushdb()
        client.close()


# --- processes ----------------------------------------------------------------------------------------

class Processes:
    """Long-running processes, each in a session of its own, with their output in log files."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
        log = self.log(name).open("w")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=cwd, start_new_session=True)
        log.close()
        self.started[name] = process
        return process

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def check_alive(self) -> None:
        for name, process in self.started.items():
            if process.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {process.returncode}")

    def tails(self, chars: int = 4000) -> str:
        return "".join(f"\n===== {name} ({self.log(name)}), last {chars} characters =====\n"
                       f"{_tail(self.log(name), chars)}" for name in self.started)

    def stop(self) -> None:
        """SIGTERM to every process group (ours and the task processes' own), then SIGKILL to what is left."""
        import psutil
        tree: list[psutil.Process] = []
        for process in self.started.values():
            try:
                parent = psutil.Process(process.pid)
                tree += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        groups = {process.pid for process in self.started.values()}
        for member in tree:
            try:
                groups.add(os.getpgid(member.pid))
            except ProcessLookupError:
                pass
        groups.discard(os.getpgid(0))             # never the test's own group
        for group in groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(tree, timeout=20)
        for member in alive:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        for process in self.started.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


# --- the REST API ------------------------------------------------------------------------------------

class Api:
    def __init__(self, base: str):
        self.base = base
        self.token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None, ok=(200, 201)) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        try:
            data = json.loads(payload or b"{}")
        except json.JSONDecodeError:
            data = {"body": payload.decode(errors="replace")[:2000]}
        if ok and status not in ok:
            raise AssertionError(f"{method} {path}: HTTP {status}: {data}")
        return status, data


def _wait_for(what: str, probe, processes: Processes, timeout: float, interval: float = 1.0):
    """Call probe() until it returns something truthy; fail when a process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            result = probe()
            if result:
                return result
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")


def _pg_rows(db: str, sql: str, *args) -> list[tuple]:
    import psycopg
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=db) as connection:
        return connection.execute(sql, args).fetchall()


def _diagnosis(api: Api, home: Path, run_id: str | None) -> str:
    """The states of the run's unfinished or failed tasks and the tails of their logs."""
    if run_id is None:
        return "\nno run was triggered"
    try:
        listed = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")[1]["task_instances"]
    except Exception as exc:  # noqa: BLE001 - the diagnosis must not hide the failure
        return f"\nthe task instances of {run_id} could not be listed: {exc}"
    bad = {ti["task_id"]: ti["state"] for ti in listed if ti["state"] not in GOOD_TASK_STATES}
    with_logs = [task for task, state in bad.items() if state != "upstream_failed"]
    return f"\ntasks of {run_id} that did not succeed: {bad}{_task_logs(home, run_id, with_logs)}"


def _task_logs(home: Path, run_id: str, task_ids: list[str], chars: int = 6000) -> str:
    """The tails of the task logs (all attempts) that the worker wrote for these tasks."""
    out = []
    run_folder = home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    for task_id in task_ids:
        files = sorted((run_folder / f"task_id={task_id}").glob("**/*.log"))
        if not files:
            out.append(f"\n===== task {task_id}: no log under {run_folder} =====\n")
        for path in files:
            out.append(f"\n===== task {task_id}: {path.relative_to(home)} =====\n{_tail(path, chars)}")
    return "".join(out)


# --- the test ------------------------------------------------------------------------------------------

def test_training_dag_succeeds_on_celery_with_postgres_and_redis(tmp_path, tiny_raw, postgres_db, redis_db):
    from cryptography.fernet import Fernet

    started = time.monotonic()
    home = tmp_path / "airflow-home"
    home.mkdir()
    workspace = make_workspace(tmp_path / "workspace", tiny_raw)
    api_port, log_port, trigger_log_port = _free_port(), _free_port(), _free_port()
    base_url = f"http://127.0.0.1:{api_port}"
    queue = f"trafficlip_{secrets.token_hex(4)}"       # the worker serves this queue alone
    password = secrets.token_urlsafe(16)
    passwords_file = home / "simple_auth_manager_passwords.json"
    passwords_file.write_text(json.dumps({"admin": password}) + "\n")
    pg = f"{PG_USER}@{PG_HOST}:{PG_PORT}/{postgres_db}"

    # the environment of every Airflow process: nothing inherited from the test's own Airflow settings
    env = {key: value for key, value in tool_env().items() if not key.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg://{pg}",
        # Airflow derives postgresql+asyncpg:// for its async engine; psycopg 3 is async itself
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+psycopg_async://{pg}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg://{pg}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        # no cron runs: with catchup=False and a start_date, unpausing the DAG would start a run for the
        # latest past Sunday 03:00 at once, and the triggered run would wait behind it (max_active_runs=1)
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # the API server: the worker's tasks talk to its execution API, the test to its REST API
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
        # the pipeline
        "TRAFFICLIP_WORKSPACE": str(workspace),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    })

    setup = subprocess.run([str(BIN / "trafficlip"), "airflow-setup"], env=env, cwd=tmp_path,
                           capture_output=True, text=True)
    assert setup.returncode == 0, f"trafficlip airflow-setup failed:\n{setup.stdout[-3000:]}\n{setup.stderr[-5000:]}"
    setup_s = time.monotonic() - started

    airflow = str(BIN / "airflow")
    processes = Processes(tmp_path)
    run_id = None
    try:
        processes.start("api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(api_port),
                                       "--workers", "1"], env, tmp_path)
        processes.start("scheduler", [airflow, "scheduler"], env, tmp_path)
        processes.start("dag-processor", [airflow, "dag-processor"], env, tmp_path)
        processes.start("celery-worker", [airflow, "celery", "worker", "--concurrency", "1", "--queues", queue,
                                          "--without-gossip", "--without-mingle"], env, tmp_path)
        api = Api(base_url)

        try:
            _wait_for("the API server", lambda: api.call("GET", "/api/v2/monitor/health", ok=None)[0] == 200,
                      processes, START_TIMEOUT_S)
            api.token = api.call("POST", "/auth/token", {"username": "admin", "password": password})[1]["access_token"]

            def dag_parsed():
                status, _ = api.call("GET", f"/api/v2/dags/{DAG_ID}", ok=None)
                if status == 200:
                    return True
                errors = api.call("GET", "/api/v2/importErrors")[1]
                if errors.get("total_entries"):
                    raise AssertionError(f"the DAG files do not import: {errors}")
                return False

            _wait_for(f"the dag-processor to serialise {DAG_ID}", dag_parsed, processes, START_TIMEOUT_S, 2)
            _wait_for("the Celery worker", lambda: "ready." in _tail(processes.log("celery-worker"), 100_000),
                      processes, START_TIMEOUT_S)
            api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
            run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                           {"logical_date": None, "conf": {"runner": "local"}, "note": "celery acceptance test"})[1]
            run_id = run["dag_run_id"]
            ready_s = time.monotonic() - started

            def run_finished():
                status, body = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", ok=None)
                return body["state"] if status == 200 and body.get("state") in FINISHED else None

            state = _wait_for(f"run {run_id} to finish", run_finished, processes, RUN_TIMEOUT_S, 5)
            instances = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")[1]
            tis = {ti["task_id"]: ti for ti in instances["task_instances"]}
            total_s = time.monotonic() - started
            print(f"\nsetup (workspace, db migrate, pools) {setup_s:.0f} s, processes ready and run triggered "
                  f"{ready_s:.0f} s, run finished {total_s:.0f} s after the start")
            print({task: (ti["state"], ti["try_number"], ti["duration"] and round(ti["duration"], 1))
                   for task, ti in tis.items()})
            assert state == "success", f"run {run_id} ended {state}: " + ", ".join(
                f"{task}={ti['state']}" for task, ti in tis.items())

            # the branch took the local runner; everything else on the path succeeded
            expected = {"configure", "validate", "prepare", "augment", "choose_runner", "train_local", "record_train",
                        "evaluate", "register", "promote", "predict", "report"}
            assert {task for task, ti in tis.items() if ti["state"] == "success"} == expected, tis
            assert {tis["train_docker"]["state"], tis["train_kubernetes"]["state"]} == {"skipped"}

            # Airflow's metadata database really is this PostgreSQL database
            rows = _pg_rows(postgres_db, "SELECT run_id, state, run_type FROM dag_run WHERE dag_id = %s", DAG_ID)
            assert rows == [(run_id, "success", "manual")], rows

            # the tasks went through Celery: queued on the worker's own queue, picked up by the worker (its
            # log names train_local), and train_local's Celery task (the id the scheduler recorded) has its
            # result in Celery's result table, in the same PostgreSQL database
            assert all(tis[task]["queue"] == queue for task in expected), {t: tis[t]["queue"] for t in expected}
            worker_log = processes.log("celery-worker").read_text(errors="replace").splitlines()
            assert any("Executing workload in Celery" in line and "task_id='train_local'" in line
                       for line in worker_log), "the Celery worker's log does not show it running train_local"
            celery = _pg_rows(postgres_db, "SELECT ti.state, ti.queue, ti.hostname, result.status "
                                           "FROM task_instance ti JOIN celery_taskmeta result "
                                           "ON result.task_id = ti.external_executor_id "
                                           "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = 'train_local'",
                              DAG_ID, run_id)
            assert celery == [("success", queue, tis["train_local"]["hostname"], "SUCCESS")], celery
            assert tis["train_local"]["hostname"], tis["train_local"]

            # what the run left in the workspace
            assert (workspace / "outputs" / "submission.json").is_file()
            promotion = json.loads((workspace / "reports" / "promotion.json").read_text())
            assert promotion.get("decision"), promotion
        except Exception as exc:  # noqa: BLE001 - any failure: add what the processes and the tasks said
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{_diagnosis(api, home, run_id)}"
                                 f"{processes.tails()}") from exc
    finally:
        processes.stop()
