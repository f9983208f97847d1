"""The container engine of the container tests (tests/containers): docker/engine.sh's API socket, the images it
built, a workspace owned as a deployment owns it, the stages a worker runs before training, the `docker` runner's
operator as the training DAG builds it, and the containers of one workspace. Nothing here starts the engine: `make test-containers`
does (docker/engine.sh install, up, build) before pytest; an engine that does not answer, or an image that is
missing, fails the test with the command that fixes it, never a skip."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.orchestration import runners
from tasks.orchestration import workspace as orch
from tests.support import ROOT, cli

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


def host_stages(workspace: Path, env: dict, *stages: str) -> None:
    """The stages before train, run on the host as the DAG's worker runs them (dvc.yaml's commands), with the
    Airflow image's umask (group_writable_umask)."""
    with group_writable_umask():
        for stage in stages:
            result = cli.run(*orch.stage_argv(workspace, stage), cwd=workspace, env=env)
            assert result.returncode == 0, f"{stage}:\n{result.stderr[-3000:]}"


def train_operator(workspace: Path, **overrides: str):
    """The `docker` runner's DockerOperator as the training DAG builds it (tasks/orchestration/runners.py), for the
    training image of this engine on a machine without a GPU (TRAFFICLIP_TRAIN_GPUS=0: no device request, which
    Docker refuses where no NVIDIA runtime is installed); ``overrides`` are more deployment settings. Its docker
    client reads DOCKER_HOST when it runs: set it to docker_host() (conftest's ``train_operator`` fixture does)."""
    settings = runners.RunnerSettings.from_env({"TRAFFICLIP_TRAIN_GPUS": "0", "TRAFFICLIP_TRAIN_SHM": "1g",
                                                "TRAFFICLIP_TRAIN_IMAGE": TRAIN_IMAGE, **overrides})
    return runners.docker_operator(settings, workspace, task_id="train_docker")


def workspace_containers(engine, workspace: Path, running_only: bool = False) -> list:
    """The training image's containers that have ``workspace`` bind-mounted: this test's own, never another
    test's or another session's on the same engine."""
    return [c for c in engine.containers.list(all=not running_only, filters={"ancestor": TRAIN_IMAGE})
            if any(m.get("Source") == str(workspace) for m in c.attrs.get("Mounts", []))]
