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
with the form's values and epochs 1, and checks in the workspace that training really ran 1 epoch
and that the workspace's params.yaml is as it was before the run (the form's values apply to that run only).

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
import re
import secrets
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.support import ARTEFACTS, BIN, airflow, browser, net, procs
from tests.support.workspace import make_workspace

pytestmark = [pytest.mark.browser, pytest.mark.service, pytest.mark.e2e]    # Chromium, airflow standalone; a DAG run

DAG_ID = airflow.TRAINING
SCREENSHOT = ARTEFACTS / "airflow_ui_run.png"
START_TIMEOUT_S = 5 * 60
RUN_TIMEOUT_S = 15 * 60
FINISHED = {"success", "failed"}
UI_TIMEOUT_MS = 60_000


# --- airflow standalone -------------------------------------------------------------------------------

class Standalone:
    """`airflow standalone` in a session of its own; stop() ends it and every process it started
    (the API server, scheduler, DAG processor and triggerer are process groups of their own, and so
    are the task processes), found by the private AIRFLOW_HOME in their environment."""

    def __init__(self, home: Path, env: dict, port: int, workspace: Path, folder: Path):
        self.home, self.env, self.workspace = home, env, workspace
        self.base = f"http://127.0.0.1:{port}"
        self.api = airflow.Api(self.base)
        self.processes = procs.Processes(folder)
        self.log = self.processes.log("standalone")

    def start(self) -> None:
        self.processes.start("standalone", [str(BIN / "airflow"), "standalone"], self.env, self.home)

    def password(self) -> str:
        """The admin password standalone generated for the simple auth manager."""
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]

    def get(self, path: str) -> dict:
        """GET through the REST API (signed in at the first call)."""
        if self.api.token is None:
            self.api.login(self.password())
        return self.api.get(path)

    def wait_for(self, what: str, probe, timeout: float, interval: float = 2.0):
        return procs.wait_for(what, probe, timeout, interval, alive=self.processes.check_alive,
                              errors=(OSError, AssertionError, KeyError, json.JSONDecodeError),
                              details=lambda: f"standalone's log:\n{procs.tail(self.log, 6000)}")

    def _by_home(self) -> list:
        import psutil
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("AIRFLOW_HOME") == str(self.home):
                    found.append(proc)
            except (psutil.Error, OSError):
                pass
        return found

    def stop(self) -> None:
        self.processes.stop(find_more=self._by_home)


@pytest.fixture
def standalone(tmp_path, tiny_raw):
    workspace = make_workspace(tmp_path / "workspace", tiny_raw)
    home = tmp_path / "airflow-home"
    home.mkdir()
    port = net.free_port()
    env = airflow.environment(home, port, workspace, f"sqlite:///{tmp_path / 'mlruns.db'}",
                              AIRFLOW__CORE__EXECUTOR="LocalExecutor", AIRFLOW__API__WORKERS="1")
    airflow.setup(env, home)
    server = Standalone(home, env, port, workspace, tmp_path)
    server.start()
    try:
        server.wait_for("the API server", server.api.healthy, START_TIMEOUT_S)
        server.wait_for("the generated admin password", server.password, START_TIMEOUT_S)
        server.wait_for(f"the DAG processor to parse {DAG_ID}", lambda: _parsed(server), START_TIMEOUT_S)
        yield server
    finally:
        server.stop()


def _parsed(server: Standalone) -> bool:
    errors = server.get("/api/v2/importErrors").get("import_errors", [])
    broken = [e for e in errors if "trafficlip_training" in (e.get("filename") or "")]
    if broken:
        pytest.fail(f"dags/trafficlip_training.py does not import:\n{broken[0].get('stack_trace')}")
    return server.api.call("GET", f"/api/v2/dags/{DAG_ID}", ok=None)[0] == 200


# --- the test ---------------------------------------------------------------------------------------------

def _form_problems(server: Standalone) -> str:
    """Why the trigger form could refuse its defaults: string Params with an empty default are
    required fields in the Airflow 3 form unless their type allows null."""
    suspects = []
    for name, param in server.get(f"/api/v2/dags/{DAG_ID}/details")["params"].items():
        types = param["schema"].get("type") or []
        types = types if isinstance(types, list) else [types]
        if param.get("value") in ("", None) and types and "null" not in types:
            suspects.append(name)
    return (f"Params with an empty default whose type does not allow null (required in the form): {suspects}"
            if suspects else "no Param with an empty default")


def test_trigger_training_from_the_ui(standalone: Standalone):
    chromium = browser.chromium()
    sync_playwright, expect = browser.playwright()
    server = standalone
    ARTEFACTS.mkdir(exist_ok=True)
    for old in ARTEFACTS.glob("airflow_ui_*"):      # this test's artefacts of an earlier run
        old.unlink()
    run_id = f"ui_test_{secrets.token_hex(4)}"
    defaults = {name: p["value"] for name, p in server.get(f"/api/v2/dags/{DAG_ID}/details")["params"].items()}
    assert defaults["epochs"] == 2, f"the tiny workspace's params.yaml should give the form epochs 2: {defaults}"
    # chosen on purpose (tasks/orchestration/dag_defaults.py): the DAGs are active when Airflow loads them
    assert server.get(f"/api/v2/dags/{DAG_ID}")["is_paused"] is False, "the DAGs should be active when loaded"
    badges_seen: list[str] = []

    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=chromium, headless=True)
        page = chrome.new_page(viewport={"width": 1400, "height": 900})
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
            if unpause.count():         # offered only for a paused DAG (someone may have paused it)
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
                server.processes.check_alive()
                run = server.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
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
            chrome.close()

    print(f"\nrun {run_id}: badge states seen {badges_seen}; screenshot {SCREENSHOT}")
    assert SCREENSHOT.stat().st_size > 10_000

    # the run came from the UI form, with the form's defaults and the one change
    assert run["run_type"] == "manual" and run["triggered_by"] == "ui", run
    assert run["triggering_user_name"] == "admin", run
    assert run["conf"] == {**defaults, "epochs": 1}, run["conf"]
    assert server.get(f"/api/v2/dags/{DAG_ID}")["is_paused"] is False     # "Unpause on trigger"
    states = _task_states(server, run_id)
    assert states["train_local"] == "success" and states["report"] == "success", states
    assert {states["train_docker"], states["train_kubernetes"]} == {"skipped"}, states
    # and the workspace trained with it: train ran 1 epoch, dvc.lock records it, and the form's value
    # applied to that run only (restore_params put the workspace's params.yaml back)
    workspace = server.workspace
    summary = json.loads((workspace / "reports" / "train_summary.json").read_text())
    assert summary["epochs"] == 1, summary
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 1
    assert yaml.safe_load((workspace / "params.yaml").read_text())["train"]["epochs"] == 2
    assert states["restore_params"] == "success", states


def _task_states(server: Standalone, run_id: str) -> dict:
    return {task: ti["state"] for task, ti in server.api.task_instances(run_id).items()}


def _failed_logs(server: Standalone, run_id: str, chars: int = 3000) -> str:
    """The task logs that Airflow wrote for the run's failed tasks (from AIRFLOW_HOME/logs)."""
    failed = [task for task, state in _task_states(server, run_id).items()
              if state in ("failed", "upstream_failed", "up_for_retry")]
    return airflow.task_logs(server.home, run_id, failed, chars=chars) or "(no task failed)"
