"""The HTTP server's own defences, for every endpoint: what a client may send, how long it may take
and how many may be served at once (the `server:` section of the configuration).

    guard = HttpGuard(telemetry, settings, ingest_paths)   # settings(): the running ServerConfig
    web.Application(middlewares=[guard.middleware, ...])   # outermost
    runner = ExporterRunner(app, guard)                    # connections: count, idle and header time

- A handler exception the client caused (UnicodeError, ValueError: header bytes that are not text,
  a value that does not parse) becomes a 400 saying which headers, counted by reason in
  livekit_exporter_http_requests_rejected_total and logged as one rate-limited line without a
  traceback. aiohttp's own HTTPExceptions (404, 405, 413) pass through as they are; bytes aiohttp's
  parser refuses (a bad request line, a duplicate Content-Length) get aiohttp's 400 and are counted
  and logged the same way. Any other exception is a bug of ours: one rate-limited line with its
  traceback, livekit_exporter_http_internal_errors_total, and a 500 that shows nothing of it.
- The ingest endpoints (webhooks, events) get at most server.max_in_flight requests at once (503 with
  Retry-After past it) and server.body_timeout to send their body (408).
- A connection past server.max_connections is answered 503 and closed at once; one whose request
  headers take longer than server.header_timeout from their first byte gets 408 and is closed; one
  idle for server.idle_timeout is closed.

The settings are read when used, so a reload changes them for the next request or connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .config import ServerConfig
from .logsetup import RateLimitedLog
from .telemetry import Telemetry

log = logging.getLogger(__name__)

# reason -> (status, when): every value livekit_exporter_http_requests_rejected_total{reason} takes.
REASONS: dict[str, tuple[int, str]] = {
    "bad_header": (400, "a header value holds bytes that are not ASCII text and a handler could not use it"),
    "invalid_request": (400, "a handler could not parse the request (a ValueError or UnicodeError)"),
    "malformed_request": (400, "aiohttp's parser refused the bytes (request line, header syntax, framing)"),
    "header_timeout": (408, "the request headers took longer than server.header_timeout"),
    "body_timeout": (408, "a webhook or events body took longer than server.body_timeout"),
    "too_many_in_flight": (503, "server.max_in_flight webhook and events requests were already being served"),
    "too_many_connections": (503, "server.max_connections connections were already open"),
}
# Warnings per reason and minute; the rest are summed up in one line when the minute ends.
LOG_LINES = 5
LOG_WINDOW = 60.0
RETRY_AFTER = "1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answer(status: int, reason: str, message: str, *, json: bool, headers: dict[str, str] | None = None):
    """An error answer: JSON ({"error", "reason"}) on the ingest endpoints, whose clients read JSON."""
    if json:
        body = orjson.dumps({"error": message, "reason": reason}) + b"\n"
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)
    return web.Response(status=status, text=message + "\n", headers=headers)


def _raw(status: int, phrase: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for where no aiohttp response exists."""
    body = (message + "\n").encode()
    head = f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode() + b"\r\n" + body


async def _last(request: web.Request, answer: web.Response) -> web.Response:
    """Sends `answer` and closes the connection at once: the rest of the body is not waited for
    (aiohttp would otherwise linger up to 10 s reading it)."""
    answer.force_close()
    await answer.prepare(request)
    await answer.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()  # after the answer: the transport sends what it holds, then closes
    return answer


def _where(exc: BaseException) -> str:
    """file:line where `exc` was raised (the innermost frame), to find a misjudged bug from its line."""
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"


def _not_text(request: BaseRequest) -> list[str]:
    """Names of the headers whose values are not ASCII (aiohttp keeps undecodable bytes as surrogates)."""
    return [str(name)[:40] for name, value in request.headers.items() if not value.isascii()][:5]


