"""A readable live view of `airflow dags test` for the terminal (`make run`).

Reads Airflow's output on stdin, writes all of it to a log file, and prints what a person follows:
each task as it starts and ends (with its state: success, skipped, failed, up for retry) and its
duration, the tasks a branch skipped, and the steps' own progress lines (decoding, training, ...),
as the steps log them. The full Airflow log stays in the file.

`airflow dags test` runs the tasks inside its own process and writes no task log files, so the Airflow
UI would show "Log file not found" for every task of the run `make run` made. With a task-log folder
(Airflow's ``[logging] base_log_folder``), each task's lines also go to the file the UI reads for it,
at Airflow's default ``log_filename_template`` (``dag_id=.../run_id=.../task_id=.../attempt=N.log``), as
the JSON lines Airflow's own task logs hold (timestamp, level, event), so `make up` shows them.

    airflow dags test trafficlip_training 2>&1 | python -m tasks.orchestration.live .airflow/dags-test.log \
        [.airflow/logs]
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Iterable, TextIO

STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
ENDED = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
NEW_STATE = re.compile(r"Task instance state updated .*new_state=(\w+)")
BRANCH_SKIPPED = re.compile(r"Skipping tasks \[(.*?)\]")
RUN_ENDED = re.compile(r"Marking run .* (successful|failed)")
# the project's own log lines (tasks/core/log.py): "12:00:01 INFO [train run=...] message"
STEP_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) \[(\w+) [^\]]*\] (.*)$")
RUNNING = re.compile(r"running task <TaskInstance: ([\w.-]+)\.([\w.-]+) (\S+) \[")
# Airflow's own console lines: "2026-12-06T09:16:21.740177Z [info     ] event ..."
CONSOLE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) \[(\w+)\s*\] (.*)$")
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


class TaskLogs:
    """Each task's lines of `airflow dags test` output, into the log file the Airflow UI reads for it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.task: str | None = None
        self.pending: list[str] = []          # the task's first lines, until its run is known
        self.handle = None
        self.attempts: dict[tuple[str, str, str], int] = {}
        self.written: list[Path] = []

    def feed(self, line: str) -> None:
        if match := STARTING.search(line):
            self.close()
            self.task, self.pending = match.group(1), []
        if self.task is None:
            return
        if self.handle is None and (match := RUNNING.search(line)) and match.group(2) == self.task:
            self._open(match.group(1), match.group(2), match.group(3))
        if self.handle is None:
            self.pending.append(line)
        else:
            self._write(line)
        if ENDED.search(line):
            self.close()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.handle, self.task, self.pending = None, None, []

    def _open(self, dag_id: str, task_id: str, run_id: str) -> None:
        key = (dag_id, run_id, task_id)
        attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        path = self.folder / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}" / f"attempt={attempt}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "w", encoding="utf-8")
        self.written.append(path)
        for line in self.pending:
            self._write(line)
        self.pending = []

    def _write(self, line: str) -> None:
        if match := CONSOLE.match(line):
            stamp, level, event = match.groups()
        else:
            stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
            step = STEP_LINE.match(line)
            level, event = (step.group(1).lower(), line) if step else ("info", line)
        self.handle.write(json.dumps({"timestamp": stamp, "level": level.lower(), "event": event}) + "\n")
        self.handle.flush()


def main(argv: list[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python -m tasks.orchestration.live LOGFILE [TASK_LOG_FOLDER]  (Airflow's output on stdin)",
              file=sys.stderr)
        return 2
    tasks = TaskLogs(argv[1]) if len(argv) == 2 else None
    with open(argv[0], "w", encoding="utf-8") as log:
        def lines():
            for line in stdin:
                log.write(line)
                log.flush()
                if tasks is not None:
                    tasks.feed(line.rstrip("\n"))
                yield line.rstrip("\n")
        try:
            for shown in condense(lines()):
                print(shown, file=stdout, flush=True)
        finally:
            if tasks is not None:
                tasks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
