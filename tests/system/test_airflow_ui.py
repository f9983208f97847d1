"""Browser acceptance of the Airflow UI, as a user meets it after `make run` and `make up`.

One Airflow for the whole module, set up as a user's is. In a tiny workspace (TRAFFICLIP_WORKSPACE, a
git + DVC checkout with the tiny demo data, its own SQLite MLflow store), `make run`'s pipeline runs
first: the training DAG through `airflow dags test`, its output piped through the live view
(tasks/orchestration/live.py) with the task-log folder, exactly the Makefile's command. Then, like
`make up`, `airflow standalone` (SQLite, LocalExecutor: every task a process of its own) starts on
free ports over the same AIRFLOW_HOME, with the project's dags/. Headless Chromium -- Debian's
`chromium` package, driven by Playwright with `executable_path`, never Playwright's own browser
downloads -- signs in with the simple auth manager's generated password, and the tests do what a
user does:

- open a task of the `make run` run and read its log lines (not "Log file not found");
- open each DAG's trigger form (training, retrieval, ingest): every field shows its help with its
  limits; a bad value (out of range, not a number, a negative learning rate, a text over its length
  limit, a revision with a space) is kept as typed -- never clamped or cut -- and refused with a message
  naming the field and the limit, and no run is created; an empty required field keeps Trigger disabled;
- trigger the retrieval DAG with every field empty (the run ranks the workspace's test split with
  @champion) and the ingest DAG with the tracked dataset (the run succeeds and changes nothing);
- trigger the training DAG with Epochs changed from 2 to 1 and read the run's Success badge; the
  workspace trained 1 epoch for that run only.

Time-based and asset-triggered scheduling are off in this Airflow (`[scheduler] use_job_schedule =
False`; manual runs are unaffected), so only the runs a test triggers exist.

Artefacts in test-artifacts/: airflow_ui_make_run_log.png (a task log of the `make run` run),
airflow_ui_dag_list.png, airflow_ui_form_<dag>.png (each form with its help texts),
airflow_ui_refused_<dag>_<field>_<value>.png (each refusal, its message in view), airflow_ui_retrieval_run.png,
airflow_ui_run.png (the training run's Success badge); on a failure airflow_ui_failure_<test>.png/.html and
airflow_ui_standalone.log.

Chromium missing is a failure, not a skip: `make test` installs it (`make chromium`).
About 5 to 7 minutes on 2 shared CPU cores: `make run`'s pipeline and standalone's start 2 min, the training
run from the form 2.7 min, the retrieval and ingest runs 50 s, the form checks 4 to 6 s each.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import ARTEFACTS, BIN, ROOT, airflow, browser, net, procs
from tests.support.workspace import make_workspace

pytestmark = [pytest.mark.browser, pytest.mark.service, pytest.mark.e2e]    # Chromium, airflow standalone; DAG runs

DAG_ID = airflow.TRAINING
RETRIEVAL, INGEST = "trafficlip_retrieval", "trafficlip_ingest"
SCREENSHOT = ARTEFACTS / "airflow_ui_run.png"
START_TIMEOUT_S = 5 * 60
RUN_TIMEOUT_S = 15 * 60
FINISHED = {"success", "failed"}
# the Makefile's `make run`: the DAG's output through the live view, which writes the UI's task logs
MAKE_RUN_PIPE = "python -m tasks.orchestration.live $(AIRFLOW_HOME_DIR)/dags-test.log $(AIRFLOW_HOME_DIR)/logs"


# --- `make run`, then airflow standalone as `make up` starts it -------------------------------------------

@dataclass
class MadeRun:
    """What `make run` left: the run's id, what the terminal showed, the Airflow home and workspace."""
    run_id: str
    terminal: str
    home: Path
    workspace: Path


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

    def runs(self, dag_id: str) -> list[dict]:
        """The DAG's runs, as the REST API lists them."""
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str) -> dict:
        """The run once it has finished (success or failed)."""
        def finished():
            run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in FINISHED else None
        return self.wait_for(f"run {run_id} of {dag_id} to finish", finished, RUN_TIMEOUT_S, interval=5)

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


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_raw):
    """A tiny workspace, a private AIRFLOW_HOME with its metadata database and pools, and the environment
    of every Airflow process (free ports; the workspace's own MLflow store)."""
    folder = tmp_path_factory.mktemp("airflow-ui")
    workspace = make_workspace(folder / "workspace", tiny_raw)
    home = folder / "airflow-home"
    home.mkdir()
    port = net.free_port()
    env = airflow.environment(home, port, workspace, f"sqlite:///{folder / 'mlruns.db'}",
                              AIRFLOW__CORE__EXECUTOR="LocalExecutor", AIRFLOW__API__WORKERS="1")
    airflow.setup(env, home)
    return folder, workspace, home, port, env


