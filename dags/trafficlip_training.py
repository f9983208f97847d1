"""
### Train, evaluate, register and promote the traffic CLIP model

`configure -> validate -> prepare -> augment -> train (runner) -> record_train -> evaluate -> register
-> promote -> predict -> report`

* **configure** writes the form's values into the workspace's `params.yaml` (comments kept, like
  `dvc exp run -S`) and checks out the requested *data revision* of `data/raw`.
* **validate** checks every label line and image (`trafficlip validate`); with `data.on_error: fail`
  a bad line fails the run here, naming the file, line and field.
* **prepare, augment, evaluate, predict** are DVC stages (`dvc repro --single-item`): a stage whose
  data, code and parameters did not change is *skipped*, and its outputs are the cached ones.
* **train** runs on the chosen *runner*: `local` (a subprocess on the worker), `docker` (the training
  image with a GPU device request) or `kubernetes` (a pod with `nvidia.com/gpu` limits). All three run
  the `train` stage's own command; `record_train` then records the outputs in `dvc.lock`.
* **register / promote** put the model in the MLflow registry once per training run and move
  `@champion` only when the paired-bootstrap gate passes (thresholds in the *Promotion* section).

Runs when the raw dataset asset changes (`trafficlip_ingest`, or a POST to the asset events API) and
every Sunday at 03:00. Where it runs is `TRAFFICLIP_WORKSPACE` (a checkout of the project); where it
tracks is `MLFLOW_TRACKING_URI`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tasks import orchestration as orch
from tasks import runners

RAW_DATA = Asset(**orch.RAW_DATA_ASSET)
DEFAULTS = orch.form_defaults()
SETTINGS = runners.RunnerSettings.from_env()
NONE_FAILED = "none_failed"


def _guard(fn, *args):
    """A user error (bad data, bad parameter) fails the task without retrying; anything else retries."""
    try:
        return fn(*args)
    except orch.UserError as exc:
        raise AirflowFailException(str(exc)) from None


def _stage(name: str) -> dict:
    result = _guard(orch.repro, orch.workspace(), name)
    if not result["ran"]:
        raise AirflowSkipException(f"DVC stage {name} is up to date: its data, code and parameters did not change")
    return result


with DAG(
    dag_id="trafficlip_training",
    description="Fine-tune CLIP for traffic text-to-image retrieval; register and promote it in MLflow",
    doc_md=__doc__,
    # run_immediately=0: unpausing waits for the next Sunday instead of starting a run for the last one
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC",
                                                                run_immediately=timedelta(0)),
                                 assets=[RAW_DATA]),
    catchup=False,
    max_active_runs=1,
    tags=["trafficlip", "training", "mlflow", "dvc"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True,
                  "max_retry_delay": timedelta(minutes=10), "execution_timeout": timedelta(hours=2)},
    params={
        "model_name": Param(DEFAULTS["model_name"], type="string", minLength=1, maxLength=200,
                            title="Model architecture",
                            description="An open_clip architecture: ViT-B-16, ViT-L-14, ViT-bigG-14 ... or a config "
                                        "shipped in tasks/model_configs (TrafficCLIP-Tiny runs on a CPU).",
                            section="Model"),
        # an empty field is null in the form (a Param whose type has no null is a required field)
        "pretrained": Param(DEFAULTS["pretrained"], type=["null", "string"], maxLength=1000,
                            title="Pretrained weights",
                            description="An open_clip pretrained tag (laion2b_s39b_b160k), a .safetensors file or "
                                        "a local-dir checkpoint folder; empty starts from random weights.",
                            section="Model"),
        "epochs": Param(DEFAULTS["epochs"], type="integer", minimum=1, maximum=200, title="Epochs",
                        description="Passes over the training pairs.", section="Training"),
        "learning_rate": Param(DEFAULTS["learning_rate"], type="number", exclusiveMinimum=0, maximum=0.1,
                               title="Learning rate",
                               description="Peak AdamW learning rate: about 1e-3 from scratch, 4e-7 to fine-tune "
                                           "pretrained CLIP.", section="Training"),
        "batch_size": Param(DEFAULTS["batch_size"], type="integer", minimum=2, maximum=65536, title="Batch size",
                            description="Pairs per step (per GPU with torchrun); each sees batch_size - 1 negatives.",
                            section="Training"),
        "runner": Param("local", type="string", enum=list(orch.RUNNERS), title="Runner",
                        description="Where train runs: local (a subprocess on the worker), docker (the training "
                                    "image with a GPU) or kubernetes (a GPU pod).",
                        values_display={"local": "local subprocess", "docker": "Docker container (GPU)",
                                        "kubernetes": "Kubernetes pod (GPU)"},
                        section="Training"),
        "min_gain": Param(DEFAULTS["min_gain"], type="number", minimum=0, maximum=1, title="Minimum mAP@10 gain",
                          description="How much a new version must beat @champion by to replace it.",
                          section="Promotion"),
        "confidence": Param(DEFAULTS["confidence"], type="number", minimum=0.5, maximum=0.9999,
                            title="Confidence",
                            description="Paired-bootstrap probability that the gain is real.", section="Promotion"),
        "floor": Param(DEFAULTS["floor"], type="number", minimum=0, maximum=1, title="First-champion floor",
                       description="mAP@10 the first version needs to become @champion.", section="Promotion"),
        "data_revision": Param("", type=["null", "string"], maxLength=200, pattern=r"^[A-Za-z0-9._/@^~-]*$",
                               title="Data revision",
                               description="A git commit, tag or branch of the workspace whose data/raw.dvc to train "
                                           "on (fetched from the DVC remote); empty keeps the current data.",
                               section="Data"),
    },
) as dag:

    @task(pool=orch.DVC_POOL)
    def configure(params: dict | None = None) -> dict:
        root = orch.workspace()
        data = _guard(orch.checkout_data, root, params["data_revision"] or "")
        written = _guard(orch.configure, root, orch.overrides_from_form(params))
        return {**data, "changed": written["changed"], "runner": params["runner"]}

    @task(trigger_rule=NONE_FAILED)
    def validate() -> dict:
        result = _guard(orch.cli, ["validate", "--data", orch.RAW_DATA, "--report", "reports/validation_report.json"],
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
        _guard(orch.run, runners.train_command(root, 0), root, "trafficlip train")
        return {"runner": "local", "summary": "reports/train_summary.json"}

    common = {"trigger_rule": NONE_FAILED, "execution_timeout": timedelta(hours=24)}
    train_docker = runners.docker_operator(SETTINGS, orch.workspace_path(), task_id="train_docker", **common)
    train_kubernetes = runners.kubernetes_operator(SETTINGS, orch.workspace_path(), task_id="train_kubernetes",
                                                   **common)

    @task(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def record_train() -> dict:
        root = orch.workspace()
        if "train" not in orch.stale_stages(root):
            raise AirflowSkipException("dvc.lock already records this training")
        result = _guard(orch.commit, root, "train")
        summary = orch.read_report(root, "reports/train_summary.json")
        return {**result, "mlflow_run_id": summary.get("mlflow_run_id"), "steps": summary.get("steps")}

    @task(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def evaluate() -> dict:
        return _stage("evaluate")

    @task(pool=orch.PROMOTION_POOL, trigger_rule=NONE_FAILED)
    def register() -> dict:
        result = _guard(orch.cli, ["register"], orch.workspace(), "trafficlip register")
        return {k: result.get(k) for k in ("registered_model", "version", "created", "map_at_10")}

    @task(pool=orch.PROMOTION_POOL, trigger_rule=NONE_FAILED)
    def promote() -> dict:
        result = _guard(orch.cli, ["promote"], orch.workspace(), "trafficlip promote")
        return {k: result.get(k) for k in ("version", "decision", "reason", "champion_before", "champion_after")}

    @task(pool=orch.DVC_POOL, trigger_rule=NONE_FAILED)
    def predict() -> dict:
        return _stage("predict")

    @task(trigger_rule=NONE_FAILED)
    def report() -> dict:
        return orch.summary(orch.workspace())

    runner_tasks = [train_local(), train_docker, train_kubernetes]
    chosen = choose_runner()
    chosen >> runner_tasks
    recorded = record_train()
    runner_tasks >> recorded
    configure() >> validate() >> prepare() >> augment() >> chosen
    recorded >> evaluate() >> register() >> promote() >> predict() >> report()
