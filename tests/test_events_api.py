"""The events API over real HTTP: each event type's metrics, every rejection, the guard, the TTL."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
from conftest import AUTH, EVENTS_TOKEN, get_text, require_binary, samples, value

from livekit_exporter.config import LabelsConfig, Price
from livekit_exporter.events import PIPELINE
from livekit_exporter.events.pipeline import CALL_BUCKETS, REQUEST_BUCKETS, STAGE_BUCKETS, TURN_BUCKETS

PRICES = (
    Price("openai", "gpt-4o-mini", usd_per_million_input_tokens=0.15, usd_per_million_output_tokens=0.6,
          usd_per_million_cached_tokens=0.075),
    Price("deepgram", usd_per_stt_audio_minute=0.0077),
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
    return samples(await get_text(client))


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
    assert buckets(s, "voice_agent_llm_request_duration_seconds", REQUEST_BUCKETS, **llm) == \
        cumulative(REQUEST_BUCKETS, 1.1)
    assert buckets(s, "voice_agent_tool_call_duration_seconds", REQUEST_BUCKETS, agent=A, tool="lookup_order") == \
        cumulative(REQUEST_BUCKETS, 0.45)

    assert value(s, "voice_agent_llm_tokens_total", **llm, type="input") == 1000
    assert value(s, "voice_agent_llm_tokens_total", **llm, type="output") == 200
    assert value(s, "voice_agent_llm_tokens_total", **llm, type="cached") == 400
    assert value(s, "voice_agent_stt_audio_seconds_total", **stt) == 90
    assert value(s, "voice_agent_tts_characters_total", agent=A, provider="elevenlabs", model="flash") == 500
    assert value(s, "voice_agent_errors_total", agent=A, component="llm", type="rate_limited",
                 recoverable="false") == 1

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
    {"type": "turn", "agent": A, "interrupted": True, "interruptions": 0},
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
    {"index": 10, "path": "$.events[10].interruptions",
     "reason": "interruptions is 0 but interrupted is true; a turn the user cut short had at least 1 "
               "interruption (leave interruptions out to count 1)"},
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
    "bad events": (dict(events=BAD_BATCH), 400, "invalid", "10 invalid event(s); nothing was applied"),
    "NaN": (dict(body='{"events": [{"type": "turn", "agent": "a", "e2e_latency_seconds": NaN}]}'), 400, "malformed",
            "NaN/Infinity are not JSON; send null for not measured (byte 66)"),
    "-Infinity": (dict(body='{"events": [{"type": "turn", "agent": "a", "llm_ttft_seconds": -Infinity}]}'), 400,
                  "malformed", "NaN/Infinity are not JSON; send null for not measured"),
    "bad idempotency key": (dict(events=ONE_OF_EACH, headers={**AUTH, "Idempotency-Key": "a b"}), 400, "invalid",
                            "Idempotency-Key header must be 1 to 255 visible ASCII characters"),
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
        {"index": 1, "path": "$", "reason": "not valid JSON: NaN/Infinity are not JSON; send null for not measured "
                                            "(byte 54)", "line": 3},
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
    resp = await post(client, [ONE_OF_EACH[0], turn])
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == 2
    # The full path, as in a 400's problems.
    assert [(d["index"], d["path"]) for d in body["discarded"]] == [
        (1, "$.events[1].end_of_utterance_delay_seconds"), (1, "$.events[1].transcription_delay_seconds")]
    assert "150 s is above events.max_latency (30 s)" in body["discarded"][1]["reason"]
    s = await scrape(client)
    assert value(s, "voice_agent_turn_latency_seconds_count", agent=A) == 1
    assert value(s, "voice_agent_turns_total", agent=A, interrupted="false") == 1
    assert value(s, "voice_agent_transcription_delay_seconds_count", agent=A, provider="unknown", model="unknown") is None
    assert value(s, "voice_agent_end_of_utterance_delay_seconds_count", agent=A) is None
    for field in ("transcription_delay_seconds", "end_of_utterance_delay_seconds"):
        assert value(s, "livekit_exporter_event_latencies_discarded_total", type="turn", field=field) == 1


async def test_ndjson_discarded_timings_name_the_line(events_exporter):
    client = await events_exporter()
    body = "\n".join([json.dumps(ONE_OF_EACH[0]), "", json.dumps({"type": "turn", "agent": A, "llm_ttft_seconds": 45})])
    resp = await post(client, body=body, ctype="application/x-ndjson")
    assert resp.status == 200
    [d] = (await resp.json())["discarded"]
    assert (d["index"], d["path"], d["line"]) == (1, "$.llm_ttft_seconds", 3)


async def test_long_tool_calls_and_llm_requests_are_observed(events_exporter):
    """events.max_latency is for the turn stages livekit-agents' timestamp bugs hit, not for a
    tool that waits two minutes on a backend or a long LLM request."""
    client = await events_exporter(max_latency=30.0)
    resp = await post(client, [
        {"type": "tool_call", "agent": A, "tool": "slow", "duration_seconds": 95},
        {"type": "llm", "agent": A, "provider": "openai", "model": "o3", "output_tokens": 9000, "duration_seconds": 75.5},
    ])
    assert (await resp.json())["discarded"] == []
    s = await scrape(client)
    assert value(s, "voice_agent_tool_call_duration_seconds_count", agent=A, tool="slow") == 1
    assert value(s, "voice_agent_tool_call_duration_seconds_sum", agent=A, tool="slow") == 95
    assert buckets(s, "voice_agent_tool_call_duration_seconds", REQUEST_BUCKETS, agent=A, tool="slow") == \
        cumulative(REQUEST_BUCKETS, 95)
    assert value(s, "voice_agent_llm_request_duration_seconds_sum", agent=A, provider="openai", model="o3") == 75.5


async def test_a_utf8_byte_order_mark_is_ignored(events_exporter):
    client = await events_exporter()
    bom = b"\xef\xbb\xbf"
    for body, ctype in ((bom + json.dumps({"events": ONE_OF_EACH[:1]}).encode(), "application/json"),
                        (bom + json.dumps(ONE_OF_EACH[2]).encode() + b"\n", "application/x-ndjson")):
        resp = await post(client, body=body, ctype=ctype)
        assert resp.status == 200, await resp.text()
    assert value(await scrape(client), "livekit_exporter_events_total", type="call_started") == 2


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

    async def scrape_after(seconds: float) -> dict:
        """The scrape once the pipeline's clock has moved on `seconds` and its sweep has run."""
        now[0] += seconds
        pipeline.sweep()
        return await scrape(client)

    s = await scrape_after(599)
    assert value(s, "voice_agent_calls_active", **active) == 1
    assert value(s, "voice_agent_dependency_up", agent=A, dependency="openai") is None  # 60 s TTL passed

    s = await scrape_after(2)
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


