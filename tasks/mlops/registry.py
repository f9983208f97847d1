"""The model registry: register a trained model once, promote it through a gate, roll back.

- ``register``: the model logged by a training run becomes a version of the registered model
  (params ``mlflow.registered_model``), tagged with its validation metrics, data hash, git commit,
  ``validation_status`` and the training run id. The run id is the idempotency key: registering the
  same run again, or from several processes at once, leaves exactly one version (a lock where there
  is one, and always a check after creating: every process keeps the lowest version carrying the
  key and deletes the others).
- ``promote``: the version becomes ``@challenger``, and ``@champion`` only if its validation mAP@10
  beats the champion's by ``min_gain`` and a paired bootstrap over the validation queries puts the
  probability of improvement at ``confidence`` or above; with no champion yet it must reach
  ``floor``. Both are scored on the same queries: a champion evaluated on other validation data is
  re-scored on the current split first. The decision goes to the version's tags and a report.
- ``rollback``: ``@champion`` back to the previous champion (the registered model's
  ``champion_history`` tag), recorded in tags and a report.
- ``sync_aliases``: promotion by hand is a first-class path. An alias can also be moved in the MLflow
  UI or through its API, where no gate runs. The registered model's ``trafficlip.aliases`` tag holds
  the aliases as trafficlip last saw them; every command that reads or moves aliases (``promote``,
  ``rollback``, ``models``, ``sync-aliases`` and the registry-watch DAG) first compares it with the
  registry and records each difference on the version it now points to: when it was detected, the
  version that held the alias before, and ``manual, ungated``. Conflicts (one version both
  ``@champion`` and ``@challenger``, a champion the gate rejected or never judged) are reported.
  docs/mlflow.md says who follows a change of champion (serve, the retrieval DAG).

Registration and every alias change of one registered model hold the same lock, so concurrent
promotions behave as if they ran one after the other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from tasks.core import log
from tasks.core.atomic import read_json, write_json
from tasks.core.errors import UserError
from tasks.mlops import tracking

RUN_KEY = "train_run_id"            # version tag: the idempotency key
STATUS = "validation_status"        # version tag: pending | passed | rejected | rolled_back
CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY = "champion_history"        # registered-model tag: champions in promotion order (JSON list)
HISTORY_KEEP = 100
ALIAS_STATE = "trafficlip.aliases"  # registered-model tag: {alias: version} as trafficlip last saw or set them
TRACKED_ALIASES = (CHAMPION, CHALLENGER)
MANUAL = "manual, ungated"          # the origin of an alias change made outside trafficlip
METRIC_TAGS = ("map_at_10", "trec_ap_at_10", "recall_at_1", "recall_at_5", "recall_at_10", "vehicle_map_at_10",
               "pedestrian_map_at_10")
LOCK_ENV = "TRAFFICLIP_REGISTRY_LOCK"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*")


# --- the lock ----------------------------------------------------------------------------------

@contextlib.contextmanager
def registry_lock(name: str) -> Iterator[None]:
    """Serialise registration and alias changes of one registered model.

    ``TRAFFICLIP_REGISTRY_LOCK``: ``auto`` (default) takes a PostgreSQL advisory lock when the
    tracking URI is a PostgreSQL database and a file lock (fcntl, this machine) otherwise; a
    ``postgresql://`` URI takes the advisory lock in that database (workers on several machines);
    ``none`` takes no lock (registration stays exactly-once by its check after creating).
    """
    setting = os.environ.get(LOCK_ENV, "").strip() or "auto"
    uri = tracking.tracking_uri()
    if setting == "none":
        yield
    elif setting.startswith("postgresql"):
        with _advisory_lock(setting, name):
            yield
    elif setting == "auto":
        if uri.startswith("postgresql"):
            with _advisory_lock(uri, name):
                yield
        else:
            with _file_lock(uri, name):
                yield
    else:
        raise UserError(f"{LOCK_ENV}={setting!r}: expected 'auto', 'none' or a postgresql:// URI")


@contextlib.contextmanager
def _advisory_lock(uri: str, name: str) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool
    key = int.from_bytes(hashlib.sha256(f"trafficlip-registry:{name}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:  # the lock dies with the connection if the process does
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    except sqlalchemy.exc.OperationalError as exc:
        raise UserError(f"registry lock: cannot reach PostgreSQL at {tracking.shown_uri(uri)} "
                              f"({' '.join(str(exc.orig).split())[:200]})") from None
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(uri: str, name: str) -> Iterator[None]:
    import fcntl
    if uri.startswith("sqlite:///"):  # one database, however it is spelt
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    digest = hashlib.sha256(f"{uri}\n{name}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"trafficlip-registry-{digest}.lock"
    with open(path, "a") as handle:  # the lock dies with the file handle if the process does
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- small helpers -----------------------------------------------------------------------------

def _skipped(out: str | Path) -> dict:
    result = {"skipped": "mlflow.enabled is false"}
    write_json(out, result)
    return result


def _check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"mlflow.registered_model: {name!r} (expected letters, digits, '_', '-', '.', spaces)")
    return name


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _aliases(client, name: str) -> dict[str, int]:
    return {alias: int(version) for alias, version in client.get_registered_model(name).aliases.items()}


def _history(client, name: str) -> list[int]:
    text = client.get_registered_model(name).tags.get(HISTORY, "[]")
    try:
        return [int(v) for v in json.loads(text)]
    except (ValueError, TypeError):
        raise UserError(f"registered model {name!r}: tag {HISTORY!r} is {text!r} "
                              "(expected a JSON list of version numbers)") from None


def _set_history(client, name: str, history: list[int]) -> None:
    client.set_registered_model_tag(name, HISTORY, json.dumps(history[-HISTORY_KEEP:]))


def _set_version_tags(client, name: str, version: int, tags: dict) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def _user() -> str:
    try:
        import getpass
        return getpass.getuser()
    except Exception:   # no user name in this environment (a container with an unknown uid)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


# --- aliases moved by hand ---------------------------------------------------------------------

def _alias_state(tags: dict[str, str]) -> dict[str, int] | None:
    """The aliases as trafficlip last saw or set them, from the registered model's tags (None: never
    recorded, a registry from before)."""
    text = tags.get(ALIAS_STATE)
    if text is None:
        return None
    try:
        return {str(alias): int(version) for alias, version in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError):
        return {}     # a tag someone edited by hand: every alias counts as a change


def _state_text(aliases: dict[str, int]) -> str:
    return json.dumps({alias: aliases[alias] for alias in sorted(aliases)}, sort_keys=True)


def _record_alias(client, name: str, alias: str, version: int, before: int | None, origin: str, by: str,
                  at: str) -> None:
    """The version now holding ``alias`` says how it got there."""
    _set_version_tags(client, name, version, {f"alias_{alias}_origin": origin, f"alias_{alias}_at": at,
                                              f"alias_{alias}_by": by,
                                              f"alias_{alias}_from": "none" if before is None else before})


def _save_alias_state(client, name: str, current: dict[str, int] | None = None) -> dict[str, int]:
    current = _aliases(client, name) if current is None else current
    client.set_registered_model_tag(name, ALIAS_STATE, _state_text(current))
    return current


def reconcile(client, name: str) -> list[dict]:
    """Record every alias change made outside trafficlip since its last look (hold the lock:
    ``registry_lock``); the changes recorded. ``sync_aliases`` and the webhook receiver use it."""
    model = client.get_registered_model(name)        # one read: its aliases and tags
    current = {alias: int(version) for alias, version in model.aliases.items()}
    known = _alias_state(model.tags)
    if known is None and not current:
        return []
    if known is None and HISTORY in model.tags:
        _save_alias_state(client, name, current)    # promoted by a trafficlip from before this record: the baseline
        return []
    known = known or {}
    changes = []
    at = _now()
    for alias in sorted(set(current) | set(known)):
        before, after = known.get(alias), current.get(alias)
        if before == after:
            continue
        change = {"alias": alias, "from": before, "to": after, "origin": MANUAL, "detected_at": at}
        changes.append(change)
        if after is not None:
            _record_alias(client, name, alias, after, before, MANUAL,
                          "outside trafficlip (MLflow UI or API; MLflow does not record who)", at)
        if alias == CHAMPION and after is not None:
            history = _history(client, name)
            if history[-1:] != [after]:
                _set_history(client, name, history + [after])
    if changes or model.tags.get(ALIAS_STATE) != _state_text(current):
        _save_alias_state(client, name, current)
    return changes


def conflicts(client, name: str) -> list[str]:
    """What is inconsistent in the aliases now: one version holding both, a champion the gate did not pass."""
    aliases = _aliases(client, name)
    problems = []
    champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    if champion is not None and champion == challenger:
        problems.append(f"version {champion} is both @champion and @challenger")
    if champion is not None:
        tags = client.get_model_version(name, str(champion)).tags
        status = tags.get(STATUS, "pending")
        if status != "passed":
            problems.append(f"@champion is version {champion}, whose validation status is {status!r} "
                            f"(the gate did not pass it{': ' + tags['promotion_reason'] if tags.get('promotion_reason') else ''})")
    return problems


def _look(client, name: str) -> tuple[list[dict], dict[str, int], list[str]] | None:
    """Under the lock: record moves made by hand; the changes, the aliases and the conflicts now
    (None: the registered model does not exist)."""
    from mlflow.exceptions import MlflowException
    try:
        with registry_lock(name):
            return reconcile(client, name), _aliases(client, name), conflicts(client, name)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise


def sync_aliases(params: dict) -> dict:
    """Detect and record alias changes made outside trafficlip; report the champion and any conflicts.
    ``champion_changed`` says whether ``@champion`` moved since trafficlip last looked (by any path)."""
    logger = log.setup("sync-aliases")
    name = _check_name(params["mlflow"]["registered_model"])
    if not params["mlflow"]["enabled"]:
        return {"registered_model": name, "skipped": "mlflow.enabled is false", "changes": [], "champion": None,
                "champion_changed": False, "conflicts": []}
    looked = _look(tracking.connect(), name)
    if looked is None:
        return {"registered_model": name, "exists": False, "changes": [], "champion": None,
                "champion_changed": False, "conflicts": []}
    changes, aliases, problems = looked
    for change in changes:
        logger.warning("@%s moved outside trafficlip (%s): version %s -> %s", change["alias"], MANUAL,
                       change["from"], change["to"])
    for problem in problems:
        logger.warning("conflict: %s", problem)
    return {"registered_model": name, "exists": True, "changes": changes, "champion": aliases.get(CHAMPION),
            "champion_changed": any(c["alias"] == CHAMPION for c in changes), "conflicts": problems}


def is_missing(exc: Exception) -> bool:
    """Whether an MLflow error says the model, version or alias does not exist."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


