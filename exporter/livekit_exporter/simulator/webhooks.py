"""The simulator's webhook face: every change in the scenario becomes the webhook LiveKit would send.

    sender = WebhookSender(scenario, "http://127.0.0.1:9784/webhook")
    async with sender:                  # delivers in the background, in order, one at a time
        scenario.add_room("a")          # -> room_started, signed and POSTed
        await sender.flush()
    sender.truth()                      # what the exporter's webhook counters must read

As LiveKit sends them (livekit/protocol webhook/resource_url_notifier.go, livekit-server
pkg/telemetry/events.go): a WebhookEvent with `id` EV_..., `created_at` in seconds, and the objects
LiveKit attaches (track events carry a room with only sid and name and a participant with only sid
and identity; room_finished carries the room and its room_end_reason); the body in protojson
(camelCase keys, enum names, int64 as strings); `Authorization: <JWT>` without "Bearer", HS256 with
the key pair, valid 5 minutes, claim sha256 = base64(SHA-256(body)), signed once per delivery;
`Content-Type: application/webhook+json`. Delivery follows LiveKit's client (hashicorp
go-retryablehttp defaults, which resend the same request, Authorization included): retries on
connection errors, 429 and 5xx except 501, waiting
1 s, 2 s, 4 s, 8 s (capped at 30 s), at most 4 retries; a 4xx is final; an event that waited in
the queue longer than 30 s is dropped unsent.

On demand (`Delivery`): lost answers (the exporter counted the event, the sender never heard and
retries it), replays of an accepted request, and out-of-order delivery within a window.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import random
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.protobuf.json_format import MessageToJson
from livekit.api import AccessToken
from livekit.protocol import models as proto_models
from livekit.protocol.webhook import WebhookEvent

from .. import lkenums
from .scenario import Expected, Scenario
from .service import Service

CONTENT_TYPE = "application/webhook+json"
TOKEN_TTL = datetime.timedelta(minutes=5)
_ID_ALPHABET = string.ascii_letters + string.digits


def build_event(name: str, payload: dict[str, Any], *, event_id: str, created_at: int) -> WebhookEvent:
    """The WebhookEvent LiveKit sends for a scenario change (copies: the scenario keeps mutating)."""
    ev = WebhookEvent(event=name, id=event_id, created_at=created_at)
    room = payload.get("room")
    participant = payload.get("participant")
    if name.startswith("track_"):
        # LiveKit's telemetry knows only these of the room and participant on track events.
        if room is not None:
            ev.room.CopyFrom(proto_models.Room(sid=room.sid, name=room.name))
        if participant is not None:
            ev.participant.CopyFrom(proto_models.ParticipantInfo(sid=participant.sid, identity=participant.identity))
    else:
        if room is not None:
            ev.room.CopyFrom(room)
        if participant is not None:
            ev.participant.CopyFrom(participant)
    for key in ("track", "egress_info", "ingress_info", "job"):
        if payload.get(key) is not None:
            getattr(ev, key).CopyFrom(payload[key])
    if "room_end_reason" in payload:
        ev.room_end_reason = payload["room_end_reason"]
    return ev


def encode(event: WebhookEvent) -> bytes:
    """protojson, as LiveKit's protojson.Marshal writes it: camelCase, enum names, int64 as strings."""
    return MessageToJson(event, indent=None).encode()


def sign(body: bytes, api_key: str, api_secret: str, ttl: datetime.timedelta = TOKEN_TTL) -> str:
    """The Authorization value LiveKit sends: a JWT (no "Bearer ") vouching for exactly this body."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return AccessToken(api_key, api_secret).with_ttl(ttl).with_sha256(digest).to_jwt()


def request_headers(token: str) -> dict[str, str]:
    return {"Authorization": token, "Content-Type": CONTENT_TYPE, "User-Agent": "livekit-simulator"}


def retryable(status: int | None) -> bool:
    """go-retryablehttp's default policy; None is a connection error or timeout."""
    return status is None or status == 429 or (status >= 500 and status != 501)


