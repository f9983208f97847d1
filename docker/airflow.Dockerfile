# The Airflow image of the compose stack (docker/compose.yaml): Airflow with the providers the DAGs use and this
# project (the `tasks` package the DAGs import, with its `airflow` extra), on the same Python/Debian base as the
# training and MLflow images.
#
#   docker build -f docker/airflow.Dockerfile -t trafficlip-airflow:0.1.0 .
#
# Every Airflow process of the stack runs it: api-server, scheduler, dag-processor, triggerer, the Celery
# worker and the one-shot init (`trafficlip airflow-setup`). The DAGs are baked in at /opt/airflow/dags
# (the project's dags/); compose also mounts the checkout's dags/ there, so editing a DAG needs no rebuild.
# The worker runs the DVC stages (prepare, augment, evaluate, predict) itself, so the image has torch too:
# the CPU build by default (training goes to the GPU image through the docker or kubernetes runner).
#
# Laid out as the official apache/airflow image is, so compose and the Helm chart treat it the same way: user
# `airflow` uid 50000 group 0, AIRFLOW_HOME=/opt/airflow, entrypoint `dumb-init -- airflow` with umask 0002
# (files it writes in the shared workspace stay writable by group 0: the training image's user), so
# `command: scheduler` runs `airflow scheduler`. The official image itself is not the base: the three images
# share one Python/Debian base (BASE), which docker/engine.sh builds from Debian packages where no registry
# can be reached.
#
# Build arguments, all optional: BASE; AIRFLOW_CONSTRAINTS (Airflow's constraints file for this Airflow and
# Python: the official one by default); TORCH_INDEX_URL (CPU wheels by default); WHEELHOUSE (a find-links
# folder or URL with torch, torchvision and their dependencies: torch then installs from it alone, --no-index).
# A build secret `ca_bundle` (a CA bundle file) is trusted by pip during the build only.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
ARG AIRFLOW_CONSTRAINTS=https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt
ARG TORCH_VERSION=2.15.0
ARG TORCHVISION_VERSION=0.29.2
# the wheel index for torch: CPU-only (about 200 MB instead of several GB of CUDA libraries)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELHOUSE=""

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    DVC_NO_ANALYTICS=1 \
    TRAFFICLIP_WORKSPACE=/workspace

# git (DVC, the lineage tags, cloning the workspace), curl (the healthchecks), dumb-init (PID 1: signals to the
# Airflow process group), the `airflow` user, and the folders it owns. The workspace mount point belongs to
# airflow (uid 50000, group 0): Docker initialises an empty named volume from it, so the workspace volume is
# writable by the Airflow processes and by the training image's user.
# DL3008 (apt packages without versions), on purpose: the base image's tag already fixes the Debian release,
# and Debian's archive keeps only the current version of each package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git curl dumb-init ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow --shell /bin/bash airflow \
    && mkdir -p /workspace /opt/airflow/dags /opt/airflow/logs /opt/airflow/plugins /opt/airflow/auth /opt/trafficlip \
    && chown -R airflow:0 /workspace /opt/airflow /opt/trafficlip \
    && chmod 2775 /workspace /opt/airflow /opt/airflow/logs \
    && chmod 0770 /opt/airflow/auth \
    && git config --system --add safe.directory /workspace

# 1. torch and torchvision (the CPU build by default), from the wheelhouse when one is given.
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"; \
       else export PIP_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# 2. Airflow and the providers, with Airflow's constraints for this Airflow and Python (the official way to
#    add providers: what Airflow needs stays at the tested versions).
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
      apache-airflow-providers-docker apache-airflow-providers-cncf-kubernetes \
      apache-airflow-providers-celery apache-airflow-providers-postgres \
      --constraint "${AIRFLOW_CONSTRAINTS}"

# 3. The project and what it needs beyond Airflow (open_clip_torch, dvc, mlflow), without the constraints,
#    which pin shared libraries differently; Airflow and torch are held at their versions. celery 5.6.3
#    exactly (5.7.0 breaks the Airflow 3.3 scheduler: pyproject.toml), psycopg for the PostgreSQL metadata
#    database and the registry's advisory lock, dvc-s3 for a DVC remote on MinIO or S3. Installed editable
#    from /opt/trafficlip, so the project's params.yaml there is the training form's fallback defaults.
COPY --chown=airflow:0 pyproject.toml README.md params.yaml dvc.yaml /opt/trafficlip/
COPY --chown=airflow:0 tasks /opt/trafficlip/tasks
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "celery[redis]==5.6.3" \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
      "psycopg[binary]==3.3.9" "dvc-s3==3.3.0" -e "/opt/trafficlip[airflow]" \
    && command -v trafficlip dvc airflow celery

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 docker/airflow-init.sh /opt/trafficlip/docker/airflow-init.sh

WORKDIR /opt/airflow
# the image's `airflow` user (uid 50000, group 0), numeric so that Kubernetes' runAsNonRoot can check it
USER 50000:0
EXPOSE 8080
ENTRYPOINT ["/usr/bin/dumb-init", "--", "bash", "-c", "umask 0002 && exec airflow \"$@\"", "airflow"]
CMD ["version"]