# -- cost: per-component prices, case-insensitive lookup, unpriced usage -------------------------


async def test_each_component_is_charged_its_own_price(events_exporter):
    """An STT price per audio minute is never charged on TTS audio (and the reverse)."""
    prices = (Price("deepgram", usd_per_stt_audio_minute=0.0077, usd_per_tts_audio_minute=0.015),
              Price("openai", usd_per_stt_audio_minute=0.006))
    client = await events_exporter(prices=prices)
    resp = await post(client, [
        {"type": "stt", "agent": A, "provider": "deepgram", "model": "nova-3", "audio_seconds": 60},
        {"type": "tts", "agent": A, "provider": "deepgram", "model": "aura-2", "characters": 300, "audio_seconds": 120},
        {"type": "tts", "agent": A, "provider": "openai", "model": "tts-1", "characters": 1000, "audio_seconds": 60},
    ])
    assert resp.status == 200
    s = await scrape(client)
    cost = "voice_agent_estimated_cost_dollars_total"
    assert value(s, cost, agent=A, component="stt", provider="deepgram", model="nova-3") == pytest.approx(0.0077)
    assert value(s, cost, agent=A, component="tts", provider="deepgram", model="aura-2") == pytest.approx(2 * 0.015)
    # openai's entry prices STT only: its TTS is unpriced, not charged the STT rate.
    assert value(s, cost, agent=A, component="tts", provider="openai", model="tts-1") is None
    assert value(s, "livekit_exporter_unpriced_usage_events_total", component="tts", provider="openai",
                 model="tts-1") == 1


