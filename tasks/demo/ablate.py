"""`trafficlip ablate`: each of the reference solution's techniques on and off, on the validation split.

Techniques: attribute augmentation (a training-time change), prompt enhancement, category split and
adaption re-ranking (retrieval-time). Rows: all off, all on, each technique alone (against all off)
and all but each (against all on), plus all on with re-ranking but no flip. Columns: mAP@10
(organisers' rule) and Recall@1, overall and per category.

Augmentation needs two trained models with the same params: one on the prepared captions, one on
the captions augmentation completed. A model already trained on either (the DVC pipeline's
``models/model``, recognised by its training fingerprint) is reused; the other is trained here,
under ``--work``. Retrieval-time techniques only re-score: each model embeds the validation split
once and every row ranks those embeddings with its switches.

Which model completes the captions: ``--teacher params`` uses ``augment.model`` as the pipeline does
(for real data the pretrained CLIP, the reference's zero-shot approach); ``self`` uses the model
trained without augmentation (self-training); a folder names a checkpoint. ``auto`` (default) is
``params``, except when ``augment.model`` is a randomly initialised model (the demo): such a model
completes nothing (``augment.min_confidence``), so the arm would equal the other one, and
self-training is used instead. The report says which.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core import log, models, retrieval, scoring
from tasks.core.atomic import read_json, write_json, write_text
from tasks.core.errors import UserError
from tasks.core.images import ImageCache
from tasks.core.labels import METRIC_GROUPS, Vocabulary
from tasks.core.metrics import bootstrap_improvement
from tasks.core.paths import MANIFEST, VOCABULARY
from tasks.steps import augment, train

FEATURES = ("augmentation", "prompt_enhancement", "category_split", "rerank")
LABELS = {"augmentation": "attribute augmentation", "prompt_enhancement": "prompt enhancement",
          "category_split": "category split", "rerank": "adaption re-ranking"}


def rows() -> list[tuple[str, dict[str, bool], dict]]:
    """(name, features on, extra retrieval settings) for every row of the table."""
    none = {f: False for f in FEATURES}
    every = {f: True for f in FEATURES}
    table = [("all off", none, {}), ("all on", every, {})]
    table += [(f"only {LABELS[f]}", {**none, f: True}, {}) for f in FEATURES]
    table += [(f"all but {LABELS[f]}", {**every, f: False}, {}) for f in FEATURES]
    table.append(("all on, re-ranking without flip", every, {"rerank_flip": False}))
    return table


def _arm(params: dict, data: Path, manifest: dict, manifest_path: Path, known: list[Path], folder: Path,
         logger) -> tuple[Path, str]:
    """A model trained with ``params`` on ``manifest``: a known one whose fingerprint matches, else trained."""
    wanted = train.fingerprint(params, data, manifest)
    for candidate in (*known, folder / "model"):
        config = candidate / models.CONFIG_FILE
        if config.is_file() and read_json(config).get("trafficlip", {}).get("fingerprint") == wanted:
            return candidate, f"reused {candidate} (same params and captions)"
    logger.info("training %s on %s", folder, manifest_path)
    train.run(params, data, folder, folder / "reports", manifest_path=manifest_path)
    log.setup("ablate")   # training labelled the log lines as its own
    return folder / "model", f"trained {folder / 'model'} with the same params"


def _teacher(choice: str, params: dict, off_model: Path) -> tuple[models.ClipModel, str]:
    setting, pretrained = params["augment"]["model"], params["model"]["pretrained"]
    if choice == "auto":
        choice = "self" if setting == "initial" and not pretrained else "params"
    if choice == "self":
        return models.load_checkpoint(off_model), (f"self-training: {off_model}, the model trained with the "
                                                   "same params on the captions without augmentation")
    if choice == "params":
        return augment.scoring_model(params)
    if not Path(choice).is_dir():
        raise UserError(f"--teacher {choice!r}: expected auto, params, self or a checkpoint folder")
    return models.load_checkpoint(choice), f"checkpoint {choice}"


def _summary(ranking, queries) -> dict:
    return scoring.summarise_categories(ranking, [q["category"] for q in queries])


def markdown(result: dict) -> str:
    head = ("| row | aug | prompt | split | rerank | mAP@10 all | mAP@10 vehicle | mAP@10 pedestrian "
            "| R@1 all | R@1 vehicle | R@1 pedestrian |")
    lines = [head, "|" + "---|" * 11]
    mark = {True: "on", False: "-"}
    for row in result["rows"]:
        m = row["metrics"]
        cells = [row["name"]] + [mark[row["features"][f]] for f in FEATURES]
        cells += [f"{m[g]['map_at_10']:.4f}" if m[g]["map_at_10"] is not None else "-" for g in METRIC_GROUPS]
        cells += [f"{m[g]['recall_at_1']:.4f}" if m[g]["recall_at_1"] is not None else "-" for g in METRIC_GROUPS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| technique | alone: mAP@10 (only it) - (all off) | P(gain) | with the others: mAP@10 (all on) - (all but it) "
              "| P(gain) |",
              "|---|---|---|---|---|"]
    for effect in result["effects"]:
        lines.append(f"| {LABELS[effect['feature']]} | {effect['alone']['map_at_10_change']:+.4f} | "
                     f"{effect['alone']['p_gain']:.3f} | {effect['with_others']['map_at_10_change']:+.4f} | "
                     f"{effect['with_others']['p_gain']:.3f} |")
    notes = result["notes"]
    lines += ["", f"Validation split: {notes['queries']} queries, {notes['gallery']} images; "
              f"relevance rule {notes['relevance_rule']}. P(gain): share of 2000 paired bootstrap resamples of "
              "the queries in which the technique's mAP@10 is higher.",
              f"Augmentation teacher: {notes['teacher']}; {notes['captions_changed']} training caption(s) "
              f"completed (report: {notes['augment_report']}).",
              f"Model without augmentation: {notes['model_without_augmentation']}.",
              f"Model with augmentation: {notes['model_with_augmentation']}."]
    return "\n".join(lines) + "\n"


def run(params: dict, data: str | Path, model_dir: str | Path, work: str | Path, out: str | Path,
        teacher: str = "auto", truth: str | Path | None = None) -> dict:
    """Write ``<out>.json`` and ``<out>.md``; return the result."""
    logger = log.setup("ablate")
    data, work, out, model_dir = Path(data), Path(work), Path(out), Path(model_dir)
    ev, base_cfg = params["evaluate"], params["retrieval"]
    retrieval.check({**base_cfg, "rerank": True}, ev["top_k"], "evaluate.top_k")

    prepared_path = data / "train" / MANIFEST
    prepared = read_json(prepared_path, "trafficlip prepare")
    off_model, off_note = _arm(params, data, prepared, prepared_path, [model_dir], work / "without_augmentation",
                               logger)

    clip, teacher_note = _teacher(teacher, params, off_model)
    clip.model.to(models.device())
    vocabulary = Vocabulary.from_dict(read_json(data / VOCABULARY, "trafficlip prepare"))
    truth_images = read_json(truth)["images"] if truth and Path(truth).is_file() else None
    augmented, report = augment.augment_manifest(prepared, vocabulary, ImageCache(data / "train"), clip,
                                                 {**params["augment"], "enabled": True}, truth_images)
    augmented_path = work / "augmented" / augment.MANIFEST_NAME
    report_path = work / "augmented" / "augment_report.json"
    write_json(augmented_path, augmented)
    write_json(report_path, {"model": teacher_note, **report})
    on_model, on_note = _arm(params, data, augmented, augmented_path, [model_dir, off_model],
                             work / "with_augmentation", logger)

    manifest, queries, query_ann, gallery_ann = scoring.validation_set(data)
    texts = [q["text"] for q in queries]
    encoded = {}
    for arm, folder in (("off", off_model), ("on", on_model)):
        encoded[arm] = retrieval.encode_split(models.load_checkpoint(folder), data, "val", texts, base_cfg,
                                              ev["batch_size"], everything=True)
    result_rows, aps = [], {}
    for name, features, extra in rows():
        cfg = {**base_cfg, **{f: features[f] for f in FEATURES if f != "augmentation"}, **extra}
        enc = encoded["on" if features["augmentation"] else "off"]
        ranking = scoring.rank(enc, cfg, query_ann, gallery_ann, ev["pedestrian_relevance"], ev["top_k"])
        aps[name] = ranking.organisers_ap
        result_rows.append({"name": name, "features": features, "retrieval": cfg,
                            "metrics": _summary(ranking, queries)})
        logger.info("%-40s mAP@10 %.4f", name, result_rows[-1]["metrics"]["overall"]["map_at_10"])
    by_name = {row["name"]: row for row in result_rows}

    def change(new: str, old: str) -> dict:
        return {"map_at_10_change": round(by_name[new]["metrics"]["overall"]["map_at_10"]
                                          - by_name[old]["metrics"]["overall"]["map_at_10"], 6),
                "p_gain": bootstrap_improvement(aps[new], aps[old])}
    effects = [{"feature": f, "alone": change(f"only {LABELS[f]}", "all off"),
                "with_others": change("all on", f"all but {LABELS[f]}")} for f in FEATURES]
    result = {"rows": result_rows, "effects": effects, "notes": {
        "queries": len(queries), "gallery": len(manifest["images"]), "relevance_rule": ev["pedestrian_relevance"],
        "teacher": teacher_note, "captions_changed": report["captions_changed"],
        "augment_report": str(report_path), "augmentation_accuracy": {
            name: stats.get("truth") for name, stats in report["attributes"].items() if stats["to_complete"]},
        "model_without_augmentation": off_note, "model_with_augmentation": on_note}}
    write_json(out.with_suffix(".json"), result)
    write_text(out.with_suffix(".md"), markdown(result))
    logger.info("wrote %s and %s", out.with_suffix(".json"), out.with_suffix(".md"))
    return result
