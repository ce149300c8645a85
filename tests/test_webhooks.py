"""LiveKit webhooks, end to end: the simulator signs and delivers them as LiveKit does, the real
exporter app receives them over loopback, and the numbers are compared with what the simulator sent."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import random
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import jwt
import orjson
import pytest
from aiohttp import web
from google.protobuf.json_format import MessageToDict, Parse
from livekit.api import AccessToken, TokenVerifier, WebhookReceiver
from livekit.protocol import agent, egress, ingress, models
from livekit.protocol.webhook import WebhookEvent
from prometheus_client import generate_latest

from conftest import require_binary, samples, value
from livekit_exporter import config as config_mod
from livekit_exporter.config import EventsConfig, KeyPair, Secret, WebhooksConfig
from livekit_exporter.server import EXPORTER, build_app
from livekit_exporter.simulator import Delivery, WebhookSender
from livekit_exporter.simulator.lively import populate
from livekit_exporter.simulator.scenario import State
from livekit_exporter.simulator.webhooks import CONTENT_TYPE, encode, request_headers, sign
from livekit_exporter.webhooks import EVENTS, REJECTION_LOG_LINES, REJECTIONS, RecentIds, RejectionLog, decode

FAST = Delivery(retry_wait_min=0.001, retry_wait_max=0.01)
MAX_BODY = 4096
LOGGER = "livekit_exporter.webhooks"


def registry_samples(client) -> dict:
    """Every sample of the exporter's long-lived registry but the process and interpreter ones."""
    text = generate_latest(client.server.app[EXPORTER].telemetry.registry).decode()
    return {k: v for k, v in samples(text).items() if not k[0].startswith(("process_", "python_"))}


def changed(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in before.keys() | after.keys()
            if after.get(k, 0) != before.get(k, 0)}


def room_started(event_id: str = "EV_room1", created_at: int | None = None) -> bytes:
    now = int(time.time()) if created_at is None else created_at
    return encode(WebhookEvent(event="room_started", id=event_id, created_at=now,
                               room=models.Room(sid="RM_1", name="r", creation_time=now)))


@pytest.fixture
def webhook_config(make_config):
    return replace(make_config(), webhooks=WebhooksConfig(max_body_bytes=MAX_BODY))


async def settled(client):
    """The client, once the exporter's startup collection is over and only webhooks move metrics."""
    for _ in range(200):
        if (await client.get("/-/ready")).status == 200:
            return client
        await asyncio.sleep(0.01)
    raise AssertionError("the exporter never became ready")


@pytest.fixture
async def hook(exporter_client, webhook_config):
    return await settled(await exporter_client(webhook_config))


