"""`trafficlip serve` (tasks/serving/serve.py): the search as an HTTP service with the champion, driven over
real HTTP, and its page in headless Chromium."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.support import ARTEFACTS, browser, cli, net, procs
from tests.support.workspace import project_env

pytestmark = pytest.mark.service    # `trafficlip serve` on a port


@pytest.fixture(scope="module")
def service(champion, gallery, tmp_path_factory):
    """`trafficlip serve` on a free port, until it answers /healthz; stopped after the module."""
    folder, params_file = champion
    port = net.free_port()
    processes = procs.Processes(tmp_path_factory.mktemp("serve"))
    process = processes.start("serve", cli.argv("serve", "--gallery", str(gallery), "--params", str(params_file),
                                                "--port", str(port)),
                              project_env(TRAFFICLIP_EMBEDDING_CACHE="off"), folder)
    base = f"http://127.0.0.1:{port}"
    try:
        net.wait_until_answering(base + "/healthz", process, processes.log("serve"), timeout=180)
        yield base
    finally:
        processes.stop()


def test_service_answers_a_query_over_http(service, gallery):
    query = urllib.parse.urlencode({"q": "a white Sedan", "top": 4})
    status, body, kind = net.request(f"{service}/api/search?{query}")
    assert status == 200 and kind.startswith("application/json")
    data = json.loads(body)
    assert data["query"] == "a white Sedan" and data["version"] == 1 and len(data["results"]) == 4
    first = data["results"][0]
    status, image, kind = net.request(f"{service}/{first['url']}")
    assert status == 200 and kind.startswith("image/") and image == (gallery / first["image"]).read_bytes()
    health = json.loads(net.request(service + "/healthz")[1])
    assert health["images"] == len(list(gallery.iterdir()))


def test_service_refuses_bad_requests_with_4xx(service):
    status, body, _ = net.request(service + "/api/search?" + urllib.parse.urlencode({"q": "car", "top": 0}))
    assert status == 422 and "top" in body.decode()
    status, body, _ = net.request(service + "/api/search?" + urllib.parse.urlencode({"q": "x" * 501}))
    assert status == 422 and "q" in body.decode()
    assert net.request(service + "/api/search")[0] == 422
    status, body, _ = net.request(service + "/api/search?" + urllib.parse.urlencode({"q": "   "}))
    assert status == 400 and "empty" in body.decode()
    assert net.request(service + "/images/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert net.request(service + "/images/not-in-the-gallery.jpg")[0] == 404


def test_service_publishes_its_openapi_schema(service):
    schema = json.loads(net.request(service + "/openapi.json")[1])
    parameters = {p["name"]: p["schema"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}
    assert parameters["top"]["minimum"] == 1 and parameters["top"]["maximum"] == 100
    assert parameters["q"]["maxLength"] == 500


@pytest.mark.browser
def test_search_page_shows_results_in_headless_chromium(service):
    chromium = browser.chromium()
    sync_playwright, _ = browser.playwright()
    ARTEFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            # bypass_csp: the test's own waiting code is evaluated in the page, which the page's CSP forbids
            page = chrome.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
            page.goto(service + "/")
            page.fill("#q", "a blue van")
            page.select_option("#top", "5")
            page.click("#go")
            page.wait_for_function("document.querySelectorAll('img.hit').length === 5 && "
                                   "[...document.querySelectorAll('img.hit')].every(i => i.complete && i.naturalWidth > 0)",
                                   timeout=60_000)
            assert "5 images for" in page.inner_text("#status")
            page.screenshot(path=str(ARTEFACTS / "search_page.png"), full_page=True)
        finally:
            chrome.close()
