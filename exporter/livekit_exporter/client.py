"""The push client: voice agents send events to the exporter's events API in batches.

    client = EventsClient("http://exporter:9784", token)      # or EventsClient.from_env()
    client.emit(CallStarted(agent="support", call_id=cid, direction="inbound"))
    ...
    await client.aclose()                                      # flushes what is queued

`emit()` never waits and never does I/O: it checks the event against the same model the exporter
validates with (an invalid event is dropped there, counted and logged, so it can never make the
exporter refuse a whole batch of other events), encodes it, appends it to a bounded queue and
returns at once (False when the event was dropped: invalid, queue full, or client closed). Call it
on the thread that runs the client's event loop (asyncio objects are not thread-safe); from another
thread use `loop.call_soon_threadsafe(client.emit, event)`.

A background task sends batches, each with an `Idempotency-Key` that stays the same across its
retries (so the exporter applies a retried batch once), retries with exponential backoff on 5xx,
408, 429, timeouts and connection errors, and drops a batch the exporter refuses with another 4xx
(its answer is logged, at most once a minute: it says what was wrong). On a 400 that lists the bad
events, only those are dropped and the rest is sent again; on a 413 (a batch over the exporter's
events.max_events or max_body_bytes) the batch is halved, and so is batch_size from then on. With the exporter down the agent's event
loop is not blocked: events queue up to `max_queue`, then are dropped and counted in `stats`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from .events.decode import check
from .events.model import EVENT_TYPES, Event
from .logsetup import RateLimitedLog

log = logging.getLogger(__name__)

DEFAULT_EVENTS_PATH = "/v1/events"
URL_ENV = "LIVEKIT_EXPORTER_EVENTS_URL"
TOKEN_ENV = "LIVEKIT_EXPORTER_EVENTS_TOKEN"
_RETRYABLE = frozenset({408, 429})


def _seconds(retry_after: str | None) -> float:
    """A Retry-After of delay-seconds (what the exporter sends); 0 for none or an HTTP date."""
    try:
        value = float(retry_after or 0)
    except ValueError:
        return 0.0
    return value if 0 < value < float("inf") else 0.0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)
_EVENT_TYPES = frozenset(EVENT_TYPES)
LOG_EVERY = 60.0  # seconds between two warnings of the same kind


class InvalidEvent(ValueError):
    """An event the exporter would refuse; the message says what is wrong and where."""


def encode(event: Any) -> bytes:
    """The event's JSON, when the exporter will accept it; raises InvalidEvent otherwise.

    The hot path allocates only the JSON and the decoded copy (no GC-tracked object: a GC pass
    in a large process is what would stall the agent's loop)."""
    if type(event) not in _EVENT_TYPES:  # (a set lookup: isinstance() with 12 types costs 0.3 µs)
        raise InvalidEvent(f"{type(event).__name__} is not an event of livekit_exporter.events.model")
    raw = _encoder.encode(event)
    try:
        decoded = _decoder.decode(raw)
    except msgspec.ValidationError as e:  # the model's own constraints, as the exporter checks them
        raise InvalidEvent(str(e)) from None
    if decoded != event:  # NaN and infinities encode as null, and would silently become "not measured"
        raise InvalidEvent("a number is NaN or infinite; use None for not measured")
    bad = check(decoded)
    if bad:
        raise InvalidEvent(f"{bad[1]} - at `$.{bad[0]}`")
    return raw


def validate(event: Any) -> tuple[bytes | None, str]:
    """(its JSON, "") for an event the exporter will accept, else (None, what is wrong with it)."""
    try:
        return encode(event), ""
    except InvalidEvent as e:
        return None, str(e)


@dataclass
class ClientStats:
    """What happened to the events handed to emit(); every event ends in exactly one bucket."""

    sent: int = 0
    dropped_invalid: int = 0  # emit() found them invalid: never queued
    dropped_queue_full: int = 0
    dropped_rejected: int = 0  # the exporter refused them (a 4xx, or listed as bad in a 400)
    dropped_failed: int = 0  # retries exhausted, or still queued when aclose() gave up
    retries: int = 0


class EventsClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        max_queue: int = 10_000,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
    ):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"events URL {url!r}: expected http(s)://host:port[/path][?project=<name>], like http://exporter:9784"
            )
        # The default path when none is given; a query (?project=<name>, with several projects) is kept.
        self.url = url if parts.path not in ("", "/") else urlunsplit(parts._replace(path=DEFAULT_EVENTS_PATH))
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        self.max_queue, self.batch_size, self.flush_interval = max_queue, batch_size, flush_interval
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.stats = ClientStats()
        self._queue: collections.deque[bytes] = collections.deque()  # each event's JSON
        self._in_flight = 0
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._log = RateLimitedLog(log, "livekit-exporter client warnings held back", 1, LOG_EVERY)

    @classmethod
    def from_env(cls, **kwargs: object) -> EventsClient:
        """From LIVEKIT_EXPORTER_EVENTS_URL and LIVEKIT_EXPORTER_EVENTS_TOKEN."""
        url, token = os.environ.get(URL_ENV), os.environ.get(TOKEN_ENV)
        missing = [name for name, v in ((URL_ENV, url), (TOKEN_ENV, token)) if not v]
        if missing:
            raise RuntimeError(
                f"set {' and '.join(missing)} (the exporter's URL and one of its events tokens), "
                "or pass a client explicitly"
            )
        return cls(url, token, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:  # never shows the token
        return f"EventsClient({self.url!r}, queued={len(self._queue)}, stats={self.stats})"

    # -- the agent's side: never waits ----------------------------------------------------------------

    def emit(self, event: Event) -> bool:
        """Queues one event; False when it was dropped (invalid, queue full or client closed).

        Call it on the event loop's thread. It never waits and never raises for a bad event."""
        if self._closed or len(self._queue) >= self.max_queue:
            self.stats.dropped_queue_full += 1
            self._log.warning(
                "queue_full",
                "events client queue is full: dropping events (is the exporter reachable?)",
                url=self.url,
                max_queue=self.max_queue,
                dropped=self.stats.dropped_queue_full,
            )
            return False
        try:
            self._queue.append(encode(event))
        except InvalidEvent as e:
            self.stats.dropped_invalid += 1
            self._log.warning(
                "invalid",
                "an invalid event was dropped; fix the code that builds it",
                event=type(event).__name__,
                problem=str(e),
                dropped=self.stats.dropped_invalid,
            )
            return False
        if self._task is None:
            self._start()
        if self._idle is not None:
            self._idle.clear()
        if len(self._queue) >= self.batch_size and self._wake is not None:
            self._wake.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._queue) + self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    # -- background sending --------------------------------------------------------------------------

    def _start(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started by the first emit() or flush() inside a running loop
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="livekit-exporter-events-client")

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while not self._closed:
            if not self._queue:
                self._idle.set()
                await self._sleep_until_woken()
            elif len(self._queue) < self.batch_size and not self._wake.is_set():
                await self._sleep_until_woken()  # let a partial batch fill up for one interval
            self._wake.clear()
            while self._queue:
                n = min(self.batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
                self._in_flight = n
                try:
                    await self._send(batch)
                except asyncio.CancelledError:  # aclose() gave up on it
                    self.stats.dropped_failed += n
                    raise
                except Exception:  # a bug must not stop delivery of the next batches
                    self.stats.dropped_failed += n
                    log.exception("events batch dropped: unexpected error", extra={"url": self.url})
                finally:
                    self._in_flight = 0

    async def _sleep_until_woken(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # races with the wake-up, and aclose() would then wait for the task forever.
        assert self._wake is not None
        try:
            async with asyncio.timeout(self.flush_interval):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _send(self, batch: list[bytes]) -> None:
        """Delivers a batch; on a 400 listing bad events, drops those and delivers the rest; on a
        413, halves it (and the batch size from then on) and delivers the halves."""
        todo = [batch]
        while todo:
            todo[:0] = await self._send_once(todo.pop(0))

    async def _send_once(self, batch: list[bytes]) -> list[list[bytes]]:
        """Sends one batch with its retries; returns the batches left to send."""
        body = b'{"events":[' + b",".join(batch) + b"]}"
        headers = {**self._headers, "Idempotency-Key": uuid.uuid4().hex}  # the same on every retry
        problem = ""
        retry_after = 0.0  # what the exporter asked for (429, 503), honoured up to max_backoff
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
                delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                await asyncio.sleep(min(self.max_backoff, max(delay, retry_after)))
            try:
                if self._session is None:
                    self._session = aiohttp.ClientSession(timeout=self.timeout)
                async with self._session.post(self.url, data=body, headers=headers) as resp:
                    if resp.status == 200:
                        self.stats.sent += len(batch)
                        return []
                    if resp.status == 413 and len(batch) > 1:  # over events.max_events or max_body_bytes
                        half = len(batch) // 2
                        if self.batch_size > half:
                            self.batch_size = half
                            self._log.warning(
                                "too_large",
                                "the exporter refused a batch as too large; sending smaller ones",
                                url=self.url,
                                batch_size=half,
                            )
                        return [batch[:half], batch[half:]]
                    text = await resp.text()
                    if resp.status < 500 and resp.status not in _RETRYABLE:
                        return self._refused(batch, resp.status, text)
                    problem = f"HTTP {resp.status}: {text[:200]}"
                    retry_after = _seconds(resp.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                problem = f"{type(e).__name__}: {e}"
                retry_after = 0.0
            log.debug(
                "events batch not delivered; will retry",
                extra={"url": self.url, "attempt": attempt + 1, "problem": problem},
            )
        self.stats.dropped_failed += len(batch)
        self._log.warning(
            "failed",
            "events batch dropped after retries",
            url=self.url,
            events=len(batch),
            retries=self.max_retries,
            problem=problem,
        )
        return []

    def _refused(self, batch: list[bytes], status: int, text: str) -> list[list[bytes]]:
        """A final 4xx: the events a 400 names are dropped and the rest returned; otherwise all dropped."""
        bad: set[int] = set()
        if status == 400:
            try:
                problems = json.loads(text).get("problems") or []
                bad = {p["index"] for p in problems}
            except (ValueError, AttributeError, TypeError, KeyError):
                bad = set()
        if bad and all(isinstance(i, int) and 0 <= i < len(batch) for i in bad):
            rest = [e for i, e in enumerate(batch) if i not in bad]
        else:
            rest = []  # the body itself, the token or the size was refused: nothing to salvage
        self.stats.dropped_rejected += len(batch) - len(rest)
        self._log.warning(
            f"refused_{status}",
            "the exporter refused events; they are dropped",
            url=self.url,
            status=status,
            dropped=len(batch) - len(rest),
            resent=len(rest),
            answer=text[:2000],
        )
        return [rest] if rest else []

    # -- shutting down ----------------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> bool:
        """Sends everything queued now; True when done within `timeout` seconds."""
        if self._task is None:
            if not self._queue:
                return True
            self._start()
        assert self._wake is not None and self._idle is not None
        if not self._queue and not self._in_flight:
            return True
        self._idle.clear()
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def aclose(self, timeout: float = 5.0) -> None:
        """Flushes for at most `timeout` seconds, then stops; what is left is counted as dropped."""
        if self._closed:
            return
        await self.flush(timeout)
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.stats.dropped_failed += len(self._queue)
        self._queue.clear()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> EventsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class DisabledClient:
    """Stands in for an EventsClient that could not be configured: drops every event, counts it in
    `stats.dropped_failed`, and never fails. livekit_exporter.agents uses it when the environment
    lacks the exporter's URL or token, so a misconfigured exporter never breaks a call."""

    url = ""
    closed = False

    def __init__(self) -> None:
        self.stats = ClientStats()

    def __repr__(self) -> str:
        return f"DisabledClient(stats={self.stats})"

    def emit(self, event: Event) -> bool:
        self.stats.dropped_failed += 1
        return False

    @property
    def queued(self) -> int:
        return 0

    async def flush(self, timeout: float | None = None) -> bool:
        return True

    async def aclose(self, timeout: float = 5.0) -> None:
        self.closed = True
