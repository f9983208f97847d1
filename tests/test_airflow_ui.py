"""Browser acceptance: the training DAG is triggered from Airflow's own UI, with a form field changed,
and the UI shows the run succeed.

`airflow standalone` (SQLite, LocalExecutor: every task a process of its own) runs on free ports with
a private AIRFLOW_HOME, the project's dags/ and a tiny workspace (TRAFFICLIP_WORKSPACE) whose MLflow
store is a temporary SQLite file. Headless Chromium -- Debian's `chromium` package, driven by
Playwright with `executable_path`, never Playwright's own browser downloads -- signs in with the
simple auth manager's generated password, opens the DAG, opens the trigger form, leaves "Unpause on
trigger" ticked, changes *Epochs* from the workspace's 2 to 1, names the run and triggers it. The test
waits (up to 15 minutes: each task is a fresh process on a small machine) for the run to finish,
then reads the run's own state badge on the run page (the header card's badge, not any "Success"
on the page), checks through the REST API (a JWT from /auth/token) that the run came from the UI
with the form's values and epochs 1, and checks in the workspace that training really ran 1 epoch.

Artefacts in test-artifacts/: airflow_ui_run.png (the run page, Success badge); on failure
airflow_ui_failure.png/.html (the page as it was) and airflow_ui_standalone.log.

Time-based scheduling is off in this Airflow (`[scheduler] use_job_schedule = False`; manual runs are
unaffected): the form unpauses the DAG, and a cron run queued at that moment (Airflow's
CronTriggerTimetable starts the last Sunday's run when unpaused within 10% of a week after it) would
hold the UI's run back behind max_active_runs=1.

Chromium missing is a failure, not a skip: `make test` installs it (`make chromium`).
About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, make_workspace, tool_env

DAG_ID = "trafficlip_training"
BIN = Path(sys.executable).parent
ARTEFACTS = ROOT / "test-artifacts"
SCREENSHOT = ARTEFACTS / "airflow_ui_run.png"
START_TIMEOUT_S = 5 * 60
RUN_TIMEOUT_S = 15 * 60
FINISHED = {"success", "failed"}
UI_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if not path:
        pytest.fail("Chromium is not installed: this browser test drives Debian's `chromium` package "
                    "(install it with `make chromium`, i.e. `apt-get install chromium`); it is never skipped")
    return path


def _sync_playwright():
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed in this environment: it is in the project's dev extra "
                    "(pip install -e '.[dev]', or make venv)")
    return sync_playwright, expect


# --- airflow standalone -------------------------------------------------------------------------------

class Standalone:
    """`airflow standalone` in a session of its own; stop() ends it and every process it started
    (the API server, scheduler, DAG processor and triggerer are process groups of their own, and so
    are the task processes), found by the private AIRFLOW_HOME in their environment."""

    def __init__(self, home: Path, env: dict, port: int, log: Path, workspace: Path):
        self.home, self.env, self.port, self.log, self.workspace = home, env, port, log, workspace
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self._token: str | None = None

    def start(self) -> None:
        with self.log.open("w") as out:
            self.process = subprocess.Popen([str(BIN / "airflow"), "standalone"], stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env, cwd=self.home,
                                            start_new_session=True)

    def tail(self, chars: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"<{self.log}: {exc}>"

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"airflow standalone exited with {self.process.returncode}; its log:\n{self.tail()}")

    def _ours(self) -> list:
        import psutil
        found = {}
        if self.process is not None:
            try:
                parent = psutil.Process(self.process.pid)
                found[parent.pid] = parent
                found.update((p.pid, p) for p in parent.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        marker = str(self.home)
        for proc in psutil.process_iter():
            if proc.pid in found or proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get("AIRFLOW_HOME") == marker:
                    found[proc.pid] = proc
            except (psutil.Error, OSError):
                pass
        return list(found.values())

    def stop(self) -> None:
        import psutil
        procs = self._ours()
        own_group = os.getpgid(0)
        groups = set()
        for proc in procs:
            try:
                groups.add(os.getpgid(proc.pid))
            except ProcessLookupError:
                pass
        groups.discard(own_group)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)          # standalone stops its components itself
        for group in groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(procs, timeout=20)
        for proc in alive + [p for p in self._ours() if p not in alive]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(self._ours(), timeout=10)
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # the REST API, with a JWT from the simple auth manager
    def password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]

    def _request(self, method: str, path: str, body: dict | None = None, token: str | None = None):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        try:
            return status, json.loads(payload or b"{}")
        except json.JSONDecodeError:
            return status, {"body": payload.decode(errors="replace")[:2000]}

    def api(self, path: str, ok=(200,)) -> dict:
        if self._token is None:
            status, data = self._request("POST", "/auth/token", {"username": "admin", "password": self.password()})
            assert status in (200, 201), f"POST /auth/token: HTTP {status}: {data}"
            self._token = data["access_token"]
        status, data = self._request("GET", path, token=self._token)
        if ok and status not in ok:
            raise AssertionError(f"GET {path}: HTTP {status}: {data}")
        return data

    def wait_for(self, what: str, probe, timeout: float, interval: float = 2.0):
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                result = probe()
            except (OSError, AssertionError, KeyError, json.JSONDecodeError) as exc:
                result, last = None, exc
            if result:
                return result
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r}); "
                             f"standalone's log:\n{self.tail()}")


def _standalone_env(home: Path, workspace: Path, mlflow_db: Path, port: int) -> dict:
    base = {k: v for k, v in tool_env().items() if not k.startswith("AIRFLOW")}   # nothing from conftest's Airflow
    return {
        **base,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        # the task processes reach the execution API on this port, not the default 8080
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # the log servers' fixed ports (8793, 8794) may be taken by another Airflow on the machine
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        # only the UI's run: no cron run queued when the form unpauses the DAG (see the module's docstring)
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "TRAFFICLIP_WORKSPACE": str(workspace),
        "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}",
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    }


@pytest.fixture
def standalone(tmp_path, tiny_raw):
    workspace = make_workspace(tmp_path / "workspace", tiny_raw)
    home = tmp_path / "airflow-home"
    home.mkdir()
    env = _standalone_env(home, workspace, tmp_path / "mlruns.db", _free_port())
    setup = subprocess.run([str(BIN / "trafficlip"), "airflow-setup"], cwd=home, env=env, capture_output=True,
                           text=True, timeout=600)
    assert setup.returncode == 0, f"trafficlip airflow-setup failed:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}"
    server = Standalone(home, env, int(env["AIRFLOW__API__PORT"]), tmp_path / "standalone.log", workspace)
    server.start()
    try:
        server.wait_for("the API server", lambda: server._request("GET", "/api/v2/monitor/health")[0] == 200,
                        START_TIMEOUT_S)
        server.wait_for("the generated admin password", lambda: server.password(), START_TIMEOUT_S)
        server.wait_for(f"the DAG processor to parse {DAG_ID}", lambda: _parsed(server), START_TIMEOUT_S)
        yield server
    finally:
        server.stop()


def _parsed(server: Standalone) -> bool:
    errors = server.api("/api/v2/importErrors").get("import_errors", [])
    broken = [e for e in errors if "trafficlip_training" in (e.get("filename") or "")]
    if broken:
        pytest.fail(f"dags/trafficlip_training.py does not import:\n{broken[0].get('stack_trace')}")
    status, _ = server._request("GET", f"/api/v2/dags/{DAG_ID}", token=server._token)
    return status == 200


# --- the test ---------------------------------------------------------------------------------------------

def _form_problems(server: Standalone) -> str:
    """Why the trigger form could refuse its defaults: string Params with an empty default are
    required fields in the Airflow 3 form unless their type allows null."""
    suspects = []
    for name, param in server.api(f"/api/v2/dags/{DAG_ID}/details")["params"].items():
        types = param["schema"].get("type") or []
        types = types if isinstance(types, list) else [types]
        if param.get("value") in ("", None) and types and "null" not in types:
            suspects.append(name)
    return (f"Params with an empty default whose type does not allow null (required in the form): {suspects}"
            if suspects else "no Param with an empty default")


def test_trigger_training_from_the_ui(standalone: Standalone):
    chromium = _chromium()
    sync_playwright, expect = _sync_playwright()
    server = standalone
    ARTEFACTS.mkdir(exist_ok=True)
    for old in ARTEFACTS.glob("airflow_ui_*"):      # this test's artefacts of an earlier run
        old.unlink()
    run_id = f"ui_test_{secrets.token_hex(4)}"
    defaults = {name: p["value"] for name, p in server.api(f"/api/v2/dags/{DAG_ID}/details")["params"].items()}
    assert defaults["epochs"] == 2, f"the tiny workspace's params.yaml should give the form epochs 2: {defaults}"
    assert server.api(f"/api/v2/dags/{DAG_ID}")["is_paused"] is True, "a new DAG should start paused"
    badges_seen: list[str] = []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            # sign in (simple auth manager: the password standalone generated for admin)
            page.goto(server.base + "/")
            page.wait_for_url(re.compile(r"/auth/login"))
            page.locator("input[name=username]").fill("admin")
            page.locator("input[name=password]").fill(server.password())
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)

            # the DAG's page, its trigger form
            page.goto(f"{server.base}/dags/{DAG_ID}")
            page.get_by_test_id("trigger-dag-button").click()
            form = page.get_by_role("dialog")
            expect(form).to_contain_text(f"Trigger Dag - {DAG_ID}")
            unpause = form.get_by_role("checkbox", name=re.compile(r"Unpause .* on trigger"))
            if not unpause.is_checked():
                form.get_by_text(re.compile(r"Unpause .* on trigger")).click()
            expect(unpause).to_be_checked()

            # the Param: Epochs, in the form's Training section, from 2 to 1
            form.get_by_role("button", name="Training", exact=True).click()
            epochs = form.locator("input[name=element_epochs]")
            expect(epochs).to_have_value("2")
            epochs.fill("1")
            epochs.press("Tab")
            expect(epochs).to_have_value("1")

            # a run ID of our own (Advanced Options), then Trigger
            form.get_by_role("button", name="Advanced Options").click()
            form.locator("input[name=dagRunId]").fill(run_id)
            submit = form.get_by_test_id("trigger-dag-submit")
            try:
                expect(submit).to_be_enabled(timeout=15_000)
            except AssertionError:
                raise AssertionError(f"the trigger form's Trigger button stays disabled: the form rejects its "
                                     f"values. {_form_problems(server)}") from None
            submit.click()
            page.wait_for_url(f"**/dags/{DAG_ID}/runs/{run_id}")

            # the run, to its end (REST API), while the run page shows its state badge
            badge = page.get_by_test_id("header-card").get_by_test_id("state-badge")
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                server.check_alive()
                run = server.api(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
                try:
                    text = badge.inner_text(timeout=5_000).strip()
                    if text and (not badges_seen or badges_seen[-1] != text):
                        badges_seen.append(text)
                except Exception:            # the page is re-rendering: read it next time
                    pass
                if run["state"] in FINISHED:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"run {run_id} not finished after {RUN_TIMEOUT_S} s: {run['state']}; "
                                         f"tasks: {_task_states(server, run_id)}")
                time.sleep(5)
            assert run["state"] == "success", (
                f"run {run_id} ended {run['state']}; tasks: {_task_states(server, run_id)}\n"
                f"failed tasks' logs:\n{_failed_logs(server, run_id)}")

            # the run's own state badge (the header card of the run page), after a fresh load
            page.reload()
            expect(badge).to_have_text("Success")
            expect(page.get_by_test_id("header-card")).to_contain_text(run_id)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        except BaseException:
            try:
                page.screenshot(path=str(ARTEFACTS / "airflow_ui_failure.png"), full_page=True)
                (ARTEFACTS / "airflow_ui_failure.html").write_text(page.content())
                shutil.copy(server.log, ARTEFACTS / "airflow_ui_standalone.log")
            except Exception:
                pass
            raise
        finally:
            browser.close()

    print(f"\nrun {run_id}: badge states seen {badges_seen}; screenshot {SCREENSHOT}")
    assert SCREENSHOT.stat().st_size > 10_000

    # the run came from the UI form, with the form's defaults and the one change
    assert run["run_type"] == "manual" and run["triggered_by"] == "ui", run
    assert run["triggering_user_name"] == "admin", run
    assert run["conf"] == {**defaults, "epochs": 1}, run["conf"]
    assert server.api(f"/api/v2/dags/{DAG_ID}")["is_paused"] is False     # "Unpause on trigger"
    states = _task_states(server, run_id)
    assert states["train_local"] == "success" and states["report"] == "success", states
    assert {states["train_docker"], states["train_kubernetes"]} == {"skipped"}, states
    # and the workspace trained with it: configure wrote it into params.yaml, train ran 1 epoch
    workspace = server.workspace
    assert yaml.safe_load((workspace / "params.yaml").read_text())["train"]["epochs"] == 1
    summary = json.loads((workspace / "reports" / "train_summary.json").read_text())
    assert summary["epochs"] == 1, summary


def _task_states(server: Standalone, run_id: str) -> dict:
    data = server.api(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
    return {ti["task_id"]: ti["state"] for ti in data["task_instances"]}


def _failed_logs(server: Standalone, run_id: str, chars: int = 3000) -> str:
    """The task logs that Airflow wrote for the run's failed tasks (from AIRFLOW_HOME/logs)."""
    states = _task_states(server, run_id)
    out = []
    for task_id, state in states.items():
        if state in ("failed", "upstream_failed", "up_for_retry"):
            for path in sorted((server.home / "logs").rglob(f"*{run_id}*/task_id={task_id}/*.log")):
                out.append(f"===== {path}\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(out) or "(no task log found)"
