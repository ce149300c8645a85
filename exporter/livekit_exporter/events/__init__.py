"""The voice-agent events API: POST <events.path> -> auth -> limits -> decode -> apply.

    events.setup(app, config, telemetry)     # from server.build_app, when events are enabled

Answers (JSON bodies, see docs/events-api.md):
    200 {"accepted": n, "discarded": [...]}   applied; `discarded` lists timings over max_latency
    400 {"error", "problems": [{index, path, reason[, line]}]}   nothing applied
    401 no or unknown bearer token; 413 body or event count over the limit; 415 wrong content type
    422 an Idempotency-Key reused with a different body

Idempotency: a request may carry an `Idempotency-Key` header (the push client sends one per batch,
unchanged across its retries). The answer to an applied request is remembered under (token, key)
for events.idempotency_ttl (at most events.idempotency_max_entries keys); a repeat gets the same
answer, with `Idempotent-Replayed: true`, and is not applied again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from aiohttp import web

from ..config import Config
from ..expiring import ExpiringMap
from ..telemetry import Telemetry
from .decode import JSON_TYPES, NDJSON_TYPES, BadBatch, decode_json, decode_ndjson
from .pipeline import Pipeline

__all__ = ["PIPELINE", "Pipeline", "setup"]

log = logging.getLogger(__name__)

PIPELINE = web.AppKey("events_pipeline", Pipeline)
ACCEPTED_TYPES = ", ".join(JSON_TYPES + NDJSON_TYPES)
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Visible ASCII, no quotes or backslashes (what an sf-string holds, quotes optional), up to 255.
_KEY = re.compile(r'^"?([\x21\x23-\x5b\x5d-\x7e]{1,255})"?$')


class _Answer(NamedTuple):
    digest: bytes  # of the request body, to tell a retry from a key reused for other content
    body: bytes


class IdempotencyCache(ExpiringMap[tuple[int, str], _Answer]):
    """(token, key) -> the answer to the applied request, for `ttl` seconds, at most `max_entries`."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        super().__init__(max_entries, ttl, timer=clock)

    def put(self, key: tuple[int, str], digest: bytes, body: bytes) -> None:
        self[key] = _Answer(digest, body)


def _error(
    status: int, message: str, problems: list[dict[str, object]] | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, object] = {"error": message}
    if problems is not None:
        body["problems"] = problems
    return web.json_response(body, status=status, headers=headers)


class EventsHandler:
    def __init__(self, config: Config, pipeline: Pipeline):
        self.cfg = config.events
        self.pipeline = pipeline
        self._tokens = [t.reveal().encode() for t in self.cfg.tokens]
        self.idempotency = IdempotencyCache(self.cfg.idempotency_ttl, self.cfg.idempotency_max_entries)

    def _authorized(self, header: str) -> int | None:
        """The index of the request's token among the configured ones, or None."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        candidate = given.strip().encode()
        found = None
        for i, token in enumerate(self._tokens):  # every token compared, in constant time each
            if hmac.compare_digest(candidate, token):
                found = i
        return found

    def _reject(
        self,
        reason: str,
        status: int,
        message: str,
        problems: list[dict[str, object]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
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
                "unauthorized",
                401,
                "the events API has no token configured: set events.tokens, events.token_files or "
                "LIVEKIT_EXPORTER_EVENTS_TOKENS on the exporter",
                headers={"WWW-Authenticate": 'Bearer realm="livekit-exporter events"'},
            )
        token = self._authorized(request.headers.get("Authorization", ""))
        if token is None:
            return self._reject(
                "unauthorized",
                401,
                "missing or unknown bearer token: send 'Authorization: Bearer <token>' with one of "
                "the exporter's events tokens",
                headers={"WWW-Authenticate": 'Bearer realm="livekit-exporter events", error="invalid_token"'},
            )
        ctype = request.content_type
        if ctype not in JSON_TYPES and ctype not in NDJSON_TYPES:
            return self._reject(
                "unsupported_media_type",
                415,
                f"Content-Type {ctype!r} is not accepted; use one of {ACCEPTED_TYPES}",
                headers={"Accept-Post": ACCEPTED_TYPES},
            )
        key = None
        if (raw_key := request.headers.get(IDEMPOTENCY_HEADER)) is not None:
            match = _KEY.match(raw_key)
            if match is None:
                return self._reject(
                    "invalid",
                    400,
                    f"the {IDEMPOTENCY_HEADER} header must be 1 to 255 visible ASCII characters (no quotes "
                    "or backslashes inside), e.g. a UUID; send a new one per batch and the same one on its retries",
                    [],
                )
            key = (token, match[1])
        body = await self._read(request)
        if body is None:
            return self._reject(
                "too_large",
                413,
                f"the body is larger than events.max_body_bytes ({self.cfg.max_body_bytes} bytes); "
                "send smaller batches",
            )
        digest = b""
        if key is not None:
            # From here to the end nothing awaits: a concurrent repeat sees the answer stored below.
            digest = hashlib.blake2b(body, digest_size=16).digest()
            seen = self.idempotency.get(key)
            if seen is not None:
                if seen.digest != digest:
                    return self._reject(
                        "idempotency_conflict",
                        422,
                        f"this {IDEMPOTENCY_HEADER} was already used for a different batch; nothing was "
                        "applied. Use a new key for each batch, and the same key only to retry the same body",
                    )
                return web.Response(
                    body=seen.body, content_type="application/json", headers={"Idempotent-Replayed": "true"}
                )
        try:
            decode = decode_json if ctype in JSON_TYPES else decode_ndjson
            events, lines = decode(body, self.cfg.max_events)
        except BadBatch as e:
            problems = [p.as_dict() for p in e.problems] if e.problems or e.status == 400 else None
            return self._reject(e.reason, e.status, e.message, problems)
        discarded = self.pipeline.apply(events)
        answer = web.json_response(
            {
                "accepted": len(events),
                "discarded": [d.describe(self.cfg.max_latency, lines) for d in discarded],
            }
        )
        if key is not None:
            assert isinstance(answer.body, bytes)
            self.idempotency.put(key, digest, answer.body)
        return answer


def setup(app: web.Application, config: Config, telemetry: Telemetry) -> Pipeline:
    """Registers POST <events.path> and the TTL sweeper on `app`; returns the pipeline."""
    pipeline = Pipeline(config.events, telemetry)
    app[PIPELINE] = pipeline
    app.router.add_post(config.events.path, EventsHandler(config, pipeline).handle)
    if not config.events.tokens:
        log.warning(
            "the events API is enabled without a token: every request to it is refused",
            extra={"path": config.events.path},
        )
    ttls = (config.events.call_ttl, config.events.dependency_ttl, config.events.campaign_ttl)
    period = max(0.05, min(60.0, *(t / 10 for t in ttls)))

    async def sweeper(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                pipeline.sweep()

        task = asyncio.create_task(loop(), name="events-ttl-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sweeper)
    return pipeline
