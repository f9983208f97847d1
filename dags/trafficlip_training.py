"""
### Train, evaluate, register and promote the traffic CLIP model

`configure -> validate -> prepare -> augment -> train (runner) -> record_train -> evaluate -> register
-> promote -> predict -> report -> restore_params`

* **configure** checks out the requested *data revision* of `data/raw` and, for a run you trigger by
  hand, applies the form's changed values to the workspace's `params.yaml` (comments kept, like
  `dvc exp run -S`) *for this run only*: **restore_params** (a teardown, it runs even when a task
  failed) puts the file back. Scheduled and data-triggered runs train with `params.yaml` as committed,
  and the form's defaults show it.
* **validate** checks every label line and image (`trafficlip validate`); with `data.on_error: fail`
  a bad line fails the run here, naming the file, line and field.
* **prepare, augment, evaluate, predict** are DVC stages (`dvc repro --single-item`): a stage whose
  data, code and parameters did not change is *skipped*, and its outputs are the cached ones.
* **train** runs on the chosen *runner*: `local` (a subprocess on the worker), `docker` (the training
  image with a GPU device request) or `kubernetes` (a pod with `nvidia.com/gpu` limits). All three run
  the `train` stage's own command; `record_train` then records the outputs in `dvc.lock`.
* **register / promote** put the model in the MLflow registry once per training run and move
  `@champion` only when the paired-bootstrap gate passes (thresholds in the *Promotion* section).
  They are DVC stages for the record but run outside `dvc repro`: what they change is a shared
  registry that DVC can neither cache nor restore, and that other runs and people change too, so they
  run every time, idempotently, against the registry as it is now.

Runs when the raw dataset asset changes (`trafficlip_ingest`, or a POST to the asset events API) and
every Sunday at 03:00. Where it runs is `TRAFFICLIP_WORKSPACE` (a checkout of the project); where it
tracks is `MLFLOW_TRACKING_URI`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, TaskGroup, task
from airflow.sdk.exceptions import AirflowSkipException

from tasks.core import paths
from tasks.orchestration import dag_defaults as shared
from tasks.orchestration import runners
from tasks.orchestration import workspace as orch

RAW_DATA = Asset(**orch.RAW_DATA_ASSET)
CHAMPION = Asset(**orch.CHAMPION_ASSET)
DEFAULTS = orch.form_defaults()
SETTINGS = runners.RunnerSettings.from_env()
NONE_FAILED = "none_failed"


def _stage(name: str) -> dict:
    result = shared.guard(orch.repro, orch.workspace(), name)
    if not result["ran"]:
        raise AirflowSkipException(f"DVC stage {name} is up to date: its data, code and parameters did not change")
    return result


def _field(name: str, title: str, section: str, **extra):
    return shared.form_field(orch.PARAM_KEYS[name], DEFAULTS[name], title=title, section=section, **extra)


with DAG(
    dag_id="trafficlip_training",
    description="Fine-tune CLIP for traffic retrieval; register and promote it in MLflow. Runs Sundays 03:00 UTC "
                "and when data/raw changes (asset trafficlip-raw-data)",
    doc_md=__doc__,
    # run_immediately=0: unpausing waits for the next Sunday instead of starting a run for the last one
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC",
                                                                run_immediately=timedelta(0)),
                                 assets=[RAW_DATA]),
    catchup=False,
    is_paused_upon_creation=shared.PAUSED_UPON_CREATION,
    max_active_runs=1,
    tags=[shared.TAG, "training", "mlflow", "dvc"],
    default_args=shared.default_args(),
    params={
        "model_name": _field("model_name", "Model architecture", "Model", maxLength=200,
                             description="An open_clip architecture: ViT-B-16, ViT-L-14, ViT-bigG-14 ... or a "
                                         "config shipped in tasks/model_configs (TrafficCLIP-Tiny runs on a CPU)."),
        # an empty field is null in the form (a Param whose type has no null is a required field)
        "pretrained": _field("pretrained", "Pretrained weights", "Model", nullable=True, maxLength=1000,
                             description="An open_clip pretrained tag (laion2b_s39b_b160k), a .safetensors file "
                                         "or a local-dir checkpoint folder; empty starts from random weights."),
        "epochs": _field("epochs", "Epochs", "Training"),
        "learning_rate": _field("learning_rate", "Learning rate", "Training"),
        "batch_size": _field("batch_size", "Batch size", "Training"),
        "runner": shared.param("local", type="string", enum=list(orch.RUNNERS), title="Runner",
                               description="Where train runs: local (a subprocess on the worker), docker (the "
                                           "training image with a GPU) or kubernetes (a GPU pod).",
                               values_display={"local": "local subprocess", "docker": "Docker container (GPU)",
                                               "kubernetes": "Kubernetes pod (GPU)"},
                               section="Training"),
        "min_gain": _field("min_gain", "Minimum mAP@10 gain", "Promotion"),
        "confidence": _field("confidence", "Confidence", "Promotion"),
        "floor": _field("floor", "First-champion floor", "Promotion"),
        "data_revision": shared.param("", type=["null", "string"], maxLength=200, pattern=r"^[A-Za-z0-9._/@^~-]*$",
                                      title="Data revision",
                                      description="A git commit, tag or branch of the workspace whose data/raw.dvc "
                                                  "to train on (fetched from the DVC remote); empty keeps the current "
                                                  "data. Letters, digits and . _ / @ ^ ~ - only.",
                                      section="Data"),
    },
) as dag:

    @task(pool=orch.DVC_POOL)
    def configure(params: dict | None = None, dag_run=None) -> dict:
        root = orch.workspace()
        data = shared.guard(orch.checkout_data, root, params["data_revision"] or "")
        # only a run triggered by hand applies its form, and only the fields changed from the defaults
        manual = getattr(dag_run, "run_type", "manual") == "manual"
        overrides = orch.overrides_from_form(params, DEFAULTS) if manual else {}
        written = shared.guard(orch.configure, root, overrides)
        return {**data, "changed": written["changed"], "runner": params["runner"]}

    @task   # right after the setup task configure, so all_success (configure never skips)
    def validate() -> dict:
        result = shared.guard(orch.cli, ["validate", "--data", paths.RAW, "--report", paths.VALIDATION_REPORT],
                        orch.workspace(), "trafficlip validate")
        return {"problems": result.get("problems"), "report": result.get("report")}

    @task(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def prepare() -> dict:
        return _stage("prepare")

    @task(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def augment() -> dict:
        return _stage("augment")

    @task.branch(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def choose_runner(params: dict | None = None) -> list[str]:
        if "train" not in orch.stale_stages(orch.workspace()):
            return []          # every runner and record_train's work is skipped: the model is up to date
        return [f"train_{params['runner']}"]

    @task(trigger_rule=NONE_FAILED, execution_timeout=timedelta(hours=24))
    def train_local() -> dict:
        root = orch.workspace()
        shared.guard(orch.run, runners.train_command(root, 0), root, "trafficlip train")
        return {"runner": "local", "summary": paths.TRAIN_SUMMARY}


    @task(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def record_train() -> dict:
        root = orch.workspace()
        if "train" not in orch.stale_stages(root):
            raise AirflowSkipException("dvc.lock already records this training")
        result = shared.guard(orch.commit, root, "train")
        summary = orch.read_report(root, paths.TRAIN_SUMMARY)
        return {**result, "mlflow_run_id": summary.get("mlflow_run_id"), "steps": summary.get("steps")}

    @task(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def evaluate() -> dict:
        return _stage("evaluate")

    @task(pool=orch.PROMOTION_POOL, trigger_rule=NONE_FAILED)
    def register() -> dict:
        result = shared.guard(orch.cli, ["register"], orch.workspace(), "trafficlip register")
        return {k: result.get(k) for k in ("registered_model", "version", "created", "map_at_10")}

    @task(pool=orch.PROMOTION_POOL, trigger_rule=NONE_FAILED)
    def promote() -> dict:
        result = shared.guard(orch.cli, ["promote"], orch.workspace(), "trafficlip promote")
        return {k: result.get(k) for k in ("version", "decision", "reason", "champion_before", "champion_after",
                                           "champion_changed")}

    @task(outlets=[CHAMPION], trigger_rule=NONE_FAILED)
    def announce_champion(ti=None) -> dict:
        """An event on the champion asset (which starts the retrieval DAG) only when @champion moved."""
        promotion = ti.xcom_pull(task_ids="promote") or {}
        if not promotion.get("champion_changed"):
            raise AirflowSkipException("@champion did not move")
        return {"champion": promotion["champion_after"], "before": promotion["champion_before"]}

    @task(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def predict() -> dict:
        return _stage("predict")

    @task(trigger_rule=NONE_FAILED)
    def report() -> dict:
        return orch.summary(orch.workspace())

    @task(pool=orch.DVC_POOL)
    def restore_params() -> dict:
        return orch.restore_params(orch.workspace())

    # the graph, in groups (task ids stay plain: the group is only how the UI folds them)
    configured = configure()
    with TaskGroup("data", prefix_group_id=False,
                   tooltip="validate data/raw, decode it once, complete captions (DVC stages)") as data:
        validate() >> prepare() >> augment()
    with TaskGroup("training", prefix_group_id=False,
                   tooltip="train on the chosen runner, record the model in dvc.lock") as training:
        common = {"trigger_rule": NONE_FAILED, "execution_timeout": timedelta(hours=24)}
        runner_tasks = [
            train_local(),
            runners.docker_operator(SETTINGS, orch.workspace_path(), task_id="train_docker", **common),
            runners.kubernetes_operator(SETTINGS, orch.workspace_path(), task_id="train_kubernetes", **common),
        ]
        choose_runner() >> runner_tasks >> record_train()
    with TaskGroup("registry", prefix_group_id=False,
                   tooltip="evaluate on the validation split, register once, promote through the gate, "
                           "announce a new champion") as model:
        evaluate() >> register() >> promote() >> announce_champion()
    with TaskGroup("delivery", prefix_group_id=False, tooltip="the test submission and the run's summary") as delivery:
        predict() >> report()
    configured >> data >> training >> model >> delivery >> restore_params().as_teardown(setups=configured)
