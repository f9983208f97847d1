"""The training DAG with runner=docker, end to end, against a real engine and a real MLflow server:
`dag.test()` runs the tasks in this process (the worker), the `train_docker` task's DockerOperator starts the
training image with the workspace bind-mounted, training runs in the container on the CPU and logs to the
tracking server; record_train, evaluate, register and promote follow on the worker.

Where the MLflow URL resolves: the worker reaches the server at http://127.0.0.1:PORT, and the runner passes
that same URL to the container, so the container joins the host's network (TRAFFICLIP_DOCKER_NETWORK=host),
the setting for a worker that runs on the Docker host itself. On Docker's default bridge 127.0.0.1 would be the
container. (In the compose stack the container joins the stack's network instead, where http://mlflow:5000
resolves.)"""

from __future__ import annotations

import pytest
import yaml

from tests.support import airflow
from tests.support import engine as engine_support

pytestmark = pytest.mark.containers


def test_training_dag_with_the_docker_runner_trains_in_the_container_and_registers(
        engine, workspace, mlflow_server, airflow_db, monkeypatch):
    # the deployment's settings, read when the DAG is parsed (tasks/orchestration/runners.py)
    monkeypatch.setenv("DOCKER_HOST", engine_support.docker_host())
    monkeypatch.setenv("TRAFFICLIP_WORKSPACE", str(workspace))
    monkeypatch.setenv("TRAFFICLIP_TRAIN_IMAGE", engine_support.TRAIN_IMAGE)
    monkeypatch.setenv("TRAFFICLIP_TRAIN_GPUS", "0")        # no GPU here: no device request
    monkeypatch.setenv("TRAFFICLIP_TRAIN_SHM", "1g")
    monkeypatch.setenv("TRAFFICLIP_DOCKER_NETWORK", "host")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bag = airflow.dagbag()
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[airflow.TRAINING]
    docker_task = dag.get_task("train_docker")
    assert docker_task.network_mode == "host" and docker_task.mounts[0]["Source"] == str(workspace)

    conf = {"epochs": 2, "batch_size": 16, "learning_rate": 0.002, "floor": 0.0, "runner": "docker"}
    with engine_support.group_writable_umask():
        run = dag.test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    xcom = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in run.get_task_instances() if ti.state == "success"}

    assert run.state == "success", states
    assert {t: s for t, s in states.items() if t.startswith("train_")} == {
        "train_docker": "success", "train_local": "skipped", "train_kubernetes": "skipped"}, states
    assert all(s == "success" for t, s in states.items() if not t.startswith("train_")), states
    # the container wrote the model (as the image's user) and dvc.lock records it, with the run's learning rate
    model = workspace / "models" / "model"
    assert (model / "open_clip_config.json").is_file()
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["lr"] == 0.002
    # the MLflow run written from inside the container reached the tracking server
    from mlflow import MlflowClient
    client = MlflowClient(mlflow_server)
    run_id = xcom["record_train"]["mlflow_run_id"]
    assert run_id, xcom["record_train"]
    train_run = client.get_run(run_id)
    assert train_run.info.status == "FINISHED" and train_run.data.metrics, train_run.info
    # register and promote went through the same server
    assert xcom["register"]["version"] == 1
    assert xcom["promote"]["decision"] == "promoted" and xcom["promote"]["champion_after"] == 1
    registered = yaml.safe_load((workspace / "params.yaml").read_text())["mlflow"]["registered_model"]
    assert int(client.get_model_version_by_alias(registered, "champion").version) == 1
    assert not engine_support.leftover_containers(engine, engine_support.TRAIN_IMAGE)
