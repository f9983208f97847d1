"""Benchmark: pipeline overheads: `dvc repro` on an unchanged workspace, and the training DAG's
orchestration time (its wall time minus its steps' compute).

A tiny workspace is built the way the tests build one (tests/conftest.py ``make_workspace``: a git +
DVC checkout of this project with a small synthetic dataset as data/raw and tiny training values).
Then, in that workspace, with a private Airflow home (SQLite) and MLflow store:

1. the training DAG (dags/trafficlip_training.py) runs with ``dag.test()`` from scratch (every step
   runs), then ``dvc repro`` runs once (it records the stages the DAG ran outside DVC: register,
   promote), then ``dvc repro`` is timed ``--repeats`` times on the unchanged workspace (target
   <= 1.5 s), next to ``dvc status`` (what deciding costs) and ``python -c pass`` (a bare interpreter);
2. the DAG runs again with nothing changed (the DVC stages are skipped).

For each DAG run: the wall time of ``dag.test()``, every task's duration (end - start), and every
command the tasks ran (tasks/orchestration/workspace.py ``run``, timed here by wrapping it). A task's *step* is
the command that does its work (``dvc repro --single-item STAGE``, ``trafficlip train``, ``trafficlip
validate/register/promote``); ``dvc status`` and ``dvc commit`` are bookkeeping. Orchestration
overhead = DAG wall - the steps' seconds (target <= 15 s), split into: between tasks (wall - the sum
of task durations: scheduling, state changes), inside tasks outside commands (task start-up, XCom),
and bookkeeping commands. The steps' own seconds include DVC's start-up inside ``dvc repro``; what
one DVC start costs is the unchanged ``dvc status`` time of part 1.

    python benchmarks/overheads.py [--repeats 5] [--vehicles 60 --pedestrians 60] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
# a private Airflow home and no example DAGs; tests.conftest (make_workspace) sets the same when imported
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="trafficlip-bench-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
AIRFLOW_HOME = os.environ["AIRFLOW_HOME"]

from _common import machine, median, seconds, verdict  # noqa: E402

CONF = {"epochs": 2, "batch_size": 16, "learning_rate": 0.002, "floor": 0.0, "runner": "local"}
STEP_COMMANDS = {("dvc", "repro"), ("tasks", "validate"), ("tasks", "register"), ("tasks", "promote"),
                 ("trafficlip", "train")}
DVC_TARGET = 1.5
DAG_TARGET = 15.0


def command_kind(argv: list[str]) -> str:
    """'step' for the command that does a task's work, 'bookkeeping' for the rest."""
    words = [Path(a).name for a in argv[:4]]
    pairs = {(words[i], words[i + 1]) for i in range(len(words) - 1)}
    if ("dvc", "repro") in pairs or any(p in STEP_COMMANDS for p in pairs):
        return "step"
    return "bookkeeping"


class CommandLog:
    """Wraps tasks.orchestration.workspace.run: every command a task runs, with its start and end."""

    def __init__(self):
        self.records: list[dict] = []

    def install(self) -> None:
        from tasks.orchestration import workspace as orch
        original = orch.run

        def timed(args, cwd, what):
            started = time.time()
            try:
                return original(args, cwd, what)
            finally:
                self.records.append({"argv": [str(a) for a in args], "start": started, "end": time.time()})
        orch.run = timed


def timed_command(argv: list[str], cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr[-2000:]}")
    return elapsed


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (Airflow's task logs, the commands' echo) to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def dag_run(dag, commands: CommandLog, log_path: Path) -> dict:
    before = len(commands.records)
    started = time.time()
    with output_to(log_path):
        run = dag.test(run_conf=CONF)
    wall = time.time() - started
    instances = sorted((ti for ti in run.get_task_instances()), key=lambda t: (t.start_date is None, t.start_date or 0))
    rows = {ti.task_id: {"task": ti.task_id, "state": str(ti.state), "duration": 0.0, "step": 0.0,
                         "bookkeeping": 0.0, "commands": 0} for ti in instances}
    spans = [(ti.task_id, ti.start_date.timestamp(), ti.end_date.timestamp()) for ti in instances
             if ti.start_date and ti.end_date]
    for task_id, start, end in spans:
        rows[task_id]["duration"] = end - start
    unassigned = 0.0
    for record in commands.records[before:]:
        # the task that was running when the command started (the latest started one)
        owners = [task_id for task_id, start, end in spans if start - 0.05 <= record["start"] <= end + 0.05]
        seconds_ = record["end"] - record["start"]
        if not owners:
            unassigned += seconds_
            continue
        row = rows[max(owners, key=lambda tid: next(s for t, s, _ in spans if t == tid))]
        row[command_kind(record["argv"])] += seconds_
        row["commands"] += 1
    tasks = list(rows.values())
    durations = sum(t["duration"] for t in tasks)
    step = sum(t["step"] for t in tasks)
    bookkeeping = sum(t["bookkeeping"] for t in tasks) + unassigned
    return {"state": str(run.state), "wall": wall, "tasks": tasks, "durations": durations, "step": step,
            "bookkeeping": bookkeeping, "overhead": wall - step, "between": wall - durations,
            "inside": durations - step - bookkeeping + unassigned}


