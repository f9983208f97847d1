"""Create (or re-password) the MLflow user the pipeline logs as; run once per `docker compose up`.

Reads MLFLOW_TRACKING_URI (the server), MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD (the admin
the server created) and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the pipeline's user, the same
values the Airflow services log in with). Idempotent: an existing user gets the password from .env.
"""

from __future__ import annotations

import os
import sys
import time

import requests


def main() -> int:
    url = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    admin = (os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin", os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
    user = {"username": os.environ["MLFLOW_TRACKING_USERNAME"], "password": os.environ["MLFLOW_TRACKING_PASSWORD"]}
    for _ in range(60):
        try:
            if requests.get(f"{url}/health", timeout=5).ok:
                break
        except requests.RequestException:
            pass
        time.sleep(2)
    created = requests.post(f"{url}/api/2.0/mlflow/users/create", json=user, auth=admin, timeout=30)
    if created.ok:
        print(f"MLflow user {user['username']!r} created")
        return 0
    if created.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in created.text:
        updated = requests.patch(f"{url}/api/2.0/mlflow/users/update-password", json=user, auth=admin, timeout=30)
        if updated.ok:
            print(f"MLflow user {user['username']!r} exists; password set from the environment")
            return 0
        created = updated
    print(f"creating MLflow user {user['username']!r} failed: HTTP {created.status_code} {created.text[:300]}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
