"""Reliability, item 3: a retried or cleared task changes nothing in the registry.

- The training DAG's `register` and `promote` tasks run by `dag.test()`, then cleared and run again
  in the same DAG run (the same logical date: `dag.test()` clears that run's task instances first):
  versions, their tags, aliases and the registered model's tags are exactly as the first run left
  them, and the training run's metrics, params and artefacts are not duplicated.
- register + promote twice in a row for a version the gate rejects (the path that rewrites tags).
- A failure in the middle of register or promote (the MLflow call failing as a server returning 500s
  does), then the retry: one version, complete tags, the aliases of an undisturbed run.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.mlops import registry
from tests.support import ROOT, airflow
from tests.support.params import tracked_params, unique_name

VOLATILE_TAGS = {"promotion_at", "alias_champion_at", "alias_challenger_at"}   # when: differs between two models


def registry_state(client: MlflowClient, name: str, volatile: set[str] = frozenset()) -> dict:
    """Everything the registry holds about ``name``: the model's tags and aliases, every version."""
    model = client.get_registered_model(name)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    return {"tags": dict(model.tags), "aliases": dict(model.aliases),
            "versions": [{"version": v.version, "run_id": v.run_id, "source": v.source, "status": v.status,
                          "tags": {k: t for k, t in v.tags.items() if k not in volatile}} for v in versions]}


def run_state(client: MlflowClient, run_id: str) -> dict:
    """A run's metric histories (every logged value), params, tags and artefacts."""
    run = client.get_run(run_id)

    def artifacts(path=None):
        out = []
        for item in client.list_artifacts(run_id, path):
            out += artifacts(item.path) if item.is_dir else [(item.path, item.file_size)]
        return out
    return {"metrics": {key: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))
                        for key in run.data.metrics},
            "params": dict(run.data.params), "tags": dict(run.data.tags), "artifacts": sorted(artifacts()),
            "runs_in_experiment": len(client.search_runs([run.info.experiment_id], max_results=10_000))}


def _workspace(tracked, folder: Path, params: dict) -> Path:
    """A workspace holding what `register` and `promote` read: the tracked training's reports."""
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    for source, target in ((tracked.train_summary, "reports/train_summary.json"),
                           (tracked.metrics, "metrics/eval.json"), (tracked.per_query, "reports/eval_queries.json")):
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / target)
    return folder


@pytest.mark.e2e
def test_clearing_register_and_promote_in_the_dag_leaves_the_registry_unchanged(tracked, tmp_path, monkeypatch,
                                                                                 airflow_db):
    name = unique_name("cleared")
    root = _workspace(tracked, tmp_path / "ws", tracked_params(registered_model=name, floor=0.0))
    monkeypatch.setenv("TRAFFICLIP_WORKSPACE", str(root))
    bag = airflow.dagbag()
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["trafficlip_training"]
    client = MlflowClient()
    run_id = tracked.summary["mlflow_run_id"]
    logical_date = dt.datetime(2026, 1, 4, 3, tzinfo=dt.timezone.utc)
    others = r"(?!(register|promote)$).*"       # every other task is marked success without running

    first = dag.test(run_after=logical_date, logical_date=logical_date, mark_success_pattern=others)
    states = {ti.task_id: ti.state for ti in first.get_task_instances()}
    started = {ti.task_id: ti.start_date for ti in first.get_task_instances()}
    written = (root / "reports" / "registration.json").stat().st_ino
    assert first.state == "success" and states["register"] == states["promote"] == "success", states
    registration = json.loads((root / "reports" / "registration.json").read_text())
    promotion = json.loads((root / "reports" / "promotion.json").read_text())
    assert registration["version"] == 1 and promotion["decision"] == "promoted" and promotion["champion_after"] == 1
    after_first = registry_state(client, name)
    run_after_first = run_state(client, run_id)

    # the same DAG run again: dag.test() clears its task instances, then runs them
    second = dag.test(run_after=logical_date, logical_date=logical_date, mark_success_pattern=others)
    assert second.run_id == first.run_id and second.state == "success"
    restarted = {ti.task_id: ti.start_date for ti in second.get_task_instances()}
    assert restarted["register"] > started["register"] and restarted["promote"] > started["promote"]
    assert (root / "reports" / "registration.json").stat().st_ino != written     # written again
    assert registry_state(client, name) == after_first
    assert run_state(client, run_id) == run_after_first
    assert json.loads((root / "reports" / "registration.json").read_text()) == registration
    assert json.loads((root / "reports" / "promotion.json").read_text())["decision"] == "already_champion"
    assert after_first["aliases"] == {"champion": 1} and json.loads(after_first["tags"]["champion_history"]) == [1]


