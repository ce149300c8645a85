"""POST <webhooks.path>: the HTTP face, one straight path from the request to the metrics, with
the deduplication of retried deliveries."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import orjson
from aiohttp import web

from ..config import Config, KeyPair, WebhooksConfig
from ..expiring import ExpiringMap
from ..logsetup import RateLimitedLog
from ..ratelimit import RateLimiter
from ..telemetry import Telemetry
from .decode import UNKNOWN_EVENT, Malformed, decode
from .metrics import WebhookMetrics
from .verify import NO_AUTH, Rejected, Verifier

log = logging.getLogger(__package__)  # livekit_exporter.webhooks, as before the split

# LiveKit sends application/webhook+json; plain JSON is what a relay in between may turn it into.
CONTENT_TYPES = frozenset({"application/webhook+json", "application/json"})
# Warnings per rejection reason and minute; the rest are summed up in one line when the minute ends.
# livekit_webhook_rejected_total carries the rate.
REJECTION_LOG_LINES = 5
REJECTION_LOG_WINDOW = 60.0


# -- deduplication ----------------------------------------------------------------------------


class RecentIds(ExpiringMap[bytes, bool]):
    """Event ids (their fixed-size digests) seen in the last `ttl` seconds, at most `max_entries`:
    an id is forgotten when its ttl ends or when max_entries newer ones came, whichever is first."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        super().__init__(max_entries, ttl, timer=clock)

    def add(self, key: bytes) -> None:
        """Remembers `key` for ttl seconds from now."""
        self[key] = True


# -- the HTTP face ----------------------------------------------------------------------------

_UNKNOWN_NAMES_LOGGED = 100


def _answer(status: int, **fields: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(fields) + b"\n", content_type="application/json")


class RejectionLog:
    """Logs rejections, at most `lines` a reason per `window` seconds; when a window with more ends,
    one line says how many were left out (written with the next rejection of that reason)."""

    def __init__(
        self,
        lines: int = REJECTION_LOG_LINES,
        window: float = REJECTION_LOG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._log = RateLimitedLog(log, "webhook rejections not logged", lines, window, clock, kind_field="reason")

    def warn(self, r: Rejected, remote: str | None) -> None:
        self._log.warning(
            r.reason, "webhook rejected", reason=r.reason, detail=r.detail, remote=remote, status=r.status
        )


class WebhookHandler:
    """POST <webhooks.path>: one request, one straight path to the metrics."""

    def __init__(self, cfg: WebhooksConfig, verifier: Verifier, metrics: WebhookMetrics, keys: int):
        self.max_body = cfg.max_body_bytes
        self.verifier = verifier
        self.rate_limit = cfg.rate_limit
        self.limiter = RateLimiter(cfg.rate_limit, cfg.rate_limit_burst, keys) if cfg.rate_limit else None
        self.metrics = metrics
        self.seen = RecentIds(cfg.dedup_ttl, cfg.dedup_max_entries)
        self.rejections = RejectionLog()
        self._unknown_logged: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        try:
            self._check_headers(request)
            digest, api_key = self.verifier.verify(request.headers.get("Authorization", ""))
            if self.limiter is not None and (wait := self.limiter.wait(self.verifier.key_index(api_key))):
                raise Rejected(
                    "rate_limited",
                    f"API key {api_key[:40]!r} sent more than webhooks.rate_limit ({self.rate_limit:g}) webhooks a "
                    f"second; retry after {math.ceil(wait)} s (LiveKit retries a 503 by itself)",
                    retry_after=math.ceil(wait),
                )
            body = await self._read(request)
            self.verifier.check_body(body, digest)
            try:
                ev = decode(body)
            except Malformed as e:
                raise Rejected("malformed", f"a validly signed body that is not a LiveKit webhook event: {e}") from None
        except Rejected as r:
            self.metrics.rejected.labels(r.reason).inc()
            self.rejections.warn(r, request.remote)
            response = _answer(r.status, error=r.detail, reason=r.reason)
            if r.retry_after:
                response.headers["Retry-After"] = str(r.retry_after)
            return response
        if ev.key in self.seen:
            self.metrics.duplicates.inc()
            return _answer(200, result="duplicate", id=ev.id)
        # Remembered only once applied: should applying ever fail, the 500 makes LiveKit retry, and
        # the retry is counted rather than taken for a duplicate.
        self.metrics.apply(ev, time.time())
        self.seen.add(ev.key)
        if (
            ev.name == UNKNOWN_EVENT
            and ev.raw_name not in self._unknown_logged
            and len(self._unknown_logged) < _UNKNOWN_NAMES_LOGGED
        ):
            self._unknown_logged.add(ev.raw_name)
            log.info(
                "webhook of an event type this version does not know: counted as event=unknown",
                extra={"event": ev.raw_name[:64]},
            )
        return _answer(200, result="accepted", id=ev.id)

    def _check_headers(self, request: web.Request) -> None:
        if request.content_length is not None and request.content_length > self.max_body:
            raise Rejected(
                "too_large",
                f"the body of {request.content_length} bytes exceeds webhooks.max_body_bytes ({self.max_body})",
            )
        if request.content_type not in CONTENT_TYPES:
            raise Rejected(
                "unsupported_media_type",
                f"Content-Type {request.content_type[:64]!r}: LiveKit "
                "sends application/webhook+json; send webhooks here only from LiveKit",
            )
        if not request.headers.get("Authorization", "").strip():
            raise Rejected("missing_auth", NO_AUTH)

    async def _read(self, request: web.Request) -> bytes:
        """The body, read no further than max_body_bytes + 1 whatever the framing. aiohttp's own
        limit is the largest of all endpoints', so only a Content-Length (checked against ours
        already, and where aiohttp stops) lets it read the body in one go (a few % faster)."""
        if request.content_length is not None:
            return await request.read()
        limit = self.max_body
        chunks, size = [], 0
        while chunk := await request.content.read(limit + 1 - size):
            size += len(chunk)
            if size > limit:
                raise Rejected("too_large", f"the body exceeds webhooks.max_body_bytes ({limit})")
            chunks.append(chunk)
        return b"".join(chunks)


def setup(app: web.Application, config: Config, telemetry: Telemetry) -> WebhookHandler:
    """Registers POST <webhooks.path>; LiveKit's own API key pair verifies when no keys are given."""
    cfg = config.webhooks
    keys = cfg.keys or (KeyPair(config.livekit.api_key, config.livekit.api_secret),)
    handler = WebhookHandler(cfg, Verifier(keys), WebhookMetrics(telemetry), len(keys))
    app.router.add_post(cfg.path, handler.handle)
    return handler
