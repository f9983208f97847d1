"""
### Batch retrieval with the champion model

Ranks every image of a gallery folder for every line of a query file (the format of
`test/test_text.txt`) with the registry's current `@champion` (or a version or checkpoint you name),
and writes `submission.json` (the challenge's format), `gallery.png` (the top images of the first
queries) and `retrieval_report.json` (model version, counts, unreadable images) to the output folder.
The ranking follows the workspace's `params.yaml` `retrieval` section, as evaluation does.

It also runs **each time `@champion` moves** (the asset `trafficlip-champion`: a gated promotion in
the training DAG, a rollback, or a move by hand in the MLflow UI that `trafficlip_registry_watch` finds).
Such a run, and a manual one with empty fields, uses the Airflow Variables `trafficlip_retrieval_gallery`,
`trafficlip_retrieval_queries` and `trafficlip_retrieval_output` when they are set, else the workspace's
test split (`data/raw/test/`) and `outputs/champion-retrieval/`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Variable, task

from tasks.core import paths
from tasks.orchestration import dag_defaults as shared
from tasks.orchestration import workspace as orch

CHAMPION = Asset(**orch.CHAMPION_ASSET)


def _path_field(title: str, what: str, name: str, default: str, section: str):
    """An optional path (null: an empty field; a Param whose type has no null is a required field)."""
    return shared.param("", type=["null", "string"], maxLength=1000, title=title, section=section,
                        description=f"Absolute path, on the workers, of {what}. Empty: the Airflow Variable "
                                    f"trafficlip_retrieval_{name}, else the workspace's {default}.")


def _field(params: dict, name: str, default: str) -> str:
    """A form field, else the Airflow Variable trafficlip_retrieval_<name>, else the workspace's default."""
    return params.get(name) or Variable.get(f"trafficlip_retrieval_{name}", default=None) or \
        str(orch.workspace() / default)

with DAG(
    dag_id="trafficlip_retrieval",
    description="Rank a gallery folder for a query file with the @champion model; runs when @champion moves "
                "(asset trafficlip-champion)",
    doc_md=__doc__,
    schedule=[CHAMPION],
    start_date=datetime(2026, 1, 1),
    is_paused_upon_creation=shared.PAUSED_UPON_CREATION,
    catchup=False,
    tags=[shared.TAG, "retrieval", "mlflow"],
    default_args=shared.default_args(execution_timeout=timedelta(hours=6)),
    params={
        "gallery": _path_field("Gallery folder", "a folder of images (jpg, png, ...)", "gallery",
                               paths.RAW_TEST_IMAGES, "Input"),
        "queries": _path_field("Query file", "a text file, one query per line", "queries", paths.RAW_TEST_QUERIES,
                               "Input"),
        "output": _path_field("Output folder", "the folder for submission.json, gallery.png and "
                              "retrieval_report.json", "output", paths.CHAMPION_RETRIEVAL, "Output"),
        "model": shared.param("", type=["null", "string"], maxLength=1000, title="Model",
                              description="Empty: the registry's @champion. Or models:/NAME/VERSION, "
                                          "models:/NAME@ALIAS, or a local checkpoint folder.", section="Model"),
    },
) as dag:

    @task
    def retrieve(params: dict | None = None) -> dict:
        args = ["retrieve", "--gallery", _field(params, "gallery", paths.RAW_TEST_IMAGES),
                "--queries", _field(params, "queries", paths.RAW_TEST_QUERIES),
                "--out", _field(params, "output", paths.CHAMPION_RETRIEVAL)]
        if params["model"]:
            args += ["--model", params["model"]]
        return shared.guard(orch.cli, args, orch.workspace(), "trafficlip retrieve")

    retrieve()
