"""The Airflow DAGs (dags/, with tasks/orchestration/dag_defaults.py): structure, the trigger form, and real
in-process runs (`dag.test()`) of the training, ingest and retrieval DAGs on a tiny workspace with a
SQLite metadata database. The runners they choose between: tests/orchestration/test_runners.py.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tasks.core import paths
from tasks.core.submission import read_submission
from tasks.demo import synth
from tasks.orchestration import workspace as orch
from tests.support import airflow
from tests.support.workspace import make_workspace

DAG_IDS = {"trafficlip_training", "trafficlip_ingest", "trafficlip_retrieval", "trafficlip_registry_watch"}
DVC_TASKS = ("prepare", "augment", "train_local", "record_train", "evaluate", "predict")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_raw):
    """A workspace, its own MLflow store, and the DAGs parsed against it."""
    root = make_workspace(tmp_path_factory.mktemp("dag-workspace") / "ws", tiny_raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAFFICLIP_WORKSPACE", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
        bag = airflow.dagbag()
        assert not bag.import_errors, bag.import_errors
        yield root, bag.dags


@pytest.fixture(scope="module")
def trained(workspace, airflow_db):
    """The training DAG run once from scratch, then once more with nothing changed."""
    root, dags = workspace
    conf = {"epochs": 2, "batch_size": 16, "learning_rate": 0.002, "floor": 0.0, "runner": "local"}
    first = dags["trafficlip_training"].test(run_conf=conf)
    first_states = {ti.task_id: ti.state for ti in first.get_task_instances()}
    first_xcom = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in first.get_task_instances()
                  if ti.state == "success"}
    second = dags["trafficlip_training"].test(run_conf=conf)
    second_states = {ti.task_id: ti.state for ti in second.get_task_instances()}
    return root, dags, (first.state, first_states, first_xcom), (second.state, second_states)


# --- structure --------------------------------------------------------------------------------------

def test_every_dag_file_imports_with_tags_retries_and_docs():
    bag = airflow.dagbag()
    assert not bag.import_errors, bag.import_errors
    assert set(bag.dags) == DAG_IDS
    for dag in bag.dags.values():
        assert dag.tags and "trafficlip" in dag.tags, dag.dag_id
        assert dag.doc_md and dag.doc_md.strip().startswith("###"), dag.dag_id
        for t in dag.tasks:
            assert t.retries >= 2, (dag.dag_id, t.task_id)
            assert t.retry_exponential_backoff, (dag.dag_id, t.task_id)
            assert t.execution_timeout is not None, (dag.dag_id, t.task_id)


def test_dags_have_no_cycles_and_the_training_order():
    dag = airflow.dagbag().dags["trafficlip_training"]
    order = [t.task_id for t in dag.topological_sort()]       # raises on a cycle
    chain = ["configure", "validate", "prepare", "augment", "choose_runner", "record_train", "evaluate",
             "register", "promote", "predict", "report", "restore_params"]
    assert [t for t in order if t in chain] == chain
    # the form's values are put back when the run ends, even a failed one
    restore = dag.get_task("restore_params")
    assert restore.is_teardown and dag.get_task("configure").is_setup
    for runner in orch.RUNNERS:
        task = dag.get_task(f"train_{runner}")
        assert task.upstream_task_ids == {"choose_runner"} and task.downstream_task_ids == {"record_train"}


def test_the_training_graph_is_folded_into_groups_with_plain_task_ids():
    dag = airflow.dagbag().dags["trafficlip_training"]
    groups = {name: sorted(child.task_id for child in group.children.values())
              for name, group in dag.task_group.children.items() if hasattr(group, "children")}
    assert groups == {"data": ["augment", "prepare", "validate"],
                      "training": ["choose_runner", "record_train", "train_docker", "train_kubernetes", "train_local"],
                      "registry": ["announce_champion", "evaluate", "promote", "register"],
                      "delivery": ["predict", "report"]}
    top_level = sorted(name for name, node in dag.task_group.children.items() if not hasattr(node, "children"))
    assert top_level == ["configure", "restore_params"]


def test_the_dags_are_active_when_loaded_and_say_when_training_runs():
    """Chosen on purpose (tasks/orchestration/dag_defaults.py): weekly and data-triggered training is on
    without anyone unpausing it; the schedule is in the description the DAG list shows."""
    bag = airflow.dagbag()
    assert {dag_id: dag.is_paused_upon_creation for dag_id, dag in bag.dags.items()} == dict.fromkeys(DAG_IDS, False)
    description = bag.dags["trafficlip_training"].description
    assert "Sundays 03:00 UTC" in description and "trafficlip-raw-data" in description


def test_pools_serialise_dvc_work_and_promotion():
    dag = airflow.dagbag().dags["trafficlip_training"]
    for task_id in ("configure", "prepare", "augment", "choose_runner", "record_train", "evaluate", "predict"):
        assert dag.get_task(task_id).pool == orch.DVC_POOL, task_id
    for task_id in ("register", "promote"):
        assert dag.get_task(task_id).pool == orch.PROMOTION_POOL, task_id
    assert dag.max_active_runs == 1
    ingest = airflow.dagbag().dags["trafficlip_ingest"]
    assert ingest.get_task("ingest").pool == orch.DVC_POOL


def test_training_runs_on_raw_data_updates_and_weekly():
    bag = airflow.dagbag()
    training, ingest = bag.dags["trafficlip_training"], bag.dags["trafficlip_ingest"]
    outlets = ingest.get_task("ingest").outlets
    assert [a.uri for a in outlets] == [orch.RAW_DATA_ASSET["uri"]]
    timetable = training.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert [a.uri for a in timetable.asset_condition.objects] == [orch.RAW_DATA_ASSET["uri"]]
    assert timetable.timetable.expression == "0 3 * * 0"


def test_a_new_champion_by_any_path_starts_the_retrieval_dag():
    """The champion asset: updated by the training DAG's gated promotion and by the registry watch (a
    move by hand in MLflow), and the retrieval DAG's schedule."""
    bag = airflow.dagbag()
    champion = orch.CHAMPION_ASSET["uri"]
    assert [a.uri for a in bag.dags["trafficlip_training"].get_task("announce_champion").outlets] == [champion]
    assert bag.dags["trafficlip_training"].get_task("announce_champion").upstream_task_ids == {"promote"}
    watch = bag.dags["trafficlip_registry_watch"]
    assert [a.uri for a in watch.get_task("announce_champion").outlets] == [champion]
    assert watch.timetable.expression == "*/5 * * * *" and watch.max_active_runs == 1
    retrieval = bag.dags["trafficlip_retrieval"]
    assert [a.uri for a in retrieval.timetable.asset_condition.objects] == [champion]
    for name in ("gallery", "queries", "output", "model"):      # a scheduled run has no form: all optional
        assert "null" in retrieval.params.get_param(name).schema["type"], name


