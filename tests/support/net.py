"""Ports and HTTP for the tests that talk to a server."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import procs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (free when asked; closed, so connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, bytes, str]:
    """(status, body, content type) of one request; an HTTP error status is returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


def request_json(url: str, method: str = "GET", body: dict | None = None, headers: dict | None = None,
                 timeout: float = 30) -> tuple[int, dict]:
    """(status, decoded JSON) of a JSON request; a body that is not JSON comes back as {"body": text}."""
    headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    status, payload, _ = request(url, method, json.dumps(body).encode() if body is not None else None, headers,
                                 timeout)
    try:
        return status, json.loads(payload or b"{}")
    except json.JSONDecodeError:
        return status, {"body": payload.decode(errors="replace")[:2000]}


def wait_until_answering(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll until ``url`` answers 200; fail at once (with the log's end) if the server process exits."""
    def alive() -> None:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited with {process.returncode}:\n{procs.tail(log, 3000)}")

    procs.wait_for(f"{url} to answer", lambda: request(url, timeout=5)[0] == 200, timeout, interval=0.5,
                   alive=alive, details=lambda: procs.tail(log, 3000))
