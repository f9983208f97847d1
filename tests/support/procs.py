"""Long-running processes (servers, Airflow's components) started in sessions of their own, waited
for, and stopped with everything they started: their process groups, then whatever is left."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def tail(path: Path, chars: int = 4000) -> str:
    """The end of a log file (or why it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"<{path}: {exc}>"


def kill(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` if it is still running, and reap it (a test's cleanup)."""
    if process.poll() is None:
        process.kill()
        process.wait()


def wait_for(what: str, probe: Callable, timeout: float, interval: float = 1.0, *,
             alive: Callable[[], None] | None = None, errors: tuple[type[BaseException], ...] = (OSError,),
             details: Callable[[], str] | None = None):
    """Call ``probe()`` until it returns something truthy, and return that. ``alive()`` runs before each
    try and raises when a process it watches has died; ``errors`` raised by the probe count as "not yet"
    (the last one is named on timeout, with ``details()``)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            result = probe()
            if result:
                return result
        except errors as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})"
                         + (f"\n{details()}" if details else ""))


def stop(processes: Iterable[subprocess.Popen], find_more: Callable[[], list] | None = None,
         grace: float = 20) -> None:
    """Stop ``processes``, their descendants and whatever ``find_more()`` returns (psutil processes): SIGTERM
    to each one's process group (a process in the test's own group gets it alone), SIGKILL to what is
    left after ``grace`` seconds."""
    import psutil
    processes = list(processes)

    def ours() -> dict:
        found = {}
        for process in processes:
            try:
                parent = psutil.Process(process.pid)
                found[parent.pid] = parent
                found.update((child.pid, child) for child in parent.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        if find_more is not None:
            found.update((proc.pid, proc) for proc in find_more() if proc.pid != os.getpid())
        return found

    tree = list(ours().values())
    own = os.getpgid(0)
    groups = {process.pid for process in processes}     # a started session's group outlives its leader
    for member in tree:
        try:
            group = os.getpgid(member.pid)
            if group == own:
                member.terminate()
            else:
                groups.add(group)
        except (ProcessLookupError, psutil.Error):
            pass
    groups.discard(own)
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    left = {proc.pid: proc for proc in alive} | ours()      # and anything started meanwhile
    for proc in left.values():
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(left.values()), timeout=10)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class Processes:
    """Named long-running processes, each in a session of its own, with its output in NAME.log."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
        with self.log(name).open("w") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=cwd, start_new_session=True)
        self.started[name] = process
        return process

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def check_alive(self) -> None:
        for name, process in self.started.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}; its log:\n{tail(self.log(name))}")

    def tails(self, chars: int = 4000) -> str:
        return "".join(f"\n===== {name} ({self.log(name)}), last {chars} characters =====\n"
                       f"{tail(self.log(name), chars)}" for name in self.started)

    def wait_for(self, what: str, probe: Callable, timeout: float, interval: float = 1.0,
                 errors: tuple[type[BaseException], ...] = (OSError,)):
        """procs.wait_for, failing as soon as one of these processes exits."""
        return wait_for(what, probe, timeout, interval, alive=self.check_alive, errors=errors)

    def stop(self, find_more: Callable[[], list] | None = None) -> None:
        stop(self.started.values(), find_more)
