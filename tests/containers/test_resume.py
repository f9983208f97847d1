"""The training container killed mid-epoch, against a real engine: the task's retry resumes from the last
checkpoint and ends with exactly the weights of an uninterrupted run.

The workspace is the tiny one of the other container tests (2 epochs of 4 steps), with a checkpoint every EVERY
steps besides each epoch's (`train.checkpoint_every_steps` in its params.yaml). Its prepared
data is copied to a second workspace, where the same image trains without interruption: the reference (container
against container, so both runs use the image's torch, whatever the host's is). In the first workspace the
`docker` runner's DockerOperator, as the training DAG builds it, starts the training; once a checkpoint made
inside the second epoch exists, the container is frozen (the engine's pause) and confirmed there, then killed with
the engine's kill (SIGKILL): the operator fails the task with exit code 137, a failure Airflow retries. The retry
runs the same operator again: its container's output says it resumed from that checkpoint's step and trained
only the steps left, it succeeds, and its model, loss curve and step count are the reference's.

The container's output is read from the engine while it runs: it is what the operator copies line by line into
the task's log."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.orchestration import runners
from tasks.orchestration import workspace as orch
from tests.support import engine as engine_support
from tests.support.weights import assert_same_weights
from tests.support.workspace import project_env

pytestmark = pytest.mark.containers

EVERY = 1            # a checkpoint after every step: the tiny workspace's second epoch (steps 5-8 of 8) has three
                     # made inside it, so the kill has a window of three steps, not one
POLL_S = 0.05        # how often the checkpoint pointer and the engine are looked at
DEADLINE_S = 600     # the longest any one wait may take before the test fails


def _checkpoint_every(workspace: Path, steps: int) -> None:
    """Set train.checkpoint_every_steps in the workspace's params.yaml (a line edit, as a user makes it)."""
    params = workspace / "params.yaml"
    text = params.read_text()
    assert "checkpoint_every_steps: 0 " in text, "params.yaml no longer has `checkpoint_every_steps: 0 `"
    params.write_text(text.replace("checkpoint_every_steps: 0 ", f"checkpoint_every_steps: {steps} "))


def _pointer(workspace: Path) -> dict | None:
    """models/checkpoints/last.json (tasks/steps/train.py's Checkpoints), written atomically: whole or absent."""
    try:
        return json.loads((workspace / "models" / "checkpoints" / "last.json").read_text())
    except FileNotFoundError:
        return None


def _inside_the_second_epoch(pointer: dict | None) -> dict | None:
    """The pointer if it names a checkpoint made inside the second epoch or later, not at an epoch's end
    (its ``epoch`` is steps done / steps per epoch)."""
    return pointer if pointer and pointer["epoch"] > 1 and pointer["epoch"] % 1 else None


def _poll(what: str, found: Callable[[], object], running: Future, deadline: float):
    """``found()``'s first true value, looked for every POLL_S while ``running`` (the operator) has not returned."""
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if running.done():
            pytest.fail(f"the operator returned before {what}: {running.exception() or running.result()!r}")
        wait([running], timeout=POLL_S)
    pytest.fail(f"no {what} within {DEADLINE_S} s")


@contextmanager
def _executing(op, engine, workspace: Path) -> Iterator[Future]:
    """``op.execute`` in a thread, as the task's process runs it; on the way out, whatever happened, a container
    of the workspace that still runs is killed and the thread joined (a failed assertion never waits for a
    training to end)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="train_docker")
    try:
        yield pool.submit(op.execute, {})
    finally:
        for container in engine_support.workspace_containers(engine, workspace, running_only=True):
            container.kill()
        pool.shutdown(wait=True)


def _kill_inside_the_second_epoch(engine, workspace: Path, running: Future) -> dict:
    """Once a checkpoint made inside the second epoch is the last one, freeze the training container and confirm
    it there, then kill it (SIGKILL, delivered to the frozen processes): the kill lands where it was confirmed.
    Frozen anywhere else (the pointer moved on to an epoch's end), it is thawed and the wait goes on. Returns the
    pointer the training was killed after."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        _poll("a checkpoint inside the second epoch", lambda: _inside_the_second_epoch(_pointer(workspace)),
              running, deadline)
        containers = engine_support.workspace_containers(engine, workspace, running_only=True)
        assert len(containers) == 1, containers
        containers[0].pause()
        pointer = _inside_the_second_epoch(_pointer(workspace))
        if pointer:
            containers[0].kill()
            return pointer
        containers[0].unpause()


