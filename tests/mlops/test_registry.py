"""The model registry: idempotent and concurrent registration, the promotion gate, rollback, and the
registered pyfunc loaded by alias in a fresh process.

Versions for the gate tests share the tiny trained model but carry chosen per-query scores (their
own training runs and evaluation files), so each decision is known in advance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from tasks.cli import main
from tasks.core.errors import TrafficlipError
from tasks.mlops import registry
from tests.support import ROOT
from tests.support.params import tracked_params, unique_name


def _params(name: str, **overrides) -> dict:
    return tracked_params(registered_model=name, **{"floor": 0.0, **overrides})


def _register_real(tracked, name: str, out) -> dict:
    return registry.register(_params(name), tracked.train_summary, tracked.metrics, tracked.per_query, out)


def _craft(tracked, tmp_path, name: str, scores, fingerprint: str | None = None) -> str:
    """A version of ``name`` whose evaluation has these per-query organisers' APs; its registration file."""
    client = MlflowClient()
    experiment = client.get_run(tracked.summary["mlflow_run_id"]).info.experiment_id
    run = client.create_run(experiment, tags={"trafficlip.step": "train", "git.commit": "c0ffee", "data_hash": "d4t4"})
    client.set_terminated(run.info.run_id)
    folder = tmp_path / run.info.run_id
    folder.mkdir()
    per_query = json.loads(tracked.per_query.read_text())
    assert len(per_query) == len(scores)
    for query, score in zip(per_query, scores):
        query["organisers_ap"] = round(float(score), 6)
    metrics = json.loads(tracked.metrics.read_text())
    metrics["overall"]["map_at_10"] = float(np.mean(scores))
    if fingerprint:
        metrics["validation_fingerprint"] = fingerprint
    (folder / "summary.json").write_text(json.dumps({"mlflow_run_id": run.info.run_id,
                                                     "mlflow_model_id": tracked.summary["mlflow_model_id"]}))
    (folder / "eval.json").write_text(json.dumps(metrics))
    (folder / "eval_queries.json").write_text(json.dumps(per_query))
    registry.register(_params(name), folder / "summary.json", folder / "eval.json", folder / "eval_queries.json",
                      folder / "registration.json")
    return str(folder / "registration.json")


def _real_scores(tracked) -> np.ndarray:
    return np.array([q["organisers_ap"] for q in json.loads(tracked.per_query.read_text())])


def _champion(name: str) -> int | None:
    aliases = MlflowClient().get_registered_model(name).aliases
    return int(aliases["champion"]) if "champion" in aliases else None


# --- registration ------------------------------------------------------------------------------

def test_registering_the_same_training_run_twice_gives_one_version_with_its_tags(tracked, tmp_path):
    name = unique_name("twice")
    first = _register_real(tracked, name, tmp_path / "a.json")
    second = _register_real(tracked, name, tmp_path / "b.json")
    assert first["created"] and not second["created"] and first["version"] == second["version"] == 1
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    assert len(versions) == 1
    tags = versions[0].tags
    metrics = json.loads(tracked.metrics.read_text())
    assert tags["train_run_id"] == tracked.summary["mlflow_run_id"]
    assert float(tags["map_at_10"]) == pytest.approx(metrics["overall"]["map_at_10"])
    assert float(tags["pedestrian_map_at_10"]) == pytest.approx(metrics["pedestrian"]["map_at_10"])
    assert tags["validation_status"] == "pending" and tags["validation_fingerprint"] == metrics["validation_fingerprint"]
    assert tags["git_commit"] != "unknown" and "data_hash" in tags
    assert json.loads((tmp_path / "a.json").read_text())["model_uri"] == f"models:/{name}/1"


WORKER = textwrap.dedent("""
    import os, sys, time
    from tasks.mlops import tracking
    from tasks.cli import main
    tracking.connect()                        # imported and connected: ready
    open(sys.argv[1], "w").close()
    while not os.path.exists(sys.argv[2]):    # start together
        time.sleep(0.01)
    sys.exit(main(sys.argv[3:]))
""")


