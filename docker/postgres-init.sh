#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is empty (/docker-entrypoint-initdb.d): the image has already created
# POSTGRES_USER (airflow) and its database; this adds MLflow's role and its two databases (the tracking store
# and the basic-auth user store). Passwords come from the container's environment (docker/.env).
set -euo pipefail
: "${POSTGRES_MLFLOW_PASSWORD:?POSTGRES_MLFLOW_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=mlflow_password="$POSTGRES_MLFLOW_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
REVOKE ALL ON DATABASE mlflow, mlflow_auth FROM PUBLIC;
SQL