@pytest.fixture(scope="module")
def made_run(setting) -> MadeRun:
    """`make run`'s pipeline in the workspace: `airflow dags test trafficlip_training` piped through the live
    view, which also writes each task's lines where the Airflow UI reads them (AIRFLOW_HOME/logs)."""
    folder, workspace, home, _, env = setting
    assert MAKE_RUN_PIPE in (ROOT / "Makefile").read_text(), \
        "the Makefile's run target no longer pipes through the live view this test repeats: update MAKE_RUN_PIPE"
    command = (f"set -o pipefail; {BIN / 'airflow'} dags test {DAG_ID} --conf '{{\"runner\": \"local\"}}' 2>&1 "
               f"| {BIN / 'python'} -m tasks.orchestration.live {home / 'dags-test.log'} {home / 'logs'}")
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "run successful" in result.stdout, (
        f"make run's pipeline failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}\n"
        f"{procs.tail(home / 'dags-test.log', 4000)}")
    [run_folder] = (home / "logs" / f"dag_id={DAG_ID}").glob("run_id=*")
    return MadeRun(run_folder.name.removeprefix("run_id="), result.stdout, home, workspace)


@pytest.fixture(scope="module")
def standalone(setting, made_run):
    """`make up`'s Airflow over the home `make run` used, until the DAGs are parsed; stopped after the module."""
    folder, workspace, home, port, env = setting
    server = Standalone(home, env, port, workspace, folder)
    server.start()
    try:
        server.wait_for("the API server", server.api.healthy, START_TIMEOUT_S)
        server.wait_for("the generated admin password", server.password, START_TIMEOUT_S)
        for dag_id in (DAG_ID, RETRIEVAL, INGEST):
            server.wait_for(f"the DAG processor to parse {dag_id}", lambda: _parsed(server, dag_id), START_TIMEOUT_S)
        yield server
    finally:
        server.stop()


def _parsed(server: Standalone, dag_id: str) -> bool:
    errors = server.get("/api/v2/importErrors").get("import_errors", [])
    broken = [e for e in errors if dag_id in (e.get("filename") or "")]
    if broken:
        pytest.fail(f"dags/{dag_id}.py does not import:\n{broken[0].get('stack_trace')}")
    return server.api.call("GET", f"/api/v2/dags/{dag_id}", ok=None)[0] == 200


@pytest.fixture(scope="module")
def ui(standalone):
    """Headless Chromium signed in to the Airflow UI, one page for the module's tests."""
    ARTEFACTS.mkdir(exist_ok=True)
    for old in ARTEFACTS.glob("airflow_ui_*"):      # this module's artefacts of an earlier run
        old.unlink()
    with browser.page(viewport={"width": 1400, "height": 1500}) as tab:     # tall: a whole form in a screenshot
        browser.airflow_sign_in(tab, standalone.base, standalone.password())
        yield tab


@pytest.fixture
def kept(ui, standalone, request):
    """The page as the test left it, and standalone's log, kept when the test fails."""
    name = "airflow_ui_failure_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    with browser.kept_on_failure(ui, name, {"airflow_ui_standalone.log": standalone.log}):
        yield ui


# --- the run `make run` made, in the UI ------------------------------------------------------------------

