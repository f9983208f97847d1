"""MLflow's registry webhooks into Airflow: a move of ``@champion`` made by hand reaches Airflow at once.

MLflow 3's tracking server (SQL backends only) POSTs a JSON delivery to each registered webhook when
an alias is set or deleted (events ``model_version_alias.created`` / ``.deleted``; payload
``{"entity", "action", "timestamp", "data": {"name", "alias", "version"}}``), with three headers:
``X-MLflow-Delivery-Id`` (a UUID), ``X-MLflow-Timestamp`` (Unix seconds) and, when the webhook has a
secret, ``X-MLflow-Signature`` = ``v1,`` + base64(HMAC-SHA256(secret, "<id>.<timestamp>.<body>")).
The server sends them from a thread pool after the request that moved the alias, and retries the
same delivery (same id, timestamp and signature) on 429 and 5xx answers, up to 3 times.
Deliveries come from the server's request handlers only: a client writing a ``sqlite:///`` store
directly (``make run``, ``trafficlip promote`` without a server) sends none.

The receiver (``trafficlip webhook-receiver``) is a small HTTP server that

1. refuses, with a 4xx and a log line saying why (never the secret or the signature), a delivery that
   is unsigned, badly signed, stale (its timestamp more than ``max_age`` seconds from now) or
   replayed (a delivery id it has already processed); the signature is checked first, on the raw
   bytes, in constant time, before anything is parsed;
2. on an alias event of the configured registered model's ``@champion`` or ``@challenger``, runs the
   registry's reconciliation (``registry.reconcile`` under ``registry.registry_lock``, as
   ``trafficlip sync-aliases`` does): the move is recorded on the version as ``manual, ungated``,
   once, whichever of the receiver, the registry-watch DAG or a trafficlip command sees it first;
   gated moves (``trafficlip promote``/``rollback``) are already recorded and are not announced here;
3. when that found ``@champion`` moved to a version, creates one event of the Airflow asset
   ``trafficlip-champion`` through Airflow 3's REST API (``POST /api/v2/assets/events``, with a JWT
   from the API server's ``/auth/token``), which starts ``trafficlip_retrieval``.

Exactly one asset event per move, across redeliveries, retries and crashes: the change to announce
is first written to the registered model's tag ``trafficlip.champion_announcement`` (under the
registry lock, with the reconciliation that found it), then announced with its key in the event's
``extra``; an event carrying that key already (a retry after a lost answer) is not created again,
and the tag is removed once Airflow has the event. A pending announcement (Airflow was down) is
retried at every delivery, every ``retry_seconds`` and at start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tasks.core import log
from tasks.core.errors import ServiceError, TrafficlipError, UserError, is_mlflow_error
from tasks.mlops import registry, tracking

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_EVENTS = ("model_version_alias.created", "model_version_alias.deleted")
WEBHOOK_NAME = "trafficlip-registry-aliases"
PATH = "/mlflow-webhook"
MAX_AGE_S = 300                   # a delivery older (or newer) than this is refused as stale
MAX_BODY = 256 * 1024             # alias payloads are a few hundred bytes
MIN_SECRET = 16
PENDING = "trafficlip.champion_announcement"   # registered-model tag: the champion change not yet in Airflow
CHANGE_KEY = "trafficlip_change"               # the asset event's extra: which change it announces

SECRET_ENV = "TRAFFICLIP_WEBHOOK_SECRET"
AIRFLOW_URL_ENV = "TRAFFICLIP_AIRFLOW_URL"
AIRFLOW_USER_ENV = "TRAFFICLIP_AIRFLOW_USERNAME"
AIRFLOW_PASSWORD_ENV = "TRAFFICLIP_AIRFLOW_PASSWORD"
DEFAULT_AIRFLOW_URL = "http://127.0.0.1:8080"


# --- secrets -----------------------------------------------------------------------------------

def secret_from_env(name: str, what: str, minimum: int = 1) -> str:
    """A secret from ``NAME`` or from the file ``NAME_FILE`` (one line; never from the command line)."""
    value, source = os.environ.get(name), name
    path = os.environ.get(f"{name}_FILE")
    if not value and path:
        source = f"{name}_FILE ({path})"
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise UserError(f"{what}: {name}_FILE={path}: cannot read it ({exc.strerror})") from None
    if not value:
        raise UserError(f"{what}: set {name} or {name}_FILE (a file holding it)")
    if len(value) < minimum:
        raise UserError(f"{what} from {source} is {len(value)} characters long (expected at least {minimum})")
    return value


def airflow_password(user: str) -> str:
    """TRAFFICLIP_AIRFLOW_PASSWORD, or the file TRAFFICLIP_AIRFLOW_PASSWORD_FILE: the password alone, or
    the simple auth manager's passwords file (JSON ``{user: password}``, e.g. `make up`'s
    .airflow/simple_auth_manager_passwords.json.generated)."""
    value = secret_from_env(AIRFLOW_PASSWORD_ENV, "the Airflow API password")
    if value.startswith("{"):
        try:
            passwords = json.loads(value)
        except json.JSONDecodeError:
            return value
        if user not in passwords:
            raise UserError(f"{AIRFLOW_PASSWORD_ENV}_FILE: no password for user {user!r} in it "
                            f"(users: {', '.join(sorted(passwords)) or 'none'})")
        return str(passwords[user])
    return value


# --- signatures --------------------------------------------------------------------------------

class Refused(Exception):
    """A delivery the receiver does not accept: the HTTP status and why (safe to log: no secret in it)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature MLflow puts in X-MLflow-Signature: ``v1,`` base64 HMAC-SHA256 of id.timestamp.body."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(headers, body: bytes, secret: str, now: float | None = None, max_age: float = MAX_AGE_S) -> str:
    """Check a delivery's signature, then its timestamp; its delivery id, or :class:`Refused`.

    The signature covers the id, the timestamp and the body as received, so none of them can be
    changed; a header may carry several space-separated signatures (key rotation), any one may match.
    """
    delivery_id, timestamp, signature = (headers.get(h) for h in (DELIVERY_HEADER, TIMESTAMP_HEADER,
                                                                    SIGNATURE_HEADER))
    if not signature:
        raise Refused(401, f"unsigned delivery (no {SIGNATURE_HEADER} header; the webhook needs the secret)")
    if not delivery_id or not timestamp:
        raise Refused(400, f"no {DELIVERY_HEADER} or {TIMESTAMP_HEADER} header")
    expected = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    matched = False
    for candidate in signature.split():
        version, _, encoded = candidate.partition(",")
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # every candidate is compared (no early exit), in constant time
        matched |= version == SIGNATURE_VERSION and hmac.compare_digest(given, expected)
    if not matched:
        raise Refused(401, "bad signature (not signed with this receiver's secret, or altered on the way)")
    try:
        sent = int(timestamp)
    except ValueError:
        raise Refused(400, f"{TIMESTAMP_HEADER} is not Unix seconds") from None
    age = (time.time() if now is None else now) - sent
    if abs(age) > max_age:
        raise Refused(401, f"stale delivery: its timestamp is {age:+.0f} s from now (at most {max_age:.0f} s)")
    return delivery_id


