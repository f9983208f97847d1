"""Searching a gallery with the champion: `trafficlip search` and the HTTP service `trafficlip serve`
(driven over real HTTP, and its page in headless Chromium)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tasks import registry
from tests.conftest import ROOT, tool_env

MODEL_NAME = "traffic-clip-search"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def champion(tracked, tmp_path_factory):
    """The tiny tracked model registered and promoted as @champion of its own registered model."""
    folder = tmp_path_factory.mktemp("search")
    params = json.loads(json.dumps(tracked.params))
    params["mlflow"].update(registered_model=MODEL_NAME, floor=0.0)
    registry.register(params, tracked.train_summary, tracked.metrics, tracked.per_query, folder / "registration.json")
    decision = registry.promote(params, folder / "registration.json", folder / "promotion.json")
    assert decision["champion_after"] == 1
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    return folder, params_file


@pytest.fixture(scope="module")
def gallery(tiny_raw) -> Path:
    return tiny_raw / "test" / "test_images"


def _cli(args, cwd, cache, **env):
    return subprocess.run([sys.executable, "-m", "tasks", *args], cwd=cwd, capture_output=True, text=True,
                          env=tool_env(PYTHONPATH=str(ROOT), TRAFFICLIP_EMBEDDING_CACHE=str(cache), **env))


def test_search_prints_ranked_images_and_writes_a_contact_sheet(champion, gallery, tmp_path):
    folder, params_file = champion
    args = ["search", "a red SUV", "--gallery", str(gallery), "--top", "5", "--params", str(params_file),
            "--sheet", str(tmp_path / "sheet.png")]
    first = _cli([*args, "--json"], tmp_path, tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout)
    assert result["model"] == f"models:/{MODEL_NAME}@champion" and result["version"] == 1
    names = {p.name for p in gallery.iterdir()}
    hits = result["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5] and {h["image"] for h in hits} <= names
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert result["embeddings"] == "computed"
    from PIL import Image
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width > 300 and sheet.height > 100
    # a second process over the same gallery and model reads the embeddings from the cache: same ranking
    second = _cli([*args[:-2], "--sheet", ""], tmp_path, tmp_path / "cache")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "gallery embeddings cached" in second.stdout
    printed = [line.split() for line in second.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[2] for row in printed] == [h["image"] for h in hits]


@pytest.mark.parametrize("args, message", [
    (["", "--top", "5"], "the query is empty"),
    (["a red SUV", "--top", "0"], "expected 1 to 100"),
    (["x" * 600], "at most 500"),
])
def test_search_refuses_bad_input_in_one_line(champion, gallery, tmp_path, args, message):
    _, params_file = champion
    result = _cli(["search", *args, "--gallery", str(gallery), "--params", str(params_file)], tmp_path,
                  tmp_path / "cache")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("content-type", "")


@pytest.fixture(scope="module")
def service(champion, gallery, tmp_path_factory):
    folder, params_file = champion
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tasks", "serve", "--gallery", str(gallery), "--params",
                                 str(params_file), "--port", str(port)], cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                env=tool_env(PYTHONPATH=str(ROOT), TRAFFICLIP_EMBEDDING_CACHE="off"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"trafficlip serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if _get(base + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"trafficlip serve did not answer in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_service_answers_a_query_over_http(service, gallery):
    status, body, kind = _get(service + "/api/search?" + urllib.parse.urlencode({"q": "a white Sedan", "top": 4}))
    assert status == 200 and kind.startswith("application/json")
    data = json.loads(body)
    assert data["query"] == "a white Sedan" and data["version"] == 1 and len(data["results"]) == 4
    first = data["results"][0]
    status, image, kind = _get(f"{service}/{first['url']}")
    assert status == 200 and kind.startswith("image/") and image == (gallery / first["image"]).read_bytes()
    health = json.loads(_get(service + "/healthz")[1])
    assert health["images"] == len(list(gallery.iterdir()))


def test_service_refuses_bad_requests_with_4xx(service):
    status, body, _ = _get(service + "/api/search?" + urllib.parse.urlencode({"q": "car", "top": 0}))
    assert status == 422 and "top" in body.decode()
    status, body, _ = _get(service + "/api/search?" + urllib.parse.urlencode({"q": "x" * 501}))
    assert status == 422 and "q" in body.decode()
    assert _get(service + "/api/search")[0] == 422
    status, body, _ = _get(service + "/api/search?" + urllib.parse.urlencode({"q": "   "}))
    assert status == 400 and "empty" in body.decode()
    assert _get(service + "/images/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert _get(service + "/images/not-in-the-gallery.jpg")[0] == 404


def test_service_publishes_its_openapi_schema(service):
    schema = json.loads(_get(service + "/openapi.json")[1])
    parameters = {p["name"]: p["schema"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}
    assert parameters["top"]["minimum"] == 1 and parameters["top"]["maximum"] == 100
    assert parameters["q"]["maxLength"] == 500


def test_search_page_shows_results_in_headless_chromium(service):
    from playwright.sync_api import sync_playwright
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.fail("Debian's chromium is not installed (make chromium installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            # bypass_csp: the test's own waiting code is evaluated in the page, which the page's CSP forbids
            page = browser.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
            page.goto(service + "/")
            page.fill("#q", "a blue van")
            page.select_option("#top", "5")
            page.click("#go")
            page.wait_for_function("document.querySelectorAll('img.hit').length === 5 && "
                                   "[...document.querySelectorAll('img.hit')].every(i => i.complete && i.naturalWidth > 0)",
                                   timeout=60_000)
            assert "5 images for" in page.inner_text("#status")
            page.screenshot(path=str(ARTIFACTS / "search_page.png"), full_page=True)
        finally:
            browser.close()
