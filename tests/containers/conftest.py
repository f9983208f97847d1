"""Fixtures of the container tests: the engine (docker/engine.sh's), a tiny workspace owned as a deployment
owns it, the environment the DAG's docker runner reads, and that runner's operator on this engine."""

from __future__ import annotations

import os

import pytest

from tests.support import BIN, net, procs
from tests.support import engine as engine_support
from tests.support.workspace import make_workspace


@pytest.fixture(scope="session")
def engine():
    """The docker SDK client of the engine `make test-containers` started, holding the training image."""
    client = engine_support.client(engine_support.TRAIN_IMAGE)
    yield client
    client.close()


@pytest.fixture
def workspace(tmp_path, tiny_raw):
    """A tiny git + DVC workspace (tests/support/workspace.py), owned by the images' user (uid 50000, group 0)."""
    return engine_support.deployment_owned(make_workspace(tmp_path / "workspace", tiny_raw))


@pytest.fixture
def train_operator(monkeypatch):
    """tests/support/engine.py's ``train_operator(workspace, **settings)``, with DOCKER_HOST set to this engine for
    the test (the operator's docker client reads it when it runs)."""
    monkeypatch.setenv("DOCKER_HOST", engine_support.docker_host())
    return engine_support.train_operator


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free port of 127.0.0.1 (SQLite store, artefacts served through the server, so a
    client needs no access to the artefact folder: the training container logs them over HTTP). Its URL."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    processes = procs.Processes(folder)
    port = net.free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    server = processes.start("mlflow", [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env, folder)
    url = f"http://127.0.0.1:{port}"
    try:
        net.wait_until_answering(f"{url}/health", server, processes.log("mlflow"))
        yield url
    finally:
        processes.stop()