def test_no_secret_reaches_the_dag_files_or_the_serialised_dags(monkeypatch):
    secret = "pw-0f1e2d3c4b5a"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    from airflow.serialization.serialized_objects import DagSerialization
    for dag in airflow.dagbag().dags.values():
        assert secret not in json.dumps(DagSerialization.to_dict(dag), default=str), dag.dag_id
    pattern = re.compile(r"(password|secret|token|api_key)\s*[=:]\s*['\"][^'\"]+['\"]", re.I)
    for path in airflow.DAGS.glob("*.py"):
        assert not pattern.search(path.read_text()), path


# --- the trigger form -------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", 500), ("epochs", "three"), ("learning_rate", 0), ("learning_rate", -1e-3),
    ("batch_size", 1), ("runner", "gpu"), ("confidence", 1.5), ("min_gain", -0.1), ("floor", 2),
    ("data_revision", "main; rm -rf /"), ("model_name", ""),
])
def test_the_form_refuses_bad_values_before_a_run(field, value, workspace, airflow_db):
    """A run's conf is validated against the Params when the run is created (the form, the REST API
    and dag.test all create runs that way): a bad value never starts a task."""
    from airflow.sdk.exceptions import ParamValidationError
    root, dags = workspace
    params_before = (root / "params.yaml").read_text()
    with pytest.raises(ParamValidationError, match=field):
        dags["trafficlip_training"].test(run_conf={field: value})
    assert (root / "params.yaml").read_text() == params_before


