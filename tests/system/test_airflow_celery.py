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
import secrets
import time

import pytest

from tests.support import BIN, airflow, net, procs, services
from tests.support.workspace import make_workspace

pytestmark = [pytest.mark.service, pytest.mark.e2e]    # PostgreSQL, Redis, Airflow's servers; a DAG run

DAG_ID = airflow.TRAINING
RUN_TIMEOUT_S = 15 * 60          # generous: every task is a fresh process on a 2-core machine
START_TIMEOUT_S = 180
FINISHED = {"success", "failed"}
GOOD_TASK_STATES = {"success", "skipped", None}


@pytest.fixture
def postgres_db():
    """The name of a fresh PostgreSQL database, dropped (connections and all) after the test."""
    with services.postgres_databases("trafficlip_af") as (name,):
        yield name


@pytest.fixture
def redis_db():
    """A Redis database number that holds no keys, flushed after the test."""
    with services.redis_database() as number:
        yield number


# --- the test ------------------------------------------------------------------------------------------

def test_training_dag_succeeds_on_celery_with_postgres_and_redis(tmp_path, tiny_raw, postgres_db, redis_db):
    from cryptography.fernet import Fernet

    started = time.monotonic()
    home = tmp_path / "airflow-home"
    home.mkdir()
    workspace = make_workspace(tmp_path / "workspace", tiny_raw)
    api_port = net.free_port()
    base_url = f"http://127.0.0.1:{api_port}"
    queue = f"trafficlip_{secrets.token_hex(4)}"       # the worker serves this queue alone
    password = secrets.token_urlsafe(16)
    passwords_file = home / "simple_auth_manager_passwords.json"
    passwords_file.write_text(json.dumps({"admin": password}) + "\n")
    pg = services.postgres_address(postgres_db)

    # the environment of every Airflow process: the CeleryExecutor, the metadata database and the Celery
    # result backend in PostgreSQL, the broker in Redis; the worker's tasks talk to the API server's
    # execution API (JWTs the scheduler signs with the shared secret), the test to its REST API
    env = airflow.environment(
        home, api_port, workspace, f"sqlite:///{tmp_path / 'mlruns.db'}",
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg://{pg}",
        # Airflow derives postgresql+asyncpg:// for its async engine; psycopg 3 is async itself
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=f"postgresql+psycopg_async://{pg}",
        AIRFLOW__CELERY__BROKER_URL=f"redis://{services.REDIS_HOST}:{services.REDIS_PORT}/{redis_db}",
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql+psycopg://{pg}",
        AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
        AIRFLOW__CELERY__SYNC_PARALLELISM="1",
        AIRFLOW__OPERATORS__DEFAULT_QUEUE=queue,
        AIRFLOW__API__BASE_URL=base_url,
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords_file),
    )
    airflow.setup(env, tmp_path)
    setup_s = time.monotonic() - started

    command = str(BIN / "airflow")
    processes = procs.Processes(tmp_path)
    run_id = None
    try:
        processes.start("api-server", [command, "api-server", "--host", "127.0.0.1", "--port", str(api_port),
                                       "--workers", "1"], env, tmp_path)
        processes.start("scheduler", [command, "scheduler"], env, tmp_path)
        processes.start("dag-processor", [command, "dag-processor"], env, tmp_path)
        processes.start("celery-worker", [command, "celery", "worker", "--concurrency", "1", "--queues", queue,
                                          "--without-gossip", "--without-mingle"], env, tmp_path)
        api = airflow.Api(base_url)

        try:
            processes.wait_for("the API server", api.healthy, START_TIMEOUT_S)
            api.login(password)

            def dag_parsed():
                status, _ = api.call("GET", f"/api/v2/dags/{DAG_ID}", ok=None)
                if status == 200:
                    return True
                errors = api.call("GET", "/api/v2/importErrors")[1]
                if errors.get("total_entries"):
                    raise AssertionError(f"the DAG files do not import: {errors}")
                return False

            processes.wait_for(f"the dag-processor to serialise {DAG_ID}", dag_parsed, START_TIMEOUT_S, 2)
            processes.wait_for("the Celery worker", lambda: "ready." in procs.tail(processes.log("celery-worker"),
                                                                                   100_000), START_TIMEOUT_S)
            api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
            run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                           {"logical_date": None, "conf": {"runner": "local"}, "note": "celery acceptance test"})[1]
            run_id = run["dag_run_id"]
            ready_s = time.monotonic() - started

            def run_finished():
                status, body = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", ok=None)
                return body["state"] if status == 200 and body.get("state") in FINISHED else None

            state = processes.wait_for(f"run {run_id} to finish", run_finished, RUN_TIMEOUT_S, 5)
            tis = api.task_instances(run_id)
            total_s = time.monotonic() - started
            print(f"\nsetup (workspace, db migrate, pools) {setup_s:.0f} s, processes ready and run triggered "
                  f"{ready_s:.0f} s, run finished {total_s:.0f} s after the start")
            print({task: (ti["state"], ti["try_number"], ti["duration"] and round(ti["duration"], 1))
                   for task, ti in tis.items()})
            assert state == "success", f"run {run_id} ended {state}: " + ", ".join(
                f"{task}={ti['state']}" for task, ti in tis.items())

            # the branch took the local runner; everything else on the path succeeded
            expected = {"configure", "validate", "prepare", "augment", "choose_runner", "train_local", "record_train",
                        "evaluate", "register", "promote", "announce_champion", "predict", "report", "restore_params"}
            assert {task for task, ti in tis.items() if ti["state"] == "success"} == expected, tis
            assert {tis["train_docker"]["state"], tis["train_kubernetes"]["state"]} == {"skipped"}

            # Airflow's metadata database really is this PostgreSQL database
            rows = services.postgres_rows(postgres_db, "SELECT run_id, state, run_type FROM dag_run WHERE dag_id = %s",
                                          DAG_ID)
            assert rows == [(run_id, "success", "manual")], rows

            # the tasks went through Celery: queued on the worker's own queue, picked up by the worker (its
            # log names train_local), and train_local's Celery task (the id the scheduler recorded) has its
            # result in Celery's result table, in the same PostgreSQL database
            assert all(tis[task]["queue"] == queue for task in expected), {t: tis[t]["queue"] for t in expected}
            worker_log = processes.log("celery-worker").read_text(errors="replace").splitlines()
            assert any("Executing workload in Celery" in line and "task_id='train_local'" in line
                       for line in worker_log), "the Celery worker's log does not show it running train_local"
            celery = services.postgres_rows(
                postgres_db, "SELECT ti.state, ti.queue, ti.hostname, result.status "
                             "FROM task_instance ti JOIN celery_taskmeta result "
                             "ON result.task_id = ti.external_executor_id "
                             "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = 'train_local'", DAG_ID, run_id)
            assert celery == [("success", queue, tis["train_local"]["hostname"], "SUCCESS")], celery
            assert tis["train_local"]["hostname"], tis["train_local"]

            # what the run left in the workspace
            assert (workspace / "outputs" / "submission.json").is_file()
            promotion = json.loads((workspace / "reports" / "promotion.json").read_text())
            assert promotion.get("decision"), promotion
        except Exception as exc:  # noqa: BLE001 - any failure: add what the processes and the tasks said
            diagnosis = airflow.unfinished(api, home, run_id, lambda state: state in GOOD_TASK_STATES)
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{diagnosis}{processes.tails()}") from exc
    finally:
        processes.stop()
