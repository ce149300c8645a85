"""The voice-agent events API: POST <events.path> -> auth -> limits -> decode -> apply.

    events.setup(app, config, targets)       # from server.build_app, when events are enabled

Answers (JSON bodies, see docs/events-api.md):
    200 {"accepted": n, "discarded": [...]}   applied; `discarded` lists timings over max_latency
    400 {"error", "problems": [{index, path, reason[, line]}]}   nothing applied
    400 ?project= names no project (or, with projects, a token of events.tokens names none)
    401 no or unknown bearer token; 403 a project's token naming another project
    413 body or event count over the limit; 415 wrong content type
    422 an Idempotency-Key reused with a different body
    429 the token sent more than events.rate_limit requests a second (over events.rate_limit_burst)

An answer stays small whatever the batch: at most events.max_listed_problems entries of
`discarded` or `problems` are listed, the rest are counted by path under
`omitted: {"count", "by_path"}`. Every refusal is counted by reason in
livekit_exporter_event_requests_rejected_total and logged at most REJECTION_LOG_LINES times a
reason per minute.

Idempotency: a request may carry an `Idempotency-Key` header (the push client sends one per batch,
unchanged across its retries). The answer to an applied request is remembered under (token, key)
for events.idempotency_ttl (at most events.idempotency_max_entries keys, and
events.idempotency_max_bytes in all: a digest of the body and the answer, compressed when long); a
repeat gets the same answer, with `Idempotent-Replayed: true`, and is not applied again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, NamedTuple

from aiohttp import web
from prometheus_client import Counter

from ..config import Config
from ..expiring import ExpiringMap
from ..logsetup import RateLimitedLog
from ..projects import OWN, PROJECT_PARAMETER, Target, counting_targets, events_tokens, unknown_project
from ..ratelimit import RateLimiter
from ..telemetry import Telemetry
from .decode import JSON_TYPES, NDJSON_TYPES, BadBatch, clip, decode_json, decode_ndjson
from .pipeline import PLAIN_COUNTERS, Discarded, Pipeline

__all__ = ["HANDLER", "PIPELINE", "EventsHandler", "Pipeline", "setup"]

log = logging.getLogger(__name__)

PIPELINE = web.AppKey("events_pipeline", Pipeline)
ACCEPTED_TYPES = ", ".join(JSON_TYPES + NDJSON_TYPES)
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Visible ASCII, no quotes or backslashes (what an sf-string holds, quotes optional), up to 255.
_KEY = re.compile(r'^"?([\x21\x23-\x5b\x5d-\x7e]{1,255})"?$')
# Warnings per rejection reason and minute; the rest are summed up in one line when the minute
# ends. livekit_exporter_event_requests_rejected_total carries the rate.
REJECTION_LOG_LINES = 5
NO_TOKENS = (
    "the events API has no token configured: set events.tokens, events.token_files or "
    "LIVEKIT_EXPORTER_EVENTS_TOKENS on the exporter"
)
UNKNOWN_TOKEN = (
    "missing or unknown bearer token: send 'Authorization: Bearer <token>' with one of the exporter's events tokens"
)
REJECTION_LOG_WINDOW = 60.0


# -- idempotency ----------------------------------------------------------------------------------

# Memory of one remembered answer beyond its body, with a key of the longest kind (255
# characters): the key tuple and string, the answer tuple, the digest, the cache's own links
# (measured with tracemalloc, rounded up; see test_the_idempotency_cache_stays_within_its_bytes).
ENTRY_OVERHEAD = 900
# Answers longer than this are kept compressed (a long `discarded` list repeats itself).
COMPRESS_OVER = 512


class _Answer(NamedTuple):
    digest: bytes  # of the request body, to tell a retry from a key reused for other content
    body: bytes  # as sent, or zlib-compressed
    compressed: bool

    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD

    def text(self) -> bytes:
        return zlib.decompress(self.body) if self.compressed else self.body


class IdempotencyCache(ExpiringMap[tuple[int, str], _Answer]):
    """(token, key) -> the answer to the applied request, for `ttl` seconds, at most `max_entries`
    and `max_bytes` (answers and keys together, as getsizeof counts them: currsize); the least
    recently used go first."""

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 64 << 20,
    ):
        super().__init__(max_bytes, ttl, timer=clock, getsizeof=_Answer.size)
        self.max_entries = max_entries

    def __setitem__(self, key: tuple[int, str], value: _Answer) -> None:
        if key not in self:
            while len(self) >= self.max_entries:
                self.popitem()
        super().__setitem__(key, value)

    def put(self, key: tuple[int, str], digest: bytes, body: bytes) -> None:
        compressed = len(body) > COMPRESS_OVER
        answer = _Answer(digest, zlib.compress(body, 1) if compressed else body, compressed)
        if answer.size() <= self.maxsize:  # else not remembered: a retry would be applied again
            self[key] = answer


# -- rate limit -----------------------------------------------------------------------------------


# -- answers --------------------------------------------------------------------------------------

# A path's event index, so that problems of one kind in different events count together.
_EVENT_INDEX = re.compile(r"^\$\.events\[\d+\]")
# Kinds of omitted entries counted apart (paths come from the schema's fields; this only bounds it).
MAX_KINDS = 32


def _kind(path: str) -> str:
    return _EVENT_INDEX.sub("$.events[*]", path, count=1)


def _omitted(paths: Iterable[str]) -> dict[str, object]:
    """{"count", "by_path"} of the entries an answer does not list, by path (event index as *)."""
    by_path: dict[str, int] = {}
    count = 0
    for path in paths:
        count += 1
        kind = _kind(path)
        if kind not in by_path and len(by_path) >= MAX_KINDS:
            kind = "other"
        by_path[kind] = by_path.get(kind, 0) + 1
    return {"count": count, "by_path": by_path}


def _error(
    status: int,
    message: str,
    problems: list[dict[str, object]] | None = None,
    headers: dict[str, str] | None = None,
    omitted: dict[str, object] | None = None,
) -> web.Response:
    body: dict[str, object] = {"error": message}
    if problems is not None:
        body["problems"] = problems
    if omitted is not None:
        body["omitted"] = omitted
    return web.json_response(body, status=status, headers=headers)


class EventsHandler:
    """POST <events.path>: auth, limits, decode, apply to the pipeline of the request's target
    (projects.py: its token's project, or the one its ?project= names), answer (and remember it for
    its key). `unattributed` counts the refusals that come before a target is known."""

    def __init__(self, config: Config, pipelines: Mapping[str, Pipeline], unattributed: Counter):
        self.cfg = config.events
        self.pipelines = dict(pipelines)
        self.unattributed = unattributed
        tokens = events_tokens(config)
        self._tokens = [t.reveal().encode() for t in tokens]
        self._token_targets = list(tokens.values())
        self.idempotency = IdempotencyCache(
            self.cfg.idempotency_ttl, self.cfg.idempotency_max_entries, max_bytes=self.cfg.idempotency_max_bytes
        )
        self._log = RateLimitedLog(
            log, "events rejections not logged", REJECTION_LOG_LINES, REJECTION_LOG_WINDOW, kind_field="reason"
        )
        self.limiter = (
            RateLimiter(self.cfg.rate_limit, self.cfg.rate_limit_burst, len(self._tokens))
            if self.cfg.rate_limit
            else None
        )

    def _authorized(self, header: str) -> int | None:
        """The index of the request's token among the configured ones, or None."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        # The header's bytes as sent: aiohttp decodes them as UTF-8 with surrogateescape, so a
        # byte that is not UTF-8 comes back as itself (and matches no token) instead of raising.
        candidate = given.strip().encode("utf-8", "surrogateescape")
        found = None
        for i, token in enumerate(self._tokens):  # every token compared, in constant time each
            if hmac.compare_digest(candidate, token):
                found = i
        return found

    def _reject(
        self,
        request: web.Request,
        reason: str,
        status: int,
        message: str,
        pipeline: Pipeline | None = None,
        **answer: Any,
    ) -> web.Response:
        """Counts (under `pipeline`'s project, or the exporter's own), logs and answers a refusal;
        `answer` holds _error's problems, headers and omitted."""
        (pipeline.requests_rejected if pipeline is not None else self.unattributed).labels(reason).inc()
        self._log.warning(
            reason, "events request rejected", reason=reason, status=status, detail=message, remote=request.remote
        )
        return _error(status, message, **answer)

    def _bad_batch(self, request: web.Request, e: BadBatch, pipeline: Pipeline) -> web.Response:
        if not e.problems and e.status != 400:
            return self._reject(request, e.reason, e.status, e.message, pipeline=pipeline)
        limit = self.cfg.max_listed_problems
        listed = [p.as_dict() for p in e.problems[:limit]]
        omitted = None
        message = e.message
        if len(e.problems) > limit:
            omitted = _omitted(p.path for p in e.problems[limit:])
            message += f"; the first {limit} problems are listed, the other {omitted['count']} counted under omitted"
        return self._reject(request, e.reason, e.status, message, pipeline, problems=listed, omitted=omitted)

    def _accepted(self, n: int, discarded: list[Discarded], lines: list[int] | None) -> web.Response:
        limit = self.cfg.max_listed_problems
        answer: dict[str, object] = {
            "accepted": n,
            "discarded": [d.describe(self.cfg.max_latency, lines) for d in discarded[:limit]],
        }
        if len(discarded) > limit:
            at = "$." if lines is not None else "$.events[*]."
            answer["omitted"] = _omitted(at + d.field for d in discarded[limit:])
        return web.json_response(answer)

    def _target(self, request: web.Request, token: int) -> Pipeline | web.Response:
        """The pipeline of the request's target, or the refusal saying why it has none (counted under
        the token's own project, when it has one)."""
        bound = self._token_targets[token]
        named = request.query.get(PROJECT_PARAMETER)
        own = self.pipelines.get(bound) if bound is not None else None
        if named is not None and bound and named != bound:  # bound to a named project (OWN is no name)
            return self._reject(
                request,
                "forbidden_project",
                403,
                f"this token pushes the events of another project than {clip(named, 64)!r}: leave out "
                f"?{PROJECT_PARAMETER}= (or push with a token of events.tokens)",
                pipeline=own,
            )
        name = bound if named is None else named
        if name is None:
            listed = ", ".join(sorted(n for n in self.pipelines if n != OWN))
            message = (
                f"this token (of events.tokens) may push to any project: name one with ?{PROJECT_PARAMETER}=<name>, "
                f"one of {listed}"
            )
            return self._reject(request, "unknown_project", 400, message)
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            problem = unknown_project(name, self.pipelines, "events")
            return self._reject(request, "unknown_project", 400, problem, pipeline=own)
        return pipeline

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
        token = self._authorized(request.headers.get("Authorization", "")) if self._tokens else None
        if token is None:
            # RFC 6750: the challenge names the error when a token was sent and is not one of ours
            challenge, message = (
                ('Bearer realm="livekit-exporter events", error="invalid_token"', UNKNOWN_TOKEN)
                if self._tokens
                else ('Bearer realm="livekit-exporter events"', NO_TOKENS)
            )
            return self._reject(request, "unauthorized", 401, message, headers={"WWW-Authenticate": challenge})
        pipeline = self._target(request, token)
        if isinstance(pipeline, web.Response):
            return pipeline
        if self.limiter is not None and (wait := self.limiter.wait(token)):
            return self._reject(
                request,
                "rate_limited",
                429,
                f"this token sent more than events.rate_limit ({self.cfg.rate_limit:g}) requests a second; "
                "nothing was applied. Retry after Retry-After seconds, with the same Idempotency-Key, or send "
                "fewer, larger batches",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
                pipeline=pipeline,
            )
        ctype = request.content_type
        if ctype not in JSON_TYPES and ctype not in NDJSON_TYPES:
            return self._reject(
                request,
                "unsupported_media_type",
                415,
                f"Content-Type {clip(ctype, 64)!r} is not accepted; use one of {ACCEPTED_TYPES}",
                headers={"Accept-Post": ACCEPTED_TYPES},
                pipeline=pipeline,
            )
        key = None
        if (raw_key := request.headers.get(IDEMPOTENCY_HEADER)) is not None:
            match = _KEY.match(raw_key)
            if match is None:
                return self._reject(
                    request,
                    "invalid",
                    400,
                    f"the {IDEMPOTENCY_HEADER} header must be 1 to 255 visible ASCII characters (no quotes "
                    "or backslashes inside), e.g. a UUID; send a new one per batch and the same one on its retries",
                    problems=[],
                    pipeline=pipeline,
                )
            key = (token, match[1])
        body = await self._read(request)
        if body is None:
            return self._reject(
                request,
                "too_large",
                413,
                f"the body is larger than events.max_body_bytes ({self.cfg.max_body_bytes} bytes); "
                "send smaller batches",
                pipeline=pipeline,
            )
        digest = b""
        if key is not None:
            # From here to the end nothing awaits: a concurrent repeat sees the answer stored below.
            digest = hashlib.blake2b(body, digest_size=16).digest()
            seen = self.idempotency.get(key)
            if seen is not None:
                if seen.digest != digest:
                    return self._reject(
                        request,
                        "idempotency_conflict",
                        422,
                        f"this {IDEMPOTENCY_HEADER} was already used for a different batch; nothing was "
                        "applied. Use a new key for each batch, and the same key only to retry the same body",
                        pipeline=pipeline,
                    )
                return web.Response(
                    body=seen.text(), content_type="application/json", headers={"Idempotent-Replayed": "true"}
                )
        try:
            decode = decode_json if ctype in JSON_TYPES else decode_ndjson
            events, lines = decode(body, self.cfg.max_events)
        except BadBatch as e:
            return self._bad_batch(request, e, pipeline)
        answer = self._accepted(len(events), pipeline.apply(events), lines)
        if key is not None:
            assert isinstance(answer.body, bytes)
            self.idempotency.put(key, digest, answer.body)
        return answer


