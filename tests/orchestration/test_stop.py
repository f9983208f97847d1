"""`make down` (tasks/orchestration/stop.py) on real processes: a service started as `make up` starts it
(a session of its own, the marker in its environment) whose children include one without the marker
(Airflow starts task processes with an environment of its own) and one in a session of its own; all
are stopped, and the count says how many there were."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from tasks.orchestration import stop

SERVICE = """
import os, subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
clean = {k: v for k, v in os.environ.items() if k != "TRAFFICLIP_MAKE_UP"}
subprocess.Popen(sleeper)                                  # same group, marker inherited
subprocess.Popen(sleeper, env=clean)                       # same group, no marker
subprocess.Popen(sleeper, env=clean, start_new_session=True)   # own session, no marker: a descendant
subprocess.Popen(sleeper, env=clean, start_new_session=True).wait()
"""


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_down_stops_the_services_and_everything_they_started_and_counts_them(tmp_path):
    marker = str(tmp_path / "checkout")
    leader = subprocess.Popen([sys.executable, "-c", SERVICE], start_new_session=True,
                              env={**os.environ, "TRAFFICLIP_MAKE_UP": marker})
    (tmp_path / "airflow.pid").write_text(str(leader.pid))
    deadline = time.monotonic() + 60
    while len(_descendants(leader.pid)) < 4:
        assert time.monotonic() < deadline, "the service did not start its children"
        time.sleep(0.05)
    everything = [psutil.Process(leader.pid), *_descendants(leader.pid)]
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])   # not make up's
    try:
        count, said = stop.stop(tmp_path, marker, grace=10)
        leader.wait(10)
        assert count == len(everything) == 5
        assert said == [f"stopping airflow (pid {leader.pid})"]
        assert not [p for p in everything if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert unrelated.poll() is None
        assert not (tmp_path / "airflow.pid").exists()
        assert stop.stop(tmp_path, marker) == (0, [])
    finally:
        unrelated.kill()
        unrelated.wait()
