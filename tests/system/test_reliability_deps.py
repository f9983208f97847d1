"""Reliability, item 4: the services the pipeline depends on failing (the disk-full case is in
test_reliability_crash.py).

- MLflow returning 500s (a tiny local HTTP server) or not listening (a closed port): MLflow's client
  retries with exponential backoff, then the user gets one line naming the server, no traceback, no
  password, and nothing is registered or written (the failure comes before any change).
- A DVC remote that cannot be reached (a path under a regular file, an HTTP URL with nothing
  listening): `dvc push` through the DAGs' command runner fails as a retryable error (not a user
  error: Airflow retries it with backoff) and the task log names the remote.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tasks.core.errors import ServiceError, StepFailed, TrafficlipError, UserError
from tasks.orchestration import workspace as orch
from tests.support import ROOT, cli, net
from tests.support.workspace import make_workspace, run, tool_env


class _Failing(http.server.BaseHTTPRequestHandler):
    """Answers every request with HTTP 500 and an MLflow-style JSON error; records when and what."""
    seen: list[tuple[float, str]] = []

    def _fail(self):
        type(self).seen.append((time.monotonic(), self.path.split("?")[0]))
        body = b'{"error_code": "INTERNAL_ERROR", "message": "database is locked"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _fail

    def log_message(self, *args):
        pass


@pytest.fixture
def failing_server():
    _Failing.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", _Failing.seen
    server.shutdown()
    server.server_close()


def _cli(args: list[str], uri: str, cwd) -> subprocess.CompletedProcess:
    env = tool_env(MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="2", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
                   MLFLOW_HTTP_REQUEST_BACKOFF_JITTER="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    return cli.run(*args, cwd=cwd, env=env)


def _inputs(folder) -> list[str]:
    """register's inputs (their content does not matter: the server fails first)."""
    (folder / "s.json").write_text(json.dumps({"mlflow_run_id": "0" * 32, "mlflow_model_id": "m-0"}))
    (folder / "m.json").write_text(json.dumps({"overall": {"queries": 1, "map_at_10": 0.5}}))
    (folder / "q.json").write_text(json.dumps([{"text": "a", "organisers_ap": 0.5}]))
    return ["--params", str(ROOT / "params.yaml"), "--train-summary", str(folder / "s.json"),
            "--metrics", str(folder / "m.json"), "--per-query", str(folder / "q.json"),
            "--out", str(folder / "registration.json")]


def test_mlflow_answering_500_is_retried_with_backoff_then_one_clear_line(failing_server, tmp_path):
    address, seen = failing_server
    result = _cli(["register", *_inputs(tmp_path)], f"http://alice:pw-{os.getpid()}@{address}", tmp_path)
    # exit 75 (EX_TEMPFAIL): a service is down; the DAG retries it (exit 2 would fail it at once)
    assert result.returncode == 75 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"trafficlip register: error: MLflow at http://{address} is failing (HTTP 500 from "
                                "/api/2.0/mlflow/experiments/search on each of 3 tries, with exponential backoff)")
    assert f"pw-{os.getpid()}" not in result.stderr + result.stdout
    # 1 try + 2 retries of the same request, waiting longer before each retry (factor 1: 0 s, then 2 s)
    assert [path for _, path in seen] == ["/api/2.0/mlflow/experiments/search"] * 3
    gaps = [later - earlier for (earlier, _), (later, _) in zip(seen, seen[1:])]
    assert gaps[1] >= 1.5 and gaps[1] > gaps[0], gaps
    assert not (tmp_path / "registration.json").exists()       # nothing registered, nothing written


