# The MLflow tracking server of the compose stack (docker/compose.yaml): `mlflow server --app-name basic-auth`
# with its stores in PostgreSQL and its artefacts in MinIO (S3), plus the one-shot job that creates the
# pipeline's MLflow user (docker/mlflow-init.py). What `pip install -e '.[server]'` gives (docs/mlflow.md),
# pinned to the versions the tests ran.
#
#   docker build -f docker/mlflow.Dockerfile -t trafficlip-mlflow:3.17.2 docker/
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg[binary]==3.3.9" "boto3==1.44.8" \
    && useradd --uid 10001 --gid 0 --create-home --home-dir /home/mlflow mlflow

COPY mlflow-auth.ini mlflow-init.py /opt/mlflow/

WORKDIR /home/mlflow
USER 10001:0
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
