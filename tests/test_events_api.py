"""The events API over real HTTP: each event type's metrics, every rejection, the guard, the TTL."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
from conftest import AUTH, EVENTS_TOKEN, require_binary, samples, value

from livekit_exporter.config import Price
from livekit_exporter.events import PIPELINE
from livekit_exporter.events.pipeline import CALL_BUCKETS, STAGE_BUCKETS, TURN_BUCKETS

PRICES = (
    Price("openai", "gpt-4o-mini", usd_per_million_input_tokens=0.15, usd_per_million_output_tokens=0.6,
          usd_per_million_cached_tokens=0.075),
    Price("deepgram", usd_per_audio_minute=0.0077),
    Price("elevenlabs", usd_per_million_characters=50.0),
)

A = "support-agent"

ONE_OF_EACH = [
    {"type": "call_started", "agent": A, "call_id": "c1", "direction": "outbound", "campaign": "spring"},
    {"type": "call_answered", "agent": A, "call_id": "c1", "direction": "outbound", "campaign": "spring",
     "answered_by": "machine", "setup_seconds": 12},
    {"type": "call_started", "agent": A, "call_id": "c2", "direction": "inbound"},
    {"type": "call_ended", "agent": A, "call_id": "c1", "direction": "outbound", "campaign": "spring",
     "outcome": "voicemail", "duration_seconds": 45},
    {"type": "calls_queued", "agent": A, "campaign": "spring", "queued": 7},
    {"type": "campaign_status", "campaign": "spring", "running": True},
    {"type": "dependency_status", "agent": A, "dependency": "deepgram", "up": False},
    {"type": "turn", "agent": A, "interrupted": True, "e2e_latency_seconds": 0.75,
     "end_of_utterance_delay_seconds": 0.2, "transcription_delay_seconds": 0.12, "llm_ttft_seconds": 0.33,
     "tts_ttfb_seconds": 0.18, "stt_provider": "deepgram", "stt_model": "nova-3", "llm_provider": "openai",
     "llm_model": "gpt-4o-mini"},
    {"type": "turn", "agent": A, "e2e_latency_seconds": 1.3, "interruptions": 2},
    {"type": "stt", "agent": A, "provider": "deepgram", "model": "nova-3", "audio_seconds": 90},
    {"type": "llm", "agent": A, "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1000,
     "output_tokens": 200, "cached_tokens": 400, "duration_seconds": 1.1},
    {"type": "tts", "agent": A, "provider": "elevenlabs", "model": "flash", "characters": 500, "audio_seconds": 30},
    {"type": "tool_call", "agent": A, "tool": "lookup_order", "duration_seconds": 0.45},
    {"type": "error", "agent": A, "component": "llm", "error_type": "rate_limited"},
]


async def post(client, events=None, *, body=None, ctype="application/json", headers=AUTH):
    data = body if body is not None else json.dumps({"events": events})
    return await client.post("/v1/events", data=data, headers={"Content-Type": ctype, **headers})


async def scrape(client) -> dict:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return samples(await resp.text())


def buckets(s: dict, name: str, bounds, **labels) -> list[float]:
    out = []
    for b in (*bounds, float("inf")):
        le = "+Inf" if b == float("inf") else str(float(b))
        out.append(value(s, name + "_bucket", le=le, **labels))
    return out


def cumulative(bounds, *observations) -> list[float]:
    return [float(sum(1 for o in observations if o <= b)) for b in (*bounds, float("inf"))]


async def test_each_event_type_moves_its_metrics(events_exporter):
    client = await events_exporter(prices=PRICES)
    resp = await post(client, ONE_OF_EACH)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": len(ONE_OF_EACH), "discarded": []}
    s = await scrape(client)
    out = dict(agent=A, direction="outbound", campaign="spring")
    assert value(s, "voice_agent_calls_started_total", **out) == 1
    assert value(s, "voice_agent_calls_started_total", agent=A, direction="inbound", campaign="") == 1
    assert value(s, "voice_agent_calls_answered_total", **out, answered_by="machine") == 1
    assert value(s, "voice_agent_calls_ended_total", **out, outcome="voicemail") == 1
    assert value(s, "voice_agent_calls_active", agent=A, direction="outbound") == 0
    assert value(s, "voice_agent_calls_active", agent=A, direction="inbound") == 1
    assert value(s, "voice_agent_calls_queued", agent=A, campaign="spring") == 7
    assert value(s, "voice_agent_campaign_running", campaign="spring") == 1
    assert value(s, "voice_agent_dependency_up", agent=A, dependency="deepgram") == 0

    setup = dict(agent=A, direction="outbound")
    assert buckets(s, "voice_agent_call_setup_seconds", CALL_BUCKETS, **setup) == cumulative(CALL_BUCKETS, 12)
    assert value(s, "voice_agent_call_setup_seconds_sum", **setup) == 12
    dur = dict(agent=A, direction="outbound", outcome="voicemail")
    assert buckets(s, "voice_agent_call_duration_seconds", CALL_BUCKETS, **dur) == cumulative(CALL_BUCKETS, 45)
    assert value(s, "voice_agent_call_duration_seconds_sum", **dur) == 45

    assert value(s, "voice_agent_turns_total", agent=A, interrupted="true") == 1
    assert value(s, "voice_agent_turns_total", agent=A, interrupted="false") == 1
    assert value(s, "voice_agent_interruptions_total", agent=A) == 3  # 1 (interrupted) + 2 (explicit)
    assert buckets(s, "voice_agent_turn_latency_seconds", TURN_BUCKETS, agent=A) == cumulative(TURN_BUCKETS, 0.75, 1.3)
    assert value(s, "voice_agent_turn_latency_seconds_sum", agent=A) == pytest.approx(2.05)
    assert buckets(s, "voice_agent_end_of_utterance_delay_seconds", STAGE_BUCKETS, agent=A) == cumulative(STAGE_BUCKETS, 0.2)
    stt = dict(agent=A, provider="deepgram", model="nova-3")
    assert buckets(s, "voice_agent_transcription_delay_seconds", STAGE_BUCKETS, **stt) == cumulative(STAGE_BUCKETS, 0.12)
    llm = dict(agent=A, provider="openai", model="gpt-4o-mini")
    assert buckets(s, "voice_agent_llm_time_to_first_token_seconds", STAGE_BUCKETS, **llm) == cumulative(STAGE_BUCKETS, 0.33)
    tts_unknown = dict(agent=A, provider="unknown", model="unknown")
    assert buckets(s, "voice_agent_tts_time_to_first_byte_seconds", STAGE_BUCKETS, **tts_unknown) == cumulative(STAGE_BUCKETS, 0.18)
    assert buckets(s, "voice_agent_llm_request_duration_seconds", STAGE_BUCKETS, **llm) == cumulative(STAGE_BUCKETS, 1.1)
    assert buckets(s, "voice_agent_tool_call_duration_seconds", STAGE_BUCKETS, agent=A, tool="lookup_order") == \
        cumulative(STAGE_BUCKETS, 0.45)

    assert value(s, "voice_agent_llm_tokens_total", **llm, type="input") == 1000
    assert value(s, "voice_agent_llm_tokens_total", **llm, type="output") == 200
    assert value(s, "voice_agent_llm_tokens_total", **llm, type="cached") == 400
    assert value(s, "voice_agent_stt_audio_seconds_total", **stt) == 90
    assert value(s, "voice_agent_tts_characters_total", agent=A, provider="elevenlabs", model="flash") == 500
    assert value(s, "voice_agent_errors_total", agent=A, component="llm", type="rate_limited") == 1

    cost = "voice_agent_estimated_cost_dollars_total"
    # 600 uncached input x 0.15 + 400 cached x 0.075 + 200 output x 0.6, per million tokens
    assert value(s, cost, component="llm", **llm) == pytest.approx(240e-6)
    assert value(s, cost, component="stt", **stt) == pytest.approx(1.5 * 0.0077)
    assert value(s, cost, agent=A, component="tts", provider="elevenlabs", model="flash") == pytest.approx(500 / 1e6 * 50)

    for t in ("call_started", "turn"):
        assert value(s, "livekit_exporter_events_total", type=t) == 2
    for t in ("call_answered", "call_ended", "calls_queued", "campaign_status", "dependency_status", "stt",
              "llm", "tts", "tool_call", "error"):
        assert value(s, "livekit_exporter_events_total", type=t) == 1


async def test_ndjson_is_accepted_like_json(events_exporter):
    client = await events_exporter()
    body = "\n".join(json.dumps(e) for e in ONE_OF_EACH[:3]) + "\n\n"
    resp = await post(client, body=body, ctype="application/x-ndjson")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] == 3
    s = await scrape(client)
    assert value(s, "voice_agent_calls_answered_total", agent=A, direction="outbound", campaign="spring",
                 answered_by="machine") == 1


async def test_bucket_bounds_come_from_config(events_exporter):
    client = await events_exporter(buckets={"voice_agent_turn_latency_seconds": (0.5, 1.0)})
    await post(client, [{"type": "turn", "agent": A, "e2e_latency_seconds": 0.7}])
    s = await scrape(client)
    assert buckets(s, "voice_agent_turn_latency_seconds", (0.5, 1.0), agent=A) == [0, 1, 1]


# -- bad input: its status and message, and nothing changes but the rejection counter -------------

BAD_BATCH = [
    {"type": "turn", "agent": A, "e2e_latency_seconds": 0.5},  # fine
    {"type": "turn", "agent": A, "e2e_latency_seconds": -0.1},
    {"type": "call_teleported", "agent": A},
    {"type": "call_started", "agent": A, "direction": "inbound"},
    {"type": "tool_call", "agent": A, "tool": "x", "duration_seconds": 0.1, "colour": "red"},
    {"type": "stt", "agent": A, "provider": "p", "model": "m", "audio_seconds": "ten"},
    {"type": "llm", "agent": A, "provider": "p", "model": "m", "input_tokens": 5, "cached_tokens": 9},
    {"type": "turn", "agent": "", "e2e_latency_seconds": 0.5},
    {"type": "error", "agent": A, "component": "database", "error_type": "x"},
    {"type": "turn", "agent": A, "e2e_latency_seconds": 2e6},
]
BAD_PROBLEMS = [
    {"index": 1, "path": "$.events[1].e2e_latency_seconds", "reason": "Expected `float` >= 0.0"},
    {"index": 2, "path": "$.events[2].type", "reason": "Invalid value 'call_teleported'; expected one of call_started, call_answered, "
     "call_ended, calls_queued, campaign_status, dependency_status, turn, stt, llm, tts, tool_call, error"},
    {"index": 3, "path": "$.events[3]", "reason": "Object missing required field `call_id`"},
    {"index": 4, "path": "$.events[4]", "reason": "Object contains unknown field `colour`"},
    {"index": 5, "path": "$.events[5].audio_seconds", "reason": "Expected `float`, got `str`"},
    {"index": 6, "path": "$.events[6].cached_tokens",
     "reason": "cached_tokens (9) exceeds input_tokens (5); input_tokens counts cached tokens too"},
    {"index": 7, "path": "$.events[7].agent", "reason": "Expected `str` of length >= 1"},
    {"index": 8, "path": "$.events[8].component",
     "reason": "Invalid enum value 'database'; expected one of llm, other, stt, tool, transport, tts"},
    {"index": 9, "path": "$.events[9].e2e_latency_seconds", "reason": "Expected `float` <= 1000000.0"},
]


def _ndjson(events) -> str:
    return "\n".join(json.dumps(e) for e in events)


REJECTIONS = {
    # name: (request kwargs, status, reason label, message fragment)
    "no token": (dict(events=ONE_OF_EACH, headers={}), 401, "unauthorized", "missing or unknown bearer token"),
    "wrong token": (dict(events=ONE_OF_EACH, headers={"Authorization": "Bearer not-the-token-0123456789"}),
                    401, "unauthorized", "missing or unknown bearer token"),
    "basic auth": (dict(events=ONE_OF_EACH, headers={"Authorization": f"Basic {EVENTS_TOKEN}"}),
                   401, "unauthorized", "Authorization: Bearer"),
    "text/plain": (dict(events=ONE_OF_EACH, ctype="text/plain"), 415, "unsupported_media_type",
                   "Content-Type 'text/plain' is not accepted; use one of application/json"),
    "form": (dict(body="a=1", ctype="application/x-www-form-urlencoded"), 415, "unsupported_media_type",
             "not accepted"),
    "too large": (dict(body=json.dumps({"events": ONE_OF_EACH * 40})), 413, "too_large",
                  "larger than events.max_body_bytes (20000 bytes)"),
    "too many json": (dict(events=[ONE_OF_EACH[7]] * 51), 413, "too_many_events",
                      "holds 51 events, more than events.max_events (50)"),
    "too many ndjson": (dict(body=_ndjson([ONE_OF_EACH[7]] * 51), ctype="application/x-ndjson"), 413,
                        "too_many_events", "more than events.max_events (50)"),
    "too many, some bad": (dict(events=[BAD_BATCH[1]] * 51), 413, "too_many_events", "split it"),
    "not json": (dict(body='{"events": [', ctype="application/json"), 400, "malformed",
                 "the body is not valid JSON: Input data was truncated"),
    "not a batch": (dict(body='{"evnts": []}'), 400, "invalid",
                    "the body is not an events batch: Object contains unknown field `evnts` at $"),
    "events not a list": (dict(body='{"events": {}}'), 400, "invalid", "Expected `array`, got `object` at $.events"),
    "bad events": (dict(events=BAD_BATCH), 400, "invalid", "9 invalid event(s); nothing was applied"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_bad_input_is_refused_whole_and_changes_nothing(events_exporter, case):
    kwargs, status, reason, fragment = REJECTIONS[case]
    client = await events_exporter(max_body_bytes=20_000, max_events=50)
    assert (await post(client, ONE_OF_EACH)).status == 200  # some state to keep
    before = await scrape(client)
    resp = await post(client, **kwargs)
    assert resp.status == status
    body = await resp.json()
    assert fragment in body["error"]
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if case == "bad events":
        assert body["problems"] == BAD_PROBLEMS
    after = await scrape(client)
    rejected = ("livekit_exporter_event_requests_rejected_total", frozenset({("reason", reason)}))
    assert after[rejected] == before.get(rejected, 0) + 1
    changed = {k for k in after.keys() | before.keys()
               if after.get(k) != before.get(k) and k[0].startswith(("voice_agent", "livekit_exporter_event"))}
    assert changed == {rejected}


async def test_ndjson_problems_name_the_line(events_exporter):
    client = await events_exporter()
    body = "\n".join([json.dumps(ONE_OF_EACH[7]), "", '{"type": "turn", "agent": "a", "e2e_latency_seconds": NaN}',
                      json.dumps(BAD_BATCH[6]), '{"type": "turn", "agent": "a", "e2e_latency_seconds": 1e999}'])
    resp = await post(client, body=body, ctype="application/x-ndjson")
    assert resp.status == 400
    assert (await resp.json())["problems"] == [
        {"index": 1, "path": "$", "reason": "not valid JSON: JSON is malformed: invalid character (byte 54)", "line": 3},
        {"index": 2, "path": "$.cached_tokens",
         "reason": "cached_tokens (9) exceeds input_tokens (5); input_tokens counts cached tokens too", "line": 4},
        {"index": 3, "path": "$.e2e_latency_seconds", "reason": "Number out of range", "line": 5},
    ]
    assert value(await scrape(client), "livekit_exporter_events_total", type="turn") == 0


async def test_no_token_configured_refuses_everything(events_exporter):
    client = await events_exporter(tokens=())
    resp = await post(client, ONE_OF_EACH)
    assert resp.status == 401
    assert "no token configured" in (await resp.json())["error"]


async def test_any_configured_token_is_accepted(events_exporter):
    from livekit_exporter.config import Secret

    client = await events_exporter(tokens=(Secret("old-token-0123456789"), Secret("new-token-0123456789")))
    for token in ("old-token-0123456789", "new-token-0123456789"):
        assert (await post(client, ONE_OF_EACH[:1], headers={"Authorization": f"Bearer {token}"})).status == 200


async def test_a_chunked_body_over_the_limit_is_refused(events_exporter):
    client = await events_exporter(max_body_bytes=1000)

    async def chunks():
        for _ in range(10):
            yield b" " * 200

    resp = await client.post("/v1/events", data=chunks(), headers={"Content-Type": "application/json", **AUTH})
    assert resp.status == 413


async def test_tokens_never_show_in_answers_logs_or_metrics(events_exporter, caplog):
    caplog.set_level(logging.DEBUG)
    client = await events_exporter()
    texts = []
    for headers in ({}, {"Authorization": "Bearer " + EVENTS_TOKEN[:-1]}, AUTH):
        texts.append(await (await post(client, ONE_OF_EACH[:2], headers=headers)).text())
    texts.append(await (await client.get("/metrics")).text())
    texts.append(caplog.text)
    assert not any(EVENTS_TOKEN in t or EVENTS_TOKEN[:-1] in t for t in texts)


# -- the sanity rule for timings ----------------------------------------------------------------


async def test_absurd_latencies_are_discarded_and_counted(events_exporter):
    client = await events_exporter()  # max_latency 30 s
    turn = {"type": "turn", "agent": A, "e2e_latency_seconds": 0.9, "transcription_delay_seconds": 150.0,
            "end_of_utterance_delay_seconds": 61.0}
    tool = {"type": "tool_call", "agent": A, "tool": "slow", "duration_seconds": 31}
    resp = await post(client, [turn, tool])
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == 2
    assert [(d["index"], d["path"]) for d in body["discarded"]] == [
        (0, "$.end_of_utterance_delay_seconds"), (0, "$.transcription_delay_seconds"), (1, "$.duration_seconds")]
    assert "150 s is above events.max_latency (30 s)" in body["discarded"][1]["reason"]
    s = await scrape(client)
    assert value(s, "voice_agent_turn_latency_seconds_count", agent=A) == 1
    assert value(s, "voice_agent_turns_total", agent=A, interrupted="false") == 1
    assert value(s, "voice_agent_transcription_delay_seconds_count", agent=A, provider="unknown", model="unknown") is None
    assert value(s, "voice_agent_end_of_utterance_delay_seconds_count", agent=A) is None
    assert value(s, "voice_agent_tool_call_duration_seconds_count", agent=A, tool="slow") is None
    d = "livekit_exporter_event_latencies_discarded_total"
    assert value(s, d, type="turn", field="transcription_delay_seconds") == 1
    assert value(s, d, type="turn", field="end_of_utterance_delay_seconds") == 1
    assert value(s, d, type="tool_call", field="duration_seconds") == 1


# -- cardinality --------------------------------------------------------------------------------


async def test_a_flood_of_agent_names_stays_bounded(events_exporter):
    client = await events_exporter(max_events=1000)
    n = 100_000
    for start in range(0, n, 1000):
        events = [{"type": "turn", "agent": f"agent-{i}", "e2e_latency_seconds": 0.5} for i in range(start, start + 1000)]
        resp = await post(client, events)
        assert resp.status == 200
    text = await (await client.get("/metrics")).text()
    s = samples(text)
    turn_series = [k for k in s if k[0] == "voice_agent_turns_total"]
    assert len(turn_series) == 51  # 50 admitted agents + __other__
    assert value(s, "voice_agent_turns_total", agent="__other__", interrupted="false") == n - 50
    assert sum(s[k] for k in turn_series) == n
    overflow = "livekit_exporter_label_overflow_total"
    assert value(s, overflow, metric="voice_agent_turns_total", label="agent") == n - 50
    assert value(s, overflow, metric="voice_agent_turn_latency_seconds", label="agent") == n - 50
    assert len(text.splitlines()) < 3000


# -- the active-calls TTL -----------------------------------------------------------------------


async def test_a_call_with_no_end_leaves_the_active_gauge_after_the_ttl(events_exporter):
    client = await events_exporter(call_ttl=600.0, dependency_ttl=60.0)
    pipeline = client.app[PIPELINE]
    now = [1000.0]
    pipeline.clock = lambda: now[0]
    start = {"type": "call_started", "agent": A, "direction": "inbound"}
    await post(client, [{**start, "call_id": "lost"}, {**start, "call_id": "fine"},
                        {**start, "call_id": "fine"},  # a retried delivery counts once in the gauge
                        {"type": "dependency_status", "agent": A, "dependency": "openai", "up": True}])
    await post(client, [{"type": "call_ended", "agent": A, "call_id": "fine", "direction": "inbound",
                         "outcome": "resolved"}])
    active = dict(agent=A, direction="inbound")
    assert value(await scrape(client), "voice_agent_calls_active", **active) == 1

    now[0] += 599
    pipeline.sweep()
    s = await scrape(client)
    assert value(s, "voice_agent_calls_active", **active) == 1
    assert value(s, "voice_agent_dependency_up", agent=A, dependency="openai") is None  # 60 s TTL passed

    now[0] += 2
    pipeline.sweep()
    s = await scrape(client)
    assert value(s, "voice_agent_calls_active", **active) == 0
    assert value(s, "voice_agent_calls_expired_total", **active) == 1

    # The end arriving late is counted, and the gauge does not go below zero.
    await post(client, [{"type": "call_ended", "agent": A, "call_id": "lost", "direction": "inbound",
                         "outcome": "resolved"}])
    s = await scrape(client)
    assert value(s, "voice_agent_calls_active", **active) == 0
    assert value(s, "voice_agent_calls_ended_total", **active, campaign="", outcome="resolved") == 2


async def test_the_app_sweeps_in_the_background(events_exporter):
    import asyncio

    client = await events_exporter(call_ttl=0.2)
    await post(client, [{"type": "call_started", "agent": A, "call_id": "x", "direction": "web"}])
    for _ in range(50):
        await asyncio.sleep(0.05)
        if value(await scrape(client), "voice_agent_calls_active", agent=A, direction="web") == 0:
            break
    assert value(await scrape(client), "voice_agent_calls_expired_total", agent=A, direction="web") == 1


# -- Prometheus naming ------------------------------------------------------------------------------


async def test_promtool_accepts_the_voice_agent_families(events_exporter, tmp_path):
    promtool = require_binary("promtool")
    client = await events_exporter(prices=PRICES)
    await post(client, ONE_OF_EACH + [{"type": "turn", "agent": A, "transcription_delay_seconds": 99.0}])
    await post(client, [], body="nope")
    text = await (await client.get("/metrics")).text()
    assert "voice_agent_estimated_cost_dollars_total" in text
    run = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "" and run.stderr.strip() == "", run.stdout + run.stderr