# --- register ----------------------------------------------------------------------------------

def _store_evaluation(client, run_id: str, metrics_path: Path, per_query_path: Path) -> str:
    """Upload the evaluation files to the training run under a content-addressed folder (idempotent);
    its URI, from which ``promote`` reads the per-query scores."""
    digest = hashlib.sha256(metrics_path.read_bytes() + b"\0" + per_query_path.read_bytes()).hexdigest()[:16]
    folder = f"evaluations/{digest}"
    if not client.list_artifacts(run_id, folder):
        client.log_artifact(run_id, str(metrics_path), folder)
        client.log_artifact(run_id, str(per_query_path), folder)
    return f"runs:/{run_id}/{folder}"


def _versions_of_run(client, name: str, run_id: str) -> list:
    found = client.search_model_versions(f"name = '{name}' and tags.{RUN_KEY} = '{run_id}'")
    return sorted(found, key=lambda v: int(v.version))


def _keep_lowest(client, name: str, versions: list):
    """The lowest version carrying a key wins, in every process; the others are deleted."""
    from mlflow.exceptions import MlflowException
    keep, *extra = versions
    for version in extra:
        try:
            client.delete_model_version(name, version.version)
        except MlflowException as exc:
            if not is_missing(exc):  # another process deleted it first
                raise
    return keep


