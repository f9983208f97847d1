"""The evaluation report: one self-contained HTML page (metrics table, plots, retrieval galleries).

It works offline and as a single MLflow artefact: every picture is embedded as a base64 ``data:`` URI,
the style is inline, there is no script, and a Content-Security-Policy forbids loading anything from
elsewhere. Every text (query texts come from user data) is HTML-escaped.

evaluate writes it (``reports/eval_report.html``) with the pictures it saves under ``reports/plots/``;
``trafficlip report`` rebuilds it from the files on disk (metrics, training steps, the saved galleries).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from PIL import Image, PngImagePlugin

from tasks.core import log
from tasks.core.atomic import atomic_dir, read_json, write_text
from tasks.core.labels import METRIC_GROUPS

TRAINING_CURVES = "training_curves.png"
CATEGORY_METRICS = "category_metrics.png"
GALLERIES = "galleries"                     # subfolder of the plots folder
# (key, heading, higher is better)
COLUMNS = (("map_at_10", "mAP@10", True), ("trec_ap_at_10", "trec AP@10", True), ("recall_at_1", "R@1", True),
           ("recall_at_5", "R@5", True), ("recall_at_10", "R@10", True), ("mean_rank", "mean rank", False),
           ("median_rank", "median rank", False), ("queries", "queries", None))
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.7em; text-align: right; border-bottom: 1px solid #eee; }
th:first-child, td:first-child { text-align: left; }
tr.model td { font-weight: 600; } tr.gain td { color: #666; font-size: 0.9em; }
td.better { color: #1a7f37; } td.worse { color: #c62828; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; } dt { color: #666; } dd { margin: 0; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; margin-top: 0.3em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.query { font-weight: 600; white-space: pre-wrap; }
.note { color: #666; }
"""


@dataclass
class Picture:
    """A plot: its file name under the plots folder, a title and the PNG bytes."""

    name: str
    title: str
    png: bytes


@dataclass
class Gallery:
    """One query's retrieval gallery (tasks/report/galleries.py): file name, query text, caption, picture."""

    name: str
    text: str
    caption: str
    image: Image.Image

    def png(self) -> bytes:
        """PNG bytes that carry the query text and caption (PNG ``Title``/``Description``), so a
        saved gallery is enough to rebuild the report."""
        info = PngImagePlugin.PngInfo()
        info.add_itxt("Title", self.text)
        info.add_itxt("Description", self.caption)
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()


def read_galleries(folder: str | Path) -> list[Gallery]:
    """The galleries saved in ``folder`` (name order), their texts from the PNG metadata."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        with Image.open(path) as image:
            image.load()
            text = getattr(image, "text", {}) or {}
            found.append(Gallery(path.name, text.get("Title", path.stem), text.get("Description", ""),
                                 image.convert("RGB")))
    return found


def pictures(metrics: dict, steps: list[dict] | None,
             validation: dict[str, list[tuple[int, float]]] | None = None) -> list[Picture]:
    """The plots of an evaluation: training curves (when there are training steps) and per-category
    metrics."""
    from tasks.report import plots
    out = []
    if steps:
        title = "Training loss and learning rate per step" + (
            ", validation mAP@10 per epoch" if validation else "")
        out.append(Picture(TRAINING_CURVES, title, plots.training_curves(steps, validation)))
    out.append(Picture(CATEGORY_METRICS, "mAP@10 and Recall@K per category, model and untrained baseline",
                       plots.category_metrics(metrics)))
    return out


def save_pictures(folder: str | Path, plots: Iterable[Picture], galleries: Iterable[Gallery]) -> list[Path]:
    """Replace ``folder`` with the plots and a ``galleries/`` subfolder (all at once, atomically);
    the files' final paths."""
    folder = Path(folder)
    names = []
    with atomic_dir(folder) as tmp:
        for picture in plots:
            (tmp / picture.name).write_bytes(picture.png)
            names.append(picture.name)
        (tmp / GALLERIES).mkdir()
        for gallery in galleries:
            (tmp / GALLERIES / gallery.name).write_bytes(gallery.png())
            names.append(f"{GALLERIES}/{gallery.name}")
    return [folder / name for name in names]


# --- HTML --------------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cell(value) -> str:
    number = _number(value)
    if number is None or math.isnan(number):
        return "-"
    return str(int(value)) if isinstance(value, int) else f"{number:.4f}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def metrics_table(metrics: dict) -> str:
    """Per category: the model, the untrained baseline and the difference (green where better)."""
    baseline = metrics.get("baseline") or {}
    head = "".join(f"<th>{_e(heading)}</th>" for _, heading, _ in COLUMNS)
    rows = []
    for category in METRIC_GROUPS:
        model_row = metrics.get(category) or {}
        rows.append(f'<tr class="model"><td>{_e(category)} - model</td>'
                    + "".join(f"<td>{_e(_cell(model_row.get(key)))}</td>" for key, _, _ in COLUMNS) + "</tr>")
        if not baseline:
            continue
        base_row = baseline.get(category) or {}
        rows.append(f"<tr><td>{_e(category)} - baseline</td>"
                    + "".join(f"<td>{_e(_cell(base_row.get(key)))}</td>" for key, _, _ in COLUMNS) + "</tr>")
        cells = []
        for key, _, higher_better in COLUMNS:
            a, b = _number(model_row.get(key)), _number(base_row.get(key))
            if higher_better is None or a is None or b is None:
                cells.append("<td></td>")
                continue
            gain = a - b
            verdict = "" if abs(gain) < 1e-12 else ("better" if (gain > 0) == higher_better else "worse")
            cells.append(f'<td class="{verdict}">{gain:+.4f}</td>')
        rows.append(f'<tr class="gain"><td>{_e(category)} - model minus baseline</td>{"".join(cells)}</tr>')
    return f"<table>\n<thead><tr><th></th>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _details(items: dict) -> str:
    shown = {k: v for k, v in items.items() if v not in (None, "", {})}
    if not shown:
        return ""
    return "<dl>\n" + "\n".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in shown.items()) + "\n</dl>"


