"""The training image run through the project's `docker` runner (tasks/orchestration/runners.py: the
DockerOperator the training DAG builds) against a real engine: the workspace bind-mounted, the `train` stage's
command trained on the CPU inside the container, its outputs in the workspace owned by the image's user, the
MLflow run written from inside the container, and a failing command's exit code reaching the task."""

from __future__ import annotations

import pytest

from tasks.orchestration import workspace as orch
from tests.support import cli
from tests.support import engine as engine_support
from tests.support.workspace import project_env

pytestmark = pytest.mark.containers


def test_the_docker_runner_trains_in_the_image_and_the_outputs_land_in_the_workspace(
        engine, workspace, mlflow_server, train_operator, monkeypatch):
    # the worker's MLflow settings, which the runner passes to the container when the task runs; the server
    # listens on the host's 127.0.0.1, so the container joins the host's network (test_training_dag.py says why)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine_support.host_stages(workspace, project_env(MLFLOW_TRACKING_URI=mlflow_server), "prepare", "augment")
    op = train_operator(workspace, TRAFFICLIP_DOCKER_NETWORK="host")
    assert op.image == engine_support.TRAIN_IMAGE and op.device_requests is None and op.network_mode == "host"
    assert [m["Type"] for m in op.mounts] == ["bind"] and op.mounts[0]["Source"] == str(workspace)
    assert "MLFLOW_TRACKING_URI" not in op.environment   # private: added when the task runs, never rendered

    op.execute(context={})

    model = workspace / "models" / "model" / "open_clip_model.safetensors"
    summary = workspace / "reports" / "train_summary.json"
    assert model.is_file() and summary.is_file()
    # written by the image's user (uid 50000, group 0), not root: the Airflow user of a deployment owns them
    for path in (model, summary, model.parent):
        stat = path.stat()
        assert (stat.st_uid, stat.st_gid) == (engine_support.IMAGE_UID, engine_support.IMAGE_GID), path
    # the training ran in the container, and the tracking server got its run, artefacts included
    report = orch.read_report(workspace, "reports/train_summary.json")
    assert report["steps"] > 0 and report.get("mlflow_run_id"), report
    from mlflow import MlflowClient
    client = MlflowClient(mlflow_server)
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics, run.info
    assert client.list_artifacts(run.info.run_id), "no artefact reached the server"
    # auto_remove="success": a container that succeeded is gone
    assert not engine_support.leftover_containers(engine, engine_support.TRAIN_IMAGE)


def test_a_failing_training_container_fails_the_task_with_its_exit_code(engine, workspace, mlflow_server, train_operator,
                                                                      monkeypatch):
    """The CLI's exit code (2: a user's mistake) reaches the DockerOperator, which fails the task with the
    container's output (in the task's log too); the container is removed all the same (the provider's
    auto_remove="success" removes it once its logs are read, whatever its exit code)."""
    from airflow.providers.docker.exceptions import DockerContainerFailedException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    args = ["train", "--data", "data/no-such-folder", "--manifest", "data/no-such-manifest.json", "--out", "models",
            "--reports", "reports"]
    expected = cli.run(*args, cwd=workspace, env=project_env(MLFLOW_TRACKING_URI=mlflow_server))
    assert expected.returncode == 2, expected.stderr
    op = train_operator(workspace, TRAFFICLIP_DOCKER_NETWORK="host")
    assert op.entrypoint == ["trafficlip"] and op.command[0] == args[0] == "train"
    op.command = args
    with pytest.raises(DockerContainerFailedException) as failure:
        op.execute(context={})
    assert "'StatusCode': 2" in str(failure.value), failure.value
    assert any("no-such-folder" in line for line in failure.value.logs), failure.value.logs
    assert not engine_support.leftover_containers(engine, engine_support.TRAIN_IMAGE)
