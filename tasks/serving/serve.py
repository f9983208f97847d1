"""`trafficlip serve`: the champion's search over HTTP (FastAPI), and a page to try it.

    trafficlip serve --gallery DIR [--model models:/traffic-clip@champion] [--host 127.0.0.1] [--port 8000]

- ``GET /`` a page: type a query, see the top images with their scores (no external resources). The
  search is in the page's address (``/?q=a+red+SUV&top=10``), so a result can be bookmarked or shared;
  a query longer than the limit is refused with a message, never cut.
- ``GET /api/search?q=a+red+SUV&top=10`` the ranked images: ``{"query", "model", "version",
  "results": [{"rank", "image", "score", "url"}]}``. ``q`` is 1 to 500 characters and ``top`` 1 to
  100; anything else is a 422 naming the field, an empty query a 400.
- ``GET /images/{name}`` a gallery image by its name (404 for any name that is not one).
- ``GET /healthz`` model and gallery size; ``/docs`` and ``/openapi.json`` describe the API.

Access: the gallery is camera imagery. With a token in ``TRAFFICLIP_SERVE_TOKEN`` every route but
``/healthz`` asks for it, as ``Authorization: Bearer <token>`` or as the password of HTTP basic auth
(any user name: a browser's login prompt); the token is kept only as its SHA-256 digest and never
logged. Without one, the service binds only a loopback address and refuses any other ``--host``.

The model is loaded and the gallery embedded at start (through the embedding cache). Started on an
alias (``@champion`` by default, or ``--model models:/NAME@ALIAS``), the service follows it: every
``--follow`` seconds (default 30; 0: never) it asks the registry which version the alias points to, and
when it moved (a gated promotion, a rollback, or a hand in the MLflow UI) it loads that version and
embeds the gallery with it beside the one serving, then swaps: no restart, no failed request. A failed
load is logged and tried again at the next look; the old model serves on. ``/healthz`` says which
version answers and how many times it changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import threading
from pathlib import Path

from tasks.core.errors import TrafficlipError, UserError
from tasks.serving import retrieve
from tasks.serving.search import MAX_QUERY_CHARS, MAX_TOP, Searcher

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trafficlip search</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
form {{ margin-bottom: 1.5em; }} input[type=text] {{ width: 32em; padding: .4em; font-size: 1em; }}
#results {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: 160px; text-align: center; font-size: .8em; }}
figure img {{ width: 160px; height: 160px; object-fit: contain; background: #000; border: 3px solid #888; }}
#status {{ color: #666; margin-bottom: 1em; }} .error {{ color: #b00; }}
</style></head>
<body>
<h1>trafficlip search</h1>
<p>{about}</p>
<form id="search"><input type="text" id="q" name="q" placeholder="a red SUV" required>
<select id="top" name="top">{top_options}</select> <button type="submit" id="go">Search</button></form>
<div id="status"></div><div id="results"></div>
<script>
const MAX_CHARS = {max_chars};
async function search(q, top) {{
  const status = document.getElementById("status"), results = document.getElementById("results");
  results.replaceChildren();
  if (q.length > MAX_CHARS) {{
    status.className = "error";
    status.textContent = "The query is " + q.length + " characters long; at most " + MAX_CHARS + " are searched.";
    return;
  }}
  history.replaceState(null, "", "?" + new URLSearchParams({{q: q, top: top}}));
  status.className = ""; status.textContent = "searching...";
  const response = await fetch("api/search?" + new URLSearchParams({{q: q, top: top}}));
  const body = await response.json();
  if (!response.ok) {{
    status.className = "error";
    status.textContent = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return;
  }}
  status.textContent = body.results.length + " images for \\u201c" + body.query + "\\u201d (" + body.model + ")";
  for (const hit of body.results) {{
    const figure = document.createElement("figure"), img = document.createElement("img");
    const caption = document.createElement("figcaption");
    img.src = hit.url; img.alt = hit.image; img.className = "hit";
    caption.textContent = "#" + hit.rank + " " + hit.image + " (" + hit.score.toFixed(3) + ")";
    figure.append(img, caption); results.append(figure);
  }}
}}
document.getElementById("search").addEventListener("submit", (event) => {{
  event.preventDefault();
  search(document.getElementById("q").value, document.getElementById("top").value);
}});
const shared = new URLSearchParams(location.search);
if (shared.get("q")) {{
  document.getElementById("q").value = shared.get("q");
  const top = document.getElementById("top");
  if ([...top.options].some((o) => o.value === shared.get("top"))) top.value = shared.get("top");
  search(shared.get("q"), top.value);
}}
</script></body></html>
"""


class Following:
    """The searcher the service answers with, following a registry alias (see the module docstring).
    ``current`` is read once per request, so a swap never mixes two models within one answer."""

    def __init__(self, params: dict, gallery: str | Path, model: str | None, every: float = 30.0,
                 searcher: Searcher | None = None, follow: bool = True):
        self.params, self.gallery, self.model, self.every = params, gallery, model, every
        self.alias = retrieve.followed_alias(params, model) if follow else None
        self.current = searcher if searcher is not None or not follow else Searcher(params, gallery, model)
        self.changes = 0
        self.last_error: str | None = None
        self.logger = logging.getLogger("trafficlip.serve")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def fixed(cls, searcher: Searcher | None) -> Following:
        """One searcher that follows no alias: what ``create_app`` serves when handed a Searcher (None: an
        app made for its OpenAPI schema only, which answers no search)."""
        return cls(getattr(searcher, "params", {}), getattr(searcher, "gallery", ""), None, every=0,
                   searcher=searcher, follow=False)

    def check(self) -> bool:
        """One look at the alias; load and swap in the version it points to when that moved. True if swapped."""
        if self.alias is None:
            return False
        version = retrieve.alias_version(*self.alias)
        serving = self.current.model_info.get("version")
        if version is None or version == serving:
            return False
        name, alias = self.alias
        self.logger.info("@%s of %r moved from version %s to %s: loading it", alias, name, serving, version)
        replacement = Searcher(self.params, self.gallery, self.model)
        self.current = replacement
        self.changes += 1
        self.logger.info("now serving %s version %s", replacement.model_info["model"],
                         replacement.model_info.get("version"))
        return True

    def start(self) -> Following:
        if self.alias is not None and self.every > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="follow-alias", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.check()
                self.last_error = None
            except Exception as exc:   # the registry down, a broken version: keep serving the current one
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.logger.warning("following @%s: %s (still serving version %s)", self.alias[1], self.last_error,
                                    self.current.model_info.get("version"))


