"""The training runners (tasks/orchestration/runners.py): local, Docker and Kubernetes run the train stage's
command; the containers get their GPUs, shared memory and the workspace.

No Docker engine or Kubernetes cluster exists here: the docker and kubernetes runners are built and
their rendered command, image, GPU request and resources asserted, never executed.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tasks.orchestration import runners
from tests.support import ROOT


def test_all_runners_run_the_train_stage_command():
    dvc_cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["cmd"].split()
    assert dvc_cmd[:3] == ["python", "-m", "tasks"]
    expected = ["trafficlip", *dvc_cmd[3:]]
    settings = runners.RunnerSettings(image="registry.example/trafficlip-train:1.2", gpus=1)
    docker = runners.docker_operator(settings, ROOT, task_id="d")
    pod = runners.kubernetes_operator(settings, ROOT, task_id="k")
    assert runners.train_command(ROOT, 0) == expected
    assert [*docker.entrypoint, *docker.command] == expected
    assert [*pod.cmds, *pod.arguments] == expected


def test_docker_runner_requests_gpus_and_mounts_the_workspace(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-in-worker-env")
    settings = runners.RunnerSettings.from_env({"TRAFFICLIP_TRAIN_IMAGE": "trafficlip-train:7", "TRAFFICLIP_TRAIN_GPUS": "2",
                                                "TRAFFICLIP_TRAIN_SHM": "16g",
                                                "TRAFFICLIP_DOCKER_WORKSPACE": "trafficlip-workspace",
                                                "TRAFFICLIP_DOCKER_NETWORK": "trafficlip"})
    op = runners.docker_operator(settings, ROOT, task_id="train_docker")
    assert op.image == "trafficlip-train:7"
    # torchrun starts the same program (the installed `trafficlip`), once per GPU
    assert op.entrypoint == ["torchrun"]
    assert op.command[:5] == ["--standalone", "--nproc_per_node=2", "--no-python", "trafficlip", "train"]
    assert op.network_mode == "trafficlip"
    [request] = op.device_requests
    assert request["Count"] == 2 and request["Capabilities"] == [["gpu"]]
    [mount] = op.mounts
    assert (mount["Target"], mount["Source"], mount["Type"]) == ("/workspace", "trafficlip-workspace", "volume")
    assert op.working_dir == "/workspace" and op.shm_size == 16 * 1024 ** 3
    assert "pw-in-worker-env" not in json.dumps(op.environment)   # added privately, only when the task runs
    assert "MLFLOW_TRACKING_PASSWORD" in runners.PASSED_ENV
    bind = runners.docker_operator(runners.RunnerSettings(), ROOT, task_id="t")
    assert bind.mounts[0]["Type"] == "bind" and bind.mounts[0]["Source"] == str(ROOT)
    assert bind.network_mode is None


def test_kubernetes_runner_requests_gpus_on_a_gpu_node():
    settings = runners.RunnerSettings.from_env({"TRAFFICLIP_TRAIN_GPUS": "4", "TRAFFICLIP_TRAIN_CPUS": "32",
                                                "TRAFFICLIP_TRAIN_MEMORY": "128Gi", "TRAFFICLIP_K8S_NAMESPACE": "ml",
                                                "TRAFFICLIP_K8S_PVC": "ws", "TRAFFICLIP_K8S_MLFLOW_SECRET": "mlf",
                                                "TRAFFICLIP_K8S_GPU_NODE_SELECTOR": "gpu=h200"})
    pod = runners.kubernetes_operator(settings, ROOT, task_id="train_kubernetes")
    assert pod.namespace == "ml" and pod.image == runners.RunnerSettings().image
    assert pod.cmds == ["torchrun"]
    assert pod.arguments[:5] == ["--standalone", "--nproc_per_node=4", "--no-python", "trafficlip", "train"]
    limits = pod.container_resources.limits
    assert limits == {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "4"}
    assert pod.container_resources.requests == limits
    assert pod.node_selector == {"gpu": "h200"}
    assert [(t.key, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "NoSchedule")]
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["workspace"].persistent_volume_claim.claim_name == "ws"
    assert volumes["dshm"].empty_dir.medium == "Memory"
    assert {m.mount_path for m in pod.volume_mounts} == {"/workspace", "/dev/shm"}
    assert pod.env_from[0].secret_ref.name == "mlf"
    cpu_only = runners.kubernetes_operator(runners.RunnerSettings(gpus=0), ROOT, task_id="k")
    assert "nvidia.com/gpu" not in cpu_only.container_resources.limits and not cpu_only.node_selector


def test_bad_runner_settings_are_named():
    with pytest.raises(ValueError, match="TRAFFICLIP_K8S_GPU_NODE_SELECTOR"):
        runners.RunnerSettings.from_env({"TRAFFICLIP_K8S_GPU_NODE_SELECTOR": "no-equals"})
    with pytest.raises(ValueError, match="TRAFFICLIP_TRAIN_GPUS"):
        runners.RunnerSettings.from_env({"TRAFFICLIP_TRAIN_GPUS": "-1"})
