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

The model is loaded and the gallery embedded once, at start (through the embedding cache).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import os
from pathlib import Path

from tasks.core.errors import TrafficlipError, UserError
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


def create_app(searcher: Searcher, digest: bytes | None = None):
    """The service; with ``digest`` (token_digest of the token) every route but /healthz asks for it."""
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from pydantic import BaseModel

    class Result(BaseModel):
        rank: int
        image: str
        score: float
        url: str

    class SearchResponse(BaseModel):
        query: str
        model: str
        version: int | None = None
        results: list[Result]

    app = FastAPI(title="trafficlip search", version="1",
                  description="Text-to-image search over a gallery of traffic images with the champion CLIP model.")
    info = searcher.model_info

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
        about = (f"{len(searcher.names)} images in {html.escape(str(searcher.gallery))}, model "
                 f"{html.escape(str(info['model']))}" + (f" (version {info['version']})" if "version" in info else ""))
        options = "".join(f'<option value="{n}"{" selected" if n == 10 else ""}>top {n}</option>' for n in (5, 10, 20, 50))
        return PAGE.format(about=about, max_chars=MAX_QUERY_CHARS, top_options=options)

    @app.get("/api/search", response_model=SearchResponse, summary="Rank the gallery for a text query")
    def search(q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="the query text"),
               top: int = Query(10, ge=1, le=MAX_TOP, description="how many images")) -> SearchResponse:
        try:
            hits = searcher.search(q, top)
        except TrafficlipError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return SearchResponse(query=q.strip(), model=str(info["model"]), version=info.get("version"),
                              results=[Result(rank=h.rank, image=h.image, score=h.score, url=f"images/{h.image}")
                                       for h in hits])

    @app.get("/images/{name}", summary="A gallery image by its name")
    def image(name: str):
        path = searcher.image_path(name)
        if path is None:
            raise HTTPException(status_code=404, detail=f"no image named {name!r} in the gallery")
        return FileResponse(path)

    @app.get("/healthz", summary="Liveness: the model and the gallery size")
    def healthz() -> dict:
        return {"status": "ok", "model": str(info["model"]), "images": len(searcher.names),
                "unreadable_images": len(searcher.unreadable)}

    return app


def run(params: dict, gallery: str | Path, model: str | None, host: str, port: int) -> None:
    import uvicorn
    digest = token_digest(os.environ.get(TOKEN_ENV))
    check_binding(host, digest)             # before the model is loaded: a refusal costs nothing
    app = create_app(Searcher(params, gallery, model), digest)
    access = f"token required ({TOKEN_ENV})" if digest else "no token: this machine only"
    print(f"trafficlip search on http://{host}:{port}/ (API docs: /docs; {access})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
