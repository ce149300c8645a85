"""The events API against hostile or careless input, over real HTTP: every answer and every
remembered answer stays small, bad bytes and deep nesting get a 4xx (counted, one log line, no
traceback), and an object that repeats a key is refused, as webhooks refuse it."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import random
import tracemalloc

import pytest
from conftest import AUTH, EVENTS_TOKEN, samples, value
from test_events_api import ONE_OF_EACH, post, scrape

from livekit_exporter.events import ENTRY_OVERHEAD, HANDLER, IdempotencyCache
from livekit_exporter.events.decode import BadBatch, decode_json, decode_ndjson

A = "support-agent"
REJECTED = "livekit_exporter_event_requests_rejected_total"
STAGES = ("e2e_latency_seconds", "end_of_utterance_delay_seconds", "transcription_delay_seconds",
          "llm_ttft_seconds", "tts_ttfb_seconds")


async def refused(events_exporter, body: str, ctype: str) -> tuple:
    """Posts `body` to a new exporter: the answer is a 400. The test client and the answer's JSON."""
    client = await events_exporter()
    resp = await post(client, body=body, ctype=ctype)
    assert resp.status == 400
    return client, await resp.json()


def absurd_turns(n: int) -> list[dict]:
    """n turns whose five stage timings are all above events.max_latency (30 s)."""
    return [{"type": "turn", "agent": A, **{s: 31.0 + i % 100 + k for k, s in enumerate(STAGES)}} for i in range(n)]


def no_traceback(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text


def rejection_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "livekit_exporter.events" and r.getMessage() == "events request rejected"]


# -- item: memory of the Idempotency-Key cache, and the size of answers -------------------------


async def budgeted_exporter(events_exporter, budget: int) -> tuple:
    """An exporter whose Idempotency-Key cache keeps at most `budget` bytes (events.idempotency_max_bytes),
    and that cache."""
    client = await events_exporter(idempotency_max_bytes=budget)
    return client, client.server.app[HANDLER].idempotency


async def post_under_budget(client, cache, body: str, keys: list[str], budget: int) -> list[bytes]:
    """Posts `body` once with each Idempotency-Key: every answer is a 200, and after each the cache
    is within its budget. The answers' bodies."""
    answers = []
    for key in keys:
        resp = await post(client, body=body, headers={**AUTH, "Idempotency-Key": key})
        assert resp.status == 200
        answers.append(await resp.read())
        assert cache.currsize <= budget
    return answers


