"""The `trafficlip` command line: one subcommand per pipeline step, in four groups.

Default paths are tasks/core/paths.py's, the ones dvc.yaml's commands spell out, so `trafficlip train`
in the workspace does what the DVC stage does.
"""

from __future__ import annotations

import argparse

from tasks.cli import commands
from tasks.core import params, paths

DESCRIPTION = "Fine-tune CLIP for traffic text-to-image retrieval: the pipeline's steps, the registry, search."

LINK_HELP = "links the MLflow run to the training run this file names, if that run trained the model"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trafficlip", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_pipeline_steps, _registry, _using_a_model, _operations):
        add(sub)
    return parser


def with_params(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every step has: the parameters file and one-off overrides."""
    p.add_argument("--params", default=paths.PARAMS, help="parameters file (default: params.yaml)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one parameter, e.g. --set train.epochs=2 (repeatable)")
    return p


def _pipeline_steps(sub) -> None:
    """The steps dvc.yaml runs, in pipeline order, and the demo generator before them."""
    p = sub.add_parser("synth", help="generate the demo dataset in the challenge's format")
    p.add_argument("--out", default=paths.RAW)
    p.add_argument("--vehicles", type=int, default=1200)
    p.add_argument("--pedestrians", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each category in val/")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of each category in test/")
    p.set_defaults(func=commands.cmd_synth)

    p = with_params(sub.add_parser("validate", help="check a dataset and write a validation report"))
    p.add_argument("--data", default=paths.RAW)
    p.add_argument("--on-error", choices=params.key("data.on_error").choices, help="default: params data.on_error")
    p.add_argument("--report", default=paths.VALIDATION_REPORT)
    p.set_defaults(func=commands.cmd_validate)

    p = with_params(sub.add_parser("prepare", help="validate and decode every image once into a cache"))
    p.add_argument("--data", default=paths.RAW)
    p.add_argument("--out", default=paths.PREPARED)
    p.set_defaults(func=commands.cmd_prepare)

    p = with_params(sub.add_parser("augment", help="complete training vehicle captions missing colour/type"))
    p.add_argument("--data", default=paths.PREPARED)
    p.add_argument("--out", default=paths.AUGMENTED)
    p.add_argument("--report", default=paths.AUGMENT_REPORT)
    p.add_argument("--truth", default=paths.SYNTH_TRUTH,
                   help="true attributes (the demo generator's) to report accuracy against, if the file exists")
    p.set_defaults(func=commands.cmd_augment)

    p = with_params(sub.add_parser("train", help="train / fine-tune the CLIP model"))
    p.add_argument("--data", default=paths.PREPARED)
    p.add_argument("--manifest", default=paths.TRAIN_MANIFEST,
                   help="training pairs (images always come from DATA/train)")
    p.add_argument("--out", default=paths.MODELS)
    p.add_argument("--reports", default=paths.REPORTS)
    p.set_defaults(func=commands.cmd_train)

    p = with_params(sub.add_parser("evaluate", help="score the model and the baseline on the validation split"))
    p.add_argument("--data", default=paths.PREPARED)
    p.add_argument("--model", default=paths.MODEL)
    p.add_argument("--initial", default=paths.INITIAL)
    p.add_argument("--metrics", default=paths.METRICS)
    p.add_argument("--per-query", default=paths.EVAL_QUERIES)
    p.add_argument("--train-summary", default=paths.TRAIN_SUMMARY, help=LINK_HELP)
    p.add_argument("--plots", default=paths.PLOTS,
                   help="folder for the PNG plots and galleries (replaced as a whole; '' for none)")
    p.add_argument("--report", default=paths.EVAL_REPORT, help="the offline HTML report ('' for none)")
    p.add_argument("--train-steps", default=paths.TRAIN_STEPS, help="training curves drawn from this file")
    p.set_defaults(func=commands.cmd_evaluate)

    p = with_params(sub.add_parser("report", help="(re)build the evaluation's HTML report from the files on disk"))
    p.add_argument("--metrics", default=paths.METRICS)
    p.add_argument("--out", default=paths.EVAL_REPORT)
    p.add_argument("--train-steps", default=paths.TRAIN_STEPS, help="training curves drawn from this file")
    p.add_argument("--train-summary", default=paths.TRAIN_SUMMARY,
                   help="names the MLflow training run whose validation mAP@10 is drawn (with mlflow.enabled)")
    p.add_argument("--plots", default=paths.PLOTS, help="the galleries evaluate saved are in PLOTS/galleries")
    p.set_defaults(func=commands.cmd_report)

    p = with_params(sub.add_parser("predict", help="write the submission for the test split"))
    p.add_argument("--data", default=paths.PREPARED)
    p.add_argument("--model", default=paths.MODEL)
    p.add_argument("--out", default=paths.SUBMISSION)
    p.add_argument("--train-summary", default=paths.TRAIN_SUMMARY, help=LINK_HELP)
    p.add_argument("--report", default=paths.PREDICT_REPORT)
    p.set_defaults(func=commands.cmd_predict)


def _registry(sub) -> None:
    """The MLflow model registry: register, promote, roll back, list, follow moves by hand."""
    p = with_params(sub.add_parser("register", help="register the trained model in MLflow (once per training run)"))
    p.add_argument("--train-summary", default=paths.TRAIN_SUMMARY)
    p.add_argument("--metrics", default=paths.METRICS)
    p.add_argument("--per-query", default=paths.EVAL_QUERIES)
    p.add_argument("--out", default=paths.REGISTRATION)
    p.set_defaults(func=commands.cmd_register)

    p = with_params(sub.add_parser("promote", help="gate the registered version; move @champion / @challenger"))
    p.add_argument("--registration", default=paths.REGISTRATION)
    p.add_argument("--data", default=paths.PREPARED, help="validation data to re-score the champion on if needed")
    p.add_argument("--out", default=paths.PROMOTION)
    p.set_defaults(func=commands.cmd_promote)

    p = with_params(sub.add_parser("rollback", help="move @champion back to the previous champion"))
    p.add_argument("--out", default=paths.ROLLBACK)
    p.set_defaults(func=commands.cmd_rollback)

    p = with_params(sub.add_parser("models", help="list the registered model's versions, aliases and metrics"))
    p.set_defaults(func=commands.cmd_models)
    p = with_params(sub.add_parser("sync-aliases", help="record @champion/@challenger moves made outside "
                                                        "trafficlip (MLflow UI or API); report conflicts"))
    p.set_defaults(func=commands.cmd_sync_aliases)

    p = with_params(sub.add_parser("webhook-receiver", help="receive MLflow's signed alias webhooks: record a move "
                                                            "by hand, announce a new champion to Airflow (asset "
                                                            "trafficlip-champion)"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--airflow-url", help="Airflow's API server (default: TRAFFICLIP_AIRFLOW_URL or "
                                         "http://127.0.0.1:8080); user TRAFFICLIP_AIRFLOW_USERNAME (admin), password "
                                         "TRAFFICLIP_AIRFLOW_PASSWORD or TRAFFICLIP_AIRFLOW_PASSWORD_FILE")
    p.add_argument("--max-age", type=float, default=300.0, metavar="SECONDS",
                   help="refuse a delivery whose timestamp is further than this from now (default 300)")
    p.add_argument("--retry", type=float, default=60.0, metavar="SECONDS",
                   help="how often to retry an announcement Airflow did not take (default 60)")
    p.set_defaults(func=commands.cmd_webhook_receiver)

    p = sub.add_parser("register-webhook", help="create or update the MLflow webhook that sends alias moves to "
                                                "the receiver (secret: TRAFFICLIP_WEBHOOK_SECRET[_FILE])")
    p.add_argument("--url", required=True, help="where the receiver listens, e.g. http://127.0.0.1:8765/mlflow-webhook")
    p.add_argument("--name", default="trafficlip-registry-aliases", help="the webhook's name in MLflow")
    p.add_argument("--test", action="store_true", help="then have MLflow send a signed test delivery to the receiver")
    p.set_defaults(func=commands.cmd_register_webhook)


def _using_a_model(sub) -> None:
    """Measuring and using a trained model: the ablation, batch retrieval, search, the HTTP service."""
    p = with_params(sub.add_parser("ablate", help="measure each reference technique on and off (validation split)"))
    p.add_argument("--data", default=paths.PREPARED)
    p.add_argument("--model", default=paths.MODEL, help="a trained model to reuse for the matching arm")
    p.add_argument("--work", default=paths.ABLATION_WORK, help="where the other arm is trained")
    p.add_argument("--out", default=paths.ABLATION_REPORT, help="writes OUT.md and OUT.json")
    p.add_argument("--teacher", default="auto", help="augmentation model: auto | params | self | a checkpoint folder")
    p.add_argument("--truth", default=paths.SYNTH_TRUTH)
    p.set_defaults(func=commands.cmd_ablate)

    p = with_params(sub.add_parser("retrieve", help="rank a folder of images for a query file with a registered model"))
    p.add_argument("--gallery", required=True, help="folder of images")
    p.add_argument("--queries", required=True, help="text file, one query per line (test_text.txt format)")
    p.add_argument("--out", required=True, help="writes submission.json, gallery.png, retrieval_report.json")
    p.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder "
                                   "(default: models:/<mlflow.registered_model>@champion)")
    p.set_defaults(func=commands.cmd_retrieve)

    p = with_params(sub.add_parser("search", help="rank a folder of images for one text with the champion model"))
    p.add_argument("query", help='the text, e.g. "a red SUV"')
    p.add_argument("--gallery", required=True, help="folder of images")
    p.add_argument("--top", type=int, default=10, help="how many images (1-100)")
    p.add_argument("--sheet", default=paths.SEARCH_SHEET, help="contact sheet PNG ('' for none)")
    p.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder "
                                   "(default: models:/<mlflow.registered_model>@champion)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=commands.cmd_search)

    p = with_params(sub.add_parser("serve", help="serve the search over HTTP, with a page at /"))
    p.add_argument("--gallery", required=True, help="folder of images")
    p.add_argument("--model", help="default: models:/<mlflow.registered_model>@champion")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--follow", type=float, default=30.0, metavar="SECONDS",
                   help="with an alias: look this often for the version it points to, and switch to it when it "
                        "moves (0: never; default 30)")
    p.set_defaults(func=commands.cmd_serve)


def _operations(sub) -> None:
    """The workspace and its tools: ingest, summary, Airflow set-up, scoring, the metrics table."""
    p = sub.add_parser("ingest", help="make a dataset folder the workspace's DVC-tracked data/raw")
    p.add_argument("--source", required=True, help="a dataset in the challenge's format")
    p.add_argument("--workspace", help="default: TRAFFICLIP_WORKSPACE or the project root")
    p.add_argument("--on-error", choices=params.key("data.on_error").choices, default="fail")
    p.set_defaults(func=commands.cmd_ingest)

    p = sub.add_parser("summary", help="what the last pipeline run left: metrics, registered version, alias, submission")
    p.add_argument("--workspace", help="default: TRAFFICLIP_WORKSPACE or the project root")
    p.set_defaults(func=commands.cmd_summary)

    p = sub.add_parser("airflow-setup", help="migrate Airflow's database and create the DAGs' pools (idempotent)")
    p.set_defaults(func=commands.cmd_airflow_setup)

    p = sub.add_parser("score", help="score a submission against a ground-truth file (organisers' format)")
    p.add_argument("--submission", required=True)
    p.add_argument("--ground-truth", required=True)
    p.set_defaults(func=commands.cmd_score)

    p = sub.add_parser("metrics", help="print the metrics table of the last evaluation")
    p.add_argument("--metrics", default=paths.METRICS)
    p.set_defaults(func=commands.cmd_metrics)
