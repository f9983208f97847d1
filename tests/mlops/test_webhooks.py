"""MLflow's registry webhooks into an Airflow asset event (tasks/mlops/webhooks.py).

Unit tests (no server): the signature is MLflow's own (checked against MLflow's signing function);
unsigned, badly signed, altered, stale and replayed deliveries are refused with a 4xx before
anything is read from MLflow or Airflow, and no log line holds the secret or the signature; a
delivery whose announcement Airflow did not take is recorded, stays pending and is retried.

Service tests (marker `service`), all real and on free ports: an `mlflow server` (SQLite backend,
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, http and loopback webhooks allowed), Airflow's API server
over a metadata database where `airflow dags reserialize` created the project's assets (no
scheduler: an asset event is created, no DAG run follows), and `trafficlip webhook-receiver` as a
user starts it, with the webhook registered by `trafficlip register-webhook --test`. Moving
@champion with MlflowClient.set_registered_model_alias gives exactly one `trafficlip-champion` event
and the manual record; forged, stale, unsigned and replayed deliveries change nothing; a redelivery
creates no second event. About 45 s on 2 cores, most of it Airflow's start.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
import uuid
from types import SimpleNamespace

import pytest

from tasks.core.errors import UserError
from tasks.mlops import registry, webhooks
from tasks.orchestration.workspace import CHAMPION_ASSET
from tests.support import BIN, ROOT, airflow, cli, net, procs
from tests.support.params import tracked_params, unique_name
from tests.support.workspace import run

SECRET = secrets.token_urlsafe(32)
START_TIMEOUT_S = 180
DELIVERY_TIMEOUT_S = 60       # MLflow sends from a thread pool after its answer; the receiver then asks Airflow


@pytest.fixture(autouse=True)
def _session_tracking_uri():
    """tasks.mlops.tracking.connect sets MLflow's process-wide tracking URI: the tests here that point it
    at a server (or a dead port) give the session's store back after."""
    import mlflow
    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(before)


def delivery(name: str, alias: str, version: str | None, secret: str | None = SECRET, *,
             at: int | None = None, action: str = "created") -> tuple[dict, bytes]:
    """(headers, body) of an alias delivery exactly as MLflow's server builds one."""
    data = {"name": name, "alias": alias} | ({"version": version} if version is not None else {})
    body = json.dumps({"entity": "model_version_alias", "action": action,
                       "timestamp": "2026-01-01T00:00:00+00:00", "data": data}).encode()
    delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time()) if at is None else at)
    headers = {"Content-Type": "application/json", webhooks.DELIVERY_HEADER: delivery_id,
               webhooks.TIMESTAMP_HEADER: timestamp}
    if secret is not None:
        headers[webhooks.SIGNATURE_HEADER] = webhooks.sign(secret, delivery_id, timestamp, body)
    return headers, body


# --- signatures, without servers -------------------------------------------------------------

def test_the_signature_is_mlflows_own():
    from mlflow.webhooks.delivery import _generate_hmac_signature
    headers, body = delivery("m", "champion", "2")
    mlflow_signature = _generate_hmac_signature(SECRET, headers[webhooks.DELIVERY_HEADER],
                                                headers[webhooks.TIMESTAMP_HEADER], body.decode())
    assert headers[webhooks.SIGNATURE_HEADER] == mlflow_signature
    assert webhooks.verify(headers, body, SECRET) == headers[webhooks.DELIVERY_HEADER]
    rotated = {**headers, webhooks.SIGNATURE_HEADER: f"v1,{base64.b64encode(b'x' * 32).decode()} {mlflow_signature}"}
    assert webhooks.verify(rotated, body, SECRET)          # any one of several signatures (key rotation)


