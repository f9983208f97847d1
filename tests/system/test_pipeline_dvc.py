"""The whole pipeline through `dvc repro` on a tiny dataset, in a temporary git repository.

MLflow there is the embedded default: sqlite:///mlruns.db and mlartifacts/ inside the temporary repo.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks.core.submission import read_submission
from tests.support import ROOT, imports
from tests.support.workspace import embedded_env, make_workspace, run


def _run(args, cwd):
    """A command in the workspace, with its own embedded MLflow store (not the session's)."""
    return run(args, cwd, env=embedded_env())


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_raw) -> Path:
    """A workspace (tiny training; floor 0: a tiny model barely beats chance, so the first version
    becomes champion) after `dvc repro`."""
    repo = make_workspace(tmp_path_factory.mktemp("repo") / "ws", tiny_raw)
    _run(["dvc", "repro"], repo)
    return repo


@pytest.mark.e2e
def test_repro_runs_every_stage_and_writes_the_outputs(repo):
    metrics = json.loads((repo / "metrics" / "eval.json").read_text())
    for group in ("overall", "vehicle", "pedestrian"):
        assert set(metrics[group]) >= {"map_at_10", "trec_ap_at_10", "recall_at_1", "recall_at_5",
                                       "recall_at_10", "mean_rank", "median_rank"}
        assert set(metrics["baseline"][group]) >= {"map_at_10", "recall_at_1"}
    queries = (repo / "data" / "raw" / "test" / "test_text.txt").read_text().splitlines()
    submission = read_submission(repo / "outputs" / "submission.json")
    assert [text for text, _ in submission] == queries
    assert (repo / "dvc.lock").is_file() and (repo / "reports" / "train_steps.csv").is_file()
    report = json.loads((repo / "data" / "prepared" / "validation_report.json").read_text())
    assert report["problems"] == 0
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert list(lock) == ["prepare", "augment", "train", "evaluate", "register", "promote", "predict"]
    assert any(dep["path"] == "data/augmented" for dep in lock["train"]["deps"])
    augment_report = json.loads((repo / "reports" / "augment_report.json").read_text())
    assert augment_report["captions_changed"] == 0     # a random starting model is never confident
    assert json.loads((repo / "reports" / "predict_report.json").read_text())["uncategorised_queries"] == []


@pytest.mark.e2e
def test_unchanged_workspace_reruns_nothing(repo):
    result = _run(["dvc", "repro"], repo)
    assert "Running stage" not in result.stdout
    assert _run(["dvc", "status"], repo).stdout.strip().endswith("up to date.")


# --- code dependencies: editing any module a stage runs makes the stage stale ------------------------

CODE_STAGES = ("prepare", "augment", "train", "evaluate", "predict", "register", "promote")
# modules a stage runs without importing them: training logs the pyfunc model's file as the MLflow
# model's code (tasks/mlops/tracking.py, PYFUNC_FILE)
RUN_BY_PATH = {"tasks.mlops.tracking": {"tasks.mlops.pyfunc_model"}}


def stage_modules(stage: str) -> set[str]:
    """What `python -m tasks <stage>` runs: the CLI's module-level imports, then everything the step
    module imports, function-local imports included (they run when the step calls them)."""
    edges = imports.graph()
    top_level = {name: [e for e in found if not e.local] for name, found in edges.items()}
    ran = imports.closure(["tasks.__main__", "tasks.cli.parser", "tasks.cli.commands"], top_level)
    ran |= imports.closure([f"tasks.steps.{stage}"], edges)
    return ran | {extra for module in ran for extra in RUN_BY_PATH.get(module, ())}


def _files(modules: set[str]) -> set[str]:
    known = imports.modules()
    return {known[m].relative_to(ROOT).as_posix() for m in modules}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_every_stage_depends_on_every_module_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for stage in CODE_STAGES:
        deps = stages[stage]["deps"]
        files = _files(stage_modules(stage))
        if "tasks.core.models" in stage_modules(stage):
            files.add("tasks/model_configs/TrafficCLIP-Tiny.json")     # the architectures it builds
        missing[stage] = sorted(f for f in files if not _covered(f, deps))
    assert missing == {stage: [] for stage in CODE_STAGES}, "add these to the stage's deps in dvc.yaml"


def test_the_dependency_check_sees_a_module_a_stage_stops_listing():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = [d for d in stages["train"]["deps"] if d != "tasks/mlops"]
    files = _files(stage_modules("train"))
    assert sorted(f for f in files if not _covered(f, deps)) == [
        "tasks/mlops/__init__.py", "tasks/mlops/pyfunc_model.py", "tasks/mlops/tracking.py"]