TOKEN_ENV = "TRAFFICLIP_SERVE_TOKEN"
OPEN_PATHS = ("/healthz",)
REALM = 'Basic realm="trafficlip search", charset="UTF-8"'


def token_digest(token: str | None) -> bytes | None:
    """What the service keeps of its token: the SHA-256 digest (None: no access control)."""
    return hashlib.sha256(token.encode()).digest() if token else None


def presented_token(authorization: str | None) -> str | None:
    """The token in an Authorization header: a Bearer token, or the password of HTTP basic auth."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False        # a host name: it may resolve to any interface


def check_binding(host: str, digest: bytes | None) -> None:
    """Without credentials the gallery may only be served to this machine."""
    if digest is None and not is_loopback(host):
        raise UserError(f"--host {host}: serving beyond this machine needs access control: set {TOKEN_ENV} "
                        "(every route but /healthz then asks for it), or serve on 127.0.0.1")


def create_app(searcher: Searcher | Following, digest: bytes | None = None):
    """The service; with ``digest`` (token_digest of the token) every route but /healthz asks for it.
    ``searcher`` is a Searcher, or a Following whose current searcher answers each request."""
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from pydantic import BaseModel

    class Result(BaseModel):
        rank: int
        image: str
        score: float
        url: str

    class ErrorDetail(BaseModel):
        detail: str

    class SearchResponse(BaseModel):
        query: str
        model: str
        version: int | None = None
        results: list[Result]

    app = FastAPI(title="trafficlip search", version="1",
                  description="Text-to-image search over a gallery of traffic images with the champion CLIP model.")
    following = searcher if isinstance(searcher, Following) else Following.fixed(searcher)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if digest is None or request.url.path in OPEN_PATHS:
            return await call_next(request)
        token = presented_token(request.headers.get("authorization"))
        if token is not None and hmac.compare_digest(hashlib.sha256(token.encode()).digest(), digest):
            return await call_next(request)
        return JSONResponse({"detail": "credentials required: the token as a Bearer token or as the basic-auth "
                                       "password"}, status_code=401, headers={"WWW-Authenticate": REALM})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        searcher = following.current
        info = searcher.model_info
        about = (f"{len(searcher.names)} images in {html.escape(str(searcher.gallery))}, model "
                 f"{html.escape(str(info['model']))}" + (f" (version {info['version']})" if "version" in info else ""))
        options = "".join(f'<option value="{n}"{" selected" if n == 10 else ""}>top {n}</option>' for n in (5, 10, 20, 50))
        return PAGE.format(about=about, max_chars=MAX_QUERY_CHARS, top_options=options)

    @app.get("/api/search", response_model=SearchResponse, summary="Rank the gallery for a text query",
             responses={400: {"model": ErrorDetail, "description": "A blank query (white space only), which "
                                                                   "the length limits cannot express"}})
    def search(q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="the query text"),
               top: int = Query(10, ge=1, le=MAX_TOP, description="how many images")) -> SearchResponse:
        searcher = following.current
        info = searcher.model_info
        try:
            hits = searcher.search(q, top)
        except TrafficlipError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return SearchResponse(query=q.strip(), model=str(info["model"]), version=info.get("version"),
                              results=[Result(rank=h.rank, image=h.image, score=h.score, url=f"images/{h.image}")
                                       for h in hits])

    @app.get("/images/{name}", summary="A gallery image by its name", response_class=FileResponse,
             responses={200: {"description": "The image file, as it is in the gallery",
                              "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
                        404: {"model": ErrorDetail, "description": "No gallery image has that name"}})
    def image(name: str):
        path = following.current.image_path(name)
        if path is None:
            raise HTTPException(status_code=404, detail=f"no image named {name!r} in the gallery")
        return FileResponse(path)

    @app.get("/healthz", summary="Liveness: the model and the gallery size")
    def healthz() -> dict:
        searcher = following.current
        answer = {"status": "ok", "model": str(searcher.model_info["model"]),
                  "version": searcher.model_info.get("version"), "images": len(searcher.names),
                  "unreadable_images": len(searcher.unreadable), "model_changes": following.changes}
        if following.alias is not None:
            answer["follows"] = f"{following.alias[0]}@{following.alias[1]}"
        if following.last_error:
            answer["follow_error"] = following.last_error
        return answer

    return app


def run(params: dict, gallery: str | Path, model: str | None, host: str, port: int, follow: float = 30.0) -> None:
    import uvicorn
    digest = token_digest(os.environ.get(TOKEN_ENV))
    check_binding(host, digest)             # before the model is loaded: a refusal costs nothing
    following = Following(params, gallery, model, follow).start()
    app = create_app(following, digest)
    access = f"token required ({TOKEN_ENV})" if digest else "no token: this machine only"
    print(f"trafficlip search on http://{host}:{port}/ (API docs: /docs; {access})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