def test_a_training_container_killed_mid_epoch_is_retried_resumes_and_ends_with_the_uninterrupted_weights(
        engine, workspace, mlflow_server, train_operator, monkeypatch, tmp_path):
    from airflow.providers.docker.exceptions import DockerContainerFailedException
    from airflow.sdk.exceptions import AirflowFailException

    # the worker's settings, which the runner passes to the container (test_trainer_image.py says why the host network)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _checkpoint_every(workspace, EVERY)
    engine_support.host_stages(workspace, project_env(MLFLOW_TRACKING_URI=mlflow_server), "prepare", "augment")
    reference = engine_support.deployment_owned(shutil.copytree(workspace, tmp_path / "reference", symlinks=True))

    # the reference: the same prepared workspace, trained in the same image without interruption
    train_operator(reference, TRAFFICLIP_DOCKER_NETWORK="host").execute(context={})
    expected = orch.read_report(reference, "reports/train_summary.json")
    total, per_epoch = expected["steps"], expected["steps"] // expected["epochs"]
    assert expected["epochs"] >= 2 and per_epoch > EVERY, f"no checkpoint inside the second epoch: {expected}"

    # the first try, killed once a checkpoint inside the second epoch is the last one
    op = train_operator(workspace, TRAFFICLIP_DOCKER_NETWORK="host")
    with _executing(op, engine, workspace) as first_try:
        killed_after = _kill_inside_the_second_epoch(engine, workspace, first_try)
        failure = first_try.exception(timeout=DEADLINE_S)
    # the task fails with the container's exit code, as a failure Airflow retries (AirflowFailException is not)
    assert isinstance(failure, DockerContainerFailedException), repr(failure)
    assert not isinstance(failure, AirflowFailException)
    assert "'StatusCode': 137" in str(failure), failure
    # killed mid-epoch, before the end: no model, the checkpoint it was killed after still the last one
    step = killed_after["step"]
    assert per_epoch < step < total and step % per_epoch, killed_after
    assert not (workspace / "models" / "model").exists()
    assert _pointer(workspace) == killed_after
    assert not engine_support.workspace_containers(engine, workspace)      # removed all the same

    # the retry: the same operator run again, as the task's next try runs it
    with _executing(op, engine, workspace) as retry:
        container = _poll("the retry's container", lambda: next(
            iter(engine_support.workspace_containers(engine, workspace, running_only=True)), None),
            retry, time.monotonic() + DEADLINE_S)
        output = container.logs(stdout=True, stderr=True, follow=True).decode(errors="replace")
        retry.result(timeout=DEADLINE_S)                                   # succeeded (raises otherwise)
    argv = runners.train_command(workspace, gpus=0)                       # the path as the command names it
    folder = Path(argv[argv.index("--out") + 1]) / "checkpoints" / killed_after["folder"]
    assert f"resuming from {folder} (step {step} of {total})" in output, output[-3000:]
    left = total - step
    assert f"train: {left}/{left} (" in output, output[-3000:]             # only the steps left were trained

    # the same training as the uninterrupted one: weights bit for bit, the loss curve, the steps
    assert_same_weights(reference / "models" / "model", workspace / "models" / "model")
    assert (workspace / "reports" / "train_steps.csv").read_text() == \
        (reference / "reports" / "train_steps.csv").read_text()
    summary = orch.read_report(workspace, "reports/train_summary.json")
    assert summary["steps"] == total and summary["final_loss"] == expected["final_loss"], summary
    # the retry's MLflow run reached the tracking server and finished
    from mlflow import MlflowClient
    assert MlflowClient(mlflow_server).get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert not engine_support.workspace_containers(engine, workspace)
    assert not engine_support.workspace_containers(engine, reference)
