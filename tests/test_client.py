"""The push client against the real exporter over loopback: batching, retries, drops, flushing,
and an agent loop that is never blocked when the exporter is down or hangs."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import EVENTS_TOKEN, samples, value

from livekit_exporter.client import EventsClient
from livekit_exporter.events import model as m
from livekit_exporter.server import build_app


def turn(i: int = 0) -> m.Turn:
    return m.Turn(agent="a", e2e_latency_seconds=0.5 + i % 3 / 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    bodies = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        status = answers.pop(0)
        return web.json_response({"error": "told to" if status != 200 else None}, status=status)

    app = web.Application()
    app.router.add_post("/v1/events", handler)
    server = await aiohttp_server(app)
    async with EventsClient(str(server.make_url("/")), EVENTS_TOKEN, backoff=0.01, flush_interval=0.01) as client:
        client.emit(turn())
        assert await client.flush(5)
        client.emit(turn())
        assert await client.flush(5)
    assert client.stats.sent == 1 and client.stats.retries == 2 and client.stats.dropped_rejected == 1
    assert len(bodies) == 4 and bodies[0] == bodies[1] == bodies[2]


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
