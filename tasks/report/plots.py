"""Pictures of a training and an evaluation as PNG bytes (matplotlib, Agg backend: no display needed).

- :func:`training_curves`: loss and learning rate per step (``reports/train_steps.csv``), and the
  validation mAP@10 at the start and at each epoch end when the MLflow training run has it.
- :func:`category_metrics`: mAP@10 and Recall@1/5/10 per category, the model next to the untrained
  baseline (``metrics/eval.json``).

evaluate writes them to ``reports/plots/`` (DVC image plots) and logs them to its MLflow run;
tasks/report/html.py embeds them in the HTML report.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: never a GUI backend (Airflow workers, CI, no display)

import matplotlib.pyplot as plt  # noqa: E402

from tasks.core.errors import UserError  # noqa: E402
from tasks.core.labels import METRIC_GROUPS  # noqa: E402

DPI = 100
BARS = (("map_at_10", "mAP@10"), ("recall_at_1", "R@1"), ("recall_at_5", "R@5"), ("recall_at_10", "R@10"))
VALIDATION = (("val_map_at_10", "overall"), ("val_vehicle_map_at_10", "vehicle"),
              ("val_pedestrian_map_at_10", "pedestrian"))
MODEL_COLOUR, BASELINE_COLOUR = "#1f77b4", "#b0b0b0"
CATEGORY_COLOURS = {"overall": "#333333", "vehicle": "#1f77b4", "pedestrian": "#d62728"}


def read_steps(path: str | Path) -> list[dict]:
    """The rows of ``train_steps.csv`` (step, epoch, loss, lr) as numbers; [] when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append({"step": int(row["step"]), "epoch": int(row["epoch"]), "loss": float(row["loss"]),
                             "lr": float(row["lr"])})
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(f"{path}:{number}: expected step,epoch,loss,lr numbers ({exc})") from None
    return rows


def validation_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` of the validation mAP@10 a training run logged (at step 0
    and at every epoch end), the last value per step (a resumed training logs a step again)."""
    history = {}
    for name, _ in VALIDATION:
        latest: dict[int, tuple[int, float]] = {}
        for metric in client.get_metric_history(run_id, name):
            if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
                latest[metric.step] = (metric.timestamp, metric.value)
        if latest:
            history[name] = sorted((step, value) for step, (_, value) in latest.items())
    return history


def png_bytes(figure) -> bytes:
    """The figure as PNG bytes (no software/version metadata, so equal figures give equal bytes)."""
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        plt.close(figure)
    return buffer.getvalue()


def _epoch_lines(axes, steps: list[dict]) -> None:
    """Faint vertical lines where a new epoch starts."""
    for previous, row in zip(steps, steps[1:]):
        if row["epoch"] != previous["epoch"]:
            for ax in axes:
                ax.axvline(previous["step"] + 0.5, color="#dddddd", linewidth=0.8, zorder=0)


def training_curves(steps: list[dict], validation: dict[str, list[tuple[int, float]]] | None = None) -> bytes:
    """Loss and learning rate per step; below them the validation mAP@10 per category when given."""
    panels = 3 if validation else 2
    figure, axes = plt.subplots(panels, 1, figsize=(8, 2.4 * panels + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    x = [row["step"] for row in steps]
    axes[0].plot(x, [row["loss"] for row in steps], color="#1f77b4", linewidth=1.4)
    axes[0].set_ylabel("training loss")
    axes[1].plot(x, [row["lr"] for row in steps], color="#ff7f0e", linewidth=1.4)
    axes[1].set_ylabel("learning rate")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if not steps:
        axes[0].text(0.5, 0.5, "no training steps recorded", ha="center", va="center", transform=axes[0].transAxes)
    if validation:
        ax = axes[2]
        for name, label in VALIDATION:
            points = validation.get(name) or []
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker="o", linewidth=1.2,
                        color=CATEGORY_COLOURS[label], label=label)
        ax.set_ylabel("validation mAP@10")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", fontsize=8, frameon=False)
        ax.set_title("validation at the start (step 0) and at each epoch end", fontsize=9, loc="left")
    _epoch_lines(axes, steps)
    for ax in axes:
        ax.grid(True, color="#eeeeee", linewidth=0.8)
        ax.set_axisbelow(True)
    axes[-1].set_xlabel("step")
    epochs = steps[-1]["epoch"] if steps else 0
    figure.suptitle(f"Training: {len(steps)} steps, {epochs} epoch{'s' if epochs != 1 else ''}", fontsize=11)
    figure.tight_layout()
    return png_bytes(figure)


def _value(group: dict | None, category: str, key: str) -> float:
    value = ((group or {}).get(category) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def category_metrics(metrics: dict) -> bytes:
    """One panel per metric (mAP@10, R@1, R@5, R@10): a bar per category, model next to baseline."""
    baseline = metrics.get("baseline")
    series = [("model", metrics, MODEL_COLOUR)] + ([("untrained baseline", baseline, BASELINE_COLOUR)]
                                                    if baseline else [])
    figure, axes = plt.subplots(1, len(BARS), figsize=(3.1 * len(BARS), 3.6), sharey=True)
    width = 0.8 / len(series)
    highest = max([_value(group, c, key) for _, group, _ in series for c in METRIC_GROUPS for key, _ in BARS
                   if not math.isnan(_value(group, c, key))] or [0.0])
    top = min(1.1, max(0.1, math.ceil(highest * 1.15 * 10) / 10))   # room for the labels, never past 1.1
    for ax, (key, title) in zip(axes, BARS):
        for number, (label, group, colour) in enumerate(series):
            values = [_value(group, category, key) for category in METRIC_GROUPS]
            positions = [c + (number - (len(series) - 1) / 2) * width for c in range(len(METRIC_GROUPS))]
            bars = ax.bar(positions, [0 if math.isnan(v) else v for v in values], width, color=colour, label=label)
            for bar, value in zip(bars, values):
                ax.annotate("-" if math.isnan(value) else f"{value:.2f}", (bar.get_x() + bar.get_width() / 2,
                            bar.get_height()), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7)
        ax.set_title(title)
        ax.set_xticks(range(len(METRIC_GROUPS)), METRIC_GROUPS, fontsize=8)
        ax.set_ylim(0, top)
        ax.grid(True, axis="y", color="#eeeeee", linewidth=0.8)
        ax.set_axisbelow(True)
    axes[0].set_ylabel("score")
    axes[0].legend(loc="upper left", fontsize=8, frameon=False)
    rule = metrics.get("relevance_rule")
    queries = _value(metrics, "overall", "queries")
    details = ([] if math.isnan(queries) else [f"{int(queries)} queries"]) + ([f"{rule} pedestrian relevance"]
                                                                              if rule else [])
    figure.suptitle("Validation retrieval per category" + (f" ({', '.join(details)})" if details else ""),
                    fontsize=11)
    figure.tight_layout()
    return png_bytes(figure)