def print_dag_run(title: str, result: dict, log_path: Path) -> None:
    print(f"\n{title}: {result['state']}, wall {seconds(result['wall'])}")
    if not result["state"].endswith("success"):
        print("  the run failed; the end of its log:")
        print("\n".join("    " + line for line in log_path.read_text(errors="replace").splitlines()[-40:]))
    print(f"  {'task':<18} {'state':<10} {'duration':>9} {'step':>9} {'bookkeeping':>12} {'commands':>9}")
    for t in result["tasks"]:
        print(f"  {t['task']:<18} {t['state']:<10} {t['duration']:8.2f}s {t['step']:8.2f}s {t['bookkeeping']:11.2f}s "
              f"{t['commands']:>9}")
    print(f"  sum of task durations {result['durations']:.1f} s, steps {result['step']:.1f} s, bookkeeping commands "
          f"{result['bookkeeping']:.1f} s")
    print(f"  orchestration overhead = wall - steps = {result['overhead']:.1f} s (between tasks "
          f"{result['between']:.1f} s, inside tasks outside commands {result['inside']:.1f} s, bookkeeping "
          f"{result['bookkeeping']:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed unchanged `dvc repro` runs")
    parser.add_argument("--vehicles", type=int, default=60)
    parser.add_argument("--pedestrians", type=int, default=60)
    parser.add_argument("--keep", action="store_true", help="keep the workspace and print where it is")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="trafficlip-bench-overheads-"))
    try:
        return run(args, work)
    finally:
        if args.keep:
            print(f"workspace kept: {work / 'ws'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


def run(args, work: Path) -> int:
    from tasks.demo import synth
    from tests.conftest import make_workspace, tool_env
    os.environ["AIRFLOW_HOME"] = AIRFLOW_HOME       # importing tests.conftest chose another temporary home
    started = time.perf_counter()
    synth.generate(work / "raw", vehicles=args.vehicles, pedestrians=args.pedestrians, seed=3)
    root = make_workspace(work / "ws", work / "raw")
    os.environ["TRAFFICLIP_WORKSPACE"] = str(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlruns.db'}"
    env = tool_env()
    print(f"workspace: {args.vehicles} vehicles + {args.pedestrians} pedestrians (synthetic), tiny training "
          f"values, built in {time.perf_counter() - started:.1f} s")
    setup = timed_command([sys.executable, "-m", "tasks", "airflow-setup"], ROOT, env)
    print(f"airflow-setup (metadata database, pools): {setup:.1f} s")

    from airflow.dag_processing.dagbag import DagBag
    with output_to(work / "dag-test.log"):
        bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags["trafficlip_training"]
    commands = CommandLog()
    commands.install()

    log_path = work / "dag-test.log"
    first = dag_run(dag, commands, log_path)
    print_dag_run("training DAG, first run (every step runs)", first, log_path)

    settle = timed_command(["dvc", "repro"], root, env)
    repro = [timed_command(["dvc", "repro"], root, env) for _ in range(args.repeats)]
    status = [timed_command(["dvc", "status"], root, env) for _ in range(args.repeats)]
    bare = [timed_command([sys.executable, "-c", "pass"], root, env) for _ in range(3)]
    dvc_import = [timed_command([sys.executable, "-c", "import dvc.repo"], root, env) for _ in range(3)]
    print(f"\n`dvc repro` on the unchanged workspace ({args.repeats} runs, after one that recorded what the DAG ran "
          f"outside DVC: {settle:.1f} s)")
    print(f"  dvc repro   median {seconds(median(repro))}, best {seconds(min(repro))}")
    print(f"  dvc status  median {seconds(median(status))}, best {seconds(min(status))}")
    print(f"  python -c 'import dvc.repo' median {seconds(median(dvc_import))}; python -c pass median "
          f"{seconds(median(bare))}")

    second = dag_run(dag, commands, log_path)
    print_dag_run("training DAG, second run (nothing changed: DVC stages skipped)", second, log_path)

    print("\ntargets:")
    print(f"  unchanged `dvc repro` <= {DVC_TARGET} s: {median(repro):.2f} s: {verdict(median(repro) <= DVC_TARGET)}")
    print(f"  DAG wall - steps' compute <= {DAG_TARGET:.0f} s: first run {first['overhead']:.1f} s, second run "
          f"{second['overhead']:.1f} s: {verdict(max(first['overhead'], second['overhead']) <= DAG_TARGET)}")
    ok = first["state"].endswith("success") and second["state"].endswith("success")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
