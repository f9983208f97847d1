"""
### Ingest a new version of the raw dataset

Copies a dataset in the challenge's format (`train/`, `val/`, `test/` with their label files) into the
workspace's `data/raw`, validates it (a bad line or image refuses the dataset, naming the file, line and
field), tracks it with DVC (`dvc add`, `dvc push` to the configured remote) and commits `data/raw.dvc`,
so the version is a *data revision* the training DAG can name.

When the content changed, the `trafficlip-raw-data` asset is updated and **trafficlip_training runs**.
Re-ingesting the same content changes nothing and triggers nothing. An external system can do the same
without this DAG: `POST /api/v2/assets/events` with the asset's id (README, "Data-triggered retraining").
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Asset, task
from airflow.sdk.exceptions import AirflowSkipException

from tasks.orchestration import dag_defaults as shared
from tasks.orchestration import workspace as orch

RAW_DATA = Asset(**orch.RAW_DATA_ASSET)

with DAG(
    dag_id="trafficlip_ingest",
    description="Track a new raw dataset version with DVC; triggers trafficlip_training when it changed",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=shared.PAUSED_UPON_CREATION,
    max_active_runs=1,
    tags=[shared.TAG, "data", "dvc"],
    default_args=shared.default_args(),
    params={
        "source": shared.param("", type="string", minLength=1, maxLength=1000, title="Dataset folder",
                               description="Absolute path, on the workers, of a dataset in the challenge's format "
                                           "(train/, val/, test/ with their label files). Required.",
                               section="Data"),
        "on_error": shared.form_field("data.on_error", "fail", title="On a bad line or image", section="Data",
                                      description="fail refuses the dataset; quarantine accepts it and the "
                                                  "report lists them."),
    },
) as dag:

    @task(pool=orch.DVC_POOL, outlets=[RAW_DATA])
    def ingest(params: dict | None = None) -> dict:
        result = shared.guard(orch.ingest, orch.workspace(), params["source"], params["on_error"])
        if not result["changed"]:
            raise AirflowSkipException(f"{params['source']}: same content as the tracked data/raw "
                                       f"(md5 {result['data_md5']}); nothing to retrain")
        return result

    ingest()