def test_the_make_run_task_logs_open_in_the_ui(standalone, made_run, kept):
    """After `make run` and `make up`, the run's tasks show their log lines in the UI: the training
    task's log holds the progress lines the terminal showed."""
    _, expect = browser.playwright()
    page = kept
    run = standalone.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{made_run.run_id}")
    assert run["state"] == "success", run
    # the lines the terminal showed for the train step ("    train: ..."), as the task log holds them
    shown = [line.strip().removeprefix("train: ") for line in made_run.terminal.splitlines()
             if line.startswith("    train: ")]
    assert any("epoch 2/2" in line for line in shown), made_run.terminal

    page.goto(f"{standalone.base}/dags/{DAG_ID}/runs/{made_run.run_id}/tasks/train_local")
    for line in (shown[1], next(line for line in shown if "epoch 2/2" in line)):
        expect(page.get_by_text(line, exact=False).first).to_be_visible()
    expect(page.get_by_text("Log file not found")).to_have_count(0)
    page.screenshot(path=str(ARTEFACTS / "airflow_ui_make_run_log.png"), full_page=True)

    # and another task's: the promotion's decision
    page.goto(f"{standalone.base}/dags/{DAG_ID}/runs/{made_run.run_id}/tasks/promote")
    promoted = next(line for line in made_run.terminal.splitlines() if line.startswith("    promote: version 1"))
    expect(page.get_by_text(promoted.strip().removeprefix("promote: "), exact=False).first).to_be_visible()


# --- the DAG list and the training DAG's graph ---------------------------------------------------------------

def test_the_dag_list_shows_the_dags_active_and_the_training_schedule(standalone, kept):
    """Active when loaded (chosen on purpose: tasks/orchestration/dag_defaults.py): the list's Active
    filter holds all four; the training DAG's card shows its asset schedule (trafficlip-raw-data) and its
    next run, the coming Sunday 03:00 UTC; its grid folds the tasks into groups between configure and
    restore_params."""
    _, expect = browser.playwright()
    page = kept
    dag_ids = (DAG_ID, RETRIEVAL, INGEST, "trafficlip_registry_watch")
    for dag_id in dag_ids:
        assert standalone.get(f"/api/v2/dags/{dag_id}")["is_paused"] is False, dag_id
    page.goto(f"{standalone.base}/dags?tags=trafficlip")
    page.get_by_role("button", name="Active", exact=True).click()
    expect(page.get_by_text("4 Dags", exact=True)).to_be_visible()
    for dag_id in dag_ids:
        expect(page.get_by_role("link", name=dag_id, exact=True)).to_be_visible()
    card = page.locator("div", has=page.get_by_role("link", name=DAG_ID, exact=True)).filter(
        has_text="Next Run").last
    expect(card).to_contain_text("trafficlip-raw-data")
    expect(card).to_contain_text(_next_sunday_3am())
    page.screenshot(path=str(ARTEFACTS / "airflow_ui_dag_list.png"), full_page=True)
    page.goto(f"{standalone.base}/dags/{DAG_ID}")
    for group in ("configure", "data", "training", "registry", "delivery", "restore_params"):
        expect(page.get_by_text(group, exact=True).first).to_be_visible()


def _next_sunday_3am() -> str:
    """The training DAG's next cron run as the UI prints it (UTC): the first Sunday 03:00 after now."""
    now = dt.datetime.now(dt.timezone.utc)
    day = now.replace(hour=3, minute=0, second=0, microsecond=0) + dt.timedelta(days=(6 - now.weekday()) % 7)
    return (day if day > now else day + dt.timedelta(days=7)).strftime("%Y-%m-%d %H:%M:%S")


# --- the trigger forms: limits shown, bad values refused ----------------------------------------------------

# the range each number field states in its help (tasks/core/params.py's Key.expected)
RANGES = {"epochs": "an integer 1..200", "learning_rate": "a number in (0, 1]", "batch_size": "an integer >= 2",
          "min_gain": "a number in [0, 1]", "confidence": "a number in [0, 1]", "floor": "a number in [0, 1]"}


def _open_field(form, param: dict) -> None:
    section = param["schema"].get("section")
    if section:
        browser.open_section(form, section)


