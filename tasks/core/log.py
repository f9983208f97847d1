"""Logging and progress: a progress bar on a terminal, plain periodic lines otherwise (Airflow logs).

Every line carries the step name and, when there is one, the run id (Airflow's or MLflow's).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_configured = False


class _Context(logging.Filter):
    def __init__(self, step: str):
        super().__init__()
        self.step = step

    def filter(self, record: logging.LogRecord) -> bool:
        # open_clip warns for every randomly initialised model: that is this project's normal case.
        if record.getMessage().startswith("No pretrained weights loaded"):
            return False
        record.step = self.step
        record.run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or _mlflow_run_id() or "-"
        return True


def _mlflow_run_id() -> str | None:
    """The active MLflow run's id (shortened), if this process imported MLflow and started one."""
    mlflow = sys.modules.get("mlflow")
    active = mlflow.active_run() if mlflow is not None and hasattr(mlflow, "active_run") else None
    return active.info.run_id[:8] if active else os.environ.get("MLFLOW_RUN_ID")


def setup(step: str) -> logging.Logger:
    global _configured
    root = logging.getLogger()
    if not _configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(step)s run=%(run_id)s] %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
        logging.getLogger("trafficlip").setLevel(logging.INFO)
        _configured = True
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, _Context)]:
            handler.removeFilter(f)
        handler.addFilter(_Context(step))
    return logging.getLogger(f"trafficlip.{step}")


def peak_memory_mb() -> float:
    """This process's peak resident memory in MB (Linux reports kilobytes, macOS bytes). Its
    subprocesses are not in it (the kernel's figure for them counts, for a fork-then-exec child, the
    parent's pages at the fork, so it would mislead)."""
    import resource
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def duration(seconds: float) -> str:
    """A duration as people read it: 45 s, 3 min 20 s, 2 h 05 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress(items: Iterable[T], total: int, desc: str, logger: logging.Logger,
             every_seconds: float = 15.0, status: Callable[[], str] | None = None,
             samples_per_item: int = 0) -> Iterator[T]:
    """tqdm on a terminal; otherwise an INFO line every ``every_seconds`` and at the end, with the
    rate (and samples/s when each item is ``samples_per_item`` samples), what ``status()`` says (the
    epoch and loss, say) and the time left at that rate."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        for item in bar:
            yield item
            if status is not None:
                bar.set_postfix_str(status(), refresh=False)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_seconds or done == total:
            rate = done / max(now - start, 1e-9)
            parts = [f"{rate:.1f}/s" + (f", {rate * samples_per_item:.0f} samples/s" if samples_per_item else "")]
            text = f"{desc}: {done}/{total} ({', '.join(parts)})"
            if status is not None:
                text += f", {status()}"
            text += ", done" if done == total else f", {duration((total - done) / rate)} left"
            logger.info("%s", text)
            last = now