def _together(argv_list: list[list[str]], folder, env: dict) -> list[subprocess.CompletedProcess]:
    """Start one process per argv, release them at once when all have imported, wait for all."""
    go = folder / "go"
    ready = [folder / f"ready-{i}" for i in range(len(argv_list))]
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, str(flag), str(go), *argv], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for flag, argv in zip(ready, argv_list)]
    while not all(flag.exists() for flag in ready) and all(p.poll() is None for p in processes):
        time.sleep(0.05)
    go.write_text("go")
    results = []
    for process in processes:
        out, err = process.communicate()
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.e2e    # several CLI processes at once
@pytest.mark.parametrize("lock, processes", [("auto", 6), ("none", 3)])
def test_processes_registering_one_run_at_once_leave_exactly_one_version(tracked, tmp_path, lock, processes):
    """Six with the lock (the default), and a few without it: the check after creating alone still
    keeps one version."""
    name = unique_name(f"race-{lock}")
    argv = ["register", "--params", str(ROOT / "params.yaml"), "--set", f"mlflow.registered_model={name}",
            "--set", "mlflow.experiment=tests", "--train-summary", str(tracked.train_summary),
            "--metrics", str(tracked.metrics), "--per-query", str(tracked.per_query)]
    env = {**os.environ, registry.LOCK_ENV: lock}
    results = _together([argv + ["--out", str(tmp_path / f"r{i}.json")] for i in range(processes)], tmp_path, env)
    assert [r.returncode for r in results] == [0] * processes, [r.stderr[-800:] for r in results]
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    assert [int(v.version) for v in versions] == [1]  # the lowest version is the one every process keeps
    assert {json.loads((tmp_path / f"r{i}.json").read_text())["version"] for i in range(processes)} == {1}
    assert sum(json.loads(r.stdout)["created"] for r in results) == 1


# --- the promotion gate ------------------------------------------------------------------------

def test_gate_accepts_a_clearly_better_model():
    rng = np.random.default_rng(0)
    old = rng.uniform(0, 0.6, 200)
    verdict = registry.gate(np.clip(old + 0.2, 0, 1), old, min_gain=0.01, confidence=0.95, samples=2000)
    assert verdict["promote"] and verdict["probability"] == 1.0 and verdict["gain"] > 0.15


def test_gate_rejects_an_equal_model_even_with_no_minimum_gain():
    old = np.random.default_rng(1).uniform(0, 1, 200)
    verdict = registry.gate(old.copy(), old, min_gain=0.0, confidence=0.95, samples=2000)
    assert not verdict["promote"] and verdict["gain"] == 0 and verdict["probability"] == 0.0


def test_gate_rejects_a_noisy_gain_that_fails_the_bootstrap():
    old = np.full(100, 0.5)
    old[0] = 0.0
    new = old + np.where(np.arange(100) % 2 == 0, 0.3, -0.3)  # swings both ways, no net gain
    new[0] = 1.0                                              # the whole mean gain is one query
    verdict = registry.gate(new, old, min_gain=0.005, confidence=0.95, samples=2000)
    assert verdict["gain"] == pytest.approx(0.007) and 0.3 < verdict["probability"] < 0.95
    assert not verdict["promote"] and "may be noise" in verdict["reason"]


def test_promotion_through_the_registry_first_better_equal_noisy(tracked, tmp_path):
    name = unique_name("gate")
    params = _params(name, min_gain=0.005)
    base = _real_scores(tracked)
    first = registry.promote(params, _craft(tracked, tmp_path, name, base), tmp_path / "p1.json")
    assert first["decision"] == "promoted" and "no champion yet" in first["reason"] and _champion(name) == 1

    better = registry.promote(params, _craft(tracked, tmp_path, name, np.clip(base + 0.3, 0, 1)), tmp_path / "p2.json")
    assert better["decision"] == "promoted" and better["champion_before"] == 1 and _champion(name) == 2
    assert better["probability"] >= 0.95 and better["gain"] >= 0.1 and not better["champion_rescored"]

    equal = registry.promote(params, _craft(tracked, tmp_path, name, np.clip(base + 0.3, 0, 1)), tmp_path / "p3.json")
    assert equal["decision"] == "rejected" and equal["gain"] == 0 and _champion(name) == 2

    noisy_scores = np.clip(base + 0.3, 0, 1)
    noisy_scores[np.argmin(noisy_scores)] = 1.0       # one query much better, the rest unchanged
    noisy = registry.promote(params, _craft(tracked, tmp_path, name, noisy_scores), tmp_path / "p4.json")
    assert noisy["gain"] >= 0.005 and noisy["probability"] < 0.95 and "may be noise" in noisy["reason"]
    assert noisy["decision"] == "rejected" and _champion(name) == 2

    client = MlflowClient()
    model = client.get_registered_model(name)
    assert int(model.aliases["challenger"]) == 4
    assert json.loads(model.tags["champion_history"]) == [1, 2]
    tags = client.get_model_version(name, "2").tags
    assert tags["validation_status"] == "passed" and tags["promotion_decision"] == "promoted"
    assert float(tags["promotion_probability"]) >= 0.95 and tags["promotion_against"] == "1"
    assert client.get_model_version(name, "3").tags["validation_status"] == "rejected"
    assert json.loads((tmp_path / "p4.json").read_text())["champion_after"] == 2
    # promoting the champion again changes nothing
    again = registry.promote(params, _registration_of(tmp_path, name, 2), tmp_path / "p5.json")
    assert again["decision"] == "already_champion" and _champion(name) == 2


