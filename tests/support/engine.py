"""The container engine of the container tests (tests/containers): docker/engine.sh's API socket, the images it
built, and a workspace owned as a deployment owns it. Nothing here starts the engine: `make test-containers`
does (docker/engine.sh install, up, build) before pytest; an engine that does not answer, or an image that is
missing, fails the test with the command that fixes it, never a skip."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import ROOT

ENGINE_SH = ROOT / "docker" / "engine.sh"
# the images docker/engine.sh builds (docker/compose.yaml's names)
TRAIN_IMAGE = "trafficlip-train:0.1.0"
AIRFLOW_IMAGE = "trafficlip-airflow:0.1.0"
MLFLOW_IMAGE = "trafficlip-mlflow:3.17.2"
# the training image's user (docker/train.Dockerfile), the same as the Airflow image's
IMAGE_UID, IMAGE_GID = 50000, 0
FIX = "run `make test-containers` (docker/engine.sh install && docker/engine.sh up && docker/engine.sh build)"


def docker_host() -> str:
    """DOCKER_HOST as set by the caller, else the socket of docker/engine.sh (`docker/engine.sh env`)."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    line = subprocess.run(["bash", str(ENGINE_SH), "env"], capture_output=True, text=True, check=True).stdout
    return line.strip().removeprefix("export DOCKER_HOST=")


def client(*images: str):
    """A docker SDK client of the engine, which must answer and hold ``images``."""
    import docker  # installed with apache-airflow-providers-docker (the dev extra)

    url = docker_host()
    try:
        engine = docker.DockerClient(base_url=url, version="auto")
        engine.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine is the same message
        pytest.fail(f"no container engine answers at {url} ({exc}): {FIX}")
    missing = []
    for image in images:
        try:
            engine.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        pytest.fail(f"the engine at {url} lacks the images {missing}: {FIX}")
    return engine


def deployment_owned(workspace: Path) -> Path:
    """The workspace owned as a deployment owns it: by the Airflow user, uid 50000, group 0 (the training
    image's user too), group-writable; docker/airflow.Dockerfile does the same to the workspace volume."""
    for path in (workspace, *workspace.rglob("*")):
        os.chown(path, IMAGE_UID, IMAGE_GID, follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o060)
    return workspace


@contextmanager
def group_writable_umask() -> Iterator[None]:
    """umask 0002 while the pipeline's host-side steps run, as the Airflow image's entrypoint sets it: what they
    create in the workspace (reports/, models/) stays writable by group 0, the training container's group."""
    previous = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(previous)


def leftover_containers(engine, image: str) -> list:
    """Containers of ``image`` that still exist (running or exited)."""
    return engine.containers.list(all=True, filters={"ancestor": image})