def _forged(kind: str) -> tuple[dict, bytes]:
    headers, body = delivery("m", "champion", "2")
    if kind == "unsigned":
        return delivery("m", "champion", "2", secret=None)
    if kind == "other secret":
        return delivery("m", "champion", "2", secret=secrets.token_urlsafe(32))
    if kind == "body altered":
        return headers, body.replace(b'"2"', b'"3"')
    if kind == "timestamp altered":
        return {**headers, webhooks.TIMESTAMP_HEADER: str(int(headers[webhooks.TIMESTAMP_HEADER]) + 1)}, body
    if kind == "id altered":
        return {**headers, webhooks.DELIVERY_HEADER: str(uuid.uuid4())}, body
    if kind == "not base64":
        return {**headers, webhooks.SIGNATURE_HEADER: "v1,@@@"}, body
    if kind == "other version":
        return {**headers, webhooks.SIGNATURE_HEADER: "v2," + headers[webhooks.SIGNATURE_HEADER][3:]}, body
    if kind == "stale":
        return delivery("m", "champion", "2", at=int(time.time()) - webhooks.MAX_AGE_S - 60)
    if kind == "from the future":
        return delivery("m", "champion", "2", at=int(time.time()) + webhooks.MAX_AGE_S + 60)
    raise ValueError(kind)


@pytest.mark.parametrize("kind, words", [
    ("unsigned", "unsigned delivery"), ("other secret", "bad signature"), ("body altered", "bad signature"),
    ("timestamp altered", "bad signature"), ("id altered", "bad signature"), ("not base64", "bad signature"),
    ("other version", "bad signature"), ("stale", "stale delivery"), ("from the future", "stale delivery"),
])
def test_unsigned_forged_altered_and_stale_deliveries_are_refused(kind, words):
    headers, body = _forged(kind)
    with pytest.raises(webhooks.Refused) as info:
        webhooks.verify(headers, body, SECRET)
    assert info.value.status == 401 and words in info.value.reason


def test_a_delivery_without_its_id_or_timestamp_is_a_bad_request():
    headers, body = delivery("m", "champion", "2")
    for header in (webhooks.DELIVERY_HEADER, webhooks.TIMESTAMP_HEADER):
        with pytest.raises(webhooks.Refused) as info:
            webhooks.verify({k: v for k, v in headers.items() if k != header}, body, SECRET)
        assert info.value.status == 400


def test_a_processed_delivery_id_is_a_replay_and_a_failed_one_may_come_again():
    replays = webhooks.Replays()
    replays.take("a")
    with pytest.raises(webhooks.Refused) as info:
        replays.take("a")
    assert info.value.status == 409 and "replayed" in info.value.reason
    replays.take("b")
    replays.release("b")          # processing failed: MLflow's retry (same id) is processed again
    replays.take("b")


def _dead_airflow() -> webhooks.Airflow:
    return webhooks.Airflow(f"http://127.0.0.1:{net.free_port()}", "admin", "unused-password", timeout=5)


def test_refused_deliveries_touch_neither_mlflow_nor_airflow_and_no_log_holds_a_secret(caplog, monkeypatch):
    """A receiver whose MLflow and Airflow both do not exist: every refusal is answered (4xx) and
    logged with its reason, without asking either, and neither the secret nor a signature is logged."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{net.free_port()}")
    receiver = webhooks.Receiver(registered_model="m", secret=SECRET, airflow=_dead_airflow(), asset=CHAMPION_ASSET)
    caplog.set_level(logging.INFO, logger="trafficlip")
    signatures = []
    for kind in ("unsigned", "other secret", "body altered", "stale"):
        headers, body = _forged(kind)
        signatures.append(headers.get(webhooks.SIGNATURE_HEADER, "").partition(",")[2])
        status, answer = receiver.handle(headers, body, peer="127.0.0.1")
        assert 400 <= status < 500, (kind, status, answer)
    headers, body = delivery("other-model", "champion", "2")        # signed, for a model not followed
    assert receiver.handle(headers, body)[0] == 200
    assert receiver.handle(headers, body)[0] == 409                   # the same delivery again: a replay
    assert receiver._client is None                                   # MLflow was never asked
    logged = caplog.text
    assert logged.count("refused") == 5 and "stale delivery" in logged and "bad signature" in logged
    assert SECRET not in logged and not any(s and s in logged for s in signatures)


def test_mlflow_down_is_a_5xx_and_the_same_delivery_may_come_again(monkeypatch, caplog):
    """MLflow retries a delivery answered 5xx, with the same id: that retry is processed, not refused."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{net.free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    receiver = webhooks.Receiver(registered_model="m", secret=SECRET, airflow=_dead_airflow(), asset=CHAMPION_ASSET)
    headers, body = delivery("m", "champion", "2")
    for _ in range(2):
        status, answer = receiver.handle(headers, body)
        assert status == 503 and "MLflow at http://127.0.0.1" in answer["error"], answer
    assert "replayed" not in caplog.text