async def test_answers_and_the_idempotency_cache_stay_small_whatever_the_batch(events_exporter):
    """1,000 turns with every stage over max_latency used to get a ~1 MB answer, kept whole for
    the key's ttl: ~1 MB of memory per request. Now the answer lists 100 and counts the rest, and
    the cache holds at most idempotency_max_bytes."""
    budget = 1 << 18
    client, cache = await budgeted_exporter(events_exporter, budget)
    body = json.dumps({"events": absurd_turns(1000)})
    assert len(body) > 160_000
    answers = await post_under_budget(client, cache, body, [f"batch-{i}" for i in range(40)], budget)
    first = json.loads(answers[0])
    assert first["accepted"] == 1000
    assert len(first["discarded"]) == 100
    assert first["omitted"]["count"] == 4900
    assert sum(first["omitted"]["by_path"].values()) == 4900
    assert first["omitted"]["by_path"]["$.events[*].tts_ttfb_seconds"] == 980  # 20 turns listed
    assert max(map(len, answers)) < 32_000
    # Kept compressed: a long answer takes far less than its text.
    assert 0 < cache.currsize <= len(cache) * (ENTRY_OVERHEAD + 2000)
    assert len(cache) == 40

    # A retry gets the answer it got the first time, and is not applied again.
    again = await post(client, body=body, headers={**AUTH, "Idempotency-Key": "batch-39"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == answers[-1]
    s = await scrape(client)
    assert value(s, "livekit_exporter_events_total", type="turn") == 40_000
    assert value(s, "livekit_exporter_event_latencies_discarded_total", type="turn", field="llm_ttft_seconds") == 40_000


async def test_the_oldest_answers_make_room_within_the_byte_budget(events_exporter):
    budget = 1 << 16
    client, cache = await budgeted_exporter(events_exporter, budget)
    await post_under_budget(client, cache, json.dumps({"events": absurd_turns(200)}), [f"k{i}" for i in range(200)], budget)
    assert 10 < len(cache) < 200  # the budget, not the count, bounds it
    assert cache.get((0, "k0")) is None and cache.get((0, "k199")) is not None


def test_the_idempotency_cache_counts_at_least_the_memory_it_takes():
    """getsizeof (ENTRY_OVERHEAD + the kept body) is an upper bound of what an entry really takes,
    with the longest keys; so currsize <= max_bytes bounds the memory."""
    gc.collect()
    cache = IdempotencyCache(ttl=600, max_entries=10**9, max_bytes=1 << 40)
    answers = [json.dumps({"accepted": i, "discarded": []}).encode() for i in range(5000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, answer in enumerate(answers):
            key = f"{i:06d}".ljust(255, "k")
            cache.put((0, key), hashlib.blake2b(answer, digest_size=16).digest(), answer)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= cache.currsize, (used / len(cache), cache.currsize / len(cache))


def test_the_idempotency_cache_still_holds_at_most_max_entries():
    now = [0.0]
    cache = IdempotencyCache(ttl=60, max_entries=3, clock=lambda: now[0], max_bytes=1 << 20)
    for i in range(5):
        cache.put((0, f"k{i}"), b"d", b"{}")
    assert len(cache) == 3 and cache.get((0, "k1")) is None and cache.get((0, "k4")) is not None


async def test_a_400_lists_at_most_max_listed_problems(events_exporter):
    client = await events_exporter(max_listed_problems=10)
    bad = [{"type": "turn", "agent": A, "e2e_latency_seconds": -1}] * 300 + [{"type": "teleport", "agent": A}] * 5
    resp = await post(client, bad)
    assert resp.status == 400
    answer = await resp.json()
    assert len(answer["problems"]) == 10
    assert answer["omitted"] == {"count": 295, "by_path": {"$.events[*].e2e_latency_seconds": 290,
                                                           "$.events[*].type": 5}}
    assert answer["error"].startswith("305 invalid event(s); nothing was applied; the first 10 problems are listed")


async def test_ndjson_discarded_timings_are_summarised_too(events_exporter):
    client = await events_exporter(max_listed_problems=3)
    body = "\n".join(json.dumps(t) for t in absurd_turns(2))
    answer = await (await post(client, body=body, ctype="application/x-ndjson")).json()
    assert [(d["line"], d["path"]) for d in answer["discarded"]] == [
        (1, "$.e2e_latency_seconds"), (1, "$.end_of_utterance_delay_seconds"), (1, "$.transcription_delay_seconds")]
    assert answer["omitted"] == {"count": 7, "by_path": {
        "$.llm_ttft_seconds": 2, "$.tts_ttfb_seconds": 2, "$.e2e_latency_seconds": 1,
        "$.end_of_utterance_delay_seconds": 1, "$.transcription_delay_seconds": 1}}


async def test_a_reason_quotes_at_most_a_little_of_what_was_sent(events_exporter):
    client = await events_exporter()
    for event in ({"type": "turn", "agent": A, "x" * 50_000: 1}, {"type": "y" * 50_000, "agent": A},
                  {"type": "call_started", "agent": A, "call_id": "c", "direction": "z" * 50_000}):
        resp = await post(client, [event])
        assert resp.status == 400
        assert len(await resp.read()) < 1500


# -- item: 4xx, not 500, for what no parser should choke on ----------------------------------------


@pytest.mark.parametrize("body, ctype, reason", [
    ('{"events": ' + "[" * 1000 + "]" * 1000 + "}", "application/json", "malformed"),
    ('{"events": [{"type": "turn", "agent": ' + "[" * 5000 + "]" * 5000 + "}]}", "application/json", "malformed"),
    ('{"agent": ' + "[" * 5000 + "]" * 5000 + ', "type": "turn"}', "application/x-ndjson", "invalid"),
], ids=["json batch", "json field", "ndjson line"])
async def test_deep_nesting_is_a_400(events_exporter, caplog, body, ctype, reason):
    caplog.set_level(logging.INFO)
    client, answer = await refused(events_exporter, body, ctype)
    assert "nested too deeply" in json.dumps(answer)
    assert value(await scrape(client), REJECTED, reason=reason) == 1
    assert len(rejection_lines(caplog)) == 1
    no_traceback(caplog)


async def raw_request(client, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (aiohttp's client would not send non-UTF-8 headers)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


BATCH = json.dumps({"events": ONE_OF_EACH[:1]}).encode()
TOKEN = EVENTS_TOKEN.encode()


@pytest.mark.parametrize("headers, status, reason", [
    (b"Authorization: Bearer \xff\xfe" + TOKEN + b"\r\nContent-Type: application/json\r\n", 401, "unauthorized"),
    (b"Authorization: Bearer " + TOKEN[:-1] + b"\xe9\r\nContent-Type: application/json\r\n", 401, "unauthorized"),
    (b"Authorization: \xc3(\r\nContent-Type: application/json\r\n", 401, "unauthorized"),
    (b"Authorization: Bearer " + TOKEN + b"\r\nContent-Type: application/js\xffon\r\n", 415, "unsupported_media_type"),
    (b"Authorization: Bearer " + TOKEN + b"\r\nContent-Type: application/json\r\nIdempotency-Key: k\xff\r\n", 400,
     "invalid"),
], ids=["auth garbage", "auth latin-1", "auth scheme", "content type", "idempotency key"])
async def test_bytes_that_are_not_utf8_in_headers_are_a_4xx(events_exporter, caplog, headers, status, reason):
    caplog.set_level(logging.INFO)
    client = await events_exporter()
    got, body = await raw_request(client, b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + headers, BATCH)
    assert got == status, body
    assert json.loads(body)["error"]
    s = await scrape(client)
    assert value(s, REJECTED, reason=reason) == 1
    assert value(s, "livekit_exporter_events_total", type="call_started") == 0
    assert len(rejection_lines(caplog)) == 1
    no_traceback(caplog)


async def test_the_token_in_a_utf8_header_still_works(events_exporter):
    client = await events_exporter()
    got, body = await raw_request(
        client, b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN
        + b"\r\nContent-Type: application/json\r\n", BATCH)
    assert got == 200, body


async def test_rejections_are_each_counted_and_logged_a_few_times_a_minute(events_exporter, caplog):
    caplog.set_level(logging.INFO)
    client = await events_exporter()
    for _ in range(20):
        assert (await post(client, ONE_OF_EACH[:1], headers={"Authorization": "Bearer nope-nope-nope-nope"})).status == 401
    assert value(await scrape(client), REJECTED, reason="unauthorized") == 20
    lines = rejection_lines(caplog)
    assert len(lines) == 5 and all(r.levelno == logging.WARNING for r in lines)
    assert lines[0].reason == "unauthorized" and lines[0].status == 401
    assert "nope" not in caplog.text


# -- item: an object that repeats a key is refused ------------------------------------------------


REPEATS = {
    # name: (body, content type, problems [(index, path, line)])
    "an event's field": ('{"events": [{"type": "turn", "agent": "a", "agent": "b"}]}', "application/json",
                         [(0, "$.events[0].agent", None)]),
    "the type": ('{"events": [{"type": "turn", "agent": "a"}, {"type": "turn", "agent": "a", "type": "stt"}]}',
                 "application/json", [(1, "$.events[1].type", None), (1, "$.events[1].type", None)]),
    "the events key": ('{"events": [{"type": "turn", "agent": "a"}], "events": []}', "application/json",
                       [(None, "$.events", None)]),
    "with escaped quotes": ('{"events": [{"type": "turn", "agent": "a\\"b", "e2e_latency_seconds": 1, '
                            '"e2e_latency_seconds": 2}]}', "application/json", [(0, "$.events[0].e2e_latency_seconds", None)]),
    "with a null": ('{"events": [{"type": "turn", "agent": "a", "stt_model": null, "stt_model": "nova"}]}',
                    "application/json", [(0, "$.events[0].stt_model", None)]),
    "next to a bad event": ('{"events": [{"type": "turn", "agent": ""}, {"type": "turn", "agent": "a", "agent": "a"}]}',
                            "application/json", [(0, "$.events[0].agent", None), (1, "$.events[1].agent", None)]),
    "ndjson": ('{"type": "turn", "agent": "a"}\n\n{"type": "turn", "agent": "a", "interrupted": true, '
               '"interrupted": false}\n', "application/x-ndjson", [(1, "$.interrupted", 3)]),
}


@pytest.mark.parametrize("case", list(REPEATS))
async def test_an_object_that_repeats_a_key_is_refused(events_exporter, caplog, case):
    body, ctype, expected = REPEATS[case]
    client, answer = await refused(events_exporter, body, ctype)
    assert [(p["index"], p["path"], p.get("line")) for p in answer["problems"]] == expected
    repeat = [p for p in answer["problems"] if "more than once" in p["reason"]]
    assert repeat and "send each key once" in repeat[0]["reason"]
    s = await scrape(client)
    reason = "invalid" if case in ("next to a bad event", "the type") else "duplicate_key"
    assert value(s, REJECTED, reason=reason) == 1
    assert value(s, "livekit_exporter_events_total", type="turn") == 0
    no_traceback(caplog)


@pytest.mark.parametrize("body", [
    '{"events": [{"type": "turn", "agent": "say \\"hi\\"", "call_id": "c\\":1"}]}',
    '{"events": [{"type": "turn", "agent": "a", "stt_model": null, "interrupted": false}, '
    '{"type": "call_started", "agent": "a", "call_id": "c", "direction": "inbound", "campaign": ""}]}',
    '{"events": [{"type": "call_started", "agent": "a", "call_id": "\\u0022:", "direction": "inbound", "campaign": ""}]}',
    '  {  "events"  :  [ { "type" : "turn" , "agent" : "a" } ]  }  ',
], ids=["escaped quotes", "explicit defaults", "unicode escapes", "spaces"])
async def test_no_repeat_is_seen_where_there_is_none(events_exporter, body):
    client = await events_exporter()
    resp = await post(client, body=body)
    assert resp.status == 200, await resp.text()


def reference_repeats(text: str) -> bool:
    """Whether any object in a JSON text repeats a key, by the json module."""
    found = []

    def hook(pairs):
        if len({k for k, _ in pairs}) != len(pairs):
            found.append(True)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return bool(found)


def test_the_fast_check_agrees_with_a_full_parse():
    """Random batches of valid events, written in the ways clients write them (defaults and nulls
    spelt out, escaped quotes, spaces), with a key repeated now and then: refused exactly when the
    json module sees a repeat, for JSON and NDJSON."""
    rng = random.Random(7)
    nasty = ['a"b', 'q":', "\\", 'x\\"', "plain", "\u00e9"]
    for _ in range(400):
        events = []
        for _ in range(rng.randint(1, 6)):
            event = dict(rng.choice(ONE_OF_EACH))
            if rng.random() < 0.3 and "agent" in event:
                event["agent"] = rng.choice(nasty)
            if rng.random() < 0.3 and event["type"] == "turn":
                event.update(stt_model=None, interrupted=event.get("interrupted", False))
            events.append(event)
        texts = [json.dumps(e, separators=rng.choice([(",", ":"), (", ", ": "), (" , ", " : ")])) for e in events]
        if rng.random() < 0.4:  # a key written twice, with its own value or another
            i = rng.randrange(len(texts))
            key = rng.choice(list(events[i]))
            again = json.dumps(rng.choice(nasty) if key == "agent" else events[i][key])
            texts[i] = texts[i][:-1] + f', "{key}": {again}}}'
        batch = '{"events": [' + ", ".join(texts) + "]}"
        expected = reference_repeats(batch)
        for decode, text in ((decode_json, batch), (decode_ndjson, "\n".join(texts))):
            try:
                decode(text.encode(), 1000)
                refused = False
            except BadBatch as e:
                assert e.reason == "duplicate_key", (text, e.problems)
                refused = True
            assert refused == expected, text


# -- item: a rate limit per token ---------------------------------------------------------------


async def test_a_token_over_its_rate_gets_429_and_the_others_do_not(events_exporter, caplog):
    from livekit_exporter.config import Secret

    caplog.set_level(logging.INFO)
    other = "another-events-token-0123456789"
    client = await events_exporter(tokens=(Secret(EVENTS_TOKEN), Secret(other)), rate_limit=0.01,
                                   rate_limit_burst=3)  # one request per 100 s after a burst of 3
    statuses = [(await post(client, ONE_OF_EACH[:1])).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    for _ in range(4):
        resp = await post(client, ONE_OF_EACH[:1], headers={**AUTH, "Idempotency-Key": "k-1"})
        assert resp.status == 429
        assert 90 <= int(resp.headers["Retry-After"]) <= 100
        assert "events.rate_limit (0.01) requests a second" in (await resp.json())["error"]
    assert (await post(client, ONE_OF_EACH[:1], headers={"Authorization": f"Bearer {other}"})).status == 200
    s = await scrape(client)
    assert value(s, REJECTED, reason="rate_limited") == 4
    assert value(s, "livekit_exporter_events_total", type="call_started") == 4
    assert len(rejection_lines(caplog)) == 4
    # A refused request is not remembered under its key: nothing was applied.
    assert client.server.app[HANDLER].idempotency.get((0, "k-1")) is None
    no_traceback(caplog)


async def test_no_rate_limit_by_default(events_exporter):
    client = await events_exporter()
    for _ in range(50):
        assert (await post(client, ONE_OF_EACH[:1])).status == 200


def test_the_bucket_refills_at_the_rate_up_to_the_burst():
    from livekit_exporter.events import RateLimiter

    now = [0.0]
    limiter = RateLimiter(rate=2, burst=4, clients=2, clock=lambda: now[0])
    assert [limiter.wait(0) for _ in range(4)] == [0, 0, 0, 0]
    assert limiter.wait(0) == pytest.approx(0.5)
    assert limiter.wait(1) == 0  # each token its own bucket
    now[0] = 0.5
    assert limiter.wait(0) == 0 and limiter.wait(0) == pytest.approx(0.5)
    now[0] = 100.0  # a quiet spell refills no more than the burst
    assert [limiter.wait(0) for _ in range(5)][-2:] == [0, pytest.approx(0.5)]


async def test_summarised_answers_match_the_openapi_document(events_exporter):
    from importlib import resources

    import jsonschema
    import yaml

    doc = yaml.safe_load(resources.files("livekit_exporter").joinpath("schemas/openapi.yaml").read_text())

    def check(answer: dict, schema: str) -> None:
        wrapper = {"$ref": f"#/components/schemas/{schema}", "components": doc["components"]}
        jsonschema.Draft202012Validator(wrapper).validate(answer)

    client = await events_exporter(max_listed_problems=5, rate_limit=0.01, rate_limit_burst=2)
    accepted = await (await post(client, absurd_turns(3))).json()
    assert accepted["omitted"]["count"] == 10
    check(accepted, "Accepted")
    refused = await (await post(client, [{"type": "turn", "agent": ""}] * 8)).json()
    assert refused["omitted"]["count"] == 3
    check(refused, "Error")
    limited = await post(client, ONE_OF_EACH[:1])
    assert limited.status == 429
    check(await limited.json(), "Error")