@dataclass(frozen=True)
class Delivery:
    """How the sender delivers. The defaults are LiveKit's; tests shorten the waits."""

    retry_wait_min: float = 1.0
    retry_wait_max: float = 30.0
    max_retries: int = 4
    max_age: float = 30.0  # seconds an event may wait in the queue before it is dropped
    attempt_timeout: float = 10.0
    lost_answer_rate: float = 0.0  # share of 2xx answers treated as lost: the event is retried
    replay_rate: float = 0.0  # share of accepted events whose request is sent once more, unchanged
    reorder_window: int = 1  # events are delivered in random order within groups of this many
    seed: int = 0

    def backoff(self, attempt: int) -> float:
        return min(self.retry_wait_min * 2**attempt, self.retry_wait_max)


@dataclass
class _Outgoing:
    event: WebhookEvent
    body: bytes
    queued_at: float = field(default_factory=time.monotonic)


class WebhookSender(Service):
    """Signs and POSTs the scenario's webhooks to `url`, from the moment it is built."""

    def __init__(
        self,
        scenario: Scenario,
        url: str,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        delivery: Delivery = Delivery(),
    ):
        self.scenario = scenario
        self.url = url
        self.api_key = api_key or scenario.api_key
        self.api_secret = api_secret or scenario.api_secret
        self.delivery = delivery
        self.events: list[WebhookEvent] = []  # every event generated, in order
        self.accepted: dict[str, WebhookEvent] = {}  # id -> event the receiver answered 2xx for
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(delivery.seed)
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        scenario.subscribe(self._on_change)

    def _on_change(self, name: str, payload: dict[str, Any]) -> None:
        if self._closed:
            return
        event_id = "EV_" + "".join(self._rng.choices(_ID_ALPHABET, k=12))
        ev = build_event(name, payload, event_id=event_id, created_at=int(self.scenario.clock()))
        self.events.append(ev)
        self._queue.put_nowait(_Outgoing(ev, encode(ev)))

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._worker = asyncio.create_task(self._run())

    async def flush(self) -> None:
        """Waits until every event generated so far was delivered, given up or dropped."""
        await self._queue.join()

    async def stop(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self.delivery.reorder_window and not self._queue.empty():
                group.append(self._queue.get_nowait())
            self._rng.shuffle(group)
            for item in group:
                try:
                    await self._deliver(item)
                finally:
                    self._queue.task_done()

    async def _deliver(self, item: _Outgoing) -> None:
        d = self.delivery
        if time.monotonic() - item.queued_at > d.max_age:
            self.stats["dropped_too_old"] += 1
            return
        attempt = 0
        headers = request_headers(sign(item.body, self.api_key, self.api_secret))
        while True:
            status = await self._post(item.body, headers)
            ok = status is not None and 200 <= status < 300
            if ok:
                self.accepted[item.event.id] = item.event
            lost = ok and self._rng.random() < d.lost_answer_rate
            if lost:
                self.stats["lost_answers"] += 1
            if not (lost or (not ok and retryable(status))) or attempt >= d.max_retries:
                break
            self.stats["retries"] += 1
            await asyncio.sleep(d.backoff(attempt))
            attempt += 1
        if not ok or lost:  # as far as the sender knows, the event never arrived
            self.stats["failed"] += 1
        elif self._rng.random() < d.replay_rate:
            self.stats["replays"] += 1
            await self._post(item.body, headers)

    async def _post(self, body: bytes, headers: dict[str, str]) -> int | None:
        assert self._session is not None, "start() the sender first"
        self.stats["attempts"] += 1
        try:
            async with self._session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.delivery.attempt_timeout),
            ) as resp:
                await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            self.stats["connection_errors"] += 1
            return None
        self.stats[f"status_{resp.status}"] += 1
        return resp.status

    def truth(self) -> dict[tuple[str, frozenset], float]:
        """What every webhook counter (and histogram _count/_sum) must read after the accepted events,
        keyed (sample name, frozenset(labels)), from the events themselves."""
        t = Expected()
        put = t.put

        def observe(metric: str, seconds: float, **labels: str) -> None:
            put(metric + "_count", 1, **labels)
            put(metric + "_sum", seconds, **labels)

        for ev in self.accepted.values():
            name, p = ev.event, ev.participant
            put("livekit_webhook_events_total", 1, event=name)
            put("livekit_webhook_delivery_delay_seconds_count", 1, event=name)
            kind = lkenums.label(lkenums.PARTICIPANT_KIND, p.kind)
            trunk = p.attributes.get("sip.trunkID") or "none"
            reason = lkenums.label(lkenums.DISCONNECT_REASON, p.disconnect_reason)
            if name == "room_started":
                put("livekit_room_sessions_started_total", 1)
            elif name == "room_finished":
                put(
                    "livekit_room_sessions_ended_total",
                    1,
                    end_reason=lkenums.label(lkenums.ROOM_END_REASON, ev.room_end_reason),
                )
                observe("livekit_room_session_duration_seconds", max(0, ev.created_at - ev.room.creation_time))
            elif name == "participant_joined":
                put("livekit_participant_sessions_started_total", 1, kind=kind)
                if kind == "sip":
                    put("livekit_sip_calls_started_total", 1, trunk=trunk)
            elif name == "participant_left":
                put("livekit_participant_sessions_ended_total", 1, kind=kind, reason=reason)
                observe("livekit_participant_session_duration_seconds", max(0, ev.created_at - p.joined_at), kind=kind)
                if kind == "sip":
                    put("livekit_sip_calls_ended_total", 1, trunk=trunk, reason=reason)
            elif name == "participant_connection_aborted":
                put("livekit_participant_connections_aborted_total", 1, kind=kind)
            elif name == "track_published":
                put(
                    "livekit_track_publications_total",
                    1,
                    type=lkenums.label(lkenums.TRACK_TYPE, ev.track.type),
                    source=lkenums.label(lkenums.TRACK_SOURCE, ev.track.source),
                )
            elif name in ("egress_started", "egress_ended"):
                info = ev.egress_info
                etype = lkenums.egress_type(info)
                if name == "egress_started":
                    put("livekit_egress_started_total", 1, type=etype)
                    continue
                put(
                    "livekit_egress_ended_total",
                    1,
                    type=etype,
                    status=lkenums.label(lkenums.EGRESS_STATUS, info.status),
                )
                if info.started_at:
                    observe("livekit_egress_duration_seconds", (info.ended_at - info.started_at) / 1e9, type=etype)
                size = sum(r.size for r in info.file_results) + sum(r.size for r in info.segment_results)
                if size:
                    put("livekit_egress_output_bytes_total", size, type=etype)
            elif name in ("ingress_started", "ingress_ended"):
                ingress_info = ev.ingress_info
                itype = lkenums.label(lkenums.INGRESS_INPUT, ingress_info.input_type)
                if name == "ingress_started":
                    put("livekit_ingress_started_total", 1, input_type=itype)
                else:
                    put(
                        "livekit_ingress_ended_total",
                        1,
                        input_type=itype,
                        status=lkenums.label(lkenums.INGRESS_STATUS, ingress_info.state.status),
                    )
            elif name == "agent_job_started":
                put("livekit_agent_jobs_started_total", 1, agent_name=ev.job.agent_name or "unnamed")
            elif name == "agent_job_ended":
                put(
                    "livekit_agent_jobs_ended_total",
                    1,
                    agent_name=ev.job.agent_name or "unnamed",
                    status=lkenums.label(lkenums.JOB_STATUS, ev.job.state.status),
                )
        return t