async def test_unpriced_usage_is_counted_and_warned_about_once(events_exporter, caplog):
    client = await events_exporter(prices=(Price("OpenAI", "GPT-4o-mini", usd_per_million_input_tokens=0.15,
                                                 usd_per_million_output_tokens=0.6),))
    llm = {"type": "llm", "agent": A, "input_tokens": 1000, "output_tokens": 100}
    resp = await post(client, [
        {**llm, "provider": "openai", "model": "gpt-4o-mini"},  # priced: the lookup ignores case
        {**llm, "provider": "anthropic", "model": "claude-haiku-4-5"},
        {**llm, "provider": "anthropic", "model": "claude-haiku-4-5"},
    ])
    assert resp.status == 200
    s = await scrape(client)
    assert value(s, "voice_agent_estimated_cost_dollars_total", agent=A, component="llm", provider="openai",
                 model="gpt-4o-mini") == pytest.approx((1000 * 0.15 + 100 * 0.6) / 1e6)
    for provider, model, unpriced in (("anthropic", "claude-haiku-4-5", 2), ("openai", "gpt-4o-mini", None)):
        assert value(s, "livekit_exporter_unpriced_usage_events_total", component="llm", provider=provider,
                     model=model) == unpriced, provider
    warnings = [r for r in caplog.records if "no price in events.prices" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].provider == "anthropic"


# -- idempotency ----------------------------------------------------------------------------------


async def test_a_retried_batch_is_applied_once(events_exporter):
    client = await events_exporter()
    batch = [ONE_OF_EACH[7], ONE_OF_EACH[12], {"type": "turn", "agent": A, "llm_ttft_seconds": 40}]
    headers = {**AUTH, "Idempotency-Key": "batch-7f3a"}
    first = await post(client, batch, headers=headers)
    again = await post(client, batch, headers=headers)
    assert first.status == again.status == 200
    assert await again.read() == await first.read()
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    s = await scrape(client)
    assert value(s, "voice_agent_turns_total", agent=A, interrupted="true") == 1
    assert value(s, "voice_agent_tool_call_duration_seconds_count", agent=A, tool="lookup_order") == 1
    assert value(s, "livekit_exporter_events_total", type="turn") == 2

    # Another batch under the same key: refused, nothing applied.
    resp = await post(client, [ONE_OF_EACH[12]], headers=headers)
    assert resp.status == 422
    assert "already used for a different batch" in (await resp.json())["error"]
    assert value(await scrape(client), "voice_agent_tool_call_duration_seconds_count", agent=A,
                 tool="lookup_order") == 1
    # Without a key, or with a new one, a batch is applied.
    await post(client, [ONE_OF_EACH[12]])
    await post(client, [ONE_OF_EACH[12]], headers={**AUTH, "Idempotency-Key": "batch-7f3b"})
    assert value(await scrape(client), "voice_agent_tool_call_duration_seconds_count", agent=A,
                 tool="lookup_order") == 3


async def test_idempotency_keys_are_remembered_for_a_bounded_time_and_number():
    from livekit_exporter.events import IdempotencyCache

    now = [0.0]
    cache = IdempotencyCache(ttl=60, max_entries=3, clock=lambda: now[0])
    for i in range(5):
        cache.put((0, f"k{i}"), b"d", b"{}")
    assert len(cache) == 3 and cache.get((0, "k0")) is None and cache.get((0, "k4")) is not None
    assert cache.get((1, "k4")) is None  # another token's keys are its own
    now[0] = 61
    assert cache.get((0, "k4")) is None and len(cache) == 0


# -- gauges under the cardinality guard -----------------------------------------------------------


