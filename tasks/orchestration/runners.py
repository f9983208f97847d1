"""The training step's three runners, built for the training DAG: `local`, `docker`, `kubernetes`.

All three run the same command: the `train` stage's CLI arguments from dvc.yaml
(`trafficlip train --data data/prepared ...`), in the workspace, so a run on a GPU node gives what
`dvc repro train` gives here. With more than one GPU the same program is started through
`torchrun --standalone --nproc_per_node=N --no-python trafficlip train ...`.

Deployment settings come from the environment of the process that parses the DAG (they describe
the installation, not a run): TRAFFICLIP_TRAIN_IMAGE, TRAFFICLIP_TRAIN_GPUS, TRAFFICLIP_TRAIN_CPUS,
TRAFFICLIP_TRAIN_MEMORY, TRAFFICLIP_TRAIN_SHM, TRAFFICLIP_DOCKER_WORKSPACE (host path or volume
mounted at /workspace), TRAFFICLIP_DOCKER_NETWORK (the network where the MLflow server resolves), TRAFFICLIP_K8S_NAMESPACE, TRAFFICLIP_K8S_PVC, TRAFFICLIP_K8S_MLFLOW_SECRET,
TRAFFICLIP_K8S_GPU_NODE_SELECTOR (key=value). MLflow credentials never enter the DAG: the docker
runner copies MLFLOW_* from the worker's environment when the task runs (private, not rendered), the
pod reads them from a Kubernetes Secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tasks.orchestration.workspace import stage_argv, workspace_path

CONTAINER_WORKSPACE = "/workspace"       # WORKDIR of docker/train.Dockerfile
# copied from the worker into the training container when the task runs (private: never rendered)
PASSED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "TRAFFICLIP_REGISTRY_LOCK", "HF_HUB_OFFLINE", "HF_TOKEN")


@dataclass(frozen=True)
class RunnerSettings:
    image: str = "trafficlip-train:0.1.0"
    gpus: int = 1
    cpus: int = 8
    memory: str = "32Gi"
    shm: str = "8g"
    docker_workspace: str = ""                 # "" -> bind-mount the workspace path itself
    docker_network: str = ""                   # "" -> Docker's default bridge
    namespace: str = "trafficlip"
    pvc: str = "trafficlip-workspace"
    mlflow_secret: str = "trafficlip-mlflow"
    gpu_node_selector: dict = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})

    @classmethod
    def from_env(cls, env: dict | None = None) -> "RunnerSettings":
        env = os.environ if env is None else env
        base = cls()
        selector = env.get("TRAFFICLIP_K8S_GPU_NODE_SELECTOR")
        if selector:
            key, sep, value = selector.partition("=")
            if not sep:
                raise ValueError(f"TRAFFICLIP_K8S_GPU_NODE_SELECTOR={selector!r}: expected key=value")
            node_selector = {key: value}
        else:
            node_selector = base.gpu_node_selector
        gpus = int(env.get("TRAFFICLIP_TRAIN_GPUS", base.gpus))
        if gpus < 0:
            raise ValueError(f"TRAFFICLIP_TRAIN_GPUS={gpus}: expected 0 or more")
        return cls(image=env.get("TRAFFICLIP_TRAIN_IMAGE", base.image), gpus=gpus,
                   cpus=int(env.get("TRAFFICLIP_TRAIN_CPUS", base.cpus)),
                   memory=env.get("TRAFFICLIP_TRAIN_MEMORY", base.memory),
                   shm=env.get("TRAFFICLIP_TRAIN_SHM", base.shm),
                   docker_workspace=env.get("TRAFFICLIP_DOCKER_WORKSPACE", base.docker_workspace),
                   docker_network=env.get("TRAFFICLIP_DOCKER_NETWORK", base.docker_network),
                   namespace=env.get("TRAFFICLIP_K8S_NAMESPACE", base.namespace),
                   pvc=env.get("TRAFFICLIP_K8S_PVC", base.pvc),
                   mlflow_secret=env.get("TRAFFICLIP_K8S_MLFLOW_SECRET", base.mlflow_secret),
                   gpu_node_selector=node_selector)


def train_command(root: Path | None = None, gpus: int = 1) -> list[str]:
    """The training command every runner runs (argv[0] is the program)."""
    argv = stage_argv(root or workspace_path(), "train")
    if gpus > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "--no-python", "trafficlip", *argv]
    return ["trafficlip", *argv]


def _shm_bytes(text: str) -> int:
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    text = text.strip().lower().rstrip("ib").rstrip("i")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def docker_operator(settings: RunnerSettings, root: Path, **task_kwargs):
    """DockerOperator running the training image with a GPU device request (the Docker engine's
    `--gpus N`), the workspace mounted at /workspace and a large /dev/shm for data loading."""
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    class TrainDockerOperator(DockerOperator):
        """Adds the worker's MLflow settings as private environment (not rendered, not serialised)."""

        def execute(self, context):
            self._private_environment = {**self._private_environment,
                                         **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
            return super().execute(context)

    command = train_command(root, settings.gpus)
    source = settings.docker_workspace or str(root)
    return TrainDockerOperator(
        image=settings.image,
        entrypoint=command[:1],
        command=command[1:],
        working_dir=CONTAINER_WORKSPACE,
        mounts=[Mount(target=CONTAINER_WORKSPACE, source=source,
                      type="bind" if source.startswith("/") else "volume")],
        device_requests=[DeviceRequest(count=settings.gpus, capabilities=[["gpu"]])] if settings.gpus else None,
        shm_size=_shm_bytes(settings.shm),
        network_mode=settings.docker_network or None,
        environment={"DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"},
        mount_tmp_dir=False,
        auto_remove="success",
        **task_kwargs,
    )


def kubernetes_operator(settings: RunnerSettings, root: Path, **task_kwargs):
    """KubernetesPodOperator: `nvidia.com/gpu` limits on a GPU node, the workspace PVC at /workspace,
    /dev/shm as a memory volume, MLflow settings from a Secret; the pod is deleted when it succeeds."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    command = train_command(root, settings.gpus)
    limits = {"cpu": str(settings.cpus), "memory": settings.memory}
    tolerations = []
    if settings.gpus:
        limits["nvidia.com/gpu"] = str(settings.gpus)
        tolerations = [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    return KubernetesPodOperator(
        name="trafficlip-train",
        namespace=settings.namespace,
        image=settings.image,
        cmds=command[:1],
        arguments=command[1:],
        container_resources=k8s.V1ResourceRequirements(requests=dict(limits), limits=limits),
        volumes=[
            k8s.V1Volume(name="workspace", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=settings.pvc)),
            k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
                medium="Memory", size_limit=f"{_shm_bytes(settings.shm) // 1024 ** 2}Mi")),
        ],
        volume_mounts=[k8s.V1VolumeMount(name="workspace", mount_path=CONTAINER_WORKSPACE),
                       k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
        env_vars=[k8s.V1EnvVar(name="DVC_NO_ANALYTICS", value="1"), k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1")],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.mlflow_secret,
                                                                        optional=True))],
        node_selector=settings.gpu_node_selector if settings.gpus else None,
        tolerations=tolerations,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        startup_timeout_seconds=900,
        **task_kwargs,
    )