FORM_DAGS = ("trafficlip_training", "trafficlip_retrieval", "trafficlip_ingest")


def test_no_form_field_carries_a_limit_the_form_would_apply_silently():
    """Airflow 3's trigger form clamps a number to a top-level minimum/maximum on blur and cuts a text at
    maxLength: every limit sits under allOf (dag_defaults.param), where only the server's validation of
    the run's conf sees it, and each field's help states it."""
    from tasks.core import params as params_schema
    from tasks.orchestration import dag_defaults as shared
    bag = airflow.dagbag()
    for dag_id in FORM_DAGS:
        for name, param in bag.dags[dag_id].params.items():
            schema = param.schema
            assert not set(schema) & set(shared.LIMITS), (dag_id, name, schema)
            limits = shared.limits(schema)
            if name in orch.PARAM_KEYS and set(limits) & {"minimum", "maximum", "exclusiveMinimum"}:
                assert params_schema.key(orch.PARAM_KEYS[name]).expected in param.description, (name, param.description)
            if "maxLength" in limits:
                assert f"At most {limits['maxLength']} characters" in param.description, (name, param.description)


def test_a_refusal_names_the_field_the_value_and_the_limit_not_the_whole_schema(workspace, airflow_db):
    """What the form shows on Trigger is this message (the API server validates the same schema)."""
    from airflow.sdk.exceptions import ParamValidationError
    _, dags = workspace
    for conf, expected in (({"epochs": 0}, "0 is less than the minimum of 1"),
                           ({"learning_rate": -0.001}, "-0.001 is less than or equal to the minimum of 0"),
                           ({"epochs": 2.5}, "2.5 is not of type 'integer'")):
        with pytest.raises(ParamValidationError) as info:
            dags["trafficlip_training"].test(run_conf=conf)
        text = str(info.value)
        assert next(iter(conf)) in text and expected in text, text
        assert "params.yaml" not in text, text           # the field's help is not dumped with it


def test_optional_text_fields_may_be_empty():
    """The UI form treats a Param whose type has no null as required: the optional ones allow null."""
    dag = airflow.dagbag().dags["trafficlip_training"]
    for name in ("pretrained", "data_revision"):
        assert "null" in dag.params.get_param(name).schema["type"], name
    assert orch.overrides_from_form({"pretrained": None, "epochs": 3}) == {"model.pretrained": "", "train.epochs": 3}


def test_form_defaults_come_from_the_workspace_params(workspace):
    root, dags = workspace
    values = {name: param.value for name, param in dags["trafficlip_training"].params.items()}
    assert values["epochs"] == 2 and values["batch_size"] == 16 and values["runner"] == "local"
    assert values["model_name"] == yaml.safe_load((root / "params.yaml").read_text())["model"]["name"]
    sections = {param.schema.get("section") for param in dags["trafficlip_training"].params.values()}
    assert sections >= {"Model", "Training", "Promotion", "Data"}
    for name, param in dags["trafficlip_training"].params.items():
        assert param.schema.get("title") and param.description, name


# --- orchestration helpers --------------------------------------------------------------------------

def test_the_dags_load_before_the_workspace_is_cloned(tmp_path, monkeypatch):
    """A fresh deployment: the workspace volume is still empty; the DAGs must load all the same."""
    monkeypatch.setenv("TRAFFICLIP_WORKSPACE", str(tmp_path / "empty"))
    bag = airflow.dagbag()
    assert not bag.import_errors, bag.import_errors
    docker = bag.dags["trafficlip_training"].get_task("train_docker")
    assert docker.command[0] == "train" and docker.mounts[0]["Source"] == str(tmp_path / "empty")
    with pytest.raises(orch.UserError, match="not a trafficlip workspace"):
        orch.workspace()


