"""Airflow for the tests: a private environment, `trafficlip airflow-setup`, the project's DagBag, the
REST API with a JWT from the simple auth manager, and the task logs of a run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.support import BIN, ROOT, net
from tests.support.workspace import run, tool_env

DAGS = ROOT / "dags"
TRAINING = "trafficlip_training"


def environment(home: Path, port: int, workspace: Path, mlflow_uri: str, **extra: str) -> dict:
    """What every Airflow process of a test gets: a private AIRFLOW_HOME, the project's DAGs, the API
    server on ``port`` (the task processes reach its execution API there), free log-server ports, no
    time-based runs, the workspace and its MLflow store. Nothing of the test process's own Airflow."""
    env = {key: value for key, value in tool_env().items() if not key.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # the log servers' fixed ports (8793, 8794) may be taken by another Airflow on the machine
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(net.free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(net.free_port()),
        # no cron runs: with catchup=False and a start_date, unpausing the DAG would start a run for the
        # latest past Sunday 03:00 at once, and a triggered run would wait behind it (max_active_runs=1)
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "TRAFFICLIP_WORKSPACE": str(workspace),
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    })
    env.update(extra)
    return env


def setup(env: dict | None = None, cwd: Path | None = None) -> None:
    """`trafficlip airflow-setup` (the metadata database migrated, the DAGs' pools) in ``env``
    (default: the test process's own Airflow, conftest's private AIRFLOW_HOME)."""
    run([str(BIN / "trafficlip"), "airflow-setup"], cwd or ROOT, env=env)


def dagbag():
    """The project's DAG files parsed as the DAG processor parses them."""
    from airflow.dag_processing.dagbag import DagBag
    return DagBag(dag_folder=str(DAGS))


class Api:
    """Airflow's REST API; ``login`` gets a JWT from the simple auth manager's /auth/token."""

    def __init__(self, base: str):
        self.base = base
        self.token: str | None = None

    def login(self, password: str, user: str = "admin") -> None:
        self.token = self.call("POST", "/auth/token", {"username": user, "password": password})[1]["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, ok=(200, 201)) -> tuple[int, dict]:
        """(status, JSON) of one call; a status outside ``ok`` fails (``ok=None``: any status)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        status, data = net.request_json(self.base + path, method, body, headers)
        if ok and status not in ok:
            raise AssertionError(f"{method} {path}: HTTP {status}: {data}")
        return status, data

    def get(self, path: str) -> dict:
        return self.call("GET", path, ok=(200,))[1]

    def healthy(self) -> bool:
        return self.call("GET", "/api/v2/monitor/health", ok=None)[0] == 200

    def task_instances(self, run_id: str, dag_id: str = TRAINING) -> dict[str, dict]:
        """task id -> the task instance (state, try_number, queue, hostname ...) of a run."""
        listed = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in listed}


def task_logs(home: Path, run_id: str, task_ids: list[str], dag_id: str = TRAINING, chars: int = 6000) -> str:
    """The ends of the task logs (every attempt) Airflow wrote under ``home`` for these tasks of a run."""
    from tests.support.procs import tail
    out = []
    run_folder = home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    for task_id in task_ids:
        files = sorted((run_folder / f"task_id={task_id}").glob("**/*.log"))
        if not files:
            out.append(f"\n===== task {task_id}: no log under {run_folder} =====\n")
        for path in files:
            out.append(f"\n===== task {task_id}: {path.relative_to(home)} =====\n{tail(path, chars)}")
    return "".join(out)


def unfinished(api: Api, home: Path, run_id: str | None, good: Callable[[str | None], bool]) -> str:
    """The tasks of a run whose state is not ``good`` and the ends of their logs (a failure's diagnosis)."""
    if run_id is None:
        return "\nno run was triggered"
    try:
        instances = api.task_instances(run_id)
    except Exception as exc:  # noqa: BLE001 - the diagnosis must not hide the failure
        return f"\nthe task instances of {run_id} could not be listed: {exc}"
    bad = {task: ti["state"] for task, ti in instances.items() if not good(ti["state"])}
    with_logs = [task for task, state in bad.items() if state != "upstream_failed"]
    return f"\ntasks of {run_id} that did not succeed: {bad}{task_logs(home, run_id, with_logs)}"