class Replays:
    """Delivery ids already processed, kept as long as their timestamps are fresh (older ones are
    refused as stale anyway). An id is taken while its delivery is processed, and released if
    processing failed, so MLflow's own retry of a failed delivery (same id) is processed again."""

    def __init__(self, max_age: float = MAX_AGE_S):
        self.max_age = max_age
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, delivery_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            for old in [d for d, at in self._seen.items() if now - at > 2 * self.max_age]:
                del self._seen[old]
            if delivery_id in self._seen:
                raise Refused(409, f"replayed delivery {delivery_id} (already processed)")
            self._seen[delivery_id] = now

    def release(self, delivery_id: str) -> None:
        with self._lock:
            self._seen.pop(delivery_id, None)


# --- Airflow -----------------------------------------------------------------------------------

class AirflowError(ServiceError):
    """Airflow's API server is down, refused the login or the request."""


class Airflow:
    """Airflow 3's REST API with a JWT from ``/auth/token`` (fetched again when it expires)."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30):
        self.url, self.username, self._password, self.timeout = url.rstrip("/"), username, password, timeout
        self._token: str | None = None
        self._asset_ids: dict[tuple[str, str], int] = {}

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AirflowError(f"Airflow at {self.url}: no answer ({reason})") from None
        try:
            return status, json.loads(payload or b"{}")
        except json.JSONDecodeError:
            return status, {"detail": payload.decode(errors="replace")[:300]}

    def _login(self) -> None:
        status, data = self._request("POST", "/auth/token", {"username": self.username, "password": self._password},
                                     auth=False)
        if status not in (200, 201) or "access_token" not in data:
            raise AirflowError(f"Airflow at {self.url}: login as {self.username!r} refused (HTTP {status}: "
                               f"{str(data.get('detail', data))[:200]})")
        self._token = data["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        if self._token is None:
            self._login()
        status, data = self._request(method, path, body)
        if status == 401:                  # the token expired: once more with a fresh one
            self._login()
            status, data = self._request(method, path, body)
        if status not in (200, 201):
            raise AirflowError(f"Airflow at {self.url}: {method} {path.split('?')[0]}: HTTP {status}: "
                               f"{str(data.get('detail', data))[:300]}")
        return data

    def asset_id(self, asset: dict) -> int:
        """The id of the asset with this name and URI (the DAG processor creates it from the DAG files)."""
        key = (asset["name"], asset["uri"])
        if key not in self._asset_ids:
            query = urllib.parse.urlencode({"name_pattern": asset["name"], "limit": 100})
            found = [a for a in self.call("GET", f"/api/v2/assets?{query}")["assets"]
                     if a["name"] == asset["name"] and a["uri"] == asset["uri"]]
            if not found:
                raise AirflowError(f"Airflow at {self.url}: no active asset {asset['name']!r} ({asset['uri']}): "
                                   "has the DAG processor parsed the project's dags/?")
            self._asset_ids[key] = int(found[0]["id"])
        return self._asset_ids[key]

    def find_event(self, asset_id: int, change: str, recent: int = 100) -> dict | None:
        """The asset's event announcing ``change`` among its ``recent`` latest, if there is one."""
        query = urllib.parse.urlencode({"asset_id": asset_id, "order_by": "-timestamp", "limit": recent})
        events = self.call("GET", f"/api/v2/assets/events?{query}")["asset_events"]
        return next((e for e in events if (e.get("extra") or {}).get(CHANGE_KEY) == change), None)

    def create_event(self, asset_id: int, extra: dict) -> dict:
        return self.call("POST", "/api/v2/assets/events", {"asset_id": asset_id, "extra": extra})