def test_unknown_data_revision_fails_as_a_user_error(workspace):
    root, _ = workspace
    with pytest.raises(orch.UserError, match="data revision 'no-such-tag'"):
        orch.checkout_data(root, "no-such-tag")


# --- real runs --------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_training_dag_runs_end_to_end_and_registers_a_champion(trained):
    root, _, (state, states, xcom), _ = trained
    assert state == "success", states
    assert {t: s for t, s in states.items() if t.startswith("train_")} == {
        "train_local": "success", "train_docker": "skipped", "train_kubernetes": "skipped"}
    assert all(s == "success" for t, s in states.items() if not t.startswith("train_")), states
    assert xcom["configure"]["changed"]["train.lr"]["to"] == 0.002
    assert xcom["register"]["version"] == 1
    assert xcom["promote"]["decision"] == "promoted" and xcom["promote"]["champion_after"] == 1
    assert xcom["announce_champion"] == {"champion": 1, "before": None}       # the champion asset's event
    submission = read_submission(root / "outputs" / "submission.json")
    assert len(submission) == len((root / "data" / "raw" / "test" / "test_text.txt").read_text().splitlines())
    report = xcom["report"]
    assert report["registration"]["version"] == 1 and report["promotion"]["champion_after"] == 1
    assert report["submission"] == str(root / "outputs" / "submission.json")
    # XCom carries metadata only
    assert all(len(json.dumps(value)) < 4000 for value in xcom.values())
    # dvc.lock records the training the local runner did, with the run's learning rate ...
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["lr"] == 0.002
    # ... and the form's value applied to that run only: params.yaml is the committed one again
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=root, capture_output=True, text=True,
                               check=True).stdout
    assert (root / "params.yaml").read_text() == committed
    assert yaml.safe_load(committed)["train"]["lr"] == 0.001
    assert not (root / paths.PARAMS_BEFORE_RUN).exists()
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    assert int(client.get_model_version_by_alias("traffic-clip", "champion").version) == 1
    assert len(client.search_model_versions("name='traffic-clip'")) == 1


@pytest.mark.e2e
def test_second_run_with_unchanged_data_skips_the_dvc_stages(trained):
    root, _, _, (state, states) = trained
    assert state == "success", states
    for task_id in DVC_TASKS:
        assert states[task_id] == "skipped", (task_id, states)
    assert states["register"] == states["promote"] == "success"
    assert states["announce_champion"] == "skipped"                          # @champion did not move
    assert json.loads((root / "reports" / "promotion.json").read_text())["decision"] == "already_champion"
    from mlflow import MlflowClient
    assert len(MlflowClient(f"sqlite:///{root / 'mlruns.db'}").search_model_versions("name='traffic-clip'")) == 1


