"""POST <webhooks.path>: the HTTP face, one straight path from the request to the metrics, with
the deduplication of retried deliveries."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

import orjson
from aiohttp import web
from prometheus_client import Counter

from ..config import Config, KeyPair, WebhooksConfig
from ..expiring import ExpiringMap
from ..logsetup import RateLimitedLog
from ..projects import OWN, Target, webhook_signers
from ..ratelimit import RateLimiter
from ..telemetry import Telemetry
from .decode import UNKNOWN_EVENT, Malformed, decode
from .metrics import DECLARATIONS, WebhookMetrics
from .verify import NO_AUTH, REJECTIONS, Rejected, Verifier

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
    """POST <webhooks.path>: one request, one straight path to the metrics of the target (projects.py)
    whose key signed it; `unattributed` counts the rejections that name no configured key."""

    def __init__(
        self,
        cfg: WebhooksConfig,
        signers: Mapping[str, tuple[KeyPair, ...]],
        metrics: Mapping[str, WebhookMetrics],
        unattributed: Counter,
    ):
        keys = [key for target in signers.values() for key in target]
        self.max_body = cfg.max_body_bytes
        self.verifier = Verifier(keys)
        self.rate_limit = cfg.rate_limit
        self.limiter = RateLimiter(cfg.rate_limit, cfg.rate_limit_burst, len(keys)) if cfg.rate_limit else None
        self.metrics = dict(metrics)
        self.by_key = {key.api_key: self.metrics[target] for target, pairs in signers.items() for key in pairs}
        # An event id is unique within one LiveKit project: deduplication is per project.
        self.id_prefix = {key.api_key: target.encode() + b"/" for target, pairs in signers.items() for key in pairs}
        self.unattributed = unattributed
        self.seen = RecentIds(cfg.dedup_ttl, cfg.dedup_max_entries)
        self.rejections = RejectionLog()
        self._unknown_logged: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        api_key = None
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
            signer = self.by_key.get(r.api_key or api_key or "")
            (signer.rejected if signer is not None else self.unattributed).labels(r.reason).inc()
            self.rejections.warn(r, request.remote)
            response = _answer(r.status, error=r.detail, reason=r.reason)
            if r.retry_after:
                response.headers["Retry-After"] = str(r.retry_after)
            return response
        metrics, seen_key = self.by_key[api_key], self.id_prefix[api_key] + ev.key
        if seen_key in self.seen:
            metrics.duplicates.inc()
            return _answer(200, result="duplicate", id=ev.id)
        # Remembered only once applied: should applying ever fail, the 500 makes LiveKit retry, and
        # the retry is counted rather than taken for a duplicate.
        metrics.apply(ev, time.time())
        self.seen.add(seen_key)
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


def unattributed_rejections(telemetry: Telemetry) -> Counter:
    """livekit_webhook_rejected_total alone, on the exporter's own target of a multi-project install:
    the rejections of webhooks that name no configured key (and so no project)."""
    (declared,) = [d for d in DECLARATIONS if d.attribute == "rejected"]
    counter = Counter(declared.name, declared.help, declared.labels, registry=telemetry.registry)
    for reason in REJECTIONS:
        counter.labels(reason)
    return counter


def setup(app: web.Application, config: Config, targets: Mapping[str, Target]) -> WebhookHandler:
    """Registers POST <webhooks.path>. Each target's webhooks are verified with its key pairs
    (projects.webhook_signers: LiveKit's own API key pair when none are given) and counted on its registry."""
    signers = webhook_signers(config)
    metrics = {name: WebhookMetrics(targets[name].telemetry) for name in signers}
    own = targets[OWN]
    unattributed = metrics[OWN].rejected if OWN in metrics else unattributed_rejections(own.telemetry)
    handler = WebhookHandler(config.webhooks, signers, metrics, unattributed)
    app.router.add_post(config.webhooks.path, handler.handle)
    return handler
