"""Browser acceptance of promotion by hand in the MLflow UI (docs/mlflow.md, "Promotion by hand").

A registered model of its own in the session's MLflow store, with two versions of the tiny tracked
model: version 1 made @champion by the gate (`trafficlip promote`'s code), version 2 registered after
it with no alias. The real `mlflow ui` (as `make up` and `make ui` start it) serves that store on a
free port. Headless Chromium -- Debian's `chromium`, driven by Playwright -- opens version 2's page,
clicks Add beside Aliases, types champion and saves, as a reviewer overriding the gate would (the dialog
warns that this takes @champion off version 1). Then what the user runs: `trafficlip sync-aliases`
reports the move (champion 1 -> 2, "manual, ungated") and any conflict, `trafficlip models` shows
`@champion (manual)` with its origin line, and the version page, reloaded, shows the tags trafficlip
recorded on the version.

Artefacts in test-artifacts/: mlflow_ui_alias_dialog.png (the alias dialog with its warning),
mlflow_ui_manual_champion.png (version 2 with @champion and the recorded tags); on a failure
mlflow_ui_failure.png/.html/.log. About 40 seconds on 2 CPU cores after the session's
tiny training (the `tracked` fixture, shared with the registry tests).
"""

from __future__ import annotations

import json
import os

import pytest

from tasks.mlops import registry
from tests.support import ARTEFACTS, BIN, ROOT, browser, cli, net, procs
from tests.support.params import tracked_params, unique_name
from tests.support.workspace import tool_env

pytestmark = [pytest.mark.browser, pytest.mark.service]     # Chromium, `mlflow ui` on a port


@pytest.fixture(scope="module")
def two_versions(tracked, tmp_path_factory) -> str:
    """A registered model (its name): version 1 @champion through the gate, version 2 with no alias."""
    import mlflow
    from mlflow import MlflowClient
    name = unique_name("ui-manual")
    params = tracked_params(registered_model=name, floor=0.0)
    folder = tmp_path_factory.mktemp("ui-mlflow")
    registry.register(params, tracked.train_summary, tracked.metrics, tracked.per_query, folder / "registration.json")
    assert registry.promote(params, folder / "registration.json", folder / "promotion.json")["champion_after"] == 1
    [first] = MlflowClient().search_model_versions(f"name='{name}'")
    assert int(mlflow.register_model(first.source, name).version) == 2          # the same model, again
    return name


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory, mlflow_store):
    """`mlflow ui` over the session's MLflow store on a free port, until it answers; stopped after the module."""
    folder = tmp_path_factory.mktemp("mlflow-ui")
    port = net.free_port()
    processes = procs.Processes(folder)
    process = processes.start("mlflow_ui", [str(BIN / "mlflow"), "ui", "--backend-store-uri",
                                            os.environ["MLFLOW_TRACKING_URI"], "--host", "127.0.0.1",
                                            "--port", str(port), "--workers", "1"],
                              tool_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), folder)
    base = f"http://127.0.0.1:{port}"
    try:
        net.wait_until_answering(base + "/health", process, processes.log("mlflow_ui"), timeout=180)
        yield base, processes.log("mlflow_ui")
    finally:
        processes.stop()


def _trafficlip(*args: str) -> str:
    result = cli.run(*args)
    assert result.returncode == 0, f"trafficlip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_champion_moved_in_the_mlflow_ui_is_recorded_as_manual_and_ungated(two_versions, mlflow_ui):
    from mlflow import MlflowClient
    _, expect = browser.playwright()
    name, (base, log) = two_versions, mlflow_ui
    on_model = ("--params", str(ROOT / "params.yaml"), "--set", f"mlflow.registered_model={name}")
    ARTEFACTS.mkdir(exist_ok=True)
    for old in ARTEFACTS.glob("mlflow_ui_*"):       # this test's artefacts of an earlier run
        old.unlink()

    with browser.page() as page, browser.kept_on_failure(page, "mlflow_ui_failure", {"mlflow_ui_failure.log": log}):
        # version 2's page: Aliases -> Add -> champion -> Save aliases
        page.goto(f"{base}/#/models/{name}/versions/2")
        expect(page.get_by_role("heading", name="Version 2")).to_be_visible()
        page.get_by_role("button", name="Add", exact=True).click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Add/Edit alias for model version 2")
        box = dialog.get_by_role("combobox")
        box.click()
        box.press_sequentially("champion")
        box.press("Enter")
        expect(dialog).to_contain_text('The "champion" alias is also being used on version 1')
        page.screenshot(path=str(ARTEFACTS / "mlflow_ui_alias_dialog.png"))
        dialog.get_by_role("button", name="Save aliases").click()
        expect(dialog).to_be_hidden()
        expect(page.get_by_title("champion", exact=True).first).to_be_visible()     # the alias tag beside Aliases
        assert int(MlflowClient().get_registered_model(name).aliases["champion"]) == 2

        # the next trafficlip command that looks records the move, once, as manual and ungated
        synced = json.loads(_trafficlip("sync-aliases", *on_model))
        assert [(c["alias"], c["from"], c["to"], c["origin"]) for c in synced["changes"]] == [
            ("champion", 1, 2, "manual, ungated")], synced
        assert synced["champion_changed"] and synced["champion"] == 2, synced
        table = _trafficlip("models", *on_model)
        assert "@champion (manual)" in table, table
        assert "@champion -> version 2: manual, ungated" in table, table
        assert json.loads(_trafficlip("sync-aliases", *on_model))["changes"] == []

        # and the version page shows what trafficlip recorded on it
        page.reload()
        expect(page.get_by_title("champion", exact=True).first).to_be_visible()     # the version, loaded
        tags = page.get_by_role("button", name="Tags")
        expect(tags).to_be_visible()
        if tags.get_attribute("aria-expanded") != "true":          # MLflow unfolds it when there are tags
            tags.click()
        origin = page.get_by_text("alias_champion_origin", exact=True)
        expect(origin).to_be_visible()
        expect(page.get_by_text("manual, ungated", exact=True).first).to_be_visible()
        origin.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTEFACTS / "mlflow_ui_manual_champion.png"), full_page=True)