def test_secrets_come_from_the_environment_or_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv(webhooks.SECRET_ENV, raising=False)
    monkeypatch.delenv(f"{webhooks.SECRET_ENV}_FILE", raising=False)
    with pytest.raises(UserError, match="set TRAFFICLIP_WEBHOOK_SECRET or TRAFFICLIP_WEBHOOK_SECRET_FILE"):
        webhooks.secret_from_env(webhooks.SECRET_ENV, "the webhook secret", webhooks.MIN_SECRET)
    monkeypatch.setenv(webhooks.SECRET_ENV, "short")
    with pytest.raises(UserError, match="5 characters long") as info:
        webhooks.secret_from_env(webhooks.SECRET_ENV, "the webhook secret", webhooks.MIN_SECRET)
    assert "short" not in str(info.value).replace("5 characters long", "")
    monkeypatch.delenv(webhooks.SECRET_ENV)
    (tmp_path / "secret").write_text(SECRET + "\n")
    monkeypatch.setenv(f"{webhooks.SECRET_ENV}_FILE", str(tmp_path / "secret"))
    assert webhooks.secret_from_env(webhooks.SECRET_ENV, "the webhook secret", webhooks.MIN_SECRET) == SECRET
    # Airflow's password: alone in the file, or the simple auth manager's passwords file
    (tmp_path / "passwords.json").write_text(json.dumps({"admin": "pw-admin", "ops": "pw-ops"}))
    monkeypatch.setenv(f"{webhooks.AIRFLOW_PASSWORD_ENV}_FILE", str(tmp_path / "passwords.json"))
    monkeypatch.delenv(webhooks.AIRFLOW_PASSWORD_ENV, raising=False)
    assert webhooks.airflow_password("ops") == "pw-ops"
    with pytest.raises(UserError, match="no password for user 'viewer'"):
        webhooks.airflow_password("viewer")


def test_the_secret_never_goes_on_the_command_line():
    from tasks.cli.parser import build_parser
    parser = build_parser()
    for command in ("webhook-receiver", "register-webhook"):
        options = {o for a in parser._subparsers._group_actions[0].choices[command]._actions for o in a.option_strings}
        assert not any("secret" in o or "password" in o or "token" in o for o in options), options


