"""`make down`: stop what `make up` started (airflow standalone, the MLflow UI) and every process they
started, and say how many that was.

`make up` starts each service with ``setsid`` (a session and process group of its own, whose leader's
pid is in ``.airflow/<name>.pid``) and with ``TRAFFICLIP_MAKE_UP=<checkout>`` in its environment. The
processes to stop are those that carry the marker, every descendant of them, and every member of the
two process groups: Airflow's API server, scheduler, DAG processor, triggerer and each task's
supervisor and task process (some of which Airflow starts with an environment of its own, without the
marker), MLflow's workers. Each group gets SIGTERM; what is still alive after 30 s gets SIGTERM again,
then SIGKILL after 10 s. The count printed is of the processes that were running and are gone.

    python -m tasks.orchestration.stop HOME MARKER     # what `make down` runs
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

SERVICES = ("airflow", "mlflow")


def _leaders(home: Path) -> dict[str, int]:
    leaders = {}
    for name in SERVICES:
        try:
            leaders[name] = int((home / f"{name}.pid").read_text())
        except (OSError, ValueError):
            pass
    return leaders


def started(home: Path, marker: str) -> list:
    """The processes `make up` started (see the module docstring), this one excluded."""
    import psutil
    groups = set(_leaders(home).values())
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid():
                continue
            if proc.environ().get("TRAFFICLIP_MAKE_UP") == marker or os.getpgid(proc.pid) in groups:
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
        except (psutil.Error, OSError):
            pass
    return list(found.values())


def stop(home: str | Path, marker: str, grace: float = 30.0) -> tuple[int, list[str]]:
    """Stop them all; (how many processes were stopped, a line per service leader signalled)."""
    import psutil
    home = Path(home)
    procs = started(home, marker)
    said = []
    for name, pid in _leaders(home).items():
        if any(p.pid == pid for p in procs):
            said.append(f"stopping {name} (pid {pid})")
            try:
                os.killpg(pid, signal.SIGTERM)
            except OSError:
                pass
    for proc in procs:           # anything outside the two groups (a service's own setsid children)
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    for name in SERVICES:
        (home / f"{name}.pid").unlink(missing_ok=True)
    return len(procs), said


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m tasks.orchestration.stop HOME MARKER", file=sys.stderr)
        return 2
    count, said = stop(argv[0], argv[1])
    for line in said:
        print(line)
    print(f"stopped {count} process{'es' if count != 1 else ''}" if count else "nothing to stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
