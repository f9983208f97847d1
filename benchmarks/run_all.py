"""Run every benchmark and write benchmarks/results.md (`make bench`).

Every ``benchmarks/*.py`` except this file and helpers whose names start with ``_`` runs as its own
subprocess, in name order, with its default arguments; its output is captured and written, whole,
into the markdown next to the date, the machine (cores, CPU model, memory, load) and the git commit.
The lines that carry a benchmark's verdict (ratios, ``MET``/``MISSED`` targets, same-answer checks)
are also collected into a summary at the top.

A benchmark in ``SEPARATE`` (``scale.py``: tens of minutes) runs only when named in ``--only``; it
has its own make target, which writes its own section of results.md, and ``make bench`` keeps that
section as it was when it rewrites the file.

A benchmark that needs something ``make bench`` does not build is skipped with the reason printed
(``NEEDS``: the augmentation benchmark needs the trained demo model and its prepared data, which
``make run`` writes). A benchmark that fails or runs past ``--timeout`` is reported as such, and the
others still run; the exit status is non-zero if any failed.

    python benchmarks/run_all.py [--out benchmarks/results.md] [--only ranking,gallery] [--timeout 900]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import cpu_model, section_markers  # noqa: E402

# benchmark -> (files it needs, relative to the project root, and why)
NEEDS = {
    "augment.py": (["data/prepared/vocabulary.json", "data/prepared/train/manifest.json",
                    "data/prepared/train/images.json", "models/model/open_clip_config.json"],
                   "it compares augmentation choices on the trained demo model and its prepared data: "
                   "run `make run` first"),
}
# benchmark -> arguments, where its defaults would not fit `make bench` in 20 minutes on 2 cores
ARGS = {
    "augment.py": ["--images", "50"],     # the reference takes ~2 s per image (200 by default: ~7 min)
}
# benchmarks left out of `make bench` (run them with their own make target, or --only NAME)
SEPARATE = {
    "scale.py": "`make bench-scale`: prepare and training memory at 1,000 to 20,000 images, ~25 min on 2 cores",
}
# lines worth a summary: ratios, targets and their verdicts, agreement checks, overheads
VERDICT = re.compile(r"\b[Rr]atios?\b|\bMET\b|\bMISSED\b|[Ss]ame (answers?|choices|embeddings|submissions)\b[^|]*:"
                     r"|\bfaster\b|overhead =")


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    if only:
        wanted = {name if name.endswith(".py") else f"{name}.py" for name in only}
        return [p for p in found if p.name in wanted]
    return [p for p in found if p.name not in SEPARATE]


def kept_sections(old: str, ran: set[str]) -> list[str]:
    """The sections of results.md that benchmarks outside `make bench` wrote (and did not run now)."""
    kept = []
    for name in SEPARATE:
        start, end = section_markers(name)
        if name not in ran and start in old and end in old.split(start, 1)[1]:
            kept.append(start + old.split(start, 1)[1].split(end, 1)[0] + end)
    return kept


def machine_line() -> str:
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024 ** 3:.0f} GiB memory"
    except (ValueError, OSError):
        memory = "memory unknown"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, {cpu_model()}, {memory}; load average at start {load} (1 / 5 / 15 min)"


def git_line() -> str:
    def git(*args) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""
    commit = git("rev-parse", "--short", "HEAD") or "no git commit"
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{commit}{dirty}"


def run_one(script: Path, timeout: float) -> dict:
    missing = [path for path in NEEDS.get(script.name, ([], ""))[0] if not (ROOT / path).exists()]
    if missing:
        return {"status": "skipped", "reason": f"{NEEDS[script.name][1]} (missing: {', '.join(missing)})",
                "stdout": "", "stderr": "", "seconds": 0.0}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    started = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, str(script), *ARGS.get(script.name, [])], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=timeout)
        status = "ok" if result.returncode == 0 else f"failed (exit {result.returncode})"
        stdout, stderr = result.stdout, result.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timed out after {timeout:.0f} s"
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    return {"status": status, "stdout": stdout, "stderr": stderr, "seconds": time.perf_counter() - started}


def verdict_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if VERDICT.search(line)]


def markdown(results: dict[str, dict], started: dt.datetime, total: float) -> str:
    lines = ["# Benchmark results", "",
             f"Written by `make bench` (benchmarks/run_all.py) on {started:%Y-%m-%d %H:%M} UTC, "
             f"in {total / 60:.1f} min.",
             "",
             f"- machine: {machine_line()}",
             f"- python {sys.version.split()[0]}, git {git_line()}",
             "- each script runs our path and the reference path interleaved in one process, on the same inputs, "
             "checks that they agree, and prints times, peak memory and ratios (see each script's docstring)",
             "", "| benchmark | status | seconds |", "|---|---|---|"]
    for name, r in results.items():
        status = r["status"] if r["status"] != "skipped" else f"skipped: {r['reason']}"
        lines.append(f"| `{name}` | {status} | {r['seconds']:.0f} |")
    lines += ["", "## Summary", ""]
    for name, r in results.items():
        picked = verdict_lines(r["stdout"])
        if picked:
            lines.append(f"**{name}**")
            lines.append("")
            lines += [f"- {line}" for line in picked]
            lines.append("")
    not_run = [f"`{name}` ({why})" for name, why in SEPARATE.items() if name not in results]
    if not_run:
        lines += ["", "Not part of `make bench`: " + "; ".join(not_run) + ". Its section, if any, is at the end."]
    for name, r in results.items():
        lines += ["", f"## {name}", ""]
        if r["status"] == "skipped":
            lines.append(f"Skipped: {r['reason']}.")
            continue
        command = " ".join([f"python benchmarks/{name}", *ARGS.get(name, [])])
        lines += [f"`{command}`: {r['status']}, {r['seconds']:.0f} s", "", "```",
                  r["stdout"].rstrip() or "(no output)", "```"]
        if not r["status"].startswith("ok"):
            tail = "\n".join(r["stderr"].rstrip().splitlines()[-40:])
            lines += ["", "stderr (last lines):", "", "```", tail or "(empty)", "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results.md"))
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per benchmark")
    args = parser.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    print(f"machine: {machine_line()}", flush=True)
    for script in scripts(args.only.split(",") if args.only else None):
        print(f"== {script.name}", flush=True)
        results[script.name] = result = run_one(script, args.timeout)
        if result["status"] == "skipped":
            print(f"   skipped: {result['reason']}", flush=True)
            continue
        for line in verdict_lines(result["stdout"]):
            print(f"   {line}", flush=True)
        print(f"   {result['status']} in {result['seconds']:.0f} s", flush=True)
    total = time.perf_counter() - t0
    from tasks.core.atomic import write_text
    old = Path(args.out).read_text() if Path(args.out).is_file() else ""
    kept = kept_sections(old, set(results))
    write_text(args.out, markdown(results, started, total) + "".join(f"\n{section}\n" for section in kept))
    print(f"wrote {args.out} ({total / 60:.1f} min)")
    return 0 if all(r["status"] in ("ok", "skipped") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
