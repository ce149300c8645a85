"""The push client against the real exporter over loopback: batching, retries, drops, flushing,
and an agent loop that is never blocked when the exporter is down or hangs."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import EVENTS_TOKEN, free_port, samples, scrape_samples, value

from livekit_exporter.client import EventsClient
from livekit_exporter.events import model as m
from livekit_exporter.server import build_app


def turn(i: int = 0) -> m.Turn:
    return m.Turn(agent="a", e2e_latency_seconds=0.5 + i % 3 / 10)


async def send_turns(server: TestServer, count: int, **options: Any) -> EventsClient:
    """`count` turns through an EventsClient(**options) to the test server, flushed (within 5 s) and
    closed: the client, for its stats."""
    async with EventsClient(str(server.make_url("/")), EVENTS_TOKEN, **options) as client:
        for i in range(count):
            client.emit(turn(i))
        assert await client.flush(5)
    return client


async def events_url(aiohttp_server, handler) -> str:
    """The base URL of a test server whose POST /v1/events is answered by `handler` (a stand-in
    for an exporter of another version, or one behind a proxy)."""
    app = web.Application()
    app.router.add_post("/v1/events", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/"))


class LoopLag:
    """Measures how late a 5 ms ticker wakes up: the agent loop's responsiveness."""

    def __init__(self, period: float = 0.005):
        self.period, self.worst, self._task = period, 0.0, None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.perf_counter() - t - self.period)

    async def __aenter__(self) -> "LoopLag":
        # A full GC pass over the whole test session's heap takes 100-200 ms: start from a clean
        # slate so the ticker measures the client, not garbage earlier tests left behind.
        gc.collect()
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()


async def test_batches_reach_the_exporter(events_config, aiohttp_server, aiohttp_client):
    server = await aiohttp_server(build_app(events_config()))
    async with EventsClient(str(server.make_url("/")), EVENTS_TOKEN, batch_size=100) as client:
        for i in range(250):
            assert client.emit(turn(i))
        assert await client.flush(5)
        assert client.stats.sent == 250 and client.queued == 0
    text = await (await (await aiohttp_client(server)).get("/metrics")).text()
    assert value(samples(text), "voice_agent_turns_total", agent="a", interrupted="false") == 250
    assert value(samples(text), "voice_agent_turn_latency_seconds_count", agent="a") == 250


async def test_close_flushes_what_is_queued(events_config, aiohttp_server):
    server = await aiohttp_server(build_app(events_config()))
    client = EventsClient(str(server.make_url("/")), EVENTS_TOKEN, flush_interval=60)
    for i in range(10):
        client.emit(turn(i))
    await client.aclose()
    assert client.stats.sent == 10


