"""The Airflow and MLflow images built by docker/engine.sh start and hold what the compose stack runs: Airflow's
CLI through the image's entrypoint, the project's DAGs parsing inside the image (before any workspace exists,
as on a stack's first start), the pipeline's packages; the MLflow server's auth app, PostgreSQL and S3 clients."""

from __future__ import annotations

import pytest

from tests.support import airflow as airflow_support
from tests.support import engine as engine_support

pytestmark = pytest.mark.containers

PARSE_DAGS = ("from airflow.dag_processing.dagbag import DagBag; bag = DagBag('/opt/airflow/dags'); "
              "assert not bag.import_errors, bag.import_errors; print(' '.join(sorted(bag.dags)))")


def _run(engine, image: str, command: list[str], entrypoint: list[str] | None = None) -> str:
    """The output of a container of ``image`` run to its end, removed after; a non-zero exit fails."""
    container = engine.containers.run(image, command, entrypoint=entrypoint, detach=True)
    try:
        status = container.wait()["StatusCode"]
        output = container.logs().decode(errors="replace")
        assert status == 0, f"{image} {command}: exit {status}\n{output[-3000:]}"
        return output
    finally:
        container.remove(force=True)


def test_the_airflow_image_runs_airflow_as_its_user_and_parses_the_dags():
    engine = engine_support.client(engine_support.AIRFLOW_IMAGE)
    import airflow
    assert _run(engine, engine_support.AIRFLOW_IMAGE, ["version"]).strip().endswith(airflow.__version__)
    dags = _run(engine, engine_support.AIRFLOW_IMAGE, ["-c", PARSE_DAGS], entrypoint=["python"])
    # the DAGs baked into the image are the checkout's (the image is built from this commit)
    assert dags.splitlines()[-1].split() == sorted(airflow_support.dagbag().dags), dags
    script = ("set -e; umask; id -u; id -g; command -v dumb-init curl git dvc trafficlip celery; "
              "python -c 'import torch, open_clip, psycopg, docker, airflow.providers.celery'")
    who = _run(engine, engine_support.AIRFLOW_IMAGE, ["-c", script], entrypoint=["bash"])
    assert who.split()[:3] == ["0022", "50000", "0"], who   # a plain `bash` entrypoint: the default umask
    # the image's own entrypoint runs airflow with umask 0002 (the shared workspace stays group-writable)
    info = engine.api.inspect_image(engine_support.AIRFLOW_IMAGE)["Config"]
    assert "umask 0002" in " ".join(info["Entrypoint"]) and info["User"] == "50000:0"


def test_the_mlflow_image_has_the_server_with_auth_and_its_store_clients():
    engine = engine_support.client(engine_support.MLFLOW_IMAGE)
    out = _run(engine, engine_support.MLFLOW_IMAGE,
               ["-c", "import os, mlflow, mlflow.server.auth, psycopg, boto3; print(mlflow.__version__, os.getuid())"],
               entrypoint=["python"])
    assert out.splitlines()[-1].split() == ["3.17.2", "10001"], out   # (stderr's warnings before it)