async def post(client, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    resp = await client.post(client.server.app[EXPORTER].config.webhooks.path, data=body, headers=headers)
    return resp.status, await resp.json()


async def run_every_event_type(scenario, url: str, t0: float) -> WebhookSender:
    """One life of every kind; the scenario's clock moves so durations are known."""
    clock = [t0]
    scenario.clock = lambda: clock[0]
    async with WebhookSender(scenario, url, delivery=FAST) as sender:
        scenario.add_room("r")
        scenario.add_participant("r", "alice", tracks=[(models.AUDIO, models.MICROPHONE)])
        scenario.add_participant("r", "bob", state=State.JOINED)
        trunk = scenario.add_trunk("inbound")
        scenario.add_sip_call("r", trunk)
        scenario.add_sip_call("r", trunk, state=State.JOINED)  # never connected: aborted, not a call ended
        cam = scenario.publish_track("r", "alice", models.VIDEO, models.CAMERA)
        scenario.unpublish_track("r", "alice", cam.sid)
        eg = scenario.add_egress("r", "room_composite")
        ing = scenario.add_ingress(ingress.RTMP_INPUT, ingress.IngressState.ENDPOINT_PUBLISHING, room="r")
        d = scenario.add_dispatch("r", "support-agent", [agent.JS_PENDING])
        scenario.set_job_status("r", d.id, 0, agent.JS_RUNNING)
        clock[0] = t0 + 45
        scenario.remove_participant("r", "alice")
        scenario.remove_participant("r", "bob")
        scenario.set_egress_status(eg.egress_id, egress.EGRESS_ENDING)
        clock[0] = t0 + 90.25
        scenario.set_egress_status(eg.egress_id, egress.EGRESS_COMPLETE, output_bytes=123_456)
        scenario.set_ingress_status(ing.ingress_id, ingress.IngressState.ENDPOINT_COMPLETE)
        scenario.set_job_status("r", d.id, 0, agent.JS_FAILED)
        clock[0] = t0 + 700
        scenario.remove_room("r", models.ROOM_END_IDLE_TIMEOUT)
        await sender.flush()
    return sender


# -- every event type -------------------------------------------------------------------------


async def test_every_event_type_moves_its_metrics(scenario, hook):
    t0 = float(int(time.time()) - 3600)
    sender = await run_every_event_type(scenario, str(hook.make_url("/webhook")), t0)
    assert {e.event for e in sender.events} == set(EVENTS)
    assert len(sender.accepted) == len(sender.events)
    got = samples(await (await hook.get("/metrics")).text())
    truth = sender.truth()
    for key, expected in truth.items():
        assert got.get(key) == pytest.approx(expected), key
    # Every webhook family sample that is not zero is one the truth expects.
    webhook_families = {k[0].removesuffix("_total") for k in truth} | {"livekit_webhook_events"}
    for (name, labels), v in got.items():
        if v and not name.endswith("_bucket") and name.removesuffix("_total") in webhook_families:
            assert (name, labels) in truth, (name, dict(labels))

    # Durations: participants and rooms in seconds, egress from nanoseconds.
    def bucket(metric: str, le: str, **labels: str) -> float | None:
        return value(got, metric + "_bucket", le=le, **labels)

    # Every request was verified and new: nothing rejected, nothing taken for a duplicate.
    assert not any(v for (name, _), v in got.items() if name == "livekit_webhook_rejected_total")
    assert value(got, "livekit_webhook_duplicates_total") == 0
    assert value(got, "livekit_participant_connections_aborted_total", kind="sip") == 1
    sip_started = sum(v for (name, _), v in got.items() if name == "livekit_sip_calls_started_total")
    sip_ended = sum(v for (name, _), v in got.items() if name == "livekit_sip_calls_ended_total")
    assert sip_started == sip_ended == 1

    assert bucket("livekit_participant_session_duration_seconds", "30.0", kind="standard") == 0
    assert bucket("livekit_participant_session_duration_seconds", "60.0", kind="standard") == 1
    assert value(got, "livekit_participant_session_duration_seconds_sum", kind="standard") == 45
    assert bucket("livekit_participant_session_duration_seconds", "600.0", kind="sip") == 0
    assert bucket("livekit_participant_session_duration_seconds", "1200.0", kind="sip") == 1
    assert bucket("livekit_room_session_duration_seconds", "600.0") == 0
    assert bucket("livekit_room_session_duration_seconds", "1800.0") == 1
    assert value(got, "livekit_room_session_duration_seconds_sum") == 700
    assert bucket("livekit_egress_duration_seconds", "60.0", type="room_composite") == 0
    assert bucket("livekit_egress_duration_seconds", "300.0", type="room_composite") == 1
    assert value(got, "livekit_egress_duration_seconds_sum", type="room_composite") == pytest.approx(90.25, abs=1e-6)
    assert value(got, "livekit_egress_output_bytes_total", type="room_composite") == 123_456
    assert value(got, "livekit_room_sessions_ended_total", end_reason="idle_timeout") == 1
    assert value(got, "livekit_participant_connections_aborted_total", kind="standard") == 1
    assert value(got, "livekit_agent_jobs_ended_total", agent_name="support-agent", status="failed") == 1


async def test_delivery_delay_is_arrival_minus_created_at(scenario, hook):
    body = room_started("EV_late", created_at=int(time.time()) - 7)
    assert (await post(hook, body, request_headers(sign(body, scenario.api_key, scenario.api_secret))))[0] == 200
    got = registry_samples(hook)
    assert value(got, "livekit_webhook_delivery_delay_seconds_bucket", event="room_started", le="5.0") == 0
    assert value(got, "livekit_webhook_delivery_delay_seconds_bucket", event="room_started", le="10.0") == 1


async def test_protojson_spellings_decode_alike(scenario, hook):
    """protobuf's parser takes proto field names, enum numbers and int64 numbers too; so do we."""
    now = int(time.time())
    p = models.ParticipantInfo(sid="PA_1", identity="+15550100", kind=models.ParticipantInfo.Kind.SIP,
                               joined_at=now - 30, disconnect_reason=models.DisconnectReason.USER_REJECTED,
                               attributes={"sip.trunkID": "ST_a", "sip.phoneNumber": "+15550100"})
    ev = WebhookEvent(event="participant_left", id="EV_camel", created_at=now, participant=p,
                      room=models.Room(sid="RM_1", name="r"))
    camel = encode(ev)
    other = MessageToDict(ev, preserving_proto_field_name=True, use_integers_for_enums=True)
    other["id"] = "EV_snake"
    other["created_at"] = int(other["created_at"])
    other["participant"]["joined_at"] = int(other["participant"]["joined_at"])
    snake = orjson.dumps(other)
    assert Parse(snake, WebhookEvent()).participant == p  # what protobuf itself accepts
    for body in (camel, snake):
        status, _ = await post(hook, body, request_headers(sign(body, scenario.api_key, scenario.api_secret)))
        assert status == 200
    got = registry_samples(hook)
    assert value(got, "livekit_participant_sessions_ended_total", kind="sip", reason="user_rejected") == 2
    assert value(got, "livekit_sip_calls_ended_total", trunk="ST_a", reason="user_rejected") == 2
    assert value(got, "livekit_participant_session_duration_seconds_sum", kind="sip") == 60
    assert not any("+1555" in str(labels) for _, labels in got)  # phone numbers never become labels


async def test_unknown_event_type_is_accepted_and_counted(scenario, hook, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for i in range(2):
        body = orjson.dumps({"event": "room_exploded", "id": f"EV_new{i}", "createdAt": str(int(time.time()))})
        status, answer = await post(hook, body, request_headers(sign(body, scenario.api_key, scenario.api_secret)))
        assert (status, answer["result"]) == (200, "accepted")
    assert value(registry_samples(hook), "livekit_webhook_events_total", event="unknown") == 2
    logged = [r for r in caplog.records if r.name == LOGGER]
    assert len(logged) == 1 and logged[0].event == "room_exploded"


# -- the security matrix ----------------------------------------------------------------------

FORGED_SECRET = "forged-secret-" + "f" * 32
OTHER_SECRET = "other-secret-" + "o" * 32


def _case(name, make, status, reason):
    return pytest.param(make, status, reason, id=name)


def _signed(body: bytes, **kw):
    return lambda sc: (body, request_headers(sign(body, sc.api_key, sc.api_secret, **kw)))


def _digest(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def _jwt(body: bytes, **claims):
    """A token with LiveKit's claims for `body` (iss, nbf, exp 5 minutes on, sha256), some replaced;
    a callable claim gets the time the request is made (not when the test module was collected)."""
    def make(sc):
        now = int(time.time())
        given = {k: v(now) if callable(v) else v for k, v in claims.items()}
        payload = {"iss": sc.api_key, "nbf": now, "exp": now + 300, "sha256": _digest(body), **given}
        return body, request_headers(jwt.encode(payload, sc.api_secret, algorithm="HS256"))
    return make


GOOD = room_started("EV_good")
MATRIX = [
    _case("forged_signature", lambda sc: (GOOD, request_headers(sign(GOOD, sc.api_key, FORGED_SECRET))), 401, "bad_signature"),
    _case("forged_signature_with_bearer",
          lambda sc: (GOOD, request_headers("Bearer " + sign(GOOD, sc.api_key, FORGED_SECRET))), 401, "bad_signature"),
    _case("tampered_body", lambda sc: (GOOD.replace(b'"r"', b'"x"'), request_headers(sign(GOOD, sc.api_key, sc.api_secret))),
          401, "hash_mismatch"),
    _case("expired_token", _signed(GOOD, ttl=datetime.timedelta(minutes=-10)), 401, "expired"),
    _case("unknown_key", lambda sc: (GOOD, request_headers(sign(GOOD, "APIstranger", OTHER_SECRET))), 401, "unknown_key"),
    _case("missing_header", lambda sc: (GOOD, {"Content-Type": CONTENT_TYPE}), 401, "missing_auth"),
    _case("not_a_jwt", lambda sc: (GOOD, request_headers("not-a-jwt")), 401, "bad_signature"),
    _case("no_sha256_claim", lambda sc: (GOOD, request_headers(
        AccessToken(sc.api_key, sc.api_secret).with_ttl(datetime.timedelta(minutes=5)).to_jwt())), 401, "hash_mismatch"),
    _case("no_exp_claim", lambda sc: (GOOD, request_headers(__import__("jwt").encode(
        {"iss": sc.api_key, "sha256": base64.b64encode(__import__("hashlib").sha256(GOOD).digest()).decode()},
        sc.api_secret, algorithm="HS256"))), 401, "invalid_token"),
    _case("sha256_claim_not_a_string", _jwt(GOOD, sha256=5), 401, "invalid_token"),
    _case("sha256_claim_a_list", _jwt(GOOD, sha256=[_digest(GOOD)]), 401, "invalid_token"),
    _case("room_config_claim_unreadable", _jwt(GOOD, roomConfig={"name": 5}), 401, "invalid_token"),
    _case("exp_claim_not_a_number", _jwt(GOOD, exp="soon"), 401, "invalid_token"),
    _case("token_valid_for_years", _jwt(GOOD, exp=lambda now: now + 10**8), 401, "invalid_token"),
    _case("token_valid_for_7_minutes", _jwt(GOOD, exp=lambda now: now + 420), 401, "invalid_token"),
    _case("token_not_yet_valid", _jwt(GOOD, nbf=lambda now: now + 3600), 401, "not_yet_valid"),
    _case("empty_body", _signed(b""), 400, "malformed"),
    _case("non_json", _signed(b"<event>room_started</event>"), 400, "malformed"),
    _case("json_not_an_event", _signed(b'{"hello": "world"}'), 400, "malformed"),
    _case("event_without_its_object", _signed(encode(WebhookEvent(event="participant_left", id="EV_x"))), 400, "malformed"),
    _case("field_of_the_wrong_type",
          _signed(b'{"event": "room_finished", "id": "EV_y", "room": {"creationTime": "yesterday"}}'), 400, "malformed"),
    _case("duplicate_key", _signed(b'{"event": "room_started", "id": "EV_d", "room": {}, "event": "room_finished"}'),
          400, "malformed"),
    _case("duplicate_key_deep_inside", _signed(
        b'{"event": "participant_joined", "id": "EV_d", "participant": {"attributes": {"a": "1", "a": "2"}}}'),
          400, "malformed"),
    _case("wrong_content_type", lambda sc: (GOOD, {**request_headers(sign(GOOD, sc.api_key, sc.api_secret)),
                                                   "Content-Type": "text/plain"}), 415, "unsupported_media_type"),
    _case("oversize", _signed(b'{"event": "room_started", "id": "EV_big", "pad": "' + b"x" * MAX_BODY + b'"}'),
          413, "too_large"),
]


@pytest.mark.parametrize("make, status, reason", MATRIX)
async def test_rejected_requests_change_only_the_rejection_counter(scenario, hook, caplog, make, status, reason):
    caplog.set_level(logging.INFO, logger=LOGGER)
    body, headers = make(scenario)
    before = registry_samples(hook)
    got_status, answer = await post(hook, body, headers)
    assert (got_status, answer["reason"]) == (status, reason)
    assert 400 <= got_status < 500  # LiveKit retries 5xx, never 4xx
    assert changed(before, registry_samples(hook)) == {("livekit_webhook_rejected_total", frozenset({("reason", reason)})): 1}
    logged = [r for r in caplog.records if r.name == LOGGER]
    assert len(logged) == 1 and logged[0].reason == reason and logged[0].levelno == logging.WARNING
    token = headers.get("Authorization", "").removeprefix("Bearer ")
    for r in caplog.records:
        text = r.getMessage() + repr(r.__dict__) + json.dumps(answer)
        for secret in (scenario.api_secret, FORGED_SECRET, OTHER_SECRET):
            assert secret not in text
        assert not token or token not in text


async def test_oversize_chunked_body_is_read_no_further_than_the_webhook_limit(scenario, aiohttp_client, make_config):
    """aiohttp's own limit is the larger of the endpoints' (here the events API's 8 MiB); /webhook
    stops reading at its own, and checks the token before reading at all."""
    config = replace(make_config(), webhooks=WebhooksConfig(max_body_bytes=MAX_BODY),
                     events=EventsConfig(max_body_bytes=8 << 20))
    app = build_app(config)
    bytes_received = []

    @web.middleware
    async def body_bytes_received(request, handler):
        resp = await handler(request)
        bytes_received.append(request.content.total_bytes)
        return resp

    app.middlewares.append(body_bytes_received)
    client = await settled(await aiohttp_client(app))
    body = b'{"event": "room_started", "id": "EV_big", "pad": "' + b"x" * (4 << 20) + b'"}'

    async def chunks():
        for i in range(0, len(body), 64 << 10):
            yield body[i:i + (64 << 10)]

    for secret, status, reason in ((scenario.api_secret, 413, "too_large"), (FORGED_SECRET, 401, "bad_signature")):
        before = registry_samples(client)
        got_status, answer = await post(client, chunks(), request_headers(sign(body, scenario.api_key, secret)))
        assert (got_status, answer["reason"]) == (status, reason)
        assert changed(before, registry_samples(client)) == {
            ("livekit_webhook_rejected_total", frozenset({("reason", reason)})): 1}
        # What aiohttp buffered beyond the limit is its flow-control window, never the body.
        assert bytes_received.pop() < 1 << 20


@pytest.mark.parametrize("event", [
    pytest.param(b'{"event": "room_started", "id": "EV_1", "createdAt": "' + b"9" * 400 + b'", "room": {}}',
                 id="created_at_400_digits"),
    pytest.param(b'{"event": "egress_ended", "id": "EV_1", "egressInfo": {"roomComposite": {}, '
                 b'"fileResults": [{"size": "' + b"9" * 400 + b'"}]}}', id="size_400_digits"),
    pytest.param(b'{"event": "egress_ended", "id": "EV_1", "egressInfo": {"roomComposite": {}, "startedAt": "1", '
                 b'"endedAt": "' + b"9" * 400 + b'"}}', id="ended_at_400_digits"),
    pytest.param(b'{"event": "egress_ended", "id": "EV_1", "egressInfo": {"roomComposite": {}, '
                 b'"fileResults": [{"size": 9223372036854775808}]}}', id="size_2_to_the_63"),
    pytest.param(b'{"event": "room_finished", "id": "EV_1", "createdAt": "100", "room": {"creationTime": '
                 b'"-99999999999999999999"}}', id="creation_time_below_int64"),
    pytest.param(b'{"event": "room_finished", "id": "EV_1", "createdAt": "100", "room": {"creationTime": "-5"}}',
                 id="negative_creation_time"),
    pytest.param(b'{"event": "participant_left", "id": "EV_1", "participant": {"joinedAt": -1}}',
                 id="negative_joined_at"),
    pytest.param(b'{"event": "egress_ended", "id": "EV_1", "egressInfo": {"roomComposite": {}, '
                 b'"fileResults": [{"size": "-10"}]}}', id="negative_size"),
    pytest.param(b'{"event": "room_started", "id": "EV_1", "createdAt": "1_000", "room": {}}', id="underscore"),
    pytest.param(b'{"event": "room_started", "id": "EV_1", "createdAt": " 5 ", "room": {}}', id="spaces"),
    pytest.param(b'{"event": "room_started", "id": "EV_1", "createdAt": "1e3", "room": {}}', id="exponent"),
    pytest.param('{"event": "room_started", "id": "EV_1", "createdAt": "\u0663", "room": {}}'.encode(),
                 id="arabic_indic_digit"),
    pytest.param(b'{"event": "room_started", "id": "EV_1", "createdAt": 1e300, "room": {}}', id="float"),
    pytest.param(b'{"event": "room_started", "id": "EV_1", "createdAt": 1.5, "room": {}}', id="fraction"),
    pytest.param(b'{"event": "room_started", "id": "EV_1", "room": {}, "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
                 id="nested_1000_deep"),
])
async def test_numbers_protobuf_refuses_are_refused_whole(scenario, hook, event):
    """A 400 that changes nothing but the rejection counter, and the id stays unknown: the same event
    sent right is counted."""
    before = registry_samples(hook)
    status, answer = await post(hook, event, request_headers(sign(event, scenario.api_key, scenario.api_secret)))
    assert (status, answer["reason"]) == (400, "malformed"), answer
    assert changed(before, registry_samples(hook)) == {
        ("livekit_webhook_rejected_total", frozenset({("reason", "malformed")})): 1}
    right = room_started("EV_1")
    assert await post(hook, right, request_headers(sign(right, scenario.api_key, scenario.api_secret))) == (
        200, {"result": "accepted", "id": "EV_1"})


async def test_leading_zeros_are_an_int64_too(scenario, hook):
    body = b'{"event": "room_started", "id": "EV_0", "createdAt": "' + b"0" * 4000 + b'5", "room": {}}'
    assert (await post(hook, body, request_headers(sign(body, scenario.api_key, scenario.api_secret))))[0] == 200


async def test_a_livekit_clock_a_little_ahead_is_accepted(scenario, hook):
    """LiveKit's clock 50 s ahead: nbf and exp 50 s later than ours, within the leeway."""
    now = int(time.time())
    body, headers = _jwt(GOOD, nbf=now + 50, exp=now + 350)(scenario)
    assert (await post(hook, body, headers))[0] == 200


def test_an_event_id_is_remembered_in_a_fixed_size():
    short, long = (decode(room_started(event_id)) for event_id in ("EV_1", "EV_" + "x" * 100_000))
    assert len(short.key) == len(long.key) == 16 and short.key != long.key


async def test_a_flood_of_rejections_logs_a_bounded_number_of_lines(scenario, hook, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for _ in range(50):
        await post(hook, GOOD, request_headers(sign(GOOD, scenario.api_key, FORGED_SECRET)))
    logged = [r for r in caplog.records if r.name == LOGGER]
    assert len(logged) == REJECTION_LOG_LINES
    assert value(registry_samples(hook), "livekit_webhook_rejected_total", reason="bad_signature") == 50


def test_rejection_log_sums_up_what_it_left_out(caplog):
    from livekit_exporter.webhooks import Rejected

    caplog.set_level(logging.INFO, logger=LOGGER)
    now = [0.0]
    rejections = RejectionLog(lines=2, window=60, clock=lambda: now[0])
    for _ in range(5):
        rejections.warn(Rejected("expired", "old"), "127.0.0.1")
    rejections.warn(Rejected("too_large", "big"), "127.0.0.1")  # each reason has its own budget
    assert [r.reason for r in caplog.records] == ["expired", "expired", "too_large"]
    now[0] = 60.0
    rejections.warn(Rejected("expired", "old"), "127.0.0.1")
    summary, line = caplog.records[3:]
    assert (summary.getMessage(), summary.reason, summary.not_logged) == ("webhook rejections not logged", "expired", 3)
    assert line.getMessage() == "webhook rejected"


def test_every_rejection_reason_is_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d{3}) \|", readme, re.M))
    assert {reason: int(status) for reason, status in rows.items()} == {r: s for r, (s, _) in REJECTIONS.items()}


async def test_replay_and_retry_count_once(scenario, hook):
    headers = request_headers(sign(GOOD, scenario.api_key, scenario.api_secret))
    before = registry_samples(hook)
    assert await post(hook, GOOD, headers) == (200, {"result": "accepted", "id": "EV_good"})
    first = changed(before, registry_samples(hook))
    assert first[("livekit_webhook_events_total", frozenset({("event", "room_started")}))] == 1
    assert first[("livekit_room_sessions_started_total", frozenset())] == 1
    again = registry_samples(hook)
    assert await post(hook, GOOD, headers) == (200, {"result": "duplicate", "id": "EV_good"})  # a replay
    retry = request_headers("Bearer " + sign(GOOD, scenario.api_key, scenario.api_secret))  # re-signed
    assert await post(hook, GOOD, retry) == (200, {"result": "duplicate", "id": "EV_good"})
    assert changed(again, registry_samples(hook)) == {("livekit_webhook_duplicates_total", frozenset()): 2}


async def test_key_rotation_accepts_every_configured_key(scenario, exporter_client, make_config):
    old, new = KeyPair("APIold", Secret("old-secret-" + "1" * 32)), KeyPair("APInew", Secret("new-secret-" + "2" * 32))
    client = await settled(await exporter_client(replace(make_config(), webhooks=WebhooksConfig(keys=(old, new)))))
    for i, kp in enumerate((old, new)):
        body = room_started(f"EV_rot{i}")
        assert (await post(client, body, request_headers(sign(body, kp.api_key, kp.api_secret.reveal()))))[0] == 200
    # Explicit webhook keys replace the default (the LiveKit API key pair).
    body = room_started("EV_rot_api")
    status, answer = await post(client, body, request_headers(sign(body, scenario.api_key, scenario.api_secret)))
    assert (status, answer["reason"]) == (401, "unknown_key")
    got = registry_samples(client)
    assert value(got, "livekit_webhook_events_total", event="room_started") == 2
    assert value(got, "livekit_webhook_rejected_total", reason="unknown_key") == 1


async def test_webhooks_can_be_disabled(exporter_client, make_config):
    client = await exporter_client(replace(make_config(), webhooks=WebhooksConfig(enabled=False)))
    assert (await client.post("/webhook", data=GOOD)).status in (404, 405)
    assert "livekit_webhook_events_total" not in await (await client.get("/metrics")).text()


def test_dedup_ttl_must_cover_a_token_lifetime(tmp_path):
    f = tmp_path / "c.yml"
    f.write_text("livekit: {url: 'http://lk:7880', api_key: k, api_secret: s}\nwebhooks: {dedup_ttl: 1m}\n")
    with pytest.raises(config_mod.ConfigError, match=r"webhooks\.dedup_ttl: must be at least 7m"):
        config_mod.load(str(f), env={})


def test_recent_ids_are_bounded_in_time_and_size():
    now = [0.0]
    ids = RecentIds(ttl=10, max_entries=3, clock=lambda: now[0])
    ids.add(b"a")
    now[0] = 9.9
    assert b"a" in ids
    now[0] = 10.0  # "a" expired
    assert b"a" not in ids
    ids.add(b"a")
    assert len(ids) == 1
    for x in (b"b", b"c", b"d"):
        ids.add(x)
    assert len(ids) == 3 and b"a" not in ids  # the oldest made room
    now[0] = 100.0
    ids.add(b"z")
    assert len(ids) == 1


# -- delivery as LiveKit does it --------------------------------------------------------------


async def test_simulated_run_with_retries_duplicates_and_reordering(scenario, hook):
    delivery = replace(FAST, lost_answer_rate=0.3, replay_rate=0.3, reorder_window=8, seed=3)
    async with WebhookSender(scenario, str(hook.make_url("/webhook")), delivery=delivery) as sender:
        rng = random.Random(2)
        populate(scenario, rng)
        for eid in list(scenario.egress):
            scenario.set_egress_status(eid, egress.EGRESS_COMPLETE, output_bytes=rng.randrange(10**6, 10**8))
        for name in list(scenario.rooms)[:5]:
            scenario.remove_room(name)
        await sender.flush()
    assert sender.stats["retries"] > 0 and sender.stats["replays"] > 0 and sender.stats["failed"] == 0
    got = samples(await (await hook.get("/metrics")).text())
    for key, expected in sender.truth().items():
        assert got.get(key) == pytest.approx(expected), key
    distinct = {e.id for e in sender.events}
    counted = sum(v for (name, _), v in got.items() if name == "livekit_webhook_events_total")
    assert counted == len(distinct) == len(sender.events)
    assert value(got, "livekit_webhook_duplicates_total") == sender.stats["lost_answers"] + sender.stats["replays"]


def test_backoff_is_livekits():
    assert [Delivery().backoff(a) for a in range(6)] == [1, 2, 4, 8, 16, 30]


@pytest.mark.parametrize("script, attempts, accepted, delivery", [
    ([503, 429, 500], 4, True, FAST),   # retried, then delivered
    ([501], 1, False, FAST),            # 501 is final
    ([400], 1, False, FAST),            # a 4xx is final
    ([500] * 5, 5, False, FAST),        # at most 4 retries
    ([503, 503], 3, True, replace(FAST, retry_wait_min=0.5, retry_wait_max=1)),  # over a second: same token
])
async def test_sender_signs_and_retries_like_livekit(scenario, aiohttp_server, script, attempts, accepted, delivery):
    received, tokens = [], []
    statuses = list(script)
    receiver = WebhookReceiver(TokenVerifier(scenario.api_key, scenario.api_secret))

    async def endpoint(request: web.Request) -> web.Response:
        auth = request.headers["Authorization"]
        tokens.append(auth)
        assert not auth.startswith("Bearer") and request.content_type == CONTENT_TYPE
        claims = TokenVerifier(scenario.api_key, scenario.api_secret).verify(auth)
        assert claims.sha256
        payload = json.loads(base64.urlsafe_b64decode(auth.split(".")[1] + "=="))
        assert payload["exp"] - payload["nbf"] == 300 and payload["iss"] == scenario.api_key
        raw = await request.read()
        assert re.search(rb'"createdAt": "\d+"', raw)  # int64 as a string, camelCase
        received.append(receiver.receive(raw.decode(), auth))  # livekit-api's own receiver
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", endpoint)
    server = await aiohttp_server(app)
    async with WebhookSender(scenario, str(server.make_url("/hook")), delivery=delivery) as sender:
        scenario.add_room("r")
        await sender.flush()
    assert sender.stats["attempts"] == attempts
    assert len(set(tokens)) == 1  # go-retryablehttp resends the same request, Authorization included
    assert received == [sender.events[0]] * attempts
    assert (sender.events[0].id in sender.accepted) is accepted
    assert sender.stats["failed"] == (0 if accepted else 1)


async def test_sender_retries_connection_errors_and_drops_stale_events(scenario, unused_tcp_port):
    url = f"http://127.0.0.1:{unused_tcp_port}/webhook"
    async with WebhookSender(scenario, url, delivery=FAST) as sender:
        scenario.add_room("r")
        await sender.flush()
    assert sender.stats["connection_errors"] == 5 and sender.stats["failed"] == 1
    stale = WebhookSender(scenario, url, delivery=replace(FAST, max_age=0.01))
    scenario.add_room("s")  # queued while the sender is not running yet
    await asyncio.sleep(0.05)
    async with stale:
        await stale.flush()
    assert stale.stats["dropped_too_old"] == 1 and stale.stats["attempts"] == 0


# -- the exposition and the demo --------------------------------------------------------------


async def test_exposition_passes_promtool(scenario, hook):
    promtool = require_binary("promtool")
    await run_every_event_type(scenario, str(hook.make_url("/webhook")), float(int(time.time()) - 3600))
    await post(hook, b"{}", {"Content-Type": CONTENT_TYPE})  # one rejection too
    text = await (await hook.get("/metrics")).text()
    assert "livekit_sip_calls_ended_total{" in text and "livekit_egress_duration_seconds_bucket{" in text
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


async def test_demo_delivers_webhooks(capsys, aiohttp_client):
    from aiohttp import ClientSession

    from livekit_exporter.demo import run_demo

    demo = asyncio.create_task(run_demo("127.0.0.1", 0))
    try:
        metrics_url = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            found = re.search(r"Metrics: +(\S+)", capsys.readouterr().out)
            if found:
                metrics_url = found.group(1)
                break
        assert metrics_url, "the demo printed no metrics URL"
        async with ClientSession() as session:
            for _ in range(100):
                text = await (await session.get(metrics_url)).text()
                if (value(text, "livekit_webhook_events_total", event="room_started") or 0) >= 8:
                    break
                await asyncio.sleep(0.05)
        assert value(text, "livekit_webhook_events_total", event="room_started") >= 8  # lively opens 8 rooms
        assert value(text, "livekit_webhook_rejected_total", reason="bad_signature") == 0
    finally:
        demo.cancel()
        await asyncio.gather(demo, return_exceptions=True)


def test_every_rejection_reason_is_a_4xx():
    """LiveKit drops a webhook answered with a 4xx and retries a 5xx: a refused request is a 4xx, and
    only the rate limit, which refuses nothing about the request itself, asks for the retry."""
    assert all(400 <= s < 500 for reason, (s, _) in REJECTIONS.items() if reason != "rate_limited")
    assert REJECTIONS["rate_limited"][0] == 503


async def test_a_key_over_its_webhook_rate_gets_503_with_retry_after_and_the_retry_counts_once(
        scenario, exporter_client, make_config):
    cfg = replace(make_config(), webhooks=WebhooksConfig(rate_limit=1, rate_limit_burst=2))
    client = await settled(await exporter_client(cfg))
    path = cfg.webhooks.path

    def signed(body: bytes, key: str = scenario.api_key, secret: str = scenario.api_secret) -> dict[str, str]:
        return request_headers(sign(body, key, secret))

    bodies = [orjson.dumps({"event": "room_started", "id": f"EV_{i}", "room": {"name": f"r{i}"}}) for i in range(3)]
    statuses = [(await client.post(path, data=b, headers=signed(b))) for b in bodies]
    assert [r.status for r in statuses] == [200, 200, 503]
    assert statuses[2].headers["Retry-After"] == "1"
    text = await (await client.get("/metrics")).text()
    assert value(text, "livekit_webhook_rejected_total", reason="rate_limited") == 1
    assert value(text, "livekit_webhook_events_total", event="room_started") == 2
    # a forged token spends nothing of the key's rate: it is refused before the limit is looked at
    forged = bodies[2]
    assert (await client.post(path, data=forged, headers=signed(forged, secret="x" * 32))).status == 401
    await asyncio.sleep(1.05)  # the bucket refills one webhook a second; LiveKit's retry comes after its backoff
    retry = await client.post(path, data=bodies[2], headers=signed(bodies[2]))
    assert retry.status == 200
    text = await (await client.get("/metrics")).text()
    assert value(text, "livekit_webhook_events_total", event="room_started") == 3


# -- the two paths agree on every label they share ----------------------------------------------

# Every way an egress can be started: each member of EgressInfo's `request` oneof, and each source
# of the unified StartEgress request.
EGRESS_VARIANTS = [("room_composite", False), ("web", False), ("participant", False), ("track_composite", False),
                   ("track", False), ("replay", False), ("room_composite", True), ("web", True), ("media", True)]


def label_values(got: dict, name: str, label: str, nonzero: bool = True) -> set[str]:
    return {dict(labels)[label] for (n, labels), v in got.items() if n == name and (v or not nonzero)}


async def test_every_egress_and_ingress_type_webhook_truth_and_the_scrape_path_agree(scenario, exporter_client, make_config):
    """Each egress variant and ingress input type, alone: the webhook counters equal the simulator's
    truth, and the state families (read from LiveKit's API on the same scrape) name the same value.
    Also every participant kind: joined webhooks and the per-room detail agree."""
    hook = await settled(await exporter_client(replace(make_config(detail=True), webhooks=WebhooksConfig())))
    url = str(hook.make_url("/webhook"))
    async with WebhookSender(scenario, url, delivery=FAST) as sender:
        scenario.add_room("r")
        for i, (etype, unified) in enumerate(EGRESS_VARIANTS):
            before = samples(await (await hook.get("/metrics")).text())
            info = scenario.add_egress("r", etype, unified=unified)
            assert info.WhichOneof("request") == ("egress" if unified else etype)
            await sender.flush()
            got = samples(await (await hook.get("/metrics")).text())
            started = {t for t in label_values(got, "livekit_egress_started_total", "type")
                       if got[("livekit_egress_started_total", frozenset({"type": t}.items()))]
                       != before.get(("livekit_egress_started_total", frozenset({"type": t}.items())), 0)}
            assert started == {etype}, (etype, unified, started)
            assert value(got, "livekit_egress_active", type=etype, status="active") == \
                1 + sum(1 for t, _ in EGRESS_VARIANTS[:i] if t == etype), (etype, unified)
        for input_type in ingress.IngressInput.values():
            scenario.add_ingress(input_type, ingress.IngressState.ENDPOINT_PUBLISHING, room="r")
        kinds = models.ParticipantInfo.Kind
        for n, kind in enumerate(kinds.values()):
            scenario.add_participant("r", f"p{n}", kind=kind)
        await sender.flush()
    got = samples(await (await hook.get("/metrics")).text())
    for key, expected in sender.truth().items():
        assert got.get(key) == pytest.approx(expected), key
    shared = [
        ("livekit_egress_started_total", "type", "livekit_egress_active", "type"),
        ("livekit_ingress_started_total", "input_type", "livekit_ingress", "input_type"),
        ("livekit_participant_sessions_started_total", "kind", "livekit_participants", "kind"),
    ]
    for webhook_family, wl, state_family, sl in shared:
        from_webhooks, from_state = label_values(got, webhook_family, wl), label_values(got, state_family, sl)
        assert from_webhooks == from_state and from_webhooks, (webhook_family, from_webhooks, state_family, from_state)
        # ...and both paths zero-fill (or name) the same value set.
        assert label_values(got, webhook_family, wl, nonzero=False) <= label_values(got, state_family, sl, nonzero=False) | {"unknown"}
    assert len(label_values(got, "livekit_ingress_started_total", "input_type")) == len(ingress.IngressInput.values())
    assert len(label_values(got, "livekit_participants", "kind")) == len(models.ParticipantInfo.Kind.values())
