"""The HTTP server's own defences over real loopback sockets: bytes a client got wrong become a 4xx
(never a 500 or a traceback), and slow or numerous clients are bounded by the server: section.

Raw sockets, because aiohttp's client refuses to send most of these bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from aiohttp import web

from conftest import EVENTS_TOKEN, finish_held_request, serve_on_loopback
from livekit_exporter.config import Duration, ServerConfig
from livekit_exporter.httpguard import GUARD, LOG_LINES, ExporterRunner
from livekit_exporter.server import EXPORTER, build_app

AUTH = f"Authorization: Bearer {EVENTS_TOKEN}\r\n".encode()
READ_TIMEOUT = 15  # generous: every answer below comes within about a second


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """The app behind ExporterRunner (as `livekit-exporter serve` runs it) on a loopback port."""
    return await serve_on_loopback(app, ExporterRunner)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """serve(app) for the block: its port."""
    runner, port = await serve(app)
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def limited(events_config):
    """start(**server) -> (port, app): an exporter with the events API and ServerConfig(**server)."""
    runners = []

    async def start(**server):
        server = {k: Duration(v) if isinstance(v, float) else v for k, v in server.items()}
        app = build_app(replace(events_config(), server=ServerConfig(**server)))
        runner, port = await serve(app)
        runners.append(runner)
        return port, app

    yield start
    for runner in runners:
        await runner.cleanup()


async def exchange(port: int, data: bytes, *, close: bool = False) -> bytes:
    """Sends `data`, returns everything the server sends until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    finally:
        writer.close()


def rejected(app: web.Application, reason: str) -> float | None:
    registry = app[EXPORTER].telemetry.registry
    return registry.get_sample_value("livekit_exporter_http_requests_rejected_total", {"reason": reason})


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def no_traceback(caplog) -> None:
    for record in caplog.records:
        assert record.exc_info is None, f"a traceback was logged: {record.getMessage()}"
        assert "Traceback" not in record.getMessage()


async def naive(request: web.Request) -> web.Response:
    """A handler that uses a header value as text, as any handler may: the guard's business."""
    return web.Response(text=request.headers.get("X-Campaign", "").encode().decode("ascii"))


def naive_app(events_config) -> web.Application:
    """An exporter with the events API, and naive() on GET /naive."""
    app = build_app(events_config())
    app.router.add_get("/naive", naive)
    return app


async def test_non_utf8_header_bytes_get_400_naming_the_header_never_500(events_config, caplog):
    app = naive_app(events_config)
    async with serving(app) as port:
        answer = await exchange(port, b"GET /naive HTTP/1.1\r\nHost: x\r\nX-Campaign: \xff\xfe\r\nConnection: close\r\n\r\n")
        utf8 = await exchange(port, "GET /naive HTTP/1.1\r\nHost: x\r\nX-Campaign: été\r\nConnection: close\r\n\r\n".encode())
    assert status(answer) == 400, answer
    assert b"X-Campaign" in answer and b"not ASCII" in answer
    assert b"Traceback" not in answer and b"\xff" not in answer
    assert status(utf8) == 400  # valid UTF-8 the handler cannot use either
    assert rejected(app, "bad_header") == 2
    no_traceback(caplog)
    lines = [r for r in caplog.records if r.name == "livekit_exporter.httpguard"]
    assert len(lines) == 2 and lines[0].reason == "bad_header" and lines[0].headers == "X-Campaign"
    assert "\udcff" not in lines[0].getMessage() + str(lines[0].__dict__)  # the value is never logged


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/metrics"), ("GET", "/-/healthy"), ("GET", "/-/ready"),
    ("POST", "/webhook"), ("POST", "/v1/events"), ("GET", "/nowhere"),
])  # fmt: skip
async def test_no_endpoint_answers_5xx_to_header_bytes_that_are_not_text(limited, caplog, method, path):
    port, _ = await limited()
    headers = b"".join(
        name + b": \xff\xfe\xc3\x28\r\n"
        for name in (b"Authorization", b"Accept", b"Accept-Encoding", b"Content-Type", b"Idempotency-Key",
                     b"X-Prometheus-Scrape-Timeout-Seconds", b"User-Agent")
    )  # fmt: skip
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + headers + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    answer = await exchange(port, request)
    assert status(answer) != 500 and b"Internal" not in answer, answer  # (/-/ready may be 503: not ready yet)
    no_traceback(caplog)