def _registration_of(tmp_path, name: str, version: int) -> str:
    path = tmp_path / f"registration-{version}.json"
    path.write_text(json.dumps({"registered_model": name, "version": version}))
    return str(path)


def test_first_version_below_the_floor_is_not_promoted(tracked, tmp_path):
    name = unique_name("floor")
    decision = registry.promote(_params(name, floor=0.99), _craft(tracked, tmp_path, name, _real_scores(tracked)),
                                tmp_path / "p.json")
    assert decision["decision"] == "rejected" and "< floor 0.99" in decision["reason"]
    assert _champion(name) is None
    assert MlflowClient().get_model_version(name, "1").tags["validation_status"] == "rejected"


def test_a_champion_evaluated_on_other_data_is_rescored_on_the_current_split(tracked, tmp_path):
    name = unique_name("rescore")
    params = _params(name, min_gain=0.01)
    base = _real_scores(tracked)
    # the champion's stored scores are perfect but were made on other data: they must not be used
    registry.promote(params, _craft(tracked, tmp_path, name, np.ones_like(base), fingerprint="other-data"),
                     tmp_path / "p1.json")
    decision = registry.promote(params, _craft(tracked, tmp_path, name, np.clip(base + 0.3, 0, 1)),
                                tmp_path / "p2.json", data=tracked.data)
    assert decision["champion_rescored"] and decision["decision"] == "promoted"
    assert decision["champion_map"] == pytest.approx(base.mean(), abs=1e-5)  # the real model's real score
    with pytest.raises(TrafficlipError, match="pass --data"):
        registry.promote(params, _craft(tracked, tmp_path, name, np.ones_like(base), fingerprint="third"),
                         tmp_path / "p3.json")


@pytest.mark.e2e    # two CLI processes at once
def test_two_promotions_at_once_end_as_if_one_ran_after_the_other(tracked, tmp_path):
    name = unique_name("race")
    params = _params(name, min_gain=0.01)
    base = _real_scores(tracked)
    registry.promote(params, _craft(tracked, tmp_path, name, base), tmp_path / "p1.json")
    good = _craft(tracked, tmp_path, name, np.clip(base + 0.2, 0, 1))
    better = _craft(tracked, tmp_path, name, np.clip(base + 0.4, 0, 1))
    common = ["--params", str(ROOT / "params.yaml"), "--set", f"mlflow.registered_model={name}",
              "--set", "mlflow.min_gain=0.01", "--set", "mlflow.bootstrap_samples=500"]
    results = _together([["promote", *common, "--registration", good, "--out", str(tmp_path / "good.json")],
                         ["promote", *common, "--registration", better, "--out", str(tmp_path / "better.json")]],
                        tmp_path, dict(os.environ))
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-800:] for r in results]
    reports = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("good", "better")]
    first, second = sorted(reports, key=lambda r: r["champion_before"] != 1)
    assert first["champion_before"] == 1 and first["decision"] == "promoted"
    assert second["champion_before"] == first["version"]  # it saw the first one's result
    expected = second["version"] if second["decision"] == "promoted" else first["version"]
    assert _champion(name) == expected == second["champion_after"]
    assert reports[1]["version"] == 3 and _champion(name) == 3  # the better one wins either way


