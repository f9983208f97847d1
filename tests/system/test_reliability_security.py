"""Reliability, item 5: nothing is ever unpickled, and secrets stay in the environment.

- A pickle whose unpickling would create a file is handed to every loading path (model.pretrained as
  a .pt / .bin / .npz file, a checkpoint folder holding a pickle instead of safetensors, a pickle named
  .safetensors, model.name local-dir:, a checkpoint's optimizer state, an image-cache shard, and the
  CLI): each is refused with one clear line and the payload never runs. The same bytes given to
  pickle.loads do create the file, so the payload is live.
- Secrets (MLflow, AWS/S3 and Airflow credentials) set in the environment of a tracked pipeline run
  (train, evaluate, register, promote, predict, models, and a failing MLflow call) appear in no written
  file (reports, metrics, models, submission, the MLflow database and artefacts) and in no output.
  params.yaml has no place for one.
- The compose stack's servers all require authentication: tests/system/test_docker.py::
  test_every_server_requires_authentication.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tasks.core import images, models, params
from tasks.core.errors import InputError, TrafficlipError
from tasks.steps import train
from tests.support import ROOT, cli, net
from tests.support.params import tiny_params, tracked_params
from tests.support.workspace import tool_env


class Payload:
    """Unpickling this creates ``marker`` (any code could run instead)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def payloads(tmp_path):
    """Pickled payloads in every form a weights file can take, and the marker they would create."""
    marker = tmp_path / "PAYLOAD-RAN"
    folder = tmp_path / "payloads"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Payload(marker)}, folder / "model.pt")   # torch zip
    (folder / "model.bin").write_bytes(pickle.dumps({"state_dict": Payload(marker)}))           # a plain pickle
    np.savez(folder / "model.npz", w=np.array([Payload(marker)], dtype=object))                # a pickled array
    (folder / "named.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    good = models.build("TrafficCLIP-Tiny")
    models.save_checkpoint(good, folder / "good")
    config = folder / "good" / models.CONFIG_FILE
    bin_dir = folder / "bin-dir"                  # an open_clip folder with a pickle instead of safetensors
    bin_dir.mkdir()
    shutil.copy(config, bin_dir)
    shutil.copy(folder / "model.pt", bin_dir / "open_clip_pytorch_model.bin")
    renamed = folder / "renamed-dir"             # the pickle under the safetensors name
    renamed.mkdir()
    shutil.copy(config, renamed)
    shutil.copy(folder / "model.pt", renamed / models.WEIGHTS_FILE)
    return marker, folder


LOADERS = [
    ("model.pretrained = a .pt file", lambda f: models.build("TrafficCLIP-Tiny", str(f / "model.pt")), "refused"),
    ("model.pretrained = a .bin file", lambda f: models.build("TrafficCLIP-Tiny", str(f / "model.bin")), "refused"),
    ("model.pretrained = a .npz file", lambda f: models.build("TrafficCLIP-Tiny", str(f / "model.npz")),
     "cannot load the weights"),
    ("model.pretrained = a pickle named .safetensors",
     lambda f: models.build("TrafficCLIP-Tiny", str(f / "named.safetensors")), "not a valid safetensors file"),
    ("model.pretrained = a folder with a pickle, no safetensors",
     lambda f: models.build("TrafficCLIP-Tiny", str(f / "bin-dir")), "not a checkpoint folder"),
    ("model.pretrained = a folder whose safetensors is a pickle",
     lambda f: models.build("TrafficCLIP-Tiny", str(f / "renamed-dir")), "not a valid safetensors file"),
    ("model.name = local-dir: a folder with a pickle", lambda f: models.build(f"local-dir:{f / 'bin-dir'}"),
     "refused"),
    ("--model / augment.model = a folder with a pickle", lambda f: models.load_checkpoint(f / "bin-dir"),
     "not a checkpoint folder"),
    ("--model / augment.model = a folder whose safetensors is a pickle",
     lambda f: models.load_checkpoint(f / "renamed-dir"), "not a valid safetensors file"),
]


@pytest.mark.parametrize("case, load, words", LOADERS, ids=[c[0] for c in LOADERS])
def test_a_pickled_checkpoint_with_a_payload_is_refused_by_every_loader(payloads, case, load, words):
    marker, folder = payloads
    with pytest.raises(TrafficlipError, match=words) as info:
        load(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    assert not marker.exists(), f"{case}: the payload ran"
    pickle.loads((folder / "model.bin").read_bytes())              # the same bytes, unpickled: it runs
    assert marker.exists()


def test_resume_and_the_image_cache_never_unpickle(payloads, tiny_prepared, tmp_path):
    marker, folder = payloads
    out = tmp_path / "models"
    train.run(tiny_params(epochs=2), tiny_prepared, out, tmp_path / "reports", stop_after_steps=5)
    last = json.loads((out / "checkpoints" / "last.json").read_text())
    shutil.copy(folder / "model.pt", out / "checkpoints" / last["folder"] / "optimizer.safetensors")
    with pytest.raises(TrafficlipError, match="the last checkpoint cannot be resumed .*SafetensorError"):
        train.run(tiny_params(epochs=2), tiny_prepared, out, tmp_path / "reports")
    cache = tmp_path / "cache"
    shutil.copytree(tiny_prepared / "train", cache)
    shard = json.loads((cache / "images.json").read_text())["shards"][0]
    shutil.copy(folder / "model.pt", cache / shard)
    with pytest.raises(TrafficlipError, match="not a readable image cache shard"):
        images.ImageCache(cache).all()
    assert not marker.exists()


def test_the_cli_refuses_a_pickled_pretrained_file_in_one_line(payloads, tiny_prepared, tmp_path):
    marker, folder = payloads
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    result = cli.run("train", "--params", str(tmp_path / "params.yaml"), "--set",
                     f"model.pretrained={folder / 'model.pt'}", "--data", str(tiny_prepared),
                     "--manifest", str(tiny_prepared / "train" / "manifest.json"),
                     "--out", str(tmp_path / "models"), "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [f"trafficlip train: error: model.pretrained: {folder / 'model.pt'}: refused: a pickle that "
                      "holds more than plain tensors (it would run code or build objects when loaded); only "
                      "safetensors files, or torch files of plain tensors (weights_only=True), are loaded"], result.stderr
    assert not marker.exists()


# --- secrets ---------------------------------------------------------------------------------------

SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AIRFLOW__CORE__FERNET_KEY", "_AIRFLOW_WWW_USER_PASSWORD", "AIRFLOW_CONN_MLFLOW_DEFAULT",
                    "POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD")

PIPELINE = textwrap.dedent("""
    import json, os, sys
    from tasks.cli import main
    data, root, port = sys.argv[1], sys.argv[2], sys.argv[3]
    steps = [
        ["train", "--data", data, "--manifest", f"{data}/train/manifest.json"],
        ["evaluate", "--data", data],
        ["register"], ["promote", "--data", data],
        ["predict", "--data", data], ["models"],
    ]
    codes = [main(step + ["--params", f"{root}/params.yaml"]) for step in steps]
    # a failing MLflow server whose URL carries the password
    os.environ["MLFLOW_TRACKING_URI"] = f"http://alice:{os.environ['MLFLOW_TRACKING_PASSWORD']}@127.0.0.1:{port}"
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    codes.append(main(["models", "--params", f"{root}/params.yaml"]))
    print("EXIT CODES", json.dumps(codes))
""")


@pytest.mark.e2e
def test_secrets_in_the_environment_reach_no_written_file_log_or_mlflow_record(tiny_prepared, tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(tracked_params(registered_model="secret-scan", floor=0.0)))
    secrets = {name: f"s3cr3t-{name.lower().strip('_')}-{uuid.uuid4().hex}" for name in SECRET_VARIABLES}
    secrets["AIRFLOW_CONN_MLFLOW_DEFAULT"] = f"http://alice:{secrets['AIRFLOW_CONN_MLFLOW_DEFAULT']}@mlflow:5000"
    port = net.free_port()
    env = tool_env(**secrets, MLFLOW_TRACKING_USERNAME="alice", AWS_ACCESS_KEY_ID="AKIATRAFFICLIPTEST",
                   MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlruns.db'}", TRAFFICLIP_DEBUG="")
    result = subprocess.run([sys.executable, "-c", PIPELINE, str(tiny_prepared), str(root), str(port)],
                            capture_output=True, text=True, cwd=root, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    codes = json.loads(result.stdout.rsplit("EXIT CODES", 1)[1])
    assert codes == [0, 0, 0, 0, 0, 0, 75], result.stderr[-3000:]     # the pipeline ran; the last call: server down
    written = [p for p in root.rglob("*") if p.is_file()]
    names = {p.relative_to(root).parts[0] for p in written}
    assert {"mlruns.db", "mlartifacts", "models", "reports", "metrics", "outputs"} <= names, names
    assert (root / "reports" / "promotion.json").is_file() and (root / "outputs" / "submission.json").is_file()
    outputs = result.stdout + result.stderr
    assert "MLflow at http://127.0.0.1:" in outputs                   # the failing call named the server ...
    values = [value.split("alice:")[-1].split("@")[0] for value in secrets.values()]
    for value in values:                                              # ... and no secret is anywhere
        assert value not in outputs, f"a secret in the output: {value[:12]}..."
        for path in written:
            assert value.encode() not in path.read_bytes(), f"a secret in {path.relative_to(root)}"
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {run.data.tags.get("trafficlip.step") for run in runs} >= {"train", "evaluate", "predict"}
    recorded = json.dumps([[run.data.params, run.data.tags] for run in runs])
    assert not any(value in recorded for value in values)


def test_params_yaml_has_no_place_for_a_secret(tmp_path):
    words = ("password", "passwd", "secret", "token", "credential", "access_key", "api_key")
    assert not [f"{s}.{k}" for s, keys in params.SCHEMA.items() for k in keys if any(w in k.lower() for w in words)]
    path = tmp_path / "params.yaml"
    value = f"hunter-{uuid.uuid4().hex}"
    path.write_text(f"mlflow:\n  experiment: x\n  password: {value}\n")
    with pytest.raises(InputError, match=r"params.yaml:3: field 'mlflow.password': unknown key") as info:
        params.load(path)
    assert value not in str(info.value)
    with pytest.raises(InputError, match="unknown key 'mlflow.tracking_password'") as info:
        params.load(ROOT / "params.yaml", {"mlflow.tracking_password": value})
    assert value not in str(info.value)