async def test_report_gauges_never_write_into_other(events_exporter, make_config, aiohttp_client):
    """A dependency report over the guard's cap is dropped, not set on __other__ (where one "up"
    would hide another dependency's outage); expired dependencies free their slot."""
    from dataclasses import replace

    from livekit_exporter.config import EventsConfig, Secret
    from livekit_exporter.server import build_app

    config = replace(make_config(), labels=LabelsConfig(max_values=2),
                     events=EventsConfig(tokens=(Secret(EVENTS_TOKEN),), dependency_ttl=60.0, campaign_ttl=60.0))
    client = await aiohttp_client(build_app(config))
    pipeline = client.app[PIPELINE]
    now = [0.0]
    pipeline.clock = lambda: now[0]

    def dep(name, up):
        return {"type": "dependency_status", "agent": A, "dependency": name, "up": up}

    await post(client, [dep("d1", True), dep("d2", True)])
    await post(client, [dep("db", False), dep("redis", True)])  # over the cap of 2: dropped
    s = await scrape(client)
    assert value(s, "voice_agent_dependency_up", agent=A, dependency="__other__") is None
    assert value(s, "livekit_exporter_label_overflow_total", metric="voice_agent_dependency_up",
                 label="dependency") == 2

    now[0] = 61
    pipeline.sweep()  # d1 and d2 expire and give their slots back
    await post(client, [dep("db", False), dep("redis", True)])
    s = await scrape(client)
    assert value(s, "voice_agent_dependency_up", agent=A, dependency="db") == 0
    assert value(s, "voice_agent_dependency_up", agent=A, dependency="redis") == 1
    assert value(s, "voice_agent_dependency_up", agent=A, dependency="__other__") is None
    assert value(s, "voice_agent_dependency_up", agent=A, dependency="d1") is None

    # Queue depths and campaigns over the cap are dropped too.
    await post(client, [{"type": "campaign_status", "campaign": c, "running": True} for c in ("c1", "c2", "c3")]
               + [{"type": "calls_queued", "agent": A, "campaign": c, "queued": 5} for c in ("c1", "c2", "c3")])
    s = await scrape(client)
    assert value(s, "voice_agent_campaign_running", campaign="__other__") is None
    assert value(s, "voice_agent_calls_queued", agent=A, campaign="__other__") is None
    assert value(s, "voice_agent_campaign_running", campaign="c2") == 1


async def test_campaign_reports_expire(events_exporter):
    client = await events_exporter(campaign_ttl=900.0)
    pipeline = client.app[PIPELINE]
    now = [0.0]
    pipeline.clock = lambda: now[0]
    await post(client, [{"type": "campaign_status", "campaign": "spring", "running": True},
                        {"type": "calls_queued", "agent": A, "campaign": "spring", "queued": 12}])
    now[0] = 600
    await post(client, [{"type": "campaign_status", "campaign": "spring", "running": True}])  # re-reported
    now[0] = 901
    pipeline.sweep()
    s = await scrape(client)
    assert value(s, "voice_agent_campaign_running", campaign="spring") == 1
    assert value(s, "voice_agent_calls_queued", agent=A, campaign="spring") is None  # last report at 0
    now[0] = 1501
    pipeline.sweep()
    assert value(await scrape(client), "voice_agent_campaign_running", campaign="spring") is None


async def test_an_agent_is_itself_or_other_in_every_voice_agent_metric(events_exporter, make_config, aiohttp_client):
    from dataclasses import replace

    from livekit_exporter.config import EventsConfig, Secret
    from livekit_exporter.server import build_app

    client = await aiohttp_client(build_app(replace(make_config(), labels=LabelsConfig(max_values=2),
                                                     events=EventsConfig(tokens=(Secret(EVENTS_TOKEN),)))))
    # a1, a2 fill the agent slots through turns; a3 then has a turn, and a tool call.
    await post(client, [{"type": "turn", "agent": a} for a in ("a1", "a2", "a3")])
    await post(client, [{"type": "tool_call", "agent": a, "tool": "t", "duration_seconds": 1} for a in ("a3", "a1")])
    s = await scrape(client)
    assert value(s, "voice_agent_tool_call_duration_seconds_count", agent="a3", tool="t") is None
    for agent in ("__other__", "a1"):
        assert value(s, "voice_agent_tool_call_duration_seconds_count", agent=agent, tool="t") == 1
    for metric in ("voice_agent_turns_total", "voice_agent_tool_call_duration_seconds"):
        assert value(s, "livekit_exporter_label_overflow_total", metric=metric, label="agent") == 1


async def test_recoverable_errors_are_labelled(events_exporter):
    client = await events_exporter()
    err = {"type": "error", "agent": A, "component": "tts", "error_type": "APITimeoutError"}
    await post(client, [err, {**err, "recoverable": True}, {**err, "recoverable": True}])
    s = await scrape(client)
    labels = dict(agent=A, component="tts", type="APITimeoutError")
    assert value(s, "voice_agent_errors_total", **labels, recoverable="false") == 1
    assert value(s, "voice_agent_errors_total", **labels, recoverable="true") == 2