def _find_or_create(client, name: str, run_id: str, model_id: str, tags: dict) -> tuple[int, bool]:
    import mlflow
    existing = _versions_of_run(client, name, run_id)
    if existing:
        return int(_keep_lowest(client, name, existing).version), False
    created = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
    winner = _keep_lowest(client, name, _versions_of_run(client, name, run_id))
    return int(winner.version), winner.version == created.version


def _version_tags(train_run, metrics: dict, evaluation: str) -> dict[str, str]:
    run_tags = train_run.data.tags
    flat = tracking.metric_items(metrics)
    return {
        RUN_KEY: train_run.info.run_id,
        STATUS: "pending",
        **{name: str(flat[name]) for name in METRIC_TAGS if name in flat},
        "validation_fingerprint": str(metrics.get("validation_fingerprint", "")),
        "relevance_rule": str(metrics.get("relevance_rule", "")),
        "evaluation": evaluation,
        "data_hash": run_tags.get("data_hash", "unknown"),
        "git_commit": run_tags.get("git.commit", "unknown"),
        "git_dirty": run_tags.get("git.dirty", "unknown"),
    }


def describe_version(tags: dict[str, str]) -> str:
    """The version's description in the registry UI (markdown): metrics, data, code, where the
    evaluation is (galleries and report), and the gate's decision once promote ran."""
    def tag(key: str) -> str:
        return tags.get(key, "?")
    lines = [f"**mAP@10 {tag('map_at_10')}** on validation (vehicle {tag('vehicle_map_at_10')}, pedestrian "
             f"{tag('pedestrian_map_at_10')}; Recall@1 {tag('recall_at_1')}; relevance rule {tag('relevance_rule')})",
             f"- data: `{tag('data_hash')}`; code: git `{tag('git_commit')[:12]}`"
             + (" (with uncommitted changes)" if tags.get("git_dirty") == "true" else ""),
             f"- trained by run `{tag(RUN_KEY)}`; evaluation, retrieval galleries and the HTML report: "
             f"`{tag('evaluation')}`"]
    decision = tags.get("promotion_decision")
    lines.append(f"- gate: {decision} ({tags.get('promotion_reason', '')})" if decision
                 else "- gate: not decided yet (trafficlip promote)")
    return "\n".join(lines)


