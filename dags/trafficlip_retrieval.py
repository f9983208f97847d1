"""
### Batch retrieval with the champion model

Ranks every image of a gallery folder for every line of a query file (the format of
`test/test_text.txt`) with the registry's current `@champion` (or a version or checkpoint you name),
and writes `submission.json` (the challenge's format), `gallery.png` (the top images of the first
queries) and `retrieval_report.json` (model version, counts, unreadable images) to the output folder.
The ranking follows the workspace's `params.yaml` `retrieval` section, as evaluation does.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task

from tasks.orchestration import dag_defaults as shared
from tasks.orchestration import workspace as orch

with DAG(
    dag_id="trafficlip_retrieval",
    description="Rank a gallery folder for a query file with the @champion model",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    is_paused_upon_creation=shared.PAUSED_UPON_CREATION,
    catchup=False,
    tags=[shared.TAG, "retrieval", "mlflow"],
    default_args=shared.default_args(execution_timeout=timedelta(hours=6)),
    params={
        "gallery": Param("", type="string", minLength=1, maxLength=1000, title="Gallery folder",
                         description="Absolute path of a folder of images (jpg, png, ...) on the workers.",
                         section="Input"),
        "queries": Param("", type="string", minLength=1, maxLength=1000, title="Query file",
                         description="Absolute path of a text file, one query per line.", section="Input"),
        "output": Param("", type="string", minLength=1, maxLength=1000, title="Output folder",
                        description="Where submission.json, gallery.png and retrieval_report.json go.",
                        section="Output"),
        # null: an empty field (a Param whose type has no null is a required field)
        "model": Param("", type=["null", "string"], maxLength=1000, title="Model",
                       description="Empty: the registry's @champion. Or models:/NAME/VERSION, models:/NAME@ALIAS, "
                                   "or a local checkpoint folder.", section="Model"),
    },
) as dag:

    @task
    def retrieve(params: dict | None = None) -> dict:
        args = ["retrieve", "--gallery", params["gallery"], "--queries", params["queries"], "--out", params["output"]]
        if params["model"]:
            args += ["--model", params["model"]]
        return shared.guard(orch.cli, args, orch.workspace(), "trafficlip retrieve")

    retrieve()