HANDLER = web.AppKey("events_handler", EventsHandler)


def unattributed_rejections(telemetry: Telemetry) -> Counter:
    """livekit_exporter_event_requests_rejected_total alone, on the exporter's own target of a
    multi-project install: the refusals that come before a project is known (an unknown token)."""
    (declared,) = [d for d in PLAIN_COUNTERS if d.attribute == "requests_rejected"]
    return Counter(declared.name, declared.help, declared.labels, registry=telemetry.registry)


def setup(app: web.Application, config: Config, targets: Mapping[str, Target]) -> dict[str, Pipeline]:
    """Registers POST <events.path> and the TTL sweeper on `app`; returns each counting target's pipeline."""
    pipelines = {name: Pipeline(config.events, targets[name].telemetry) for name in counting_targets(config)}
    if OWN in pipelines:
        app[PIPELINE] = pipelines[OWN]
        unattributed = pipelines[OWN].requests_rejected
    else:
        unattributed = unattributed_rejections(targets[OWN].telemetry)
    handler = app[HANDLER] = EventsHandler(config, pipelines, unattributed)
    app.router.add_post(config.events.path, handler.handle)
    if not events_tokens(config):
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
                for pipeline in pipelines.values():
                    pipeline.sweep()

        task = asyncio.create_task(loop(), name="events-ttl-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sweeper)
    return pipelines