@pytest.mark.parametrize("dag_id", [DAG_ID, RETRIEVAL, INGEST])
def test_every_form_field_shows_its_help_and_limits(dag_id, standalone, kept):
    _, expect = browser.playwright()
    params = standalone.get(f"/api/v2/dags/{dag_id}/details")["params"]
    form = browser.open_trigger_form(kept, standalone.base, dag_id)
    for name, param in params.items():
        _open_field(form, param)
        row = browser.field_row(form, name)
        expect(row).to_contain_text(param["schema"]["title"])
        expect(row).to_contain_text(param["description"])
        if name in RANGES:
            expect(row).to_contain_text(RANGES[name])
        limits = {k: v for part in param["schema"].get("allOf", []) for k, v in part.items()}
        if "maxLength" in limits:
            expect(row).to_contain_text(f"At most {limits['maxLength']} characters")
        # no limit where the form would apply it silently (a number clamped on blur, a text cut)
        assert not {"minimum", "maximum", "maxLength"} & set(param["schema"]), (name, param["schema"])
    kept.screenshot(path=str(ARTEFACTS / f"airflow_ui_form_{dag_id}.png"), full_page=True, animations="disabled")


def _refused(standalone, page, dag_id: str, name: str, typed: str, message: str, paste: bool = False) -> None:
    """Type a bad value into a field of the DAG's trigger form: the field keeps it as typed, Trigger
    answers with ``message`` in the form, and no run is created."""
    _, expect = browser.playwright()
    params = standalone.get(f"/api/v2/dags/{dag_id}/details")["params"]
    runs_before = len(standalone.runs(dag_id))
    form = browser.open_trigger_form(page, standalone.base, dag_id)
    _open_field(form, params[name])
    shown = (browser.fill_field if paste else browser.set_field)(form, name, typed)
    assert shown == typed, f"{name}: the form changed {typed!r} into {shown!r}"
    submit = form.get_by_test_id("trigger-dag-submit")
    expect(submit).to_be_enabled()
    submit.click()
    error = form.get_by_text(f"Invalid input for param {name}: {message}", exact=False)
    expect(error).to_be_visible()
    expect(browser.field(form, name)).to_have_value(typed)            # still there, to be corrected
    error.scroll_into_view_if_needed()
    shot = re.sub(r"[^A-Za-z0-9.-]+", "_", typed)[:20]
    page.screenshot(path=str(ARTEFACTS / f"airflow_ui_refused_{dag_id}_{name}_{shot}.png"), animations="disabled")
    assert len(standalone.runs(dag_id)) == runs_before, f"{dag_id}: a run was created with {name}={typed!r}"


@pytest.mark.parametrize("name, typed, message, paste", [
    ("epochs", "0", "0 is less than the minimum of 1", False),
    ("epochs", "1000", "1000 is greater than the maximum of 200", False),
    ("epochs", "2.5", "2.5 is not of type 'integer'", False),
    # a minus sign cannot be typed key by key into Airflow 3.3's number field (below); pasted, it stays
    ("learning_rate", "-0.001", "-0.001 is less than or equal to the minimum of 0", True),
    ("batch_size", "1", "1 is less than the minimum of 2", False),
    ("data_revision", "main; rm -rf /", "'main; rm -rf /' does not match", False),
])
def test_the_training_form_refuses_a_bad_value(name, typed, message, paste, standalone, kept):
    _refused(standalone, kept, DAG_ID, name, typed, message, paste=paste)