async def test_an_exporter_that_comes_up_late_gets_the_events(events_config):
    port = free_port()
    client = EventsClient(f"http://127.0.0.1:{port}", EVENTS_TOKEN, flush_interval=0.01, backoff=0.05,
                          max_retries=8)
    for i in range(5):
        client.emit(turn(i))
    await asyncio.sleep(0.15)  # connection refused, retrying
    assert client.stats.retries >= 1 and client.stats.sent == 0
    server = TestServer(build_app(events_config()), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        assert await client.flush(10)
        assert client.stats.sent == 5
    finally:
        await client.aclose()
        await server.close()


async def test_5xx_is_retried_and_4xx_is_dropped(aiohttp_server):
    answers = [503, 500, 200, 400]
    bodies, keys = [], []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        keys.append(request.headers["Idempotency-Key"])
        status = answers.pop(0)
        return web.json_response({"error": "told to" if status != 200 else None}, status=status)

    async with EventsClient(await events_url(aiohttp_server, handler), EVENTS_TOKEN, backoff=0.01, flush_interval=0.01) as client:
        client.emit(turn())
        assert await client.flush(5)
        client.emit(turn())
        assert await client.flush(5)
    assert client.stats.sent == 1 and client.stats.retries == 2 and client.stats.dropped_rejected == 1
    assert len(bodies) == 4 and bodies[0] == bodies[1] == bodies[2]
    assert keys[0] == keys[1] == keys[2] != keys[3]  # a batch keeps its key across retries


async def test_a_429_retry_waits_for_the_exporters_retry_after(aiohttp_server):
    """The exporter's per-token rate limit answers 429 with Retry-After: the client waits that long
    (not its own, shorter backoff) before the retry."""
    import time

    seen: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        if len(seen) == 1:
            return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": "1"})
        return web.json_response({})

    async with EventsClient(await events_url(aiohttp_server, handler), EVENTS_TOKEN, backoff=0.01, flush_interval=0.01) as client:
        client.emit(turn())
        assert await client.flush(10)
    assert client.stats.sent == 1 and client.stats.retries == 1
    assert seen[1] - seen[0] >= 0.95  # its own backoff would have waited 5-10 ms


async def test_bad_events_are_refused_by_the_exporter_and_counted(events_config, aiohttp_server):
    server = await aiohttp_server(build_app(events_config()))
    async with EventsClient(str(server.make_url("/")), "not-the-token-0123456789") as client:
        client.emit(turn())
        await client.flush(5)
    assert client.stats.dropped_rejected == 1 and client.stats.retries == 0


async def test_with_the_exporter_down_the_agent_loop_is_never_blocked():
    port = free_port()  # nothing listens: every connection is refused
    client = EventsClient(f"http://127.0.0.1:{port}", EVENTS_TOKEN, max_queue=1000, flush_interval=0.01,
                          backoff=0.01, max_backoff=0.05, max_retries=3)
    async with LoopLag() as lag:
        emit_times = []
        for i in range(20_000):
            t = time.perf_counter()
            client.emit(turn(i))
            emit_times.append(time.perf_counter() - t)
            if i % 500 == 0:
                await asyncio.sleep(0)  # the agent's loop goes on with its work
        await asyncio.sleep(0.3)
    await client.aclose(timeout=0.2)
    emit_times.sort()
    assert emit_times[len(emit_times) // 2] < 50e-6, "emit() must be a cheap append"
    assert lag.worst < 0.1, f"the loop stalled for {lag.worst * 1000:.0f} ms"
    s = client.stats
    assert s.sent == 0 and s.dropped_queue_full > 15_000  # the queue holds 1000; retries free a little
    assert s.sent + s.dropped_queue_full + s.dropped_failed + s.dropped_rejected == 20_000


async def test_a_hanging_exporter_times_out_without_blocking():
    async def never_answer(reader, writer):
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = EventsClient(f"http://127.0.0.1:{port}", EVENTS_TOKEN, timeout=0.2, max_retries=1, backoff=0.01,
                          flush_interval=0.01)
    try:
        async with LoopLag() as lag:
            client.emit(turn())
            t = time.perf_counter()
            assert await client.flush(5)
            assert time.perf_counter() - t < 2
        assert client.stats.dropped_failed == 1 and client.stats.retries == 1
        assert lag.worst < 0.1
    finally:
        await client.aclose(timeout=0.1)
        server.close()


def test_urls_and_environment():
    assert EventsClient("http://exporter:9784", "t").url == "http://exporter:9784/v1/events"
    assert EventsClient("http://exporter:9784/custom", "t").url == "http://exporter:9784/custom"
    with pytest.raises(ValueError, match="expected http"):
        EventsClient("exporter:9784", "t")
    assert EVENTS_TOKEN not in repr(EventsClient("http://e:1", EVENTS_TOKEN))


def test_from_env_says_what_is_missing(monkeypatch):
    monkeypatch.delenv("LIVEKIT_EXPORTER_EVENTS_URL", raising=False)
    monkeypatch.setenv("LIVEKIT_EXPORTER_EVENTS_TOKEN", "x")
    with pytest.raises(RuntimeError, match="set LIVEKIT_EXPORTER_EVENTS_URL"):
        EventsClient.from_env()


# -- invalid events, partial refusals, retries applied once ---------------------------------------


async def test_one_invalid_event_never_poisons_a_batch(events_config, aiohttp_server, aiohttp_client, caplog):
    server = await aiohttp_server(build_app(events_config()))
    async with EventsClient(str(server.make_url("/")), EVENTS_TOKEN, flush_interval=0.05) as client:
        for i in range(99):
            assert client.emit(m.CallStarted(agent="poison-test", call_id=f"p{i}", direction="inbound"))
        bad = [m.Turn(agent="poison-test", e2e_latency_seconds=2e6),  # over the schema's maximum
               m.Turn(agent="x", e2e_latency_seconds=float("nan")),  # would encode as null
               m.Turn(agent="x", llm_ttft_seconds=float("inf")),
               m.CallStarted(agent="", call_id="q", direction="inbound"),
               m.LLMUsage(agent="x", provider="p", model="m", input_tokens=1, cached_tokens=5),
               {"type": "turn", "agent": "x"}]
        assert [client.emit(e) for e in bad] == [False] * len(bad)
        assert client.emit(turn())
        assert await client.flush(5)
    assert client.stats.sent == 100 and client.stats.dropped_invalid == len(bad)
    assert client.stats.dropped_rejected == 0
    s = await scrape_samples(aiohttp_client, server)
    assert value(s, "voice_agent_calls_active", agent="poison-test", direction="inbound") == 99
    warnings = [r for r in caplog.records if "invalid event was dropped" in r.getMessage()]
    assert len(warnings) == 1 and "<= 1000000.0" in warnings[0].problem  # rate-limited: once a minute


async def test_a_400_drops_only_the_events_it_names(aiohttp_server, caplog):
    """An exporter of another version refuses events 1 and 3 of a batch: the others are sent again."""
    received = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        received.append((request.headers["Idempotency-Key"], [e.get("call_id") for e in body["events"]]))
        if len(received) == 1:
            return web.json_response({"error": "2 invalid event(s); nothing was applied", "problems": [
                {"index": 1, "path": "$.events[1].direction", "reason": "Invalid enum value"},
                {"index": 3, "path": "$.events[3].direction", "reason": "Invalid enum value"}]}, status=400)
        if len(received) == 2:
            return web.json_response({"accepted": len(body["events"]), "discarded": []})
        return web.json_response({"error": "unknown bearer token"}, status=401)

    async with EventsClient(await events_url(aiohttp_server, handler), EVENTS_TOKEN, flush_interval=0.01) as client:
        for i in range(5):
            client.emit(m.CallStarted(agent="a", call_id=f"c{i}", direction="inbound"))
        assert await client.flush(5)
        for i in range(3):  # a 401 names no event: the whole batch is dropped, and said so once
            client.emit(turn(i))
            assert await client.flush(5)
    assert [ids for _, ids in received[:2]] == [["c0", "c1", "c2", "c3", "c4"], ["c0", "c2", "c4"]]
    assert received[0][0] != received[1][0]  # another body, another key
    assert client.stats.sent == 3 and client.stats.dropped_rejected == 2 + 3
    refused = [r for r in caplog.records if "refused events" in r.getMessage()]
    assert [(r.status, r.dropped, r.resent) for r in refused] == [(400, 2, 3), (401, 1, 0)]
    assert EVENTS_TOKEN not in caplog.text


async def test_a_retry_after_a_lost_answer_is_applied_once(events_config, aiohttp_server, aiohttp_client):
    """The exporter applies a batch but its answer is lost (a 503 from a proxy in between): the
    client retries with the same Idempotency-Key, and the exporter does not count it twice."""
    app = build_app(events_config())
    lost = [True]

    @web.middleware
    async def lose_the_first_answer(request: web.Request, handler):
        response = await handler(request)
        if request.path == "/v1/events" and lost[0]:
            lost[0] = False
            return web.json_response({"error": "bad gateway"}, status=503)
        return response

    app.middlewares.append(lose_the_first_answer)
    server = await aiohttp_server(app)
    client = await send_turns(server, 10, backoff=0.01, flush_interval=0.01)
    assert client.stats.sent == 10 and client.stats.retries == 1
    s = await scrape_samples(aiohttp_client, server)
    assert value(s, "voice_agent_turns_total", agent="a", interrupted="false") == 10


async def test_batches_over_the_exporters_limit_are_split(events_config, aiohttp_server, aiohttp_client):
    """A client batch of 100 against an exporter with events.max_events 30: the 413 halves it."""
    server = await aiohttp_server(build_app(events_config(max_events=30)))
    client = await send_turns(server, 250, batch_size=100, flush_interval=0.01)
    assert client.stats.sent == 250 and client.stats.dropped_rejected == 0
    assert client.batch_size == 25
    s = await scrape_samples(aiohttp_client, server)
    assert value(s, "voice_agent_turns_total", agent="a", interrupted="false") == 250