# --- the receiver ------------------------------------------------------------------------------

@dataclass
class Receiver:
    """What a delivery does; the HTTP server (:func:`serve`) only reads requests and writes answers."""

    registered_model: str
    secret: str
    airflow: Airflow
    asset: dict                              # {"name", "uri"} of the champion asset
    max_age: float = MAX_AGE_S
    replays: Replays = field(default=None)   # type: ignore[assignment]
    logger: object = None

    def __post_init__(self):
        self.replays = self.replays or Replays(self.max_age)
        self.logger = self.logger or log.setup("webhook-receiver")
        self._announcing = threading.Lock()
        self._client = None
        self.pending_failed = False

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.connect()
        return self._client

    def handle(self, headers, body: bytes, peer: str = "?") -> tuple[int, dict]:
        """(HTTP status, JSON answer) for one delivery; every refusal and failure is logged with why."""
        try:
            delivery_id = verify(headers, body, self.secret, max_age=self.max_age)
            self.replays.take(delivery_id)
        except Refused as refused:
            self.logger.warning("refused a delivery from %s: HTTP %d, %s", peer, refused.status, refused.reason)
            return refused.status, {"error": refused.reason}
        try:
            answer = self._process(delivery_id, body)
        except Refused as refused:             # signed, but not an event this receiver reads
            self.logger.warning("refused delivery %s: HTTP %d, %s", delivery_id, refused.status, refused.reason)
            return refused.status, {"error": refused.reason}
        except AirflowError as exc:           # the change is recorded; its announcement waits in the tag
            self.replays.release(delivery_id)
            self.pending_failed = True
            self.logger.error("delivery %s: %s; the announcement stays pending (retried)", delivery_id, exc)
            return 502, {"error": str(exc), "delivery": delivery_id}
        except Exception as exc:              # answered 5xx, so MLflow retries the delivery
            self.replays.release(delivery_id)
            if isinstance(exc, TrafficlipError):      # the registry lock or the store: said in one line
                text, status = str(exc), 503
            elif is_mlflow_error(exc):               # MLflow down or failing
                text, status = f"MLflow at {tracking.shown_uri(tracking.tracking_uri())}: {tracking.error_text(exc)}", 503
            else:                                     # a bug: its traceback in the log
                self.logger.exception("delivery %s: internal error", delivery_id)
                text, status = f"internal error: {type(exc).__name__}: {exc}", 500
            self.logger.error("delivery %s: %s", delivery_id, text)
            return status, {"error": text, "delivery": delivery_id}
        return 200, {"delivery": delivery_id, **answer}

    def _process(self, delivery_id: str, body: bytes) -> dict:
        try:
            delivery = json.loads(body)
            event = f"{delivery['entity']}.{delivery['action']}"
            data = delivery["data"]
            name, alias = data["name"], data["alias"]
        except (ValueError, KeyError, TypeError):
            raise Refused(400, "not an MLflow alias delivery (expected JSON with entity, action, data.name, "
                               "data.alias)") from None
        ignored = None
        if event not in ALIAS_EVENTS:
            ignored = f"event {event} (this receiver reads {', '.join(ALIAS_EVENTS)})"
        elif name != self.registered_model or alias not in registry.TRACKED_ALIASES:
            ignored = (f"@{alias} of {name!r} (this receiver follows @champion and @challenger of "
                       f"{self.registered_model!r})")
        if ignored:
            self.logger.info("delivery %s ignored: %s", delivery_id, ignored)
            return {"ignored": ignored}
        with registry.registry_lock(name):
            changes = registry.reconcile(self.client, name)
            moved = next((c for c in changes if c["alias"] == registry.CHAMPION and c["to"] is not None), None)
            if moved:
                key = f"{name}@champion:{moved['from']}->{moved['to']}:{moved['detected_at']}:{delivery_id}"
                self.client.set_registered_model_tag(name, PENDING, json.dumps(
                    {"key": key, "champion": moved["to"], "from": moved["from"], "origin": moved["origin"],
                     "detected_at": moved["detected_at"]}))
        for change in changes:
            self.logger.warning("delivery %s (%s @%s): @%s moved outside trafficlip (%s): version %s -> %s",
                                delivery_id, event, alias, change["alias"], registry.MANUAL, change["from"],
                                change["to"])
        announced = self.announce_pending()
        self.logger.info("delivery %s (%s) of @%s -> %s: %s; %s", delivery_id, event, alias, data.get("version"),
                         f"{len(changes)} change(s) recorded" if changes else "nothing new (recorded already)",
                         f"asset event {announced['event_id']}" if announced else "no asset event")
        return {"event": event, "alias": alias, "changes": changes, "announced": announced}

    def announce_pending(self) -> dict | None:
        """Create the asset event of the pending champion change, unless Airflow has it already; then
        drop the pending tag. None when nothing is pending."""
        with self._announcing:
            from mlflow.exceptions import MlflowException
            try:
                text = self.client.get_registered_model(self.registered_model).tags.get(PENDING)
            except MlflowException as exc:
                if not registry.is_missing(exc):
                    raise
                text = None                    # no such registered model (yet): nothing to announce
            if not text:
                self.pending_failed = False
                return None
            pending = json.loads(text)
            asset_id = self.airflow.asset_id(self.asset)
            event = self.airflow.find_event(asset_id, pending["key"])
            created = event is None
            if created:
                event = self.airflow.create_event(asset_id, {
                    CHANGE_KEY: pending["key"], "registered_model": self.registered_model,
                    "champion": pending["champion"], "from": pending["from"], "origin": pending["origin"],
                    "detected_at": pending["detected_at"], "via": "MLflow webhook (trafficlip webhook-receiver)"})
            with registry.registry_lock(self.registered_model):
                if self.client.get_registered_model(self.registered_model).tags.get(PENDING) == text:
                    self.client.delete_registered_model_tag(self.registered_model, PENDING)
            self.pending_failed = False
            self.logger.info("asset %s: event %s for @champion -> version %s%s", self.asset["name"], event.get("id"),
                             pending["champion"], "" if created else " (Airflow had it already)")
            return {"asset": self.asset["name"], "event_id": event.get("id"), "champion": pending["champion"],
                    "created": created}

    def retry_pending(self) -> None:
        try:
            self.announce_pending()
        except Exception as exc:  # noqa: BLE001 - logged, tried again later
            self.pending_failed = True
            self.logger.error("pending champion announcement: %s (tried again later)",
                              exc if isinstance(exc, ServiceError) else tracking.error_text(exc))