@pytest.mark.parametrize("name, typed", [("epochs", "abc"), ("learning_rate", "abc"), ("learning_rate", "-0.001")])
def test_a_number_field_keeps_no_value_it_cannot_hold_and_an_empty_one_is_required(name, typed, standalone, kept):
    """Typed key by key over the value, letters leave Airflow's number field empty (it takes digits
    only), and so does a leading minus sign (the field shows NaN while typing, then empties): the form
    says the field is required and keeps Trigger disabled, so no run starts with a value nobody chose."""
    _, expect = browser.playwright()
    params = standalone.get(f"/api/v2/dags/{DAG_ID}/details")["params"]
    runs_before = len(standalone.runs(DAG_ID))
    form = browser.open_trigger_form(kept, standalone.base, DAG_ID)
    _open_field(form, params[name])
    assert browser.set_field(form, name, typed) == ""
    expect(browser.field_row(form, name)).to_contain_text("This field is required")
    expect(form.get_by_test_id("trigger-dag-submit")).to_be_disabled()
    label = "letters" if typed.isalpha() else "negative"
    kept.screenshot(path=str(ARTEFACTS / f"airflow_ui_refused_{DAG_ID}_{name}_{label}_typed.png"), full_page=True,
                    animations="disabled")
    assert len(standalone.runs(DAG_ID)) == runs_before


def test_the_retrieval_form_refuses_a_path_over_its_limit(standalone, kept):
    _refused(standalone, kept, RETRIEVAL, "model", "m" * 1001, "'" + "m" * 1001 + "' is too long", paste=True)


def test_the_ingest_form_requires_a_dataset_folder_and_refuses_one_over_its_limit(standalone, kept):
    _, expect = browser.playwright()
    runs_before = len(standalone.runs(INGEST))
    form = browser.open_trigger_form(kept, standalone.base, INGEST)
    browser.open_section(form, "Data")
    expect(browser.field_row(form, "source")).to_contain_text("This field is required")
    expect(form.get_by_test_id("trigger-dag-submit")).to_be_disabled()
    assert len(standalone.runs(INGEST)) == runs_before
    _refused(standalone, kept, INGEST, "source", "/" + "d" * 1000, "'/" + "d" * 1000 + "' is too long", paste=True)


# --- the forms with their optional fields empty: the runs are created and do their work ---------------------

def _trigger(page, form, run_id: str) -> None:
    """A run id of our own (Advanced Options), then Trigger: the UI opens the new run's page."""
    _, expect = browser.playwright()
    form.get_by_role("button", name="Advanced Options").click()
    form.locator("input[name=dagRunId]").fill(run_id)
    submit = form.get_by_test_id("trigger-dag-submit")
    expect(submit).to_be_enabled()
    submit.click()
    page.wait_for_url(f"**/runs/{run_id}")


def test_the_retrieval_form_with_every_field_empty_ranks_with_the_champion(standalone, made_run, kept):
    """Gallery, queries, output and Model left empty: the run ranks the workspace's test split with the
    registry's @champion (the version `make run` promoted, or a later one) into outputs/champion-retrieval."""
    _, expect = browser.playwright()
    page = kept
    run_id = f"ui_retrieval_{secrets.token_hex(4)}"
    form = browser.open_trigger_form(page, standalone.base, RETRIEVAL)
    for section in ("Input", "Output", "Model"):
        browser.open_section(form, section)
    for name in ("gallery", "queries", "output", "model"):
        expect(browser.field(form, name)).to_have_value("")
    expect(browser.field_row(form, "model")).to_contain_text("Empty: the registry's @champion")
    _trigger(page, form, run_id)
    run = standalone.wait_for_run(RETRIEVAL, run_id)
    assert run["state"] == "success", airflow.unfinished(standalone.api, standalone.home, run_id,
                                                         lambda s: s == "success")
    assert run["triggered_by"] == "ui" and run["conf"]["model"] in (None, ""), run
    page.reload()
    expect(page.get_by_test_id("header-card").get_by_test_id("state-badge")).to_have_text("Success")
    # the task's log says which model ranked: the registry's @champion
    page.goto(f"{standalone.base}/dags/{RETRIEVAL}/runs/{run_id}/tasks/retrieve")
    expect(page.get_by_text("models:/traffic-clip@champion", exact=False).first).to_be_visible()
    page.screenshot(path=str(ARTEFACTS / "airflow_ui_retrieval_run.png"), full_page=True)

    from mlflow import MlflowClient
    champion = int(MlflowClient(standalone.env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "traffic-clip", "champion").version)
    report = json.loads((made_run.workspace / "outputs" / "champion-retrieval" / "retrieval_report.json").read_text())
    assert report["model"] == "models:/traffic-clip@champion" and report["version"] == champion, report
    queries = (made_run.workspace / "data" / "raw" / "test" / "test_text.txt").read_text().split("\n")
    assert report["queries"] == len([q for q in queries if q.strip()]), report