def test_registering_needs_a_tracking_server(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    with pytest.raises(UserError, match="webhooks are sent by an MLflow tracking server only"):
        webhooks.register("http://127.0.0.1:8765/mlflow-webhook", SECRET)


def test_a_move_airflow_did_not_take_is_recorded_stays_pending_and_is_retried(monkeypatch, caplog):
    """On the session's own store (no server: the delivery is handed to the receiver as the server
    would send it), with Airflow down: the move is recorded once, the answer is 502 (MLflow retries
    on 5xx), the announcement stays pending in the registered model's tag, and the same delivery
    retried is processed again rather than refused as a replay."""
    from mlflow import MlflowClient
    name = unique_name("webhook-pending")
    client = _model_with_versions(MlflowClient(), name, 2)
    client.set_registered_model_alias(name, "champion", "1")
    registry.sync_aliases(tracked_params(registered_model=name))          # the baseline: trafficlip saw 1
    client.set_registered_model_alias(name, "champion", "2")              # by hand; no server, no delivery
    receiver = webhooks.Receiver(registered_model=name, secret=SECRET, airflow=_dead_airflow(), asset=CHAMPION_ASSET)
    headers, body = delivery(name, "champion", "2")
    status, answer = receiver.handle(headers, body)
    assert status == 502 and "no answer" in answer["error"]
    assert client.get_model_version(name, "2").tags["alias_champion_origin"] == registry.MANUAL
    pending = json.loads(client.get_registered_model(name).tags[webhooks.PENDING])
    assert (pending["champion"], pending["from"], pending["origin"]) == (2, 1, registry.MANUAL)
    assert receiver.pending_failed
    status, answer = receiver.handle(headers, body)                        # MLflow's retry: same id
    assert status == 502
    assert json.loads(client.get_registered_model(name).tags[webhooks.PENDING]) == pending   # recorded once
    receiver.retry_pending()                                               # the retry loop, Airflow still down
    assert receiver.pending_failed and webhooks.PENDING in client.get_registered_model(name).tags


def _model_with_versions(client, name: str, count: int):
    """A registered model with ``count`` versions (a run each; no model files are needed for aliases)."""
    experiment = client.get_experiment_by_name("webhooks") or client.get_experiment(
        client.create_experiment("webhooks"))
    client.create_registered_model(name)
    for _ in range(count):
        run_ = client.create_run(experiment.experiment_id)
        client.set_terminated(run_.info.run_id)
        client.create_model_version(name, f"{run_.info.artifact_uri}/model", run_id=run_.info.run_id)
    return client


# --- the real thing: MLflow server, receiver, Airflow ------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """MLflow's server, Airflow's API server and the receiver, started as a user would, torn down after."""
    from cryptography.fernet import Fernet
    folder = tmp_path_factory.mktemp("webhooks")
    processes = procs.Processes(folder)
    name = unique_name("webhook")
    try:
        # Airflow: metadata database, the project's DAGs and assets, the API server alone
        home = folder / "airflow-home"
        home.mkdir()
        airflow_port = net.free_port()
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({"admin": secrets.token_urlsafe(16)}))
        airflow_env = airflow.environment(home, airflow_port, folder, "sqlite:///unused.db",
                                          AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
                                          AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32))
        airflow.setup(airflow_env, home)
        run([str(BIN / "airflow"), "dags", "reserialize"], home, env=airflow_env)
        processes.start("airflow-api", [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port",
                                        str(airflow_port), "--workers", "1"], airflow_env, home)

        # MLflow: a tracking server on SQLite, allowed to deliver over http to loopback (a receiver on
        # this machine), with a fixed key for the webhook secrets it stores
        mlflow_port = net.free_port()
        store = folder / "mlflow.db"
        mlflow_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                      "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                      "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()}
        mlflow_env.pop("MLFLOW_TRACKING_URI", None)
        mlflow = processes.start("mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}",
                                            "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                                 mlflow_env, folder)
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        net.wait_until_answering(f"{mlflow_url}/health", mlflow, processes.log("mlflow"))

        api = airflow.Api(f"http://127.0.0.1:{airflow_port}")
        processes.wait_for("Airflow's API server", api.healthy, START_TIMEOUT_S)
        api.login(json.loads(passwords.read_text())["admin"])

        # the receiver, as a user starts it: secrets in the environment (the Airflow password in a file)
        receiver_port = net.free_port()
        env = cli.project_env(MLFLOW_TRACKING_URI=mlflow_url, TRAFFICLIP_WEBHOOK_SECRET=SECRET,
                              TRAFFICLIP_AIRFLOW_URL=api.base, TRAFFICLIP_AIRFLOW_PASSWORD_FILE=str(passwords))
        receiver = processes.start("receiver", cli.argv(
            "webhook-receiver", "--params", str(ROOT / "params.yaml"), "--set", "mlflow.enabled=true",
            "--set", f"mlflow.registered_model={name}", "--port", str(receiver_port)), env, folder)
        receiver_url = f"http://127.0.0.1:{receiver_port}"
        net.wait_until_answering(f"{receiver_url}/healthz", receiver, processes.log("receiver"))
        yield SimpleNamespace(name=name, api=api, mlflow_url=mlflow_url, store=store, env=env, folder=folder,
                              receiver_url=receiver_url, processes=processes,
                              hook_url=f"{receiver_url}{webhooks.PATH}")
    finally:
        processes.stop()


def _events(stack) -> list[dict]:
    assets = stack.api.get("/api/v2/assets?name_pattern=trafficlip-champion")["assets"]
    [asset] = [a for a in assets if a["uri"] == CHAMPION_ASSET["uri"]]
    return stack.api.get(f"/api/v2/assets/events?asset_id={asset['id']}&order_by=timestamp&limit=100")["asset_events"]


def _wait_for_events(stack, count: int) -> list[dict]:
    def enough():
        events = _events(stack)
        return events if len(events) >= count else None
    return procs.wait_for(f"{count} asset event(s) of trafficlip-champion", enough, DELIVERY_TIMEOUT_S,
                          interval=0.5, alive=stack.processes.check_alive, errors=(OSError, AssertionError),
                          details=lambda: stack.processes.tails(3000))


def _post(stack, headers: dict, body: bytes) -> tuple[int, dict]:
    status, payload, _ = net.request(stack.hook_url, "POST", body, headers)
    return status, json.loads(payload or b"{}")


def _registered(stack, *extra: str) -> dict:
    done = cli.run("register-webhook", "--url", stack.hook_url, *extra, env=stack.env)
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.mark.service
def test_register_webhook_is_idempotent_and_mlflows_test_delivery_is_accepted(stack):
    from mlflow import MlflowClient
    first = _registered(stack, "--test")
    assert first["created"] and first["test"]["success"], first        # signed by MLflow, accepted (200)
    assert first["events"] == sorted(webhooks.ALIAS_EVENTS) and first["status"] == "ACTIVE"
    again = _registered(stack)
    assert not again["created"] and again["webhook_id"] == first["webhook_id"]
    hooks = [w for w in MlflowClient(stack.mlflow_url).list_webhooks() if w.name == webhooks.WEBHOOK_NAME]
    assert len(hooks) == 1 and hooks[0].url == stack.hook_url
    assert "example_model" in procs.tail(stack.processes.log("receiver"), 100_000)   # MLflow's example, ignored


@pytest.mark.service
def test_moving_the_champion_by_hand_gives_one_asset_event_and_the_manual_record(stack, monkeypatch):
    from mlflow import MlflowClient
    _registered(stack)
    client = _model_with_versions(MlflowClient(stack.mlflow_url), stack.name, 3)
    before = len(_events(stack))

    client.set_registered_model_alias(stack.name, "champion", "1")        # the first champion, by hand
    events = _wait_for_events(stack, before + 1)
    client.set_registered_model_alias(stack.name, "champion", "2")        # moved by hand, in the UI or API
    events = _wait_for_events(stack, before + 2)
    client.set_registered_model_alias(stack.name, "challenger", "3")      # a challenger: recorded, no event
    procs.wait_for("the receiver to process the challenger's delivery",
                   lambda: "of @challenger -> 3: 1 change(s) recorded; no asset event" in procs.tail(
                       stack.processes.log("receiver"), 200_000),
                   DELIVERY_TIMEOUT_S, interval=0.5, alive=stack.processes.check_alive,
                   details=lambda: stack.processes.tails(3000))

    first, second = events[before:]
    assert (first["extra"]["champion"], first["extra"]["from"]) == (1, None)
    assert (second["extra"]["champion"], second["extra"]["from"]) == (2, 1)
    assert second["extra"]["origin"] == registry.MANUAL and second["extra"]["registered_model"] == stack.name
    assert second["extra"]["from_rest_api"] is True
    tags = client.get_model_version(stack.name, "2").tags
    assert tags["alias_champion_origin"] == registry.MANUAL and tags["alias_champion_from"] == "1"
    assert client.get_model_version(stack.name, "3").tags["alias_challenger_origin"] == registry.MANUAL
    assert webhooks.PENDING not in client.get_registered_model(stack.name).tags        # announced, not pending
    # the registry-watch DAG (trafficlip sync-aliases) finds nothing left to record or announce
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
    assert registry.sync_aliases(tracked_params(registered_model=stack.name))["changes"] == []
    assert len(_events(stack)) == before + 2


@pytest.mark.service
def test_forged_stale_and_replayed_deliveries_change_nothing_and_a_redelivery_no_second_event(stack):
    """A move written to the server's SQLite store directly (a client without the server: MLflow
    sends no delivery for it) stays unrecorded while forged, unsigned and stale deliveries of it are
    refused; a good one records and announces it; the same delivery again is a replay (409) and a
    fresh delivery of the same event finds nothing new: one event in all."""
    from mlflow import MlflowClient
    _registered(stack)
    name = stack.name
    server = MlflowClient(stack.mlflow_url)
    if "champion" not in server.get_registered_model(name).aliases:    # run alone: the model of the test above
        _model_with_versions(server, name, 3)
        server.set_registered_model_alias(name, "champion", "2")
        _wait_for_events(stack, 1)
    champion = int(server.get_registered_model(name).aliases["champion"])
    target = 1 if champion != 1 else 3
    direct = MlflowClient(f"sqlite:///{stack.store}")
    direct.set_registered_model_alias(name, "champion", str(target))    # by hand, no server: no delivery
    before = len(_events(stack))
    state = server.get_registered_model(name).tags[registry.ALIAS_STATE]

    for kind, secret, at in (("forged", secrets.token_urlsafe(32), None), ("unsigned", None, None),
                             ("stale", SECRET, int(time.time()) - webhooks.MAX_AGE_S - 30)):
        status, answer = _post(stack, *delivery(name, "champion", str(target), secret, at=at))
        assert status == 401, (kind, status, answer)
    assert server.get_registered_model(name).tags[registry.ALIAS_STATE] == state      # nothing recorded
    assert server.get_model_version(name, str(target)).tags.get("alias_champion_from") != str(champion)
    assert len(_events(stack)) == before                                             # nothing announced
    log = procs.tail(stack.processes.log("receiver"), 200_000)
    assert "bad signature" in log and "unsigned delivery" in log and "stale delivery" in log
    assert SECRET not in log

    good = delivery(name, "champion", str(target))
    status, answer = _post(stack, *good)
    assert status == 200 and [(c["from"], c["to"]) for c in answer["changes"]] == [(champion, target)], answer
    assert answer["announced"]["created"] and answer["announced"]["champion"] == target
    assert len(_events(stack)) == before + 1
    assert server.get_model_version(name, str(target)).tags["alias_champion_from"] == str(champion)

    status, answer = _post(stack, *good)                                  # the same delivery again
    assert status == 409 and "replayed" in answer["error"]
    status, answer = _post(stack, *delivery(name, "champion", str(target)))   # redelivered, signed afresh
    assert status == 200 and answer["changes"] == [] and answer["announced"] is None
    assert len(_events(stack)) == before + 1


@pytest.mark.service
def test_a_pending_announcement_reaches_airflow_once(stack, monkeypatch):
    """The change recorded while Airflow was down is announced by the next try; a try after an
    answer that was lost (the tag still there, the event already in Airflow) creates no second one."""
    from mlflow import MlflowClient
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
    name = unique_name("webhook-retry")
    client = _model_with_versions(MlflowClient(stack.mlflow_url), name, 2)
    direct = MlflowClient(f"sqlite:///{stack.store}")                    # no deliveries for this model
    direct.set_registered_model_alias(name, "champion", "1")
    registry.sync_aliases(tracked_params(registered_model=name))
    direct.set_registered_model_alias(name, "champion", "2")
    down = webhooks.Receiver(registered_model=name, secret=SECRET, airflow=_dead_airflow(), asset=CHAMPION_ASSET)
    assert down.handle(*delivery(name, "champion", "2"))[0] == 502
    text = client.get_registered_model(name).tags[webhooks.PENDING]
    before = len(_events(stack))

    password = json.loads((stack.folder / "airflow-home" / "passwords.json").read_text())["admin"]
    up = webhooks.Receiver(registered_model=name, secret=SECRET, asset=CHAMPION_ASSET,
                           airflow=webhooks.Airflow(stack.api.base, "admin", password))
    announced = up.announce_pending()
    assert announced["created"] and announced["champion"] == 2
    assert webhooks.PENDING not in client.get_registered_model(name).tags
    client.set_registered_model_tag(name, webhooks.PENDING, text)       # as if the answer had been lost
    again = up.announce_pending()
    assert not again["created"] and again["event_id"] == announced["event_id"]
    assert up.announce_pending() is None
    events = _events(stack)
    assert len(events) == before + 1 and events[-1]["extra"]["registered_model"] == name