def _handler(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        server_version = "trafficlip-webhook-receiver"
        sys_version = ""

        def _answer(self, status: int, obj: dict) -> None:
            payload = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            if self.path == "/healthz":
                self._answer(200, {"ok": True, "registered_model": receiver.registered_model,
                                   "announcement_pending": receiver.pending_failed})
            else:
                self._answer(404, {"error": f"POST deliveries to {PATH}"})

        def do_POST(self):
            if self.path != PATH:
                self._answer(404, {"error": f"POST deliveries to {PATH}"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, {"error": "Content-Length required"})
                return
            if length > MAX_BODY:
                receiver.logger.warning("refused a delivery from %s: HTTP 413, %d bytes", self.client_address[0],
                                        length)
                self._answer(413, {"error": f"body over {MAX_BODY} bytes"})
                return
            body = self.rfile.read(length)
            self._answer(*receiver.handle(self.headers, body, peer=self.client_address[0]))

        def log_message(self, format, *args):      # the request line and status, never the headers
            receiver.logger.debug("%s %s", self.client_address[0], format % args)

    return Handler


def serve(receiver: Receiver, host: str, port: int, retry_seconds: float = 60.0,
          ready: threading.Event | None = None) -> None:
    """Serve deliveries until interrupted; a pending announcement is retried at start and every
    ``retry_seconds`` while one is pending."""
    _ = receiver.client                               # MLflow answers, or one line saying why not
    receiver.retry_pending()
    server = ThreadingHTTPServer((host, port), _handler(receiver))
    stop = threading.Event()

    def retry_loop():
        while not stop.wait(retry_seconds):
            if receiver.pending_failed:
                receiver.retry_pending()

    threading.Thread(target=retry_loop, name="announce-retry", daemon=True).start()
    receiver.logger.info("receiving MLflow webhook deliveries on http://%s:%d%s for %r; Airflow at %s",
                         host, server.server_address[1], PATH, receiver.registered_model, receiver.airflow.url)
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    finally:
        stop.set()
        server.server_close()


# --- registering the webhook in MLflow ---------------------------------------------------------

def register(url: str, secret: str, name: str = WEBHOOK_NAME, test: bool = False) -> dict:
    """Create the webhook ``name`` (alias created/deleted events, signed with ``secret``) on the MLflow
    tracking server, or update it to this URL, events and secret: running it again changes nothing
    else. With ``test``, MLflow sends a signed example delivery, which the receiver must accept."""
    uri = tracking.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        raise UserError(f"MLflow at {tracking.shown_uri(uri)}: webhooks are sent by an MLflow tracking server "
                        "only (SQL backend); with a store opened directly there is nothing to register. Point "
                        "MLFLOW_TRACKING_URI at the server (make up's MLflow UI: http://127.0.0.1:5000); the "
                        "trafficlip_registry_watch DAG covers stores without a server")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--url {url!r}: expected http(s)://HOST:PORT{PATH}")
    from mlflow.exceptions import MlflowException
    client = tracking.connect()
    found, token = [], None
    while True:
        try:
            page = client.list_webhooks(max_results=100, page_token=token)
        except MlflowException as exc:
            raise UserError(f"MLflow at {tracking.shown_uri(uri)} cannot list its webhooks "
                            f"({tracking.error_text(exc) or 'no reason given'}). If its "
                            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY changed since a webhook was stored (or it has "
                            "none and restarted), it cannot read their secrets: start it with the old key, or "
                            "remove them from its database (docs/mlflow.md)") from None
        found += [w for w in page if w.name == name]
        token = page.token
        if not token:
            break
    found.sort(key=lambda w: w.creation_timestamp)
    for extra in found[1:]:                 # two registrations at once: keep the oldest
        client.delete_webhook(extra.webhook_id)
    description = "trafficlip: @champion/@challenger moves -> trafficlip webhook-receiver -> Airflow asset event"
    if found:
        webhook = client.update_webhook(found[0].webhook_id, url=url, events=list(ALIAS_EVENTS), secret=secret,
                                        status="ACTIVE", description=description)
    else:
        webhook = client.create_webhook(name=name, url=url, events=list(ALIAS_EVENTS), secret=secret,
                                        description=description)
    result = {"webhook_id": webhook.webhook_id, "name": webhook.name, "url": webhook.url,
              "events": sorted(str(e) for e in webhook.events), "status": str(webhook.status),
              "created": not found, "mlflow": tracking.shown_uri(uri)}
    if test:
        outcome = client.test_webhook(webhook.webhook_id)
        result["test"] = {"success": outcome.success, "status": outcome.response_status,
                          "error": outcome.error_message}
        if not outcome.success:
            raise UserError(f"webhook {name} registered, but MLflow's test delivery to {url} failed: "
                            f"{outcome.error_message or f'HTTP {outcome.response_status}'} (is the receiver "
                            "running, with the same secret, and may the server reach it: "
                            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES, MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS?)")
    return result