def test_the_ingest_form_with_the_tracked_dataset_runs_and_changes_nothing(standalone, made_run, tiny_raw, kept):
    """The ingest DAG triggered from its form with the dataset the workspace already tracks: the run
    succeeds, its task is skipped (same content, nothing to retrain), and no commit is made."""
    page = kept
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=made_run.workspace, capture_output=True,
                          text=True).stdout.strip()
    run_id = f"ui_ingest_{secrets.token_hex(4)}"
    form = browser.open_trigger_form(page, standalone.base, INGEST)
    browser.open_section(form, "Data")
    browser.fill_field(form, "source", str(tiny_raw))
    _trigger(page, form, run_id)
    run = standalone.wait_for_run(INGEST, run_id)
    assert run["state"] == "success", airflow.unfinished(standalone.api, standalone.home, run_id,
                                                         lambda s: s in ("success", "skipped"))
    assert run["conf"]["source"] == str(tiny_raw) and run["conf"]["on_error"] == "fail", run
    assert standalone.api.task_instances(run_id, INGEST)["ingest"]["state"] == "skipped"
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=made_run.workspace, capture_output=True,
                          text=True).stdout.strip() == head


# --- the training DAG triggered from its form, to Success ---------------------------------------------------

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


def test_trigger_training_from_the_ui(standalone: Standalone, kept):
    """Epochs changed from the workspace's 2 to 1, the optional fields (Pretrained weights, Data revision)
    left empty, a run id of our own: the run succeeds, the run page's own badge says Success, and the
    workspace trained 1 epoch for that run only."""
    _, expect = browser.playwright()
    server, page = standalone, kept
    run_id = f"ui_test_{secrets.token_hex(4)}"
    defaults = {name: p["value"] for name, p in server.get(f"/api/v2/dags/{DAG_ID}/details")["params"].items()}
    assert defaults["epochs"] == 2, f"the tiny workspace's params.yaml should give the form epochs 2: {defaults}"
    # chosen on purpose (tasks/orchestration/dag_defaults.py): the DAGs are active when Airflow loads them
    assert server.get(f"/api/v2/dags/{DAG_ID}")["is_paused"] is False, "the DAGs should be active when loaded"
    badges_seen: list[str] = []

    form = browser.open_trigger_form(page, server.base, DAG_ID)
    unpause = form.get_by_role("checkbox", name=re.compile(r"Unpause .* on trigger"))
    if unpause.count():         # offered only for a paused DAG (someone may have paused it)
        if not unpause.is_checked():
            form.get_by_text(re.compile(r"Unpause .* on trigger")).click()
        expect(unpause).to_be_checked()

    # the optional fields stay empty
    browser.open_section(form, "Model")
    browser.open_section(form, "Data")
    expect(browser.field(form, "pretrained")).to_have_value("")
    expect(browser.field(form, "data_revision")).to_have_value("")

    # the Param: Epochs, in the form's Training section, from 2 to 1
    browser.open_section(form, "Training")
    epochs = browser.field(form, "epochs")
    expect(epochs).to_have_value("2")
    assert browser.set_field(form, "epochs", "1") == "1"

    try:
        _trigger(page, form, run_id)
    except AssertionError:
        raise AssertionError(f"the trigger form's Trigger button stays disabled: the form rejects its "
                             f"values. {_form_problems(server)}") from None

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
    print(f"\nrun {run_id}: badge states seen {badges_seen}; screenshot {SCREENSHOT}")
    assert SCREENSHOT.stat().st_size > 10_000

    # the run came from the UI form, with the form's defaults and the one change
    assert run["run_type"] == "manual" and run["triggered_by"] == "ui", run
    assert run["triggering_user_name"] == "admin", run
    assert run["conf"] == {**defaults, "epochs": 1}, run["conf"]
    assert not run["conf"]["pretrained"] and not run["conf"]["data_revision"], run["conf"]
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
