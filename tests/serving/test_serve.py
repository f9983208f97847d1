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
            # the search is in the address: it can be bookmarked or shared, and opening it searches again
            shared = page.url
            assert urllib.parse.parse_qs(urllib.parse.urlsplit(shared).query) == {"q": ["a blue van"], "top": ["5"]}
            other = chrome.new_page(viewport={"width": 1100, "height": 800}, bypass_csp=True)
            other.goto(shared)
            other.wait_for_function("document.querySelectorAll('img.hit').length === 5", timeout=60_000)
            assert other.input_value("#q") == "a blue van" and other.input_value("#top") == "5"
            # a query over the limit is refused with a message, never silently cut
            long_query = "a red SUV " * 60
            other.fill("#q", long_query)
            other.click("#go")
            assert other.input_value("#q") == long_query
            assert f"{len(long_query)} characters long; at most 500" in other.inner_text("#status")
            assert other.locator("img.hit").count() == 0
            other.screenshot(path=str(ARTEFACTS / "search_page_long_query.png"), full_page=True)
        finally:
            chrome.close()


# --- access control -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searcher(champion, gallery):
    from tasks.core import params as params_mod
    from tasks.serving.search import Searcher
    _, params_file = champion
    return Searcher(params_mod.load(params_file), gallery, None)


@pytest.mark.parametrize("host, allowed", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("192.168.1.20", False), ("camera-box", False)])
def test_without_a_token_the_gallery_is_served_to_this_machine_only(host, allowed):
    from tasks.core.errors import UserError
    from tasks.serving import serve
    if allowed:
        serve.check_binding(host, None)
    else:
        with pytest.raises(UserError, match="TRAFFICLIP_SERVE_TOKEN"):
            serve.check_binding(host, None)
    serve.check_binding(host, serve.token_digest("a token"))       # with one, any address


def test_serving_beyond_loopback_without_a_token_is_refused_before_the_model_loads(gallery, tmp_path):
    result = cli.run("serve", "--gallery", str(gallery), "--host", "0.0.0.0", "--model", str(tmp_path / "none"),
                     env=project_env(TRAFFICLIP_SERVE_TOKEN=""))
    assert result.returncode == 2, result.stderr
    assert "--host 0.0.0.0: serving beyond this machine needs access control" in result.stderr


def test_with_a_token_every_route_but_healthz_asks_for_it(searcher):
    import base64

    from fastapi.testclient import TestClient

    from tasks.serving import serve
    secret = "s3cret-token"
    client = TestClient(serve.create_app(searcher, serve.token_digest(secret)))
    name = searcher.names[0]
    routes = ["/", "/api/search?q=a+white+Sedan&top=3", f"/images/{name}", "/openapi.json", "/docs"]
    assert client.get("/healthz").status_code == 200
    basic = "Basic " + base64.b64encode(f"anyone:{secret}".encode()).decode()
    for route in routes:
        refused = client.get(route)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic"), route
        assert secret not in refused.text
        wrong = client.get(route, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401, route
        assert client.get(route, headers={"Authorization": f"Bearer {secret}"}).status_code == 200, route
        assert client.get(route, headers={"Authorization": basic}).status_code == 200, route
    assert client.get("/api/search?q=x", headers={"Authorization": "Basic !!!"}).status_code == 401
    # without a token configured, nothing is asked (the service then binds loopback only)
    assert TestClient(serve.create_app(searcher)).get("/api/search?q=a+white+Sedan").status_code == 200
