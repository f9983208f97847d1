#!/usr/bin/env bash
# The compose stack's one-shot Airflow set-up (service airflow-init), run on every `docker compose up`:
# 1. the simple auth manager's password file from AIRFLOW_ADMIN_PASSWORD (docker/.env), readable by airflow only;
# 2. `trafficlip airflow-setup`: `airflow db migrate` and the DAGs' pools (trafficlip_dvc, trafficlip_promotion);
# 3. when the workspace volume is still empty and WORKSPACE_GIT_URL is set: clone it there, then `dvc pull`.
# Idempotent: an existing workspace is never touched.
set -euo pipefail
# files written in the shared workspace stay writable by group 0 (the training image's user), as the entrypoint does
umask 0002
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set (docker/.env)}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"

python - <<'PY'
import json, os, pathlib

path = pathlib.Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
users = [entry.split(":")[0] for entry in os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
path.parent.mkdir(parents=True, exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as handle:
    json.dump({users[0]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, handle)
os.chmod(path, 0o600)
print(f"simple auth manager: password of {users[0]!r} written to {path}")
PY

trafficlip airflow-setup

workspace="${TRAFFICLIP_WORKSPACE:-/workspace}"
if [[ -f "$workspace/dvc.yaml" ]]; then
  echo "workspace: $workspace holds a checkout ($(git -C "$workspace" rev-parse --short HEAD 2>/dev/null || echo 'no commit'))"
elif [[ -n "${WORKSPACE_GIT_URL:-}" ]]; then
  echo "workspace: cloning $WORKSPACE_GIT_URL into $workspace"
  git clone --quiet "$WORKSPACE_GIT_URL" "$workspace"
  (cd "$workspace" && { dvc pull --quiet || echo "workspace: dvc pull failed (no remote, or no data pushed yet)"; })
else
  echo "workspace: $workspace is empty; the training DAG fails to import until it holds a checkout of the"
  echo "project (set WORKSPACE_GIT_URL in docker/.env, or see docs/deploy.md, 'The workspace')"
fi
