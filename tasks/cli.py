"""The `trafficlip` command (also `python -m tasks`): one subcommand per pipeline step.

Default paths are the ones dvc.yaml uses, so `trafficlip train` in the project root does what the
DVC stage does. Errors a user can act on are printed as one line (file, line, field, expectation)
with exit status 2; no traceback reaches the user unless TRAFFICLIP_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import yaml

from tasks.errors import SERVICE_EXIT, ServiceError, TrafficlipError


def _overrides(pairs: list[str]) -> dict:
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise TrafficlipError(f"--set {pair!r}: expected section.key=value, e.g. train.lr=0.001")
        result[key.strip()] = yaml.safe_load(value)
    return result


def _params(args) -> dict:
    from tasks import params
    return params.load(args.params, _overrides(args.set))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def cmd_synth(args) -> int:
    from tasks import synth
    _print_json(synth.generate(args.out, vehicles=args.vehicles, pedestrians=args.pedestrians, seed=args.seed,
                               val_fraction=args.val_fraction, test_fraction=args.test_fraction))
    return 0


def cmd_validate(args) -> int:
    from tasks import validate
    on_error = args.on_error or _params(args)["data"]["on_error"]
    report = validate.run(args.data, on_error, args.report)
    _print_json({"splits": report["splits"], "problems": report["problems"], "report": args.report})
    return 0


def cmd_prepare(args) -> int:
    from tasks import prepare
    _print_json(prepare.run(_params(args), args.data, args.out))
    return 0


def cmd_augment(args) -> int:
    from tasks import augment
    _print_json(augment.run(_params(args), args.data, args.out, args.report, args.truth))
    return 0


def cmd_train(args) -> int:
    from tasks import train
    _print_json(train.run(_params(args), args.data, args.out, args.reports, manifest_path=args.manifest))
    return 0


def cmd_evaluate(args) -> int:
    from tasks import evaluate
    metrics = evaluate.run(_params(args), args.data, args.model, args.initial, args.metrics, args.per_query,
                           args.train_summary, plots_dir=args.plots or None, report_out=args.report or None,
                           train_steps=args.train_steps or None)
    print(metrics_table(metrics))
    return 0


def cmd_report(args) -> int:
    from tasks import report
    _print_json(report.rebuild(_params(args), args.metrics, args.out, args.train_steps or None,
                               args.train_summary or None, args.plots or None))
    return 0


def cmd_predict(args) -> int:
    from tasks import predict
    _print_json(predict.run(_params(args), args.data, args.model, args.out, args.report, args.train_summary))
    return 0


def cmd_register(args) -> int:
    from tasks import registry
    _print_json(registry.register(_params(args), args.train_summary, args.metrics, args.per_query, args.out))
    return 0


def cmd_promote(args) -> int:
    from tasks import registry
    _print_json(registry.promote(_params(args), args.registration, args.out, args.data))
    return 0


def cmd_rollback(args) -> int:
    from tasks import registry
    _print_json(registry.rollback(_params(args), args.out))
    return 0


def cmd_models(args) -> int:
    from tasks import registry
    print(registry.versions_table(_params(args)))
    return 0


def cmd_ablate(args) -> int:
    from tasks import ablate
    result = ablate.run(_params(args), args.data, args.model, args.work, args.out, args.teacher, args.truth)
    print(ablate.markdown(result), end="")
    return 0


def cmd_retrieve(args) -> int:
    from tasks import batch
    _print_json(batch.run(_params(args), args.gallery, args.queries, args.out, args.model))
    return 0


def cmd_search(args) -> int:
    from tasks import searcher
    result = searcher.run(_params(args), args.query, args.gallery, args.top, args.sheet, args.model)
    if args.json:
        _print_json(result)
        return 0
    version = f" (version {result['version']})" if "version" in result else ""
    print(f"{result['query']!r}: top {len(result['results'])} of {result['images']} images in {result['gallery']}, "
          f"{result['model']}{version}, gallery embeddings {result['embeddings']}")
    for hit in result["results"]:
        print(f"{hit['rank']:>4}  {hit['score']:.4f}  {hit['image']}")
    if result.get("contact_sheet"):
        print(f"contact sheet: {result['contact_sheet']}")
    return 0


def cmd_serve(args) -> int:
    from tasks import serve
    serve.run(_params(args), args.gallery, args.model, args.host, args.port)
    return 0


def cmd_ingest(args) -> int:
    from tasks import orchestration
    _print_json(orchestration.ingest(orchestration.workspace(args.workspace), args.source, args.on_error))
    return 0


def cmd_summary(args) -> int:
    from tasks import orchestration
    root = orchestration.workspace(args.workspace)
    info = orchestration.summary(root)
    metrics = root / "metrics" / "eval.json"
    if metrics.is_file():
        print(metrics_table(json.loads(metrics.read_text())))
    registration, promotion = info.get("registration") or {}, info.get("promotion") or {}
    if registration:
        print(f"registered: {registration.get('registered_model')} version {registration.get('version')}")
    if promotion:
        print(f"promotion:  {promotion.get('decision')} ({promotion.get('reason')}); "
              f"@champion is version {promotion.get('champion_after')}")
    print(f"submission: {info['submission'] or '(not written)'}")
    return 0


def cmd_airflow_setup(args) -> int:
    from tasks import orchestration
    _print_json(orchestration.airflow_setup())
    return 0


def cmd_score(args) -> int:
    from tasks import submission
    _print_json(submission.score(args.submission, args.ground_truth))
    return 0


def cmd_metrics(args) -> int:
    path = Path(args.metrics)
    if not path.is_file():
        raise TrafficlipError(f"{path}: metrics file not found; run the pipeline first (make run)")
    print(metrics_table(json.loads(path.read_text())))
    return 0


def metrics_table(metrics: dict) -> str:
    """A plain-text table: one row per category, trained next to baseline."""
    columns = ("map_at_10", "trec_ap_at_10", "recall_at_1", "recall_at_5", "recall_at_10", "mean_rank",
               "median_rank", "queries")
    header = f"{'':<22}" + "".join(f"{c:>14}" for c in columns)
    lines = [header]
    for group, label in ((metrics, "model"), (metrics.get("baseline"), "baseline")):
        if not group:
            continue
        for category in ("overall", "vehicle", "pedestrian"):
            row = group.get(category) or {}
            cells = "".join(f"{'-' if row.get(c) is None else (f'{row[c]:.4f}' if isinstance(row[c], float) else row[c]):>14}"
                            for c in columns)
            lines.append(f"{label + ' ' + category:<22}{cells}")
    if "relevance_rule" in metrics:
        lines.append(f"(pedestrian relevance rule: {metrics['relevance_rule']}; map_at_10 is the organisers' rule)")
    return "\n".join(lines)


LINK_HELP = "links the MLflow run to the training run this file names, if that run trained the model"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trafficlip", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_params(p):
        p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override one parameter, e.g. --set train.epochs=2 (repeatable)")
        return p

    p = sub.add_parser("synth", help="generate the demo dataset in the challenge's format")
    p.add_argument("--out", default="data/raw")
    p.add_argument("--vehicles", type=int, default=1200)
    p.add_argument("--pedestrians", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each category in val/")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of each category in test/")
    p.set_defaults(func=cmd_synth)

    p = with_params(sub.add_parser("validate", help="check a dataset and write a validation report"))
    p.add_argument("--data", default="data/raw")
    p.add_argument("--on-error", choices=("fail", "quarantine"), help="default: params data.on_error")
    p.add_argument("--report", default="reports/validation_report.json")
    p.set_defaults(func=cmd_validate)

    p = with_params(sub.add_parser("prepare", help="validate and decode every image once into a cache"))
    p.add_argument("--data", default="data/raw")
    p.add_argument("--out", default="data/prepared")
    p.set_defaults(func=cmd_prepare)

    p = with_params(sub.add_parser("augment", help="complete training vehicle captions missing colour/type"))
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--out", default="data/augmented")
    p.add_argument("--report", default="reports/augment_report.json")
    p.add_argument("--truth", default="data/raw/synth_truth.json",
                   help="true attributes (the demo generator's) to report accuracy against, if the file exists")
    p.set_defaults(func=cmd_augment)

    p = with_params(sub.add_parser("train", help="train / fine-tune the CLIP model"))
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--manifest", default="data/augmented/train_manifest.json",
                   help="training pairs (images always come from DATA/train)")
    p.add_argument("--out", default="models")
    p.add_argument("--reports", default="reports")
    p.set_defaults(func=cmd_train)

    p = with_params(sub.add_parser("evaluate", help="score the model and the baseline on the validation split"))
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--model", default="models/model")
    p.add_argument("--initial", default="models/initial")
    p.add_argument("--metrics", default="metrics/eval.json")
    p.add_argument("--per-query", default="reports/eval_queries.json")
    p.add_argument("--train-summary", default="reports/train_summary.json", help=LINK_HELP)
    p.add_argument("--plots", default="reports/plots",
                   help="folder for the PNG plots and galleries (replaced as a whole; '' for none)")
    p.add_argument("--report", default="reports/eval_report.html", help="the offline HTML report ('' for none)")
    p.add_argument("--train-steps", default="reports/train_steps.csv", help="training curves drawn from this file")
    p.set_defaults(func=cmd_evaluate)

    p = with_params(sub.add_parser("report", help="(re)build the evaluation's HTML report from the files on disk"))
    p.add_argument("--metrics", default="metrics/eval.json")
    p.add_argument("--out", default="reports/eval_report.html")
    p.add_argument("--train-steps", default="reports/train_steps.csv", help="training curves drawn from this file")
    p.add_argument("--train-summary", default="reports/train_summary.json",
                   help="names the MLflow training run whose validation mAP@10 is drawn (with mlflow.enabled)")
    p.add_argument("--plots", default="reports/plots", help="the galleries evaluate saved are in PLOTS/galleries")
    p.set_defaults(func=cmd_report)

    p = with_params(sub.add_parser("predict", help="write the submission for the test split"))
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--model", default="models/model")
    p.add_argument("--out", default="outputs/submission.json")
    p.add_argument("--train-summary", default="reports/train_summary.json", help=LINK_HELP)
    p.add_argument("--report", default="reports/predict_report.json")
    p.set_defaults(func=cmd_predict)

    p = with_params(sub.add_parser("register", help="register the trained model in MLflow (once per training run)"))
    p.add_argument("--train-summary", default="reports/train_summary.json")
    p.add_argument("--metrics", default="metrics/eval.json")
    p.add_argument("--per-query", default="reports/eval_queries.json")
    p.add_argument("--out", default="reports/registration.json")
    p.set_defaults(func=cmd_register)

    p = with_params(sub.add_parser("promote", help="gate the registered version; move @champion / @challenger"))
    p.add_argument("--registration", default="reports/registration.json")
    p.add_argument("--data", default="data/prepared", help="validation data to re-score the champion on if needed")
    p.add_argument("--out", default="reports/promotion.json")
    p.set_defaults(func=cmd_promote)

    p = with_params(sub.add_parser("rollback", help="move @champion back to the previous champion"))
    p.add_argument("--out", default="reports/rollback.json")
    p.set_defaults(func=cmd_rollback)

    p = with_params(sub.add_parser("models", help="list the registered model's versions, aliases and metrics"))
    p.set_defaults(func=cmd_models)

    p = with_params(sub.add_parser("ablate", help="measure each reference technique on and off (validation split)"))
    p.add_argument("--data", default="data/prepared")
    p.add_argument("--model", default="models/model", help="a trained model to reuse for the matching arm")
    p.add_argument("--work", default="models/ablation", help="where the other arm is trained")
    p.add_argument("--out", default="reports/ablation", help="writes OUT.md and OUT.json")
    p.add_argument("--teacher", default="auto", help="augmentation model: auto | params | self | a checkpoint folder")
    p.add_argument("--truth", default="data/raw/synth_truth.json")
    p.set_defaults(func=cmd_ablate)

    p = with_params(sub.add_parser("retrieve", help="rank a folder of images for a query file with a registered model"))
    p.add_argument("--gallery", required=True, help="folder of images")
    p.add_argument("--queries", required=True, help="text file, one query per line (test_text.txt format)")
    p.add_argument("--out", required=True, help="writes submission.json, gallery.png, retrieval_report.json")
    p.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder "
                                   "(default: models:/<mlflow.registered_model>@champion)")
    p.set_defaults(func=cmd_retrieve)

    p = with_params(sub.add_parser("search", help="rank a folder of images for one text with the champion model"))
    p.add_argument("query", help='the text, e.g. "a red SUV"')
    p.add_argument("--gallery", required=True, help="folder of images")
    p.add_argument("--top", type=int, default=10, help="how many images (1-100)")
    p.add_argument("--sheet", default="outputs/search.png", help="contact sheet PNG ('' for none)")
    p.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder "
                                   "(default: models:/<mlflow.registered_model>@champion)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_search)

    p = with_params(sub.add_parser("serve", help="serve the search over HTTP, with a page at /"))
    p.add_argument("--gallery", required=True, help="folder of images")
    p.add_argument("--model", help="default: models:/<mlflow.registered_model>@champion")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ingest", help="make a dataset folder the workspace's DVC-tracked data/raw")
    p.add_argument("--source", required=True, help="a dataset in the challenge's format")
    p.add_argument("--workspace", help="default: TRAFFICLIP_WORKSPACE or the project root")
    p.add_argument("--on-error", choices=("fail", "quarantine"), default="fail")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("summary", help="what the last pipeline run left: metrics, registered version, alias, submission")
    p.add_argument("--workspace", help="default: TRAFFICLIP_WORKSPACE or the project root")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("airflow-setup", help="migrate Airflow's database and create the DAGs' pools (idempotent)")
    p.set_defaults(func=cmd_airflow_setup)

    p = sub.add_parser("score", help="score a submission against a ground-truth file (organisers' format)")
    p.add_argument("--submission", required=True)
    p.add_argument("--ground-truth", required=True)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("metrics", help="print the metrics table of the last evaluation")
    p.add_argument("--metrics", default="metrics/eval.json")
    p.set_defaults(func=cmd_metrics)
    return parser


def _is_mlflow_error(exc: Exception) -> bool:
    """A failure the MLflow server reported (permissions, limits, lost connection): not a bug here."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    return mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ServiceError as exc:
        print(f"trafficlip {args.command}: error: {exc}", file=sys.stderr)
        return SERVICE_EXIT
    except TrafficlipError as exc:
        print(f"trafficlip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trafficlip {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_mlflow_error(exc):
            from tasks.tracking import error_text, shown_uri, tracking_uri
            text = error_text(exc)
            print(f"trafficlip {args.command}: error: MLflow at {shown_uri(tracking_uri())}: {text}",
                  file=sys.stderr)
            # a failing or unreachable server is worth a retry; a refused request is not
            transient = text.startswith(("HTTP 5", "connection", "no answer", "host name"))
            return SERVICE_EXIT if transient else 2
        # a bug: say so plainly, keep the traceback for those who ask
        if os.environ.get("TRAFFICLIP_DEBUG"):
            traceback.print_exc()
        print(f"trafficlip {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(set TRAFFICLIP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3
