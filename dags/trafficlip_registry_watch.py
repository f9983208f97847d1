"""
### Watch the model registry's aliases

Promotion by hand is one of the three ways to move a model: in the MLflow UI (or its API) anyone with
write access can put `@champion` on a version, where no gate runs. Every 5 minutes this DAG runs
`trafficlip sync-aliases`: it compares `@champion` and `@challenger` with what trafficlip last saw,
records each move on the version it now points to (when it was found, the version before, *manual,
ungated*), and logs conflicts (one version both champion and challenger, a champion the gate rejected).

When `@champion` moved, it updates the `trafficlip-champion` asset, which starts **trafficlip_retrieval**
with the new champion (a running `trafficlip serve` follows the alias on its own). Gated promotions in
trafficlip_training update the same asset themselves. docs/mlflow.md: how it works with and without an
MLflow server.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, CronTriggerTimetable, task
from airflow.sdk.exceptions import AirflowSkipException

from tasks.orchestration import dag_defaults as shared
from tasks.orchestration import workspace as orch

CHAMPION = Asset(**orch.CHAMPION_ASSET)

with DAG(
    dag_id="trafficlip_registry_watch",
    description="Every 5 minutes: record @champion/@challenger moves made by hand in MLflow; a new champion "
                "updates the asset trafficlip-champion (starts trafficlip_retrieval)",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("*/5 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=shared.PAUSED_UPON_CREATION,
    max_active_runs=1,
    tags=[shared.TAG, "mlflow", "registry"],
    default_args=shared.default_args(execution_timeout=timedelta(minutes=10)),
) as dag:

    @task(pool=orch.PROMOTION_POOL)
    def sync_aliases() -> dict:
        return shared.guard(orch.cli, ["sync-aliases"], orch.workspace(), "trafficlip sync-aliases")

    @task(outlets=[CHAMPION])
    def announce_champion(synced: dict) -> dict:
        """An event on the champion asset only when @champion moved since trafficlip last looked."""
        if not synced.get("champion_changed"):
            raise AirflowSkipException("@champion did not move")
        return {"champion": synced["champion"], "changes": synced["changes"]}

    announce_champion(sync_aliases())
