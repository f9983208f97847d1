# The MLflow tracking server of the compose stack (docker/compose.yaml): `mlflow server --app-name basic-auth`
# with its stores in PostgreSQL and its artefacts in MinIO (S3), plus the one-shot job that creates the
# pipeline's MLflow user (docker/mlflow-init.py). What `pip install -e '.[server]'` gives (docs/mlflow.md),
# pinned to the versions the tests ran.
#
#   docker build -f docker/mlflow.Dockerfile -t trafficlip-mlflow:3.17.2 docker/
#
# BASE is the same Python/Debian base as the other two images (docker/engine.sh builds a local one where no
# registry can be reached); a build secret `ca_bundle` (a CA bundle) is trusted by pip during the build only.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg[binary]==3.3.9" "boto3==1.44.8" \
    && useradd --uid 10001 --gid 0 --create-home --home-dir /home/mlflow mlflow

COPY mlflow-auth.ini mlflow-init.py /opt/mlflow/

WORKDIR /home/mlflow
USER 10001:0
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