def _describe(client, name: str, version: int) -> None:
    current = client.get_model_version(name, str(version))
    text = describe_version(current.tags)
    if current.description != text:
        client.update_model_version(name, str(version), description=text)


def register(params: dict, train_summary: str | Path, metrics_path: str | Path, per_query_path: str | Path,
             out: str | Path) -> dict:
    """Register the model of the training run named in ``train_summary`` (once); write ``out``."""
    logger = log.setup("register")
    cfg = params["mlflow"]
    if not cfg["enabled"]:
        return _skipped(out)
    name = _check_name(cfg["registered_model"])
    summary = read_json(train_summary, "trafficlip train")
    run_id, model_id = summary.get("mlflow_run_id"), summary.get("mlflow_model_id")
    if not run_id or not model_id:
        raise UserError(f"{train_summary}: names no MLflow run (training ran with mlflow.enabled false); "
                              "train again with tracking on: dvc repro -f train")
    metrics_path, per_query_path = Path(metrics_path), Path(per_query_path)
    metrics = read_json(metrics_path, "trafficlip evaluate")
    per_query = read_json(per_query_path, "trafficlip evaluate")
    if len(per_query) != metrics.get("overall", {}).get("queries"):
        raise UserError(f"{per_query_path}: {len(per_query)} queries but {metrics_path} counts "
                              f"{metrics.get('overall', {}).get('queries')} (expected files of one evaluation)")
    client = tracking.connect()
    from mlflow.exceptions import MlflowException
    try:
        train_run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"{train_summary}: MLflow run {run_id} not found at "
                              f"{tracking.shown_uri(tracking.tracking_uri())}; train again: dvc repro -f train") from None
    evaluation = _store_evaluation(client, run_id, metrics_path, per_query_path)
    tags = _version_tags(train_run, metrics, evaluation)
    with registry_lock(name):
        version, created = _find_or_create(client, name, run_id, model_id, tags)
        if not created:  # a new evaluation of the same model: refresh its metrics, keep its status
            current = client.get_model_version(name, str(version)).tags
            _set_version_tags(client, name, version, {k: v for k, v in tags.items()
                                                      if k != STATUS and current.get(k) != str(v)})
        _describe(client, name, version)
    result = {"registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}",
              RUN_KEY: run_id, "map_at_10": metrics["overall"]["map_at_10"],
              "validation_fingerprint": metrics.get("validation_fingerprint"), "evaluation": evaluation}
    write_json(out, result)
    logger.info("%s version %s of %r (training run %s)", "registered" if created else "already registered",
                version, name, run_id)
    return {**result, "created": created}


