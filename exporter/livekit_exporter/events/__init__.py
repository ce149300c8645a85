"""The voice-agent events API: POST <events.path> -> auth -> limits -> decode -> apply.

    events.setup(app, config, telemetry)     # from server.build_app, when events are enabled

Answers (JSON bodies, see docs/events-api.md):
    200 {"accepted": n, "discarded": [...]}   applied; `discarded` lists timings over max_latency
    400 {"error", "problems": [{index, path, reason[, line]}]}   nothing applied
    401 no or unknown bearer token; 413 body or event count over the limit; 415 wrong content type
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import AsyncIterator

from aiohttp import web

from ..config import Config
from ..telemetry import Telemetry
from .decode import JSON_TYPES, NDJSON_TYPES, BadBatch, decode_json, decode_ndjson
from .pipeline import Pipeline

__all__ = ["PIPELINE", "Pipeline", "setup"]

log = logging.getLogger(__name__)

PIPELINE = web.AppKey("events_pipeline", Pipeline)
ACCEPTED_TYPES = ", ".join(JSON_TYPES + NDJSON_TYPES)


def _error(status: int, message: str, problems: list[dict[str, object]] | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, object] = {"error": message}
    if problems is not None:
        body["problems"] = problems
    return web.json_response(body, status=status, headers=headers)


class EventsHandler:
    def __init__(self, config: Config, pipeline: Pipeline):
        self.cfg = config.events
        self.pipeline = pipeline
        self._tokens = [t.reveal().encode() for t in self.cfg.tokens]

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        candidate = given.strip().encode()
        ok = False
        for token in self._tokens:  # every token compared, in constant time each
            ok |= hmac.compare_digest(candidate, token)
        return ok

    def _reject(self, reason: str, status: int, message: str, problems: list[dict[str, object]] | None = None,
                headers: dict[str, str] | None = None) -> web.Response:
        self.pipeline.requests_rejected.labels(reason).inc()
        log.debug("events request rejected", extra={"reason": reason, "status": status})
        return _error(status, message, problems, headers)

    async def _read(self, request: web.Request) -> bytes | None:
        """The body, or None when it exceeds max_body_bytes (read no further than the limit)."""
        limit = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(self, request: web.Request) -> web.Response:
        if not self._tokens:
            return self._reject(
                "unauthorized", 401,
                "the events API has no token configured: set events.tokens, events.token_files or "
                "LIVEKIT_EXPORTER_EVENTS_TOKENS on the exporter",
                headers={"WWW-Authenticate": 'Bearer realm="livekit-exporter events"'})
        if not self._authorized(request.headers.get("Authorization", "")):
            return self._reject(
                "unauthorized", 401,
                "missing or unknown bearer token: send 'Authorization: Bearer <token>' with one of "
                "the exporter's events tokens",
                headers={"WWW-Authenticate": 'Bearer realm="livekit-exporter events", error="invalid_token"'})
        ctype = request.content_type
        if ctype not in JSON_TYPES and ctype not in NDJSON_TYPES:
            return self._reject(
                "unsupported_media_type", 415,
                f"Content-Type {ctype!r} is not accepted; use one of {ACCEPTED_TYPES}",
                headers={"Accept-Post": ACCEPTED_TYPES})
        body = await self._read(request)
        if body is None:
            return self._reject(
                "too_large", 413,
                f"the body is larger than events.max_body_bytes ({self.cfg.max_body_bytes} bytes); "
                "send smaller batches")
        try:
            decode = decode_json if ctype in JSON_TYPES else decode_ndjson
            events = decode(body, self.cfg.max_events)
        except BadBatch as e:
            problems = [p.as_dict() for p in e.problems] if e.problems or e.status == 400 else None
            return self._reject(e.reason, e.status, e.message, problems)
        discarded = self.pipeline.apply(events)
        return web.json_response({
            "accepted": len(events),
            "discarded": [d.describe(self.cfg.max_latency) for d in discarded],
        })


def setup(app: web.Application, config: Config, telemetry: Telemetry) -> Pipeline:
    """Registers POST <events.path> and the TTL sweeper on `app`; returns the pipeline."""
    pipeline = Pipeline(config.events, telemetry)
    app[PIPELINE] = pipeline
    app.router.add_post(config.events.path, EventsHandler(config, pipeline).handle)
    if not config.events.tokens:
        log.warning("the events API is enabled without a token: every request to it is refused",
                    extra={"path": config.events.path})
    period = max(0.05, min(60.0, config.events.call_ttl / 10, config.events.dependency_ttl / 10))

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                pipeline.sweep()

        task = asyncio.create_task(loop(), name="events-ttl-sweeper")
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    app.cleanup_ctx.append(sweeper)
    return pipeline