def test_rollback_restores_the_previous_champion_and_is_recorded(tracked, tmp_path, capsys):
    name = unique_name("rollback")
    params = _params(name, min_gain=0.01)
    base = _real_scores(tracked)
    registry.promote(params, _craft(tracked, tmp_path, name, base), tmp_path / "p1.json")
    with pytest.raises(TrafficlipError, match="nothing to roll back to"):
        registry.rollback(params, tmp_path / "rollback.json")
    second = _craft(tracked, tmp_path, name, np.clip(base + 0.3, 0, 1))
    registry.promote(params, second, tmp_path / "p2.json")
    assert _champion(name) == 2
    assert main(["rollback", "--params", str(ROOT / "params.yaml"), "--set", f"mlflow.registered_model={name}",
                 "--out", str(tmp_path / "rollback.json")]) == 0
    assert json.loads(capsys.readouterr().out)["champion"] == 1
    assert _champion(name) == 1
    report = json.loads((tmp_path / "rollback.json").read_text())
    assert report["rolled_back"] == 2 and report["champion"] == 1
    client = MlflowClient()
    tags = client.get_model_version(name, "2").tags
    assert tags["validation_status"] == "rolled_back" and tags["rolled_back_to"] == "1"
    assert json.loads(client.get_registered_model(name).tags["champion_history"]) == [1]
    # the rolled-back version is not promoted again by a rerun of its promotion
    assert registry.promote(params, second, tmp_path / "p3.json")["decision"] == "rolled_back"
    assert _champion(name) == 1
    assert main(["models", "--params", str(ROOT / "params.yaml"), "--set", f"mlflow.registered_model={name}"]) == 0
    table = capsys.readouterr().out
    assert "@champion" in table and "rolled_back" in table and table.index("\n2 ") < table.index("\n1 ")


# --- the registered model, served --------------------------------------------------------------

LOAD_BY_ALIAS = textwrap.dedent("""
    import base64, json, sys
    import mlflow, numpy as np, pandas as pd
    model = mlflow.pyfunc.load_model(sys.argv[1])
    image = base64.b64encode(open(sys.argv[2], "rb").read()).decode()
    texts = ["This is a white Audi Sedan.", "A female pedestrian with a backpack."]
    frame = pd.DataFrame({"text": [texts[0], None, texts[1]], "image": [None, image, None]})
    out = model.predict(frame)
    import tasks
    json.dump({"embeddings": np.asarray(out).tolist(), "tasks": tasks.__file__}, sys.stdout)
""")


@pytest.mark.e2e    # a fresh interpreter loads MLflow and the model
def test_champion_loads_by_alias_in_a_fresh_process_and_embeds_like_the_checkpoint(tracked, tiny_raw, tmp_path):
    import torch

    from tasks.core import models
    from tasks.core.images import load_image, prepare_image
    name = unique_name("serve")
    registration = tmp_path / "registration.json"
    _register_real(tracked, name, registration)
    assert registry.promote(_params(name), registration, tmp_path / "promotion.json")["decision"] == "promoted"
    image_path = sorted((tiny_raw / "val" / "val_images").iterdir())[0]
    # a fresh interpreter, outside the project, offline: only the installed packages and the model
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", LOAD_BY_ALIAS, f"models:/{name}@champion", str(image_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    served = json.loads(result.stdout)
    assert "artifacts/code/tasks" in served["tasks"]  # the code that came with the model
    embeddings = np.array(served["embeddings"], dtype=np.float32)
    clip = models.load_checkpoint(tracked.model)
    texts = models.encode_texts(clip, ["This is a white Audi Sedan.", "A female pedestrian with a backpack."])
    image = models.encode_images(clip, torch.from_numpy(prepare_image(load_image(image_path), clip.image_size))[None])
    assert np.allclose(embeddings[[0, 2]], texts.numpy(), atol=1e-5)
    assert np.allclose(embeddings[1], image.numpy()[0], atol=1e-5)


def test_with_tracking_off_register_and_promote_write_skipped_reports(tracked, tmp_path):
    params = _params(unique_name("off"))
    params["mlflow"]["enabled"] = False
    registry.register(params, tracked.train_summary, tracked.metrics, tracked.per_query, tmp_path / "r.json")
    registry.promote(params, tmp_path / "r.json", tmp_path / "p.json")
    for name in ("r.json", "p.json"):
        assert json.loads((tmp_path / name).read_text()) == {"skipped": "mlflow.enabled is false"}
    params["mlflow"]["enabled"] = True  # a skipped registration cannot be promoted
    with pytest.raises(TrafficlipError, match="r.json: no registered version in it"):
        registry.promote(params, tmp_path / "r.json", tmp_path / "p.json")