# --- promote -----------------------------------------------------------------------------------

def gate(candidate_ap, champion_ap, min_gain: float, confidence: float, samples: int) -> dict:
    """The promotion rule on per-query organisers' AP of the same queries, in the same order."""
    from tasks.core.metrics import bootstrap_improvement  # (imports torch: only when deciding)
    candidate_ap = np.asarray(candidate_ap, dtype=np.float64)
    champion_ap = np.asarray(champion_ap, dtype=np.float64)
    probability = bootstrap_improvement(candidate_ap, champion_ap, samples=samples, seed=0)
    candidate_map, champion_map = float(candidate_ap.mean()), float(champion_ap.mean())
    gain = candidate_map - champion_map
    gained, confident = gain >= min_gain, probability >= confidence
    if gained and confident:
        reason = f"mAP@10 gain {gain:+.4f} >= {min_gain} with P(improvement) {probability:.3f} >= {confidence}"
    elif not gained:
        reason = f"mAP@10 gain {gain:+.4f} < min_gain {min_gain}"
    else:
        reason = f"P(improvement) {probability:.3f} < confidence {confidence} (gain {gain:+.4f} may be noise)"
    return {"promote": bool(gained and confident), "reason": reason, "candidate_map": round(candidate_map, 6),
            "champion_map": round(champion_map, 6), "gain": round(gain, 6), "probability": round(probability, 4)}


def _evaluation_of(version) -> tuple[list[dict], str]:
    """A version's per-query scores (from its ``evaluation`` tag) and validation fingerprint."""
    import mlflow
    evaluation = version.tags.get("evaluation")
    if not evaluation:
        raise UserError(f"version {version.version} has no 'evaluation' tag (not registered by trafficlip)")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"{evaluation}/eval_queries.json", dst_path=tmp)
        per_query = json.loads(Path(local).read_text())
    return per_query, version.tags.get("validation_fingerprint", "")


def _validation_for(params: dict, data: Path):
    from tasks.core.scoring import validation_for
    return validation_for(params, data)


def _rescore(name: str, version: int, validation) -> list[dict]:
    """Per-query scores of a registered version on ``validation`` (a tasks.core.scoring.ValidationSet)."""
    import mlflow

    from tasks.core import models
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        clip = models.load_checkpoint(tracking.checkpoint_of(local))
    _, ranking = validation.score(clip)
    return [{"text": q["text"], "organisers_ap": float(ap)} for q, ap in zip(validation.queries, ranking.organisers_ap)]


