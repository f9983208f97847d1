"""MLflow tracking of train and evaluate: params, per-step and per-epoch metrics, lineage, artefacts."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image
from safetensors.torch import load_file

from tasks import galleries, models, tracking, train
from tests.conftest import ROOT, tiny_params


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
    untracked = load_file(tmp_path / "models" / "model" / models.WEIGHTS_FILE)
    with_tracking = load_file(tracked.model / models.WEIGHTS_FILE)
    assert all(torch.equal(untracked[name], with_tracking[name]) for name in untracked)
    assert "mlflow_run_id" not in json.loads((tmp_path / "reports" / "train_summary.json").read_text())


def test_gallery_frames_are_green_for_hits_and_red_for_misses():
    images = np.full((3, 32, 32, 3), 128, dtype=np.uint8)
    picture = galleries.render("This is a white Audi Sedan.", "vehicle", images, [True, False, True])
    pixels = np.asarray(picture)
    top = picture.height - galleries.MARGIN - 18 - (galleries.THUMB + 2 * galleries.FRAME)
    for rank, colour in enumerate((galleries.RELEVANT, galleries.NOT_RELEVANT, galleries.RELEVANT)):
        x = galleries.MARGIN + rank * (galleries.THUMB + 2 * galleries.FRAME + galleries.GAP)
        assert tuple(pixels[top + 1, x + 1]) == colour
        assert tuple(pixels[top + galleries.FRAME + 5, x + galleries.FRAME + 5]) == (128, 128, 128)


def test_gallery_queries_alternate_categories_and_do_not_depend_on_order():
    queries = [{"text": f"car {i}", "category": "vehicle"} for i in range(5)] + \
              [{"text": f"person {i}", "category": "pedestrian"} for i in range(5)]
    picked = galleries.pick_queries(queries, 4)
    assert [queries[i]["category"] for i in picked] == ["pedestrian", "vehicle", "pedestrian", "vehicle"]
    reversed_queries = queries[::-1]
    assert [reversed_queries[i]["text"] for i in galleries.pick_queries(reversed_queries, 4)] == [
        queries[i]["text"] for i in picked]
    assert len(galleries.pick_queries(queries[:2], 6)) == 2


def test_lineage_names_the_dvc_lock_hashes_of_the_data_a_stage_reads(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prepare": {"cmd": "x", "deps": ["data/raw", "tasks/prepare.py"], "outs": ["data/prepared"]},
        "train": {"cmd": "y", "deps": ["data/prepared", "tasks/train.py"], "outs": ["models/model"]}}}))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "prepare": {"cmd": "x", "deps": [{"path": "data/raw", "md5": "raw111.dir"},
                                         {"path": "tasks/prepare.py", "md5": "code"}],
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


def test_credentials_never_appear_in_messages():
    assert tracking.shown_uri("http://alice:s3cret@mlflow.internal:5000/x") == "http://mlflow.internal:5000/x"
    assert tracking.shown_uri("sqlite:////tmp/mlruns.db") == "sqlite:////tmp/mlruns.db"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_one_clear_line_naming_the_uri_before_any_work(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "tasks", "train", "--params", str(ROOT / "params.yaml"),
                             "--out", str(tmp_path / "models"), "--reports", str(tmp_path / "reports")],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 75       # EX_TEMPFAIL: a service is down, worth a retry
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and f"MLflow at {uri} is unreachable" in error[0], result.stderr
    assert not (tmp_path / "models").exists()


def test_pyfunc_input_rows_need_exactly_one_of_text_and_image(tracked):
    import base64

    import mlflow
    import pandas as pd
    model = mlflow.pyfunc.load_model(f"models:/{tracked.summary['mlflow_model_id']}")
    with pytest.raises(Exception, match="row 0: expected exactly one"):
        model.predict(pd.DataFrame({"text": ["a white car"], "image": ["aGVsbG8="]}))
    with pytest.raises(Exception, match="row 0: field 'image' is not base64"):
        model.predict(pd.DataFrame({"image": ["not base64!"]}))
    with pytest.raises(Exception, match="model input row 0: field 'image': cannot decode image: cannot identify image file model input row 0"):
        model.predict(pd.DataFrame({"image": ["aGVsbG8="]}))
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buffer, format="JPEG")
    out = model.predict(pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]}))
    assert out.shape == (1, 128) and out.dtype == np.float32