def build_html(metrics: dict, plots: list[Picture], galleries: list[Gallery], info: dict | None = None,
               title: str = "trafficlip evaluation report") -> str:
    """The whole page as a string: nothing in it loads from anywhere else."""
    categories = metrics.get("categories") or {}
    facts = {"pedestrian relevance rule": metrics.get("relevance_rule"),
             "validation fingerprint": metrics.get("validation_fingerprint"),
             "query category accuracy": categories.get("query_category_accuracy"),
             "gallery classifier accuracy": categories.get("gallery_classifier_accuracy"),
             "queries that fit neither category": categories.get("uncategorised_queries"),
             **(info or {})}
    parts = [f"<h1>{_e(title)}</h1>", _details(facts),
             "<h2>Metrics</h2>",
             '<p class="note">mAP@10 is the organisers\' rule; R@K is the share of queries with a relevant '
             "image in the top K; ranks are of the first relevant image (lower is better). The baseline is "
             "the untrained starting model.</p>",
             metrics_table(metrics), "<h2>Plots</h2>"]
    for picture in plots:
        parts.append(f'<figure><img src="{_data_uri(picture.png)}" alt="{_e(picture.title)}">'
                     f"<figcaption>{_e(picture.title)}</figcaption></figure>")
    if not plots:
        parts.append('<p class="note">No plots.</p>')
    parts.append("<h2>Retrieval galleries</h2>")
    if galleries:
        parts.append('<p class="note">Each query\'s top 10 in rank order: a green frame is a relevant image, '
                     "red is not.</p>")
    else:
        parts.append('<p class="note">No galleries were saved with this evaluation.</p>')
    for gallery in galleries:
        parts.append(f'<figure><div class="query">{_e(gallery.text)}</div>'
                     f'<img src="{_data_uri(gallery.png())}" alt="{_e("top 10 for: " + gallery.text)}">'
                     f"<figcaption>{_e(gallery.caption)}</figcaption></figure>")
    body = "\n".join(part for part in parts if part)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def training_info(train_summary: str | Path | None) -> dict:
    """What the report says about the training, from ``train_summary.json`` if there is one."""
    path = Path(train_summary) if train_summary else None
    if not path or not path.is_file():
        return {}
    summary = read_json(path)
    described = {"training": ", ".join(f"{label} {summary[key]}" for key, label in (
        ("steps", "steps"), ("epochs", "epochs"), ("batch_size", "batch size"), ("final_loss", "final loss"),
        ("samples_per_second", "samples/s"), ("device", "on")) if summary.get(key) is not None)}
    if summary.get("mlflow_run_id"):
        described["MLflow training run"] = summary["mlflow_run_id"]
    return described


# --- rebuilding from files ---------------------------------------------------------------------

def _validation_from_mlflow(params: dict, train_summary: str | Path | None):
    """The training run's validation history when tracking is on and the summary names a run;
    None (with a warning when MLflow cannot answer) otherwise."""
    path = Path(train_summary) if train_summary else None
    if not params["mlflow"]["enabled"] or not path or not path.is_file():
        return None
    run_id = read_json(path).get("mlflow_run_id")
    if not run_id:
        return None
    from tasks.mlops import tracking
    from tasks.report import plots
    try:
        return plots.validation_history(tracking.connect(), run_id) or None
    except Exception as exc:  # the report is still useful without these points
        log.setup("report").warning("no validation curve: MLflow run %s: %s", run_id,
                                    " ".join(str(exc).split())[:200])
        return None


def rebuild(params: dict, metrics_path: str | Path, out: str | Path, train_steps: str | Path | None = None,
            train_summary: str | Path | None = None, plots_dir: str | Path | None = None) -> dict:
    """``trafficlip report``: the HTML report from the files an evaluation left (the metrics, the
    training steps, the galleries saved under ``PLOTS/galleries``); plots are drawn afresh."""
    from tasks.report import plots as plot_mod
    metrics = read_json(metrics_path, "trafficlip evaluate")
    steps = plot_mod.read_steps(train_steps) if train_steps else []
    validation = _validation_from_mlflow(params, train_summary)
    shown = pictures(metrics, steps, validation)
    saved = read_galleries(Path(plots_dir) / GALLERIES) if plots_dir else []
    info = {"metrics": str(metrics_path), **training_info(train_summary)}
    write_text(out, build_html(metrics, shown, saved, info))
    return {"report": str(out), "plots": [p.name for p in shown], "galleries": len(saved),
            "validation_curve": bool(validation)}