def _decide(client, name: str, version: int, params: dict, data: Path | None) -> dict:
    cfg = params["mlflow"]
    candidate = client.get_model_version(name, str(version))
    champion = _aliases(client, name).get(CHAMPION)
    decision = {"registered_model": name, "version": version, "champion_before": champion,
                "min_gain": cfg["min_gain"], "confidence": cfg["confidence"], "floor": cfg["floor"],
                "bootstrap_samples": cfg["bootstrap_samples"]}
    if champion == version:
        return {**decision, "decision": "already_champion", "promote": False,
                "reason": f"version {version} is already the champion"}
    if candidate.tags.get(STATUS) == "rolled_back":
        return {**decision, "decision": "rolled_back", "promote": False,
                "reason": f"version {version} was rolled back; it is not promoted again"}
    candidate_queries, fingerprint = _evaluation_of(candidate)
    candidate_ap = [q["organisers_ap"] for q in candidate_queries]
    if champion is None:
        candidate_map = float(np.mean(candidate_ap)) if candidate_ap else 0.0
        passed = candidate_map >= cfg["floor"]
        reason = (f"no champion yet; mAP@10 {candidate_map:.4f} {'>=' if passed else '<'} floor {cfg['floor']}")
        return {**decision, "decision": "promoted" if passed else "rejected", "promote": passed, "reason": reason,
                "candidate_map": round(candidate_map, 6)}
    champion_queries, champion_fingerprint = _evaluation_of(client.get_model_version(name, str(champion)))
    rescored = champion_fingerprint != fingerprint
    if rescored:  # evaluated on other data or rules: score it again on the candidate's queries
        if data is None:
            raise UserError(f"champion version {champion} was evaluated on other validation data; "
                                  "pass --data to re-score it")
        validation = _validation_for(params, Path(data))
        if validation.fingerprint() != fingerprint:
            raise UserError(f"version {version} was evaluated on other validation data or rules than "
                                  f"{data} with the current evaluate params (fingerprint {fingerprint} vs "
                                  f"{validation.fingerprint()}); evaluate it again first")
        champion_queries = _rescore(name, champion, validation)
    if [q["text"] for q in champion_queries] != [q["text"] for q in candidate_queries]:
        raise UserError(f"versions {version} and {champion} were scored on different validation queries")
    verdict = gate(candidate_ap, [q["organisers_ap"] for q in champion_queries], cfg["min_gain"],
                   cfg["confidence"], cfg["bootstrap_samples"])
    return {**decision, **verdict, "decision": "promoted" if verdict["promote"] else "rejected",
            "champion_rescored": rescored}


def _apply(client, name: str, decision: dict) -> None:
    """Tags first, the alias last: a crash in between leaves a state the next run completes.

    Idempotent: a decision the version's tags already record (a retried or cleared task deciding
    again, against the same champion) rewrites nothing, and an alias already in place is not set
    again, so a second run leaves the registry exactly as the first left it.
    """
    version = decision["version"]
    if decision["decision"] in ("already_champion", "rolled_back"):  # nothing changes
        return
    numbers = {f"promotion_{key}": decision[key] for key in ("reason", "gain", "probability", "candidate_map",
                                                             "champion_map") if key in decision}
    tags = {STATUS: "passed" if decision["promote"] else "rejected", "promotion_decision": decision["decision"],
            "promotion_against": decision["champion_before"] or "none", **numbers}
    recorded = client.get_model_version(name, str(version)).tags
    if any(recorded.get(key) != str(value) for key, value in tags.items()):
        _set_version_tags(client, name, version, {**tags, "promotion_at": _now()})
    _describe(client, name, version)
    aliases = _aliases(client, name)
    if not decision["promote"]:
        if aliases.get(CHALLENGER) != version:
            client.set_registered_model_alias(name, CHALLENGER, str(version))
        return
    history = _history(client, name)
    if history[-1:] != [version]:
        _set_history(client, name, history + [version])
    if aliases.get(CHAMPION) != version:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    if aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def promote(params: dict, registration: str | Path, out: str | Path, data: str | Path | None = None) -> dict:
    """Gate the registered version named in ``registration``; move the aliases; write ``out``."""
    logger = log.setup("promote")
    if not params["mlflow"]["enabled"]:
        return _skipped(out)
    registered = read_json(registration, "trafficlip register")
    if "version" not in registered:
        raise UserError(f"{registration}: no registered version in it ({registered.get('skipped', 'empty')})")
    name, version = registered["registered_model"], int(registered["version"])
    client = tracking.connect()
    with registry_lock(name):
        manual = reconcile(client, name)
        before = _aliases(client, name)
        decision = _decide(client, name, version, params, Path(data) if data else None)
        _apply(client, name, decision)
        after = _aliases(client, name)
        origin = f"trafficlip promote: {decision['decision']} by the gate"
        for alias in TRACKED_ALIASES:
            if after.get(alias) is not None and after.get(alias) != before.get(alias):
                _record_alias(client, name, alias, after[alias], before.get(alias), origin, _user(), _now())
        _save_alias_state(client, name)
        decision["champion_after"] = after.get(CHAMPION)
        decision["champion_changed"] = after.get(CHAMPION) != before.get(CHAMPION)
        if manual:
            decision["manual_changes_found"] = manual
    write_json(out, decision)
    logger.info("version %d: %s (%s); champion is version %s", version, decision["decision"], decision["reason"],
                decision["champion_after"])
    return decision