def test_register_and_promote_twice_for_a_rejected_version_change_nothing(tracked, tmp_path):
    name = unique_name("rejected")
    params = tracked_params(registered_model=name, floor=1.0)   # no model reaches mAP@10 1.0: rejected
    client = MlflowClient()
    states = []
    for attempt in range(2):
        registry.register(params, tracked.train_summary, tracked.metrics, tracked.per_query, tmp_path / "r.json")
        decision = registry.promote(params, tmp_path / "r.json", tmp_path / "p.json")
        assert decision["decision"] == "rejected" and decision["champion_after"] is None
        states.append(registry_state(client, name))
    assert states[0] == states[1]
    assert states[0]["aliases"] == {"challenger": 1} and len(states[0]["versions"]) == 1
    assert states[0]["versions"][0]["tags"]["validation_status"] == "rejected"


def _failing_once(monkeypatch, method: str, after_calls: int = 0):
    """MlflowClient.<method> raises (as after a server's 500s) on call number ``after_calls + 1`` only."""
    real = getattr(MlflowClient, method)
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == after_calls + 1:
            raise MlflowException(f"API request to http://mlflow:5000/api/2.0/mlflow/{method} failed with exception "
                                  "HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded "
                                  "(Caused by ResponseError('too many 500 error responses'))")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(MlflowClient, method, flaky)
    return calls


FAULTS = [
    ("register: the version is created, the check after it fails", "register", "search_model_versions", 1),
    ("register: the tags of an existing version fail", "register-again", "set_model_version_tag", 0),
    ("promote: the decision's tags fail", "promote", "set_model_version_tag", 0),
    ("promote: tags and history written, the alias fails", "promote", "set_registered_model_alias", 0),
]


@pytest.mark.parametrize("case, step, method, after", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_failure_midway_then_a_retry_leaves_the_state_of_an_undisturbed_run(tracked, tmp_path, monkeypatch,
                                                                               case, step, method, after):
    reference, disturbed = unique_name("undisturbed"), unique_name("retried")
    client = MlflowClient()
    for name in (reference, disturbed):
        params = tracked_params(registered_model=name, floor=0.0)
        out = tmp_path / name
        if name == disturbed and step.startswith("register"):
            if step == "register-again":     # a second evaluation of a registered model refreshes its tags
                registry.register(params, tracked.train_summary, tracked.metrics, tracked.per_query, out / "r.json")
                client.set_model_version_tag(name, "1", "map_at_10", "0.0")
            calls = _failing_once(monkeypatch, method, after)
            with pytest.raises(MlflowException, match="500 error responses"):
                registry.register(params, tracked.train_summary, tracked.metrics, tracked.per_query, out / "r.json")
            assert calls["n"] > after
            monkeypatch.undo()
        registry.register(params, tracked.train_summary, tracked.metrics, tracked.per_query, out / "r.json")
        if name == disturbed and step == "promote":
            calls = _failing_once(monkeypatch, method, after)
            with pytest.raises(MlflowException, match="500 error responses"):
                registry.promote(params, out / "r.json", out / "p.json")
            monkeypatch.undo()
            assert not (out / "p.json").exists()          # no report of a decision that was not completed
        decision = registry.promote(params, out / "r.json", out / "p.json")
        assert decision["decision"] == "promoted" and decision["champion_after"] == 1
    expected = registry_state(client, reference, VOLATILE_TAGS)
    got = registry_state(client, disturbed, VOLATILE_TAGS)
    assert got["versions"] == expected["versions"] and got["aliases"] == expected["aliases"] == {"champion": 1}
    assert got["tags"] == expected["tags"]            # champion_history [1]: the promotion recorded once