async def test_a_flood_of_bad_requests_logs_a_few_lines_and_counts_every_one(events_config, caplog):
    app = naive_app(events_config)
    bad = b"GET /naive HTTP/1.1\r\nHost: x\r\nX-Campaign: \xc3\x28\r\nConnection: close\r\n\r\n"
    async with serving(app) as port:
        for _ in range(20):
            assert status(await exchange(port, bad)) == 400
    assert rejected(app, "bad_header") == 20
    assert len([r for r in caplog.records if r.name == "livekit_exporter.httpguard"]) == LOG_LINES


async def test_bytes_the_parser_refuses_get_400_without_a_traceback(limited, caplog):
    port, app = await limited()
    for request in (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    ):
        answer = await exchange(port, request)
        assert status(answer) == 400 and b"Bad request" in answer, answer
    assert rejected(app, "malformed_request") == 3
    no_traceback(caplog)


async def test_a_bug_of_ours_is_a_500_that_shows_nothing_and_logs_once(limited, events_config, caplog):
    app = build_app(events_config())

    async def broken(request: web.Request) -> web.Response:
        raise KeyError("internal detail")

    app.router.add_get("/broken", broken)  # a handler with a bug, behind the same middleware
    async with serving(app) as port:
        answer = await exchange(port, b"GET /broken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status(answer) == 500
    assert b"internal detail" not in answer and b"Traceback" not in answer and b"KeyError" not in answer
    lines = [r for r in caplog.records if r.name == "livekit_exporter.httpguard"]
    assert len(lines) == 1 and "KeyError: 'internal detail'" in lines[0].err  # the traceback is for us
    assert app[EXPORTER].telemetry.registry.get_sample_value("livekit_exporter_http_internal_errors_total") == 1


@pytest.mark.parametrize(
    ("setting", "request_bytes"),
    [
        (
            "body_timeout",
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + AUTH
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ev",
        ),
        ("header_timeout", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),  # and never the blank line
    ],
    ids=["a slow body gets 408 after body_timeout", "slow request headers get 408 after header_timeout"],
)  # fmt: skip
async def test_a_slow_request_gets_408_after_its_timeout(limited, setting, request_bytes):
    port, app = await limited(**{setting: 1.0})
    answer = await exchange(port, request_bytes)  # the server answers and closes
    assert status(answer) == 408 and f"server.{setting}".encode() in answer, answer
    assert rejected(app, setting) == 1  # the reason is named as the setting


async def test_a_silent_connection_is_closed_after_idle_timeout(limited):
    port, _ = await limited(idle_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), READ_TIMEOUT) == b""  # closed by the server
    writer.close()


async def test_in_flight_ingest_requests_are_bounded_with_503(limited):
    port, app = await limited(max_in_flight=2, body_timeout=30.0)
    slow = b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    held = []
    for _ in range(2):
        held.append(await asyncio.open_connection("127.0.0.1", port))
        held[-1][1].write(slow)
        await held[-1][1].drain()
    for _ in range(100):  # until both are in their handlers
        if app[GUARD].in_flight == 2:
            break
        await asyncio.sleep(0.02)
    answer = await exchange(port, slow.replace(b"Content-Length: 100", b"Content-Length: 1"))
    assert status(answer) == 503 and b"Retry-After: 1" in answer and b"server.max_in_flight" in answer, answer
    assert rejected(app, "too_many_in_flight") == 1
    # The held ones complete normally once their body arrives.
    for reader, writer in held:
        head = await finish_held_request(reader, writer, b'"events": []}' + b" " * (100 - 14), READ_TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200"), head
    # /metrics is not an ingest endpoint: never refused by the in-flight bound.
    assert status(await exchange(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


async def test_connections_past_max_connections_get_503_and_are_closed(limited):
    port, app = await limited(max_connections=3)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for reader, writer in held:  # each one answered, and kept alive: three open connections
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), READ_TIMEOUT)).startswith(b"HTTP/1.1 200")
    answer = await exchange(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(answer) == 503 and b"server.max_connections" in answer, answer
    assert rejected(app, "too_many_connections") == 1
    for _, writer in held:
        writer.close()
    for _ in range(200):  # a slot frees once the server sees a connection go
        answer = await exchange(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if status(answer) == 200:
            break
        await asyncio.sleep(0.05)
    assert status(answer) == 200


async def test_the_limits_are_validated(tmp_path):
    from livekit_exporter.config import ConfigError, load

    cfg = tmp_path / "c.yml"
    cfg.write_text("livekit: {url: 'http://x:1', api_key: k, api_secret: s}\nserver:\n  body_timeout: 0s\n")
    with pytest.raises(ConfigError) as e:
        load(str(cfg), env={})
    text = "\n".join(e.value.problems)
    assert "server.body_timeout" in text and "longer than 0" in text and "10s" in text

