"""What each `trafficlip` subcommand does: load the parameters, call one step or service, print its
result (JSON, or a table for people). The step modules are imported inside each command, so a command
loads only what it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from tasks.core import paths
from tasks.core.errors import UserError


def _overrides(pairs: list[str]) -> dict:
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set {pair!r}: expected section.key=value, e.g. train.lr=0.001")
        result[key.strip()] = yaml.safe_load(value)
    return result


def _params(args) -> dict:
    from tasks.core import params
    return params.load(args.params, _overrides(args.set))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def cmd_synth(args) -> int:
    from tasks.demo import synth
    _print_json(synth.generate(args.out, vehicles=args.vehicles, pedestrians=args.pedestrians, seed=args.seed,
                               val_fraction=args.val_fraction, test_fraction=args.test_fraction))
    return 0


def cmd_validate(args) -> int:
    from tasks.steps import validate
    on_error = args.on_error or _params(args)["data"]["on_error"]
    report = validate.run(args.data, on_error, args.report)
    _print_json({"splits": report["splits"], "problems": report["problems"], "report": args.report})
    return 0


def cmd_prepare(args) -> int:
    from tasks.steps import prepare
    _print_json(prepare.run(_params(args), args.data, args.out))
    return 0


def cmd_augment(args) -> int:
    from tasks.steps import augment
    _print_json(augment.run(_params(args), args.data, args.out, args.report, args.truth))
    return 0


def cmd_train(args) -> int:
    from tasks.steps import train
    _print_json(train.run(_params(args), args.data, args.out, args.reports, manifest_path=args.manifest))
    return 0


def cmd_evaluate(args) -> int:
    from tasks.steps import evaluate
    metrics = evaluate.run(_params(args), args.data, args.model, args.initial, args.metrics, args.per_query,
                           args.train_summary, plots_dir=args.plots or None, report_out=args.report or None,
                           train_steps=args.train_steps or None)
    print(metrics_table(metrics))
    return 0


def cmd_report(args) -> int:
    from tasks.report import html
    _print_json(html.rebuild(_params(args), args.metrics, args.out, args.train_steps or None,
                               args.train_summary or None, args.plots or None))
    return 0


def cmd_predict(args) -> int:
    from tasks.steps import predict
    _print_json(predict.run(_params(args), args.data, args.model, args.out, args.report, args.train_summary))
    return 0


def cmd_register(args) -> int:
    from tasks.steps import register
    _print_json(register.run(_params(args), args.train_summary, args.metrics, args.per_query, args.out))
    return 0


def cmd_promote(args) -> int:
    from tasks.steps import promote
    _print_json(promote.run(_params(args), args.registration, args.out, args.data))
    return 0


def cmd_rollback(args) -> int:
    from tasks.mlops import registry
    _print_json(registry.rollback(_params(args), args.out))
    return 0


def cmd_models(args) -> int:
    from tasks.mlops import registry
    print(registry.versions_table(_params(args)))
    return 0


def cmd_sync_aliases(args) -> int:
    from tasks.mlops import registry
    _print_json(registry.sync_aliases(_params(args)))
    return 0


def cmd_webhook_receiver(args) -> int:
    from tasks.mlops import webhooks
    from tasks.orchestration.workspace import CHAMPION_ASSET
    if args.max_age <= 0 or args.retry <= 0:
        raise UserError("--max-age and --retry: expected seconds > 0")
    params = _params(args)
    if not params["mlflow"]["enabled"]:
        raise UserError("mlflow.enabled is false: there is no registry to follow")
    user = os.environ.get(webhooks.AIRFLOW_USER_ENV) or "admin"
    airflow = webhooks.Airflow(args.airflow_url or os.environ.get(webhooks.AIRFLOW_URL_ENV)
                               or webhooks.DEFAULT_AIRFLOW_URL, user, webhooks.airflow_password(user))
    receiver = webhooks.Receiver(registered_model=params["mlflow"]["registered_model"],
                                 secret=webhooks.secret_from_env(webhooks.SECRET_ENV, "the webhook secret",
                                                                 webhooks.MIN_SECRET),
                                 airflow=airflow, asset=CHAMPION_ASSET, max_age=args.max_age)
    webhooks.serve(receiver, args.host, args.port, retry_seconds=args.retry)
    return 0


def cmd_register_webhook(args) -> int:
    from tasks.mlops import webhooks
    secret = webhooks.secret_from_env(webhooks.SECRET_ENV, "the webhook secret", webhooks.MIN_SECRET)
    _print_json(webhooks.register(args.url, secret, args.name, args.test))
    return 0


def cmd_ablate(args) -> int:
    from tasks.demo import ablate
    result = ablate.run(_params(args), args.data, args.model, args.work, args.out, args.teacher, args.truth)
    print(ablate.markdown(result), end="")
    return 0


def cmd_retrieve(args) -> int:
    from tasks.serving import retrieve
    _print_json(retrieve.run(_params(args), args.gallery, args.queries, args.out, args.model))
    return 0


def cmd_search(args) -> int:
    from tasks.serving import search
    result = search.run(_params(args), args.query, args.gallery, args.top, args.sheet, args.model)
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
    from tasks.serving import serve
    if args.follow < 0:
        raise UserError(f"--follow {args.follow}: expected seconds >= 0 (0: never)")
    serve.run(_params(args), args.gallery, args.model, args.host, args.port, args.follow)
    return 0


def cmd_ingest(args) -> int:
    from tasks.orchestration import workspace as orch
    _print_json(orch.ingest(orch.workspace(args.workspace), args.source, args.on_error))
    return 0


def cmd_summary(args) -> int:
    from tasks.orchestration import workspace as orch
    root = orch.workspace(args.workspace)
    info = orch.summary(root)
    metrics = root / paths.METRICS
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
    from tasks.orchestration import workspace as orch
    _print_json(orch.airflow_setup())
    return 0


def cmd_score(args) -> int:
    from tasks.core import submission
    _print_json(submission.score(args.submission, args.ground_truth))
    return 0


def cmd_metrics(args) -> int:
    path = Path(args.metrics)
    if not path.is_file():
        raise UserError(f"{path}: metrics file not found; run the pipeline first (make run)")
    print(metrics_table(json.loads(path.read_text())))
    return 0


def metrics_table(metrics: dict) -> str:
    from tasks.core.labels import METRIC_GROUPS
    """A plain-text table: one row per category, trained next to baseline."""
    columns = ("map_at_10", "trec_ap_at_10", "recall_at_1", "recall_at_5", "recall_at_10", "mean_rank",
               "median_rank", "queries")
    header = f"{'':<22}" + "".join(f"{c:>14}" for c in columns)
    lines = [header]
    for group, label in ((metrics, "model"), (metrics.get("baseline"), "baseline")):
        if not group:
            continue
        for category in METRIC_GROUPS:
            row = group.get(category) or {}
            cells = "".join(f"{'-' if row.get(c) is None else (f'{row[c]:.4f}' if isinstance(row[c], float) else row[c]):>14}"
                            for c in columns)
            lines.append(f"{label + ' ' + category:<22}{cells}")
    if "relevance_rule" in metrics:
        lines.append(f"(pedestrian relevance rule: {metrics['relevance_rule']}; map_at_10 is the organisers' rule)")
    return "\n".join(lines)
