"""Helpers shared by the benchmark scripts: interleaved timing, peak memory in a fresh process, the machine.

Timing: every method of a comparison runs once per round, in the same order, for several rounds, so a
busy machine slows all of them alike; medians (and the best round) are reported and ratios are taken
between medians.

Memory: tracemalloc does not see torch's allocations, so peak memory is the process's resident set.
Each measurement runs in a fresh subprocess (the script itself, with a ``--measure`` argument) that
loads its inputs and warms the method up, returns the heap's free pages to the kernel (``malloc_trim``:
otherwise memory freed while loading would be reused unseen), then resets the kernel's high-water mark
(``/proc/self/clear_refs``) and reads ``VmHWM`` after the method: peak extra memory = VmHWM - VmRSS
before the call. The inputs (embeddings, images) are loaded before the reset, so they are not counted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
MEASURE_PREFIX = "MEASURED "


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Return the C heap's free pages to the kernel (glibc ``malloc_trim``), so that memory freed before
    a measurement cannot be reused unseen by it."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_here(run: Callable[[], object]) -> dict:
    """Peak extra resident memory of ``run()`` in this process (call it in a fresh subprocess)."""
    release_free_memory()
    if not reset_peak():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): run on Linux")
    before = rss_mb()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    return {"peak_extra_mb": round(peak_mb() - before, 1), "rss_before_mb": round(before, 1),
            "seconds": round(seconds, 3)}


def report_measurement(result: dict) -> None:
    """The last line a --measure subprocess prints: read back by :func:`measure_in_subprocess`."""
    print(MEASURE_PREFIX + json.dumps(result), flush=True)


def measure_in_subprocess(script: str | Path, args: list[str], timeout: float = 1800) -> dict:
    """Run ``python SCRIPT ARGS`` in a fresh process and return the dict it reported."""
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(MEASURE_PREFIX):
            return json.loads(line[len(MEASURE_PREFIX):])
    raise RuntimeError(f"{Path(script).name} {' '.join(args)} reported no measurement "
                       f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}")


def interleaved(methods: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, list[float]], dict]:
    """Run every method once per round, in order, for ``rounds`` rounds; seconds per method and each
    method's result from the last round."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    results: dict = {}
    for _ in range(rounds):
        for name, method in methods.items():
            started = time.perf_counter()
            results[name] = method()
            times[name].append(time.perf_counter() - started)
    return times, results


def median(values: list[float]) -> float:
    return statistics.median(values)


def seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: cores, CPU model, memory, load, torch threads (imports torch)."""
    import torch
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024 ** 3:.0f} GiB"
    except (ValueError, OSError):
        memory = "? GiB"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{os.cpu_count()} cores ({cpu_model()}), {memory}{gpu}, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, load average {load}")


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def section_markers(script: str) -> tuple[str, str]:
    """The lines around a results.md section that a benchmark outside `make bench` writes itself
    (``run_all.SEPARATE``); `make bench` rewrites the file but keeps such a section as it was."""
    return (f"<!-- {script}: written by its own make target; `make bench` keeps it -->", f"<!-- end of {script} -->")