@pytest.mark.e2e
def test_editing_any_module_a_stage_runs_makes_dvc_report_the_stage_changed(repo):
    """On a real `dvc repro`-ed workspace: each module, edited in turn, makes `dvc status` report every
    stage that runs it (DVC's own status, in process), and the workspace is clean again afterwards."""
    from dvc.repo import Repo

    def stale() -> set[str]:
        with Repo(str(repo)) as dvc_repo:
            return {name.split(":")[-1] for name in dvc_repo.status() if not name.endswith(".dvc")}

    assert stale() == set()
    runs = {stage: _files(stage_modules(stage)) for stage in CODE_STAGES}
    not_seen = {}
    for path in sorted(set().union(*runs.values())):
        target = repo / path
        original = target.read_bytes()
        target.write_bytes(original + b"\n# edited\n")
        try:
            reported = stale()
        finally:
            target.write_bytes(original)
        expected = {stage for stage, files in runs.items() if path in files}
        if not expected <= reported:
            not_seen[path] = sorted(expected - reported)
    assert not_seen == {}
    assert stale() == set()


@pytest.mark.e2e
def test_repro_tracks_registers_and_promotes_in_the_embedded_mlflow_store(repo):
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{repo / 'mlruns.db'}")
    summary = json.loads((repo / "reports" / "train_summary.json").read_text())
    train_run = client.get_run(summary["mlflow_run_id"])
    assert train_run.info.status == "FINISHED"
    assert train_run.data.params["train.epochs"] == "2" and train_run.data.params["mlflow.floor"] == "0.0"
    assert len(client.get_metric_history(train_run.info.run_id, "loss")) == summary["steps"]
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "val_map_at_10")] == [
        0, summary["steps"] // 2, summary["steps"]]
    # lineage: the commit, and the data hashes dvc.lock recorded for what the stage read
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    prepared_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "data/prepared")
    raw_md5 = yaml.safe_load((repo / "data" / "raw.dvc").read_text())["outs"][0]["md5"]
    tags = train_run.data.tags
    assert tags["git.commit"] == _run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert tags["dvc.data/prepared"] == prepared_md5 and tags["data_hash"] == raw_md5
    evaluate_run = client.search_runs([train_run.info.experiment_id], "tags.`trafficlip.step` = 'evaluate'")[0]
    assert evaluate_run.data.tags["train_run_id"] == train_run.info.run_id
    galleries = [a.path for a in client.list_artifacts(evaluate_run.info.run_id, "galleries")]
    assert len(galleries) == 2 and all(path.endswith(".png") for path in galleries)
    assert (repo / "mlartifacts").is_dir()
    # the registry: version 1 of this run, promoted over the (zero) floor
    registration = json.loads((repo / "reports" / "registration.json").read_text())
    promotion = json.loads((repo / "reports" / "promotion.json").read_text())
    assert registration["version"] == 1 and promotion["decision"] == "promoted"
    champion = client.get_model_version_by_alias("traffic-clip", "champion")
    assert str(champion.version) == "1" and champion.tags["train_run_id"] == train_run.info.run_id
    assert champion.tags["validation_status"] == "passed"


@pytest.mark.e2e
def test_changing_an_evaluate_param_reruns_evaluate_and_what_follows_it(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["pedestrian_relevance"] = "inclusion"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    result = _run(["dvc", "repro"], repo)
    ran = [line for line in result.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'evaluate':", "Running stage 'register':", "Running stage 'promote':"]
    assert json.loads((repo / "metrics" / "eval.json").read_text())["relevance_rule"] == "inclusion"
    # the same training run: the same version, re-tagged with the new evaluation
    assert json.loads((repo / "reports" / "registration.json").read_text())["version"] == 1
    assert json.loads((repo / "reports" / "promotion.json").read_text())["decision"] == "already_champion"
    shown = _run(["dvc", "metrics", "diff", "--json"], repo)
    assert "metrics/eval.json" in shown.stdout


def _ran(result) -> list[str]:
    return [line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")]


@pytest.mark.e2e
def test_changing_a_retrieval_param_reruns_evaluate_and_predict_only(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["retrieval"]["rerank_blend"] = 0.25
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert _ran(_run(["dvc", "repro"], repo)) == ["evaluate", "register", "promote", "predict"]


@pytest.mark.e2e
def test_changing_an_augment_param_reruns_augment_and_what_follows_not_prepare(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["augment"]["min_confidence"] = 0.0      # now the random model's guesses are written
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert _ran(_run(["dvc", "repro"], repo)) == ["augment", "train", "evaluate", "register", "promote", "predict"]
    assert json.loads((repo / "reports" / "augment_report.json").read_text())["captions_changed"] > 0


@pytest.mark.e2e
def test_dvc_experiment_with_a_changed_learning_rate(repo):
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-q", "-m", "after repro"], repo)
    _run(["dvc", "exp", "run", "-S", "train.lr=0.0005", "-n", "lower-lr"], repo)
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo).stdout)
    assert "lower-lr" in json.dumps(shown)