@pytest.mark.e2e
def test_a_bad_data_revision_fails_the_run_without_retrying(trained):
    _, dags, _, _ = trained
    run = dags["trafficlip_training"].test(run_conf={"data_revision": "v-does-not-exist"})
    states = {ti.task_id: ti for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert states["configure"].state == "failed" and states["configure"].try_number == 1
    assert states["train_local"].state in ("upstream_failed", None)


@pytest.mark.e2e
def test_retrieval_dag_ranks_a_gallery_with_the_champion(trained, tmp_path):
    root, dags, _, _ = trained
    gallery = root / "data" / "raw" / "test" / "test_images"
    queries = root / "data" / "raw" / "test" / "test_text.txt"
    out = tmp_path / "retrieval"
    run = dags["trafficlip_retrieval"].test(run_conf={"gallery": str(gallery), "queries": str(queries),
                                                     "output": str(out)})
    assert run.state == "success"
    submission = read_submission(out / "submission.json")
    assert [text for text, _ in submission] == [line.strip() for line in queries.read_text().splitlines() if line.strip()]
    names = {p.name for p in gallery.iterdir()}
    assert all(set(ranked) <= names for _, ranked in submission)
    report = json.loads((out / "retrieval_report.json").read_text())
    assert report["version"] == 1 and report["model"] == "models:/traffic-clip@champion"
    from PIL import Image
    with Image.open(out / "gallery.png") as picture:
        assert picture.width > 200 and picture.height > 200


@pytest.mark.e2e
def test_ingest_dag_tracks_a_new_dataset_and_updates_the_asset(trained, tmp_path):
    root, dags, _, _ = trained
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    new = synth.generate(tmp_path / "new-raw", vehicles=40, pedestrians=40, seed=11) and tmp_path / "new-raw"
    run = dags["trafficlip_ingest"].test(run_conf={"source": str(new)})
    assert run.state == "success"
    [ti] = run.get_task_instances()
    result = ti.xcom_pull(task_ids="ingest")
    assert result["changed"] and result["commit"] and result["commit"] != head
    log = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=root, capture_output=True, text=True).stdout
    assert log.startswith("data: ingest new-raw")
    assert orch.data_md5(root) == result["data_md5"]
    assert "prepare" in orch.stale_stages(root)              # the next training run retrains
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    with create_session() as session:
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.uri == orch.RAW_DATA_ASSET["uri"]).all())
        assert len(events) == 1 and events[0].source_dag_id == "trafficlip_ingest"
    # the same content again: nothing changes, no asset event, no commit
    again = dags["trafficlip_ingest"].test(run_conf={"source": str(new)})
    assert again.get_task_instances()[0].state == "skipped"
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True).stdout.strip() == result["commit"]
    # a training run on the previous data revision puts the old data back
    assert orch.checkout_data(root, head)["data_md5"] != result["data_md5"]


@pytest.mark.e2e
def test_a_champion_moved_by_hand_is_recorded_and_starts_retrieval(trained, monkeypatch):
    """Someone moves @champion in the MLflow UI (its API here): the registry-watch DAG records it as a
    manual, ungated change and updates the champion asset; the retrieval DAG, run as that event starts
    it (no form), ranks the workspace's test split with the new champion."""
    root, dags, _, _ = trained
    import mlflow
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    [version] = client.search_model_versions("name='traffic-clip'")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    second = int(mlflow.register_model(version.source, "traffic-clip").version)     # the same model, again
    client.set_registered_model_alias("traffic-clip", "champion", str(second))

    def champion_events() -> list:
        with create_session() as session:
            return (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                    .filter(AssetModel.uri == orch.CHAMPION_ASSET["uri"]).all())

    before = len(champion_events())
    run = dags["trafficlip_registry_watch"].test()
    states = {ti.task_id: ti for ti in run.get_task_instances()}
    assert run.state == "success" and states["announce_champion"].state == "success"
    synced = states["sync_aliases"].xcom_pull(task_ids="sync_aliases")
    assert [(c["alias"], c["from"], c["to"], c["origin"]) for c in synced["changes"]] == [
        ("champion", 1, second, "manual, ungated")]
    events = champion_events()
    assert len(events) == before + 1 and events[-1].source_dag_id == "trafficlip_registry_watch"
    assert client.get_model_version("traffic-clip", str(second)).tags["alias_champion_origin"] == "manual, ungated"
    again = dags["trafficlip_registry_watch"].test()
    assert {ti.task_id: ti.state for ti in again.get_task_instances()}["announce_champion"] == "skipped"

    # the fields as an asset-triggered run has them: their defaults, empty (an explicit conf, because an
    # in-process dag.test keeps the previous test's conf in the DAG's params)
    run = dags["trafficlip_retrieval"].test(run_conf={"gallery": "", "queries": "", "output": "", "model": None})
    assert run.state == "success"
    report = json.loads((root / paths.CHAMPION_RETRIEVAL / "retrieval_report.json").read_text())
    assert report["version"] == second and report["model"] == "models:/traffic-clip@champion"
