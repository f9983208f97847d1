"""A readable live view of `airflow dags test` for the terminal (`make run`).

Reads Airflow's output on stdin, writes all of it to a log file, and prints what a person follows:
each task as it starts and ends (with its state: success, skipped, failed, up for retry) and its
duration, the tasks a branch skipped, and the steps' own progress lines (decoding, training, ...),
as the steps log them. The full Airflow log stays in the file.

    airflow dags test trafficlip_training 2>&1 | python -m tasks.orchestration.live .airflow/dags-test.log
"""

from __future__ import annotations

import re
import sys
import time
from typing import Iterable, TextIO

STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
ENDED = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
NEW_STATE = re.compile(r"Task instance state updated .*new_state=(\w+)")
BRANCH_SKIPPED = re.compile(r"Skipping tasks \[(.*?)\]")
RUN_ENDED = re.compile(r"Marking run .* (successful|failed)")
# the project's own log lines (tasks/core/log.py): "12:00:01 INFO [train run=...] message"
STEP_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) \[(\w+) [^\]]*\] (.*)$")
MARKS = {"success": "done", "skipped": "skipped", "failed": "FAILED", "up_for_retry": "failed, will retry",
         "upstream_failed": "not run (an upstream task failed)"}


def condense(lines: Iterable[str], clock=time.monotonic) -> Iterable[str]:
    """The lines to show for Airflow's output ``lines`` (each without its newline)."""
    started: dict[str, float] = {}
    state: dict[str, str] = {}
    current = None
    for line in lines:
        if match := STARTING.search(line):
            current = match.group(1)
            started[current] = clock()
            yield f"> {current}"
        elif match := NEW_STATE.search(line):
            if current:
                state[current] = match.group(1)
        elif match := ENDED.search(line):
            task = match.group(1)
            seconds = clock() - started.get(task, clock())
            yield f"  {task}: {MARKS.get(state.get(task, ''), state.get(task, 'ended'))} ({seconds:.1f} s)"
        elif match := BRANCH_SKIPPED.search(line):
            names = re.findall(r"'([^']+)'", match.group(1))
            if names:
                yield f"  skipped by the branch: {', '.join(names)}"
        elif match := STEP_LINE.match(line):
            level, step, message = match.groups()
            yield f"    {step}: {message}" if level == "INFO" else f"    {step} {level}: {message}"
        elif match := RUN_ENDED.search(line):
            yield f"run {match.group(1)}"


def main(argv: list[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tasks.orchestration.live LOGFILE  (Airflow's output on stdin)", file=sys.stderr)
        return 2
    with open(argv[0], "w", encoding="utf-8") as log:
        def lines():
            for line in stdin:
                log.write(line)
                log.flush()
                yield line.rstrip("\n")
        for shown in condense(lines()):
            print(shown, file=stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
