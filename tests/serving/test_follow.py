"""`trafficlip serve` follows its alias (tasks/serving/serve.py ``Following``): when @champion moves (a
promotion, a rollback, a hand in the MLflow UI), the running service switches to that version without
a restart; a model that cannot be loaded leaves the old one serving."""

from __future__ import annotations

import json
import time

import mlflow
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from tasks.serving import retrieve, serve
from tests.support.params import unique_name


def _wait_for(condition, what: str, seconds: float = 120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_a_running_service_switches_to_the_new_champion(tracked, gallery, monkeypatch):
    name = unique_name("follow")
    params = json.loads(json.dumps(tracked.params))
    params["mlflow"]["registered_model"] = name
    model = f"models:/{tracked.summary['mlflow_model_id']}"
    first, second = (int(mlflow.register_model(model, name).version) for _ in range(2))
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", str(first))
    monkeypatch.setenv("TRAFFICLIP_EMBEDDING_CACHE", "off")

    following = serve.Following(params, gallery, None, every=0.2).start()
    try:
        app = TestClient(serve.create_app(following))
        health = app.get("/healthz").json()
        assert (health["version"], health["model_changes"], health["follows"]) == (first, 0, f"{name}@champion")
        before = app.get("/api/search", params={"q": "a white Sedan", "top": 3}).json()
        assert before["version"] == first

        client.set_registered_model_alias(name, "champion", str(second))      # by hand, as in the MLflow UI
        _wait_for(lambda: app.get("/healthz").json()["version"] == second, "the service serves the new champion")
        after = app.get("/api/search", params={"q": "a white Sedan", "top": 3}).json()
        assert after["version"] == second and after["model"] == f"models:/{name}@champion"
        assert app.get("/healthz").json()["model_changes"] == 1

        # a version that cannot be loaded: the old one serves on, and the error is visible
        client.delete_model_version(name, str(first))
        broken = int(mlflow.register_model(model, name).version)
        client.set_registered_model_alias(name, "champion", str(broken))
        monkeypatch.setattr(serve, "Searcher", _failing)
        health = _wait_for(lambda: (h := app.get("/healthz").json()).get("follow_error") and h, "the error shown")
        assert health["version"] == second and "cannot load" in health["follow_error"]
        assert app.get("/api/search", params={"q": "a white Sedan", "top": 3}).status_code == 200
    finally:
        following.stop()


def _failing(*args, **kwargs):
    raise RuntimeError("cannot load this version (a test's stand-in for a broken model)")


def test_only_an_alias_is_followed(tracked):
    params = tracked.params
    assert retrieve.followed_alias(params, None) == (params["mlflow"]["registered_model"], "champion")
    assert retrieve.followed_alias(params, "models:/m@challenger") == ("m", "challenger")
    assert retrieve.followed_alias(params, "models:/m/3") is None
    assert retrieve.followed_alias(params, "/some/checkpoint") is None