def rollback(params: dict, out: str | Path) -> dict:
    """Move ``@champion`` back to the previous champion; the demoted version is marked rolled_back."""
    logger = log.setup("rollback")
    name = _check_name(params["mlflow"]["registered_model"])
    client = tracking.connect()
    with registry_lock(name):
        reconcile(client, name)
        current = _aliases(client, name).get(CHAMPION)
        if current is None:
            raise UserError(f"registered model {name!r} has no champion to roll back")
        history = [v for v in _history(client, name) if v != current]
        previous = next((v for v in reversed(history)
                         if client.get_model_version(name, str(v)).tags.get(STATUS) != "rolled_back"), None)
        if previous is None:
            raise UserError(f"registered model {name!r}: version {current} is the only champion there has "
                                  "been; nothing to roll back to")
        now = _now()  # the demoted version's tags and the history first, the alias last (as in _apply)
        _set_version_tags(client, name, current, {STATUS: "rolled_back", "rolled_back_at": now,
                                                  "rolled_back_to": previous})
        _set_history(client, name, history[:history.index(previous) + 1])
        client.set_registered_model_alias(name, CHAMPION, str(previous))
        _set_version_tags(client, name, previous, {"restored_at": now, "restored_from": current})
        _record_alias(client, name, CHAMPION, previous, current, "trafficlip rollback", _user(), now)
        _save_alias_state(client, name)
    result = {"registered_model": name, "rolled_back": current, "champion": previous, "at": now}
    write_json(out, result)
    logger.info("champion of %r rolled back from version %d to version %d", name, current, previous)
    return result


# --- models ------------------------------------------------------------------------------------

def versions_table(params: dict) -> str:
    """Versions, aliases, status and validation metrics of the registered model, newest first."""
    name = _check_name(params["mlflow"]["registered_model"])
    client = tracking.connect()
    looked = _look(client, name)
    if looked is None:
        return f"registered model {name!r} does not exist yet at {tracking.shown_uri(tracking.tracking_uri())}"
    changes, aliases, problems = looked
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version))
    tags_of = {int(v.version): v.tags for v in versions}
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        manual = tags_of.get(version, {}).get(f"alias_{alias}_origin") == MANUAL
        by_version.setdefault(version, []).append(f"@{alias}" + (" (manual)" if manual else ""))
    columns = ("version", "aliases", "status", "map_at_10", "vehicle", "pedestrian", "decision", "train run", "git")
    rows = [columns]
    for v in versions:
        t = v.tags
        rows.append((v.version, " ".join(sorted(by_version.get(int(v.version), []))) or "-", t.get(STATUS, "-"),
                     t.get("map_at_10", "-"), t.get("vehicle_map_at_10", "-"), t.get("pedestrian_map_at_10", "-"),
                     t.get("promotion_decision", "-"), t.get(RUN_KEY, "-")[:12], t.get("git_commit", "-")[:8]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(columns))]
    lines = [f"registered model {name!r} at {tracking.shown_uri(tracking.tracking_uri())}"]
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    for alias in sorted(aliases):
        t = tags_of.get(aliases[alias], {})
        if t.get(f"alias_{alias}_origin"):
            lines.append(f"@{alias} -> version {aliases[alias]}: {t[f'alias_{alias}_origin']}, "
                         f"{t.get(f'alias_{alias}_at', '?')}, by {t.get(f'alias_{alias}_by', '?')}, "
                         f"before: version {t.get(f'alias_{alias}_from', '?')}")
    for change in changes:
        lines.append(f"detected now: @{change['alias']} moved outside trafficlip, version {change['from']} -> "
                     f"{change['to']} ({MANUAL})")
    lines += [f"conflict: {problem}" for problem in problems]
    return "\n".join(lines)