def test_a_registered_version_describes_its_metrics_data_evaluation_and_gate(tracked, tmp_path):
    """What the registry UI shows on the version page, kept current: written at registration, the
    gate's decision added by promote."""
    name = unique_name("described")
    registration = _register_real(tracked, name, tmp_path / "r.json")
    version = MlflowClient().get_model_version(name, str(registration["version"]))
    metrics = json.loads(tracked.metrics.read_text())
    assert f"**mAP@10 {metrics['overall']['map_at_10']}" in version.description
    assert f"data: `{version.tags['data_hash']}`" in version.description
    assert version.tags["evaluation"] in version.description
    assert "gate: not decided yet" in version.description
    registry.promote(_params(name), tmp_path / "r.json", tmp_path / "p.json")
    promoted = MlflowClient().get_model_version(name, str(registration["version"]))
    assert "gate: promoted (no champion yet" in promoted.description


# --- promotion by hand: aliases moved in the MLflow UI or API ----------------------------------

def test_an_alias_moved_by_hand_is_detected_recorded_and_shown_with_its_conflicts(tracked, tmp_path, capsys):
    """Someone moves @champion to a version the gate rejected, in the MLflow UI (here: its API, which
    the UI calls). The next trafficlip command that looks records it on that version (manual, ungated,
    when, which version held it before), `trafficlip models` shows it and the conflict, and a rollback
    goes back to the gated champion."""
    name = unique_name("manual")
    params = _params(name, min_gain=0.01)
    base = _real_scores(tracked)
    registry.promote(params, _craft(tracked, tmp_path, name, base), tmp_path / "p1.json")
    registry.promote(params, _craft(tracked, tmp_path, name, base), tmp_path / "p2.json")   # equal: rejected
    client = MlflowClient()
    assert _champion(name) == 1 and int(client.get_registered_model(name).aliases["challenger"]) == 2
    assert registry.sync_aliases(params)["changes"] == []                       # gated moves are not "manual"

    client.set_registered_model_alias(name, "champion", "2")                   # by hand
    synced = registry.sync_aliases(params)
    assert synced["champion_changed"] and synced["champion"] == 2
    assert [(c["alias"], c["from"], c["to"], c["origin"]) for c in synced["changes"]] == [
        ("champion", 1, 2, "manual, ungated")]
    assert any("both @champion and @challenger" in c for c in synced["conflicts"])
    assert any("'rejected'" in c for c in synced["conflicts"])
    tags = client.get_model_version(name, "2").tags
    assert tags["alias_champion_origin"] == "manual, ungated" and tags["alias_champion_from"] == "1"
    assert tags["alias_champion_at"] and "outside trafficlip" in tags["alias_champion_by"]
    assert registry.sync_aliases(params)["changes"] == []                       # recorded once

    assert main(["models", "--params", str(ROOT / "params.yaml"), "--set", f"mlflow.registered_model={name}"]) == 0
    table = capsys.readouterr().out
    assert "@champion (manual)" in table and "@challenger" in table
    assert "@champion -> version 2: manual, ungated" in table and "conflict: version 2 is both" in table

    registry.rollback(params, tmp_path / "rollback.json")                      # back to the gated champion
    assert _champion(name) == 1
    assert client.get_model_version(name, "1").tags["alias_champion_origin"] == "trafficlip rollback"
    assert registry.sync_aliases(params)["changes"] == []


def test_an_alias_deleted_by_hand_and_a_gated_promotion_are_told_apart(tracked, tmp_path):
    name = unique_name("deleted")
    params = _params(name, min_gain=0.01)
    base = _real_scores(tracked)
    registry.promote(params, _craft(tracked, tmp_path, name, base), tmp_path / "p1.json")
    tags = MlflowClient().get_model_version(name, "1").tags
    assert tags["alias_champion_origin"] == "trafficlip promote: promoted by the gate"
    assert tags["alias_champion_from"] == "none"
    MlflowClient().delete_registered_model_alias(name, "champion")
    better = _craft(tracked, tmp_path, name, np.clip(base + 0.3, 0, 1))
    decision = registry.promote(params, better, tmp_path / "p2.json")
    # the promotion saw the deletion first (recorded as manual), then promoted on the floor rule
    assert [(c["alias"], c["to"]) for c in decision["manual_changes_found"]] == [("champion", None)]
    assert decision["champion_after"] == 2 and decision["champion_changed"]
    assert registry.sync_aliases(params)["changes"] == []
