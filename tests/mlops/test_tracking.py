"""MLflow tracking of train and evaluate: params, per-step and per-epoch metrics, lineage, artefacts."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from tasks.mlops import tracking
from tasks.report import galleries
from tasks.steps import train
from tests.support import ROOT, cli, net
from tests.support.params import tiny_params
from tests.support.weights import weights
from tests.support.workspace import project_env


def test_train_run_logs_params_steps_epoch_validation_and_the_model(tracked):
    client = MlflowClient()
    run = client.get_run(tracked.summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.epochs"] == "2" and params["evaluate.top_k"] == "10" and params["mlflow.enabled"] == "True"
    steps = tracked.summary["steps"]
    loss = client.get_metric_history(run.info.run_id, "loss")
    lr = client.get_metric_history(run.info.run_id, "lr")
    assert sorted(m.step for m in loss) == list(range(1, steps + 1)) and len(lr) == steps
    csv_loss = [float(line.split(",")[2]) for line in (tracked.folder / "reports" / "train_steps.csv")
                .read_text().splitlines()[1:]]
    assert [m.value for m in sorted(loss, key=lambda m: m.step)] == pytest.approx(csv_loss)
    # validation of the starting model (step 0) and at each epoch end
    for name in ("val_map_at_10", "val_vehicle_map_at_10", "val_pedestrian_map_at_10", "val_recall_at_10"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0, steps // 2, steps], name
    final_val = client.get_metric_history(run.info.run_id, "val_map_at_10")[-1].value
    metrics = json.loads(tracked.metrics.read_text())
    assert final_val == pytest.approx(metrics["overall"]["map_at_10"], abs=1e-6)  # same model, same split
    assert run.data.tags["trafficlip.step"] == "train" and "git.commit" in run.data.tags
    model = client.get_logged_model(tracked.summary["mlflow_model_id"])
    assert model.source_run_id == run.info.run_id
    logged_summary = json.loads(open(client.download_artifacts(run.info.run_id, "train_summary.json")).read())
    assert logged_summary["mlflow_model_id"] == tracked.summary["mlflow_model_id"]


def test_evaluate_run_logs_metrics_reports_and_galleries(tracked):
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.train_run_id = '{tracked.summary['mlflow_run_id']}' "
                              "and tags.`trafficlip.step` = 'evaluate'")
    assert len(runs) == 1
    run = runs[0]
    metrics = json.loads(tracked.metrics.read_text())
    assert run.data.metrics["map_at_10"] == pytest.approx(metrics["overall"]["map_at_10"])
    assert run.data.metrics["baseline_vehicle_recall_at_1"] == pytest.approx(metrics["baseline"]["vehicle"]["recall_at_1"])
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "eval_queries.json", "validation_report.json", "galleries"} <= files
    pictures = sorted(a.path for a in client.list_artifacts(run.info.run_id, "galleries"))
    assert pictures == ["galleries/01-pedestrian.png", "galleries/02-vehicle.png"]
    picture = Image.open(client.download_artifacts(run.info.run_id, pictures[1]))
    assert picture.width > 10 * galleries.THUMB


def test_tracking_does_not_change_the_trained_weights(tracked, tmp_path):
    train.run(tiny_params(), tracked.data, tmp_path / "models", tmp_path / "reports")
    untracked = weights(tmp_path / "models" / "model")
    with_tracking = weights(tracked.model)
    assert all(torch.equal(untracked[name], with_tracking[name]) for name in untracked)
    assert "mlflow_run_id" not in json.loads((tmp_path / "reports" / "train_summary.json").read_text())


def test_lineage_names_the_dvc_lock_hashes_of_the_data_a_stage_reads(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prepare": {"cmd": "x", "deps": ["data/raw", "tasks/steps/prepare.py"], "outs": ["data/prepared"]},
        "train": {"cmd": "y", "deps": ["data/prepared", "tasks/steps/train.py"], "outs": ["models/model"]}}}))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "prepare": {"cmd": "x", "deps": [{"path": "data/raw", "md5": "raw111.dir"},
                                         {"path": "tasks/steps/prepare.py", "md5": "code"}],
                    "outs": [{"path": "data/prepared", "md5": "prep222.dir"}]}}}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "raw111.dir", "path": "raw"}]}))
    monkeypatch.chdir(tmp_path)
    assert tracking.dvc_data_hashes("train") == {"data/prepared": "prep222.dir", "data/raw": "raw111.dir"}
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "trafficlip_training")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2026-01-01")
    tags = tracking.lineage_tags("train")
    assert tags["dvc.data/prepared"] == "prep222.dir" and tags["data_hash"] == "raw111.dir"
    assert tags["airflow.dag_id"] == "trafficlip_training" and tags["airflow.run_id"] == "manual__2026-01-01"
    assert "git.commit" not in tags  # not a git repository


def test_the_dirty_flag_counts_an_uncommitted_data_version_but_not_the_runs_own_lock(tmp_path, monkeypatch):
    """After `dvc add` of new data and before its commit, the run did not come from the commit alone:
    git.dirty says so and git.uncommitted names the file; dvc.lock, which the run itself writes, is not
    counted."""
    from tests.support.workspace import run, tool_env
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("train: {}\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "x"]):
        run(cmd, tmp_path, env=tool_env())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    assert tracking.lineage_tags("train")["git.dirty"] == "false"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.dvc").write_text("outs: []\n")
    tags = tracking.lineage_tags("train")
    assert tags["git.dirty"] == "true" and tags["git.uncommitted"] == "data/raw.dvc"
    (tmp_path / "params.yaml").write_text("train: {epochs: 1}\n")
    assert tracking.lineage_tags("train")["git.uncommitted"] == "data/raw.dvc, params.yaml"


def test_credentials_never_appear_in_messages():
    assert tracking.shown_uri("http://alice:s3cret@mlflow.internal:5000/x") == "http://mlflow.internal:5000/x"
    assert tracking.shown_uri("sqlite:////tmp/mlruns.db") == "sqlite:////tmp/mlruns.db"


def test_unreachable_server_is_one_clear_line_naming_the_uri_before_any_work(tmp_path):
    uri = f"http://127.0.0.1:{net.free_port()}"
    env = project_env(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
    result = cli.run("train", "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "models"),
                     "--reports", str(tmp_path / "reports"), cwd=ROOT, env=env)
    assert result.returncode == 75       # EX_TEMPFAIL: a service is down, worth a retry
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and f"MLflow at {uri} is unreachable" in error[0], result.stderr
    assert not (tmp_path / "models").exists()


def test_an_airflow_runs_steps_are_nested_under_one_pipeline_run_with_its_metrics(monkeypatch):
    """In MLflow's run list one DAG run is one row (its steps nested below), named after the DAG run,
    with the evaluation's mAP@10 as a column; outside Airflow a step's run stands alone."""
    from mlflow import MlflowClient

    from tests.support.evaluation import metrics
    from tests.support.params import tracked_params, unique_name
    METRICS = metrics()
    params = tracked_params()
    params["mlflow"]["experiment"] = unique_name("pipeline")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "trafficlip_training")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2026-12-06T10:00:00")
    with tracking.start(params, "train") as train_run:
        pass
    with tracking.start(params, "evaluate") as eval_run:
        tracking.log_pipeline_summary(eval_run, METRICS)
    client = MlflowClient()
    first, second = client.get_run(train_run.run_id), client.get_run(eval_run.run_id)
    parent = first.data.tags["mlflow.parentRunId"]
    assert second.data.tags["mlflow.parentRunId"] == parent
    assert first.info.run_name == "train (manual__2026-12-06T10:00:00)"
    pipeline = client.get_run(parent)
    assert pipeline.info.run_name == "pipeline manual__2026-12-06T10:00:00"
    assert pipeline.data.metrics["map_at_10"] == METRICS["overall"]["map_at_10"]
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID")
    with tracking.start(params, "predict") as alone:
        pass
    assert "mlflow.parentRunId" not in client.get_run(alone.run_id).data.tags
