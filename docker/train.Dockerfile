# The GPU training image: the `trafficlip` CLI on a Python/Debian base, run by the training DAG's `docker` runner
# (tasks/orchestration/runners.py, DockerOperator) and `kubernetes` runner (KubernetesPodOperator), or by hand.
#
#   docker build -f docker/train.Dockerfile -t trafficlip-train:0.1.0 .
#
# One GPU: the entrypoint is the CLI, the arguments are the `train` stage's command from dvc.yaml,
# run in the workspace (a git + DVC checkout of the project) mounted at /workspace:
#
#   docker run --rm --gpus 1 --shm-size 8g -v trafficlip-workspace:/workspace trafficlip-train:0.1.0 \
#     train --data data/prepared --manifest data/augmented/train_manifest.json --out models --reports reports
#
# Several GPUs, same image: torchrun (on PATH, from the torch wheel) starts one process per GPU:
#
#   docker run --rm --gpus 4 --shm-size 32g -v trafficlip-workspace:/workspace --entrypoint torchrun \
#     trafficlip-train:0.1.0 --standalone --nproc_per_node=4 -m tasks train --data data/prepared ...
#
# Healthy defaults (docs/deploy.md, "The training image"):
# - shared memory: Docker gives a container 64 MB of /dev/shm; NCCL (multi-GPU) and torch's shared-memory
#   tensors need far more. Run with --shm-size 8g or more (the DAG's runner passes TRAFFICLIP_TRAIN_SHM,
#   default 8g; the pod runner mounts a memory emptyDir of that size on /dev/shm).
# - CPU threads: torch uses every core it sees by default, which oversubscribes a container with a CPU
#   limit (and torchrun sets OMP_NUM_THREADS=1 per process). Set `train.threads` in params.yaml to the
#   CPUs per training process (the container's --cpus divided by the GPUs); 0 keeps torch's default.
#   Training reads decoded image shards (data/prepared), so there are no data-loader worker processes.
#
# The base is a build argument, the same for the three images of the stack (docker/engine.sh builds them on
# a Debian bookworm base made from Debian packages where no registry can be reached). The torch wheel from
# PyPI carries its own CUDA and cuDNN libraries (torch 2.15: CUDA 13.x), so no CUDA base image is needed: the
# host needs an NVIDIA driver for CUDA 13 (R580 or newer) and the NVIDIA Container Toolkit, which injects the
# driver's libraries into the container.
#
# Build arguments, all optional: BASE; TORCH_VERSION / TORCHVISION_VERSION; PIP_EXTRA_INDEX_URL (another wheel
# index for torch, e.g. https://download.pytorch.org/whl/cu128 for an older driver); WHEELHOUSE (a find-links
# folder or URL that holds torch, torchvision and their dependencies: torch then installs from it alone,
# --no-index, instead of downloading it; docker/engine.sh serves one to its builds). A build secret
# `ca_bundle` (a CA bundle file) is trusted by pip during the build only, for a network whose HTTPS proxy
# re-signs certificates; it never enters a layer.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG TORCH_VERSION=2.15.0
ARG TORCHVISION_VERSION=0.29.2
ARG PIP_EXTRA_INDEX_URL=""
ARG WHEELHOUSE=""

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DVC_NO_ANALYTICS=1 \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# git for the lineage tags (git commit of the workspace), a virtual environment for the project.
# DL3008 (apt packages without versions), on purpose: the base image's tag already fixes the Debian release,
# and Debian's archive keeps only the current version of each package, so exact pins would break the
# build at the next security update instead of taking it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && git config --system --add safe.directory /workspace

# torch and torchvision alone first (the largest layer, which changes only with their versions), from the
# wheelhouse when one is given, else from PyPI (plus PIP_EXTRA_INDEX_URL).
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"; fi \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# The project (open_clip_torch, dvc, mlflow and the `tasks` package with its `trafficlip` script), without
# the `dev` and `airflow` extras: the trainer runs one CLI command, it schedules nothing.
COPY pyproject.toml README.md /tmp/trafficlip/
COPY tasks /tmp/trafficlip/tasks
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" /tmp/trafficlip \
    && rm -rf /tmp/trafficlip \
    && command -v trafficlip torchrun \
    && useradd --uid 50000 --gid 0 --create-home --home-dir /home/trainer --shell /bin/bash trainer \
    && mkdir -p /workspace /cache \
    && chown trainer:0 /workspace /cache \
    && chmod 2775 /workspace /cache

# The workspace holds data/, models/ and outputs/ (DVC stage outputs, so they stay inside the checkout): mount
# it here. Model downloads (open_clip / Hugging Face pretrained weights) go to /cache: mount a volume there to
# keep them between runs; HF_HUB_OFFLINE is left to the caller (the DAG's runners set it, a first run may not).
WORKDIR /workspace
VOLUME ["/workspace"]

# uid 50000, group 0: the Airflow image's `airflow` user has the same ids, so both write the shared workspace
# volume. Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 50000:0

ENTRYPOINT ["trafficlip"]
CMD ["--help"]
