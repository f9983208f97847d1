# The Airflow image of the compose stack (docker/compose.yaml): the official Airflow image plus this project
# (the `tasks` package the DAGs import, with its `airflow` extra) and the providers the DAGs use.
#
#   docker build -f docker/airflow.Dockerfile -t trafficlip-airflow:0.1.0 .
#
# Every Airflow process of the stack runs it: api-server, scheduler, dag-processor, triggerer, the Celery
# worker and the one-shot init (`trafficlip airflow-setup`). The DAGs are baked in at /opt/airflow/dags
# (the project's dags/); compose also mounts the checkout's dags/ there, so editing a DAG needs no rebuild.
# The worker runs the DVC stages (prepare, augment, evaluate, predict) itself, so the image has torch too:
# the CPU build by default (training goes to the GPU image through the docker or kubernetes runner).
FROM apache/airflow:3.3.2-python3.11

ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.15.0
ARG TORCHVISION_VERSION=0.29.2
# the wheel index for torch: CPU-only (about 200 MB instead of several GB of CUDA libraries)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The workspace mount point, owned by airflow (uid 50000, group 0): Docker initialises an empty named volume
# from it, so the workspace volume is writable by the Airflow processes and by the training image's user.
USER 0
RUN mkdir -p /workspace /opt/airflow/auth /opt/trafficlip \
    && chown airflow:0 /workspace /opt/airflow/auth /opt/trafficlip \
    && chmod 2775 /workspace \
    && chmod 0770 /opt/airflow/auth \
    && git config --system --add safe.directory /workspace
# back to the image's `airflow` user (uid 50000, group 0), numeric so that Kubernetes' runAsNonRoot can check it
USER 50000:0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1

# 1. Airflow and the providers, with Airflow's constraints for this Airflow and Python (the official way to
#    add providers: what the image already has stays at the tested versions).
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
      apache-airflow-providers-docker apache-airflow-providers-cncf-kubernetes \
      apache-airflow-providers-celery apache-airflow-providers-postgres \
      --constraint "https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt"

# 2. The project and what it needs beyond Airflow (torch, open_clip_torch, dvc, mlflow), without the
#    constraints, which pin shared libraries differently; Airflow itself is held at its version. celery 5.6.3
#    exactly (5.7.0 breaks the Airflow 3.3 scheduler: pyproject.toml), psycopg for the PostgreSQL metadata
#    database and the registry's advisory lock, dvc-s3 for a DVC remote on MinIO or S3. Installed editable
#    from /opt/trafficlip, so the project's params.yaml there is the training form's fallback defaults.
COPY --chown=airflow:0 pyproject.toml README.md params.yaml dvc.yaml /opt/trafficlip/
COPY --chown=airflow:0 tasks /opt/trafficlip/tasks
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "celery[redis]==5.6.3" \
      "psycopg[binary]==3.3.9" "dvc-s3==3.3.0" -e "/opt/trafficlip[airflow]" \
    && command -v trafficlip dvc

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 docker/airflow-init.sh /opt/trafficlip/docker/airflow-init.sh

ENV TRAFFICLIP_WORKSPACE=/workspace