def test_mlflow_not_listening_is_one_clear_line_before_anything_changes(tmp_path):
    uri = f"http://127.0.0.1:{net.free_port()}"
    (tmp_path / "registration.json").write_text(json.dumps({"registered_model": "traffic-clip", "version": 3}))
    result = _cli(["promote", "--params", str(ROOT / "params.yaml"), "--registration",
                   str(tmp_path / "registration.json"), "--out", str(tmp_path / "promotion.json")], uri, tmp_path)
    assert result.returncode == 75 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(
        f"trafficlip promote: error: MLflow at {uri} is unreachable (connection refused at "
        "/api/2.0/mlflow/experiments/search on each of 3 tries"), result.stderr
    assert not (tmp_path / "promotion.json").exists()


# --- DVC -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvc-remote") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "data" / "labels.txt").write_text("a.jpg$A white Audi.$This is a white Audi.\n")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data"]):
        run(args, root)
    return root


def _remotes(tmp_path) -> list[tuple[str, str, str]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file, not a folder")
    port = net.free_port()
    return [("a path under a regular file", str(blocker / "remote"), str(blocker)),
            ("an HTTP server that is not listening", f"http://127.0.0.1:{port}/dvc", f"127.0.0.1:{port}")]


@pytest.mark.parametrize("case", [0, 1], ids=["path under a file", "http, nothing listening"])
def test_unreachable_dvc_remote_fails_retryably_and_the_log_names_it(dvc_repo, tmp_path, capfd, case):
    _, url, named = _remotes(tmp_path)[case]
    run(["dvc", "remote", "add", "-f", "-d", "store", url], dvc_repo)
    capfd.readouterr()
    with pytest.raises(TrafficlipError) as info:
        orch.run(["dvc", "push"], dvc_repo, "dvc push")
    assert not isinstance(info.value, orch.UserError)          # retried by Airflow (retries=2, exponential)
    assert str(info.value).startswith("dvc push failed (exit status ")
    # the message itself names the remote and DVC's ERROR line, not its closing advice
    assert "DVC remote 'store'" in str(info.value) and named in str(info.value) and "ERROR" in str(info.value)
    assert "Having any troubles" not in str(info.value)
    log = capfd.readouterr()      # the task log: DVC's output echoed to stdout (Airflow logs stderr as errors)
    assert named in log.out and "Traceback" not in log.out, log.out


def test_a_service_error_is_retried_by_the_dag_and_a_user_error_is_not(tmp_path):
    """orchestration.run: exit 75 (service down) raises a retryable error, exit 2 a UserError."""
    script = tmp_path / "exit.py"
    script.write_text("import sys; print('boom', file=sys.stderr); sys.exit(int(sys.argv[1]))")
    with pytest.raises(TrafficlipError) as service:
        orch.run([sys.executable, str(script), "75"], tmp_path, "a step")
    assert isinstance(service.value, ServiceError)
    with pytest.raises(UserError):
        orch.run([sys.executable, str(script), "2"], tmp_path, "a step")
    with pytest.raises(StepFailed, match="exit status 1"):       # a crash: neither, and retried
        orch.run([sys.executable, str(script), "1"], tmp_path, "a step")


@pytest.mark.e2e    # a workspace, two ingests and DVC pushes
def test_an_ingest_retried_after_a_failed_push_still_pushes_and_commits(tmp_path, tiny_raw):
    from tasks.demo import synth
    root = make_workspace(tmp_path / "ws", tiny_raw)
    new = tmp_path / "new"
    synth.generate(new, vehicles=20, pedestrians=20, seed=21)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run(["dvc", "remote", "add", "-f", "-d", "broken", str(blocker / "remote")], root)
    with pytest.raises(TrafficlipError, match="DVC remote 'broken'"):
        orch.ingest(root, new)
    good = tmp_path / "remote"
    run(["dvc", "remote", "add", "-f", "-d", "good", str(good)], root)
    result = orch.ingest(root, new)                      # the retry
    assert result["changed"] and result["pushed"] and result["commit"]
    assert any(good.rglob("*")), "nothing was pushed"
    status = run(["git", "status", "--porcelain", "data/raw.dvc"], root)
    assert status.stdout.strip() == ""                   # committed