class HttpGuard:
    """The middleware, the counters and the log of every refusal the HTTP server makes itself."""

    def __init__(self, telemetry: Telemetry, settings: Callable[[], ServerConfig], ingest_paths: Iterable[str]):
        self.settings = settings
        self.ingest_paths = frozenset(ingest_paths)
        self.in_flight = 0
        self.rejected = telemetry.counter(
            "livekit_exporter_http_requests_rejected_total",
            "HTTP requests and connections the exporter's server refused itself (bad bytes, too slow, too "
            "many), by reason; the endpoints' own refusals are counted by their own metrics.",
            ["reason"],
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.internal_errors = telemetry.counter(
            "livekit_exporter_http_internal_errors_total",
            "Requests answered 500 because the exporter failed on them (a bug: the log has the traceback).",
        )
        self._log = RateLimitedLog(log, "HTTP rejections not logged", LOG_LINES, LOG_WINDOW, kind_field="reason")

    def reject(self, reason: str, remote: str | None, **extra: object) -> None:
        self.rejected.labels(reason).inc()
        self._log.warning(reason, "HTTP request rejected", reason=reason, remote=remote, **extra)

    def internal_error(self, request: BaseRequest, exc: BaseException) -> web.Response:
        self.internal_errors.inc()
        self._log.warning(
            "internal_error",
            "HTTP request failed in the exporter (a bug: please report it with this line)",
            reason="internal_error",
            method=request.method,
            path=request.path[:100],
            error=type(exc).__name__,
            err="".join(traceback.format_exception(exc)),
        )
        return _answer(
            500,
            "internal_error",
            "Internal Server Error: the exporter failed on this request; the error is in its log",
            json=request.path in self.ingest_paths,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.method == "POST" and request.path in self.ingest_paths:
                return await self._ingest(request, handler)
            return await handler(request)
        except web.HTTPException:
            raise
        except (UnicodeError, ValueError) as e:
            return self._bad_request(request, e)
        except Exception as e:
            return self.internal_error(request, e)

    async def _ingest(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        cfg = self.settings()
        if self.in_flight >= cfg.max_in_flight:
            return await self._refuse_ingest(
                request,
                503,
                "too_many_in_flight",
                f"the exporter is already receiving server.max_in_flight ({cfg.max_in_flight}) webhook and "
                f"events requests; retry after {RETRY_AFTER} s",
                headers={"Retry-After": RETRY_AFTER},
                limit=cfg.max_in_flight,
            )
        self.in_flight += 1
        deadline = asyncio.timeout(cfg.body_timeout)
        try:
            async with deadline:
                return await handler(request)
        except TimeoutError:
            if not deadline.expired():
                raise
            return await self._refuse_ingest(
                request,
                408,
                "body_timeout",
                f"the request body did not arrive within server.body_timeout ({cfg.body_timeout!r}); send it "
                "at once, or raise the limit on the exporter",
                seconds=cfg.body_timeout,
            )
        finally:
            self.in_flight -= 1

    async def _refuse_ingest(
        self,
        request: web.Request,
        status: int,
        reason: str,
        message: str,
        headers: dict[str, str] | None = None,
        **logged: object,
    ) -> web.Response:
        """Refuses a webhook or events request: counted, logged (with `logged`), answered in JSON,
        and its connection closed without waiting for the rest of the body."""
        self.reject(reason, request.remote, path=request.path, **logged)
        return await _last(request, _answer(status, reason, message, json=True, headers=headers))

    def _bad_request(self, request: web.Request, exc: ValueError | UnicodeError) -> web.Response:
        names = _not_text(request)
        if names:
            reason = "bad_header"
            message = (
                f"Bad request: the {', '.join(names)} header(s) hold bytes that are not ASCII text; send "
                "header values as ASCII (a token, a UUID, a content type)"
            )
        else:
            reason = "invalid_request"
            message = (
                f"Bad request: the exporter could not parse this request ({type(exc).__name__}); check its "
                "headers against the endpoint's documentation"
            )
        # Names, never values: a value may be a credential.
        self.reject(
            reason, request.remote, path=request.path[:100], headers=",".join(names), error=type(exc).__name__,
            at=_where(exc),
        )  # fmt: skip
        return _answer(400, reason, message, json=request.path in self.ingest_paths)


GUARD = web.AppKey("http_guard", HttpGuard)


# -- connections --------------------------------------------------------------------------------
#
# aiohttp has no hook for the connection itself: its RequestHandler (the asyncio protocol of one
# connection) is subclassed, and ExporterRunner makes its Server build those. The state read below
# (_waiter, _messages, _request_count) is RequestHandler's; tests/test_http_limits.py exercises
# every path over real sockets, so an aiohttp upgrade that changes it fails there.


class _Connection(RequestHandler):
    def __init__(self, manager: web.Server, guard: HttpGuard, **kwargs: Any):
        cfg = guard.settings()
        super().__init__(manager, **{**kwargs, "keepalive_timeout": float(cfg.idle_timeout)})
        self._guard = guard
        self._server_of = manager
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = self._guard.settings().max_connections
        if len(self._server_of.connections) >= limit:
            self._refused = True
            peer = transport.get_extra_info("peername")
            self._guard.reject("too_many_connections", str(peer[0]) if peer else None, limit=limit)
            message = f"the exporter has server.max_connections ({limit}) connections open; retry later"
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_raw(503, "Service Unavailable", message, [("Retry-After", RETRY_AFTER)]))
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._close and not self._force_close and self._request_in_progress:
            # Draining (shutdown below): aiohttp would drop the rest of this request's body.
            self._close = False
            try:
                super().data_received(data)
            finally:
                self._close = True
            return
        if self._head_timer is None and self._awaiting_head():
            timeout = self._guard.settings().header_timeout
            self._head_timer = self._loop.call_later(timeout, self._head_timed_out, timeout)
        super().data_received(data)
        if self._head_timer is not None and not self._awaiting_head():
            self._cancel_head_timer()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Lets a request being served finish within `timeout` (its body still read: aiohttp stops
        reading at once) before aiohttp's own shutdown, which then cancels what is left."""
        loop = self._loop
        deadline = loop.time() + (timeout or 0.0)
        if timeout and self._request_in_progress:
            done = self._handler_waiter = loop.create_future()  # set by aiohttp when the handler returns
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(done)
            self._handler_waiter = None
        # aiohttp waits (then waits again for the cancelled handler) at most this long; 0 would be forever.
        await super().shutdown(max(deadline - loop.time(), 0.5))

    def _awaiting_head(self) -> bool:
        """True while the connection's next request head is incomplete (and no request is served)."""
        if self._messages:
            return False
        if self._waiter is not None:
            return not self._waiter.done()
        return self._request_count == 0 and not self._request_in_progress  # before start() first waits

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self, timeout: float) -> None:
        self._head_timer = None
        if not self._awaiting_head() or self.transport is None:
            return
        peer = self.transport.get_extra_info("peername")
        self._guard.reject("header_timeout", str(peer[0]) if peer else None, seconds=timeout)
        message = f"the request headers did not arrive within server.header_timeout ({timeout!r})"
        assert isinstance(self.transport, asyncio.WriteTransport)
        self.transport.write(_raw(408, "Request Timeout", message))
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError) and status == 400:
            # The client's bytes: aiohttp's answer (which quotes them back) without its traceback.
            detail = (exc.message or "").strip().split("\n", 1)[0].rstrip(":")[:100]
            self._guard.reject("malformed_request", request.remote, detail=detail)
            answer = web.Response(status=400, text=f"Bad request: {message or detail}\n")
        elif exc is not None and status == 500:
            answer = self._guard.internal_error(request, exc)
        else:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp's own: nothing more can be sent
            raise ConnectionError("a response was sent already; cannot send the error")
        answer.force_close()
        return answer


class _Server(web.Server):
    guard: HttpGuard

    def __call__(self) -> RequestHandler:
        return _Connection(self, self.guard, loop=self._loop, **self._kwargs)


class ExporterRunner(web.AppRunner):
    """web.AppRunner for an app built by server.build_app, whose connections keep server.* limits."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.guard = self.app[GUARD]
        return server

    async def cleanup(self) -> None:
        """Stops accepting, closes idle connections, gives the requests in flight
        server.shutdown_grace to finish (then cancels them), and cleans the app up."""
        self._shutdown_timeout = float(self.app[GUARD].settings().shutdown_grace)  # aiohttp reads it here
        await super().cleanup()
