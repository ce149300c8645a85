"""LiveKit server state, read on each scrape through the official livekit-api client.

One scrape: every enabled service is called concurrently under one deadline (the scrape timeout
minus a margin); paginated lists are followed to the end; optional per-room detail runs with bounded
concurrency. The answers form a Snapshot, from which fresh metric families are built, so a room
that has gone never lingers as a stale series. Concurrent scrapes share one in-flight collection.

A sample of the default output:

    livekit_up 1
    livekit_api_up{service="room"} 1
    livekit_rooms{occupancy="occupied"} 12
    livekit_room_participants 31
    livekit_egress_active{type="room_composite",status="active"} 2
    livekit_ingress{input_type="rtmp",status="publishing"} 1
    livekit_sip_trunks{direction="inbound"} 3
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

import aiohttp
from livekit import api
from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress
from livekit.protocol import models as proto_models
from livekit.protocol import sip as proto_sip
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import lkenums as E
from .config import CollectConfig, LiveKitConfig
from .guard import LabelGuard
from .telemetry import Telemetry

log = logging.getLogger(__name__)

SIP_PAGE_SIZE = 1000
NOT_FOUND_CODES = {"not_found"}
DETAIL_SERVICES = ("room", "agent_dispatch")


@dataclass
class Snapshot:
    """What LiveKit answered in one collection. A list is None when its service failed."""

    up: dict[str, bool] = field(default_factory=dict)
    rooms: list[proto_models.Room] | None = None
    egress: list[proto_egress.EgressInfo] | None = None
    ingress: list[proto_ingress.IngressInfo] | None = None
    inbound_trunks: int | None = None
    outbound_trunks: int | None = None
    dispatch_rules: int | None = None
    participants: dict[str, list[proto_models.ParticipantInfo]] | None = None
    dispatches: dict[str, list[proto_dispatch.AgentDispatch]] | None = None
    detail_skipped_rooms: int = 0
    duration: float = 0.0


class _CallFailed(Exception):
    pass


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, api.TwirpError):
        return exc.code or "unknown"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "tls"
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError)):
        return "connection"
    return "unknown"


class StateCollector:
    """Reads LiveKit on demand; owns one livekit-api client for the exporter's lifetime."""

    def __init__(self, livekit: LiveKitConfig, collect: CollectConfig, telemetry: Telemetry):
        self.livekit = livekit
        self.cfg = collect
        self.telemetry = telemetry
        self._lkapi: api.LiveKitAPI | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Future[Snapshot] | None = None
        self.answered_once = False

    @property
    def enabled_services(self) -> tuple[str, ...]:
        services = list(self.cfg.services)
        det = self.cfg.room_detail
        if det.enabled and det.agent_dispatch and "room" in services:
            services.append("agent_dispatch")
        return tuple(services)

    async def start(self) -> None:
        # livekit-api must be built inside a running loop; we pass our own session so that the
        # connection pool is reused across scrapes and closed by us.
        ssl_context = None
        if self.livekit.tls_ca_file:
            ssl_context = ssl.create_default_context(cafile=self.livekit.tls_ca_file)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.livekit.request_timeout),
            connector=aiohttp.TCPConnector(
                limit=max(16, self.cfg.room_detail.concurrency * 2), ssl=ssl_context or True
            ),
        )
        self._lkapi = api.LiveKitAPI(
            self.livekit.url,
            self.livekit.api_key,
            self.livekit.api_secret.reveal(),
            session=self._session,
        )

    async def close(self) -> None:
        if self._inflight and not self._inflight.done():
            self._inflight.cancel()
        if self._lkapi:
            await self._lkapi.aclose()
        if self._session:
            await self._session.close()

    # -- collection ---------------------------------------------------------------------------

    async def snapshot(self, budget: float, *, scrape: bool = True) -> Snapshot:
        """A collection bounded by `budget` seconds; joins one already in flight."""
        joined = self._inflight is not None and not self._inflight.done()
        if scrape:
            self.telemetry.scrapes.labels("joined" if joined else "new").inc()
        if not joined:
            self._inflight = asyncio.ensure_future(self._collect(budget))
        try:
            # shield: a scrape whose client went away must not cancel the collection others share.
            return await asyncio.wait_for(asyncio.shield(self._inflight), budget + 0.05)
        except asyncio.TimeoutError:
            # Only a joiner with a shorter budget than the collection it joined gets here.
            return Snapshot(up={s: False for s in self.enabled_services}, duration=budget)

    async def _collect(self, budget: float) -> Snapshot:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + budget
        snap = Snapshot()
        jobs: dict[str, Callable[[float, Snapshot], Awaitable[None]]] = {
            "room": self._collect_rooms,
            "egress": self._collect_egress,
            "ingress": self._collect_ingress,
            "sip": self._collect_sip,
        }
        services = [s for s in self.cfg.services if s in jobs]
        results = await asyncio.gather(
            *(jobs[s](deadline, snap) for s in services), return_exceptions=True
        )
        for service, result in zip(services, results, strict=True):
            snap.up[service] = not isinstance(result, BaseException)
            if isinstance(result, BaseException) and not isinstance(result, _CallFailed):
                log.error("collecting %s failed unexpectedly", service, exc_info=result)
        if self.cfg.room_detail.enabled and "room" in services:
            try:
                await self._collect_detail(deadline, snap)
            except Exception:
                log.error("collecting per-room detail failed unexpectedly", exc_info=True)
                snap.up["room"] = False
                snap.up["agent_dispatch"] = False
                snap.participants = snap.dispatches = None
        snap.duration = loop.time() - start
        if any(snap.up.values()):
            self.answered_once = True
        return snap

    async def _call(
        self, service: str, method: str, deadline: float, request: Callable[[], Awaitable[Any]]
    ) -> Any:
        """One API call: timed, bounded by the deadline, errors counted by code."""
        remaining = deadline - asyncio.get_running_loop().time()
        t0 = time.perf_counter()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(request(), remaining)
        except Exception as exc:
            code = _error_code(exc)
            self.telemetry.api_errors.labels(service, method, code).inc()
            if code not in NOT_FOUND_CODES:
                log.warning(
                    "LiveKit API call failed",
                    extra={"service": service, "method": method, "code": code, "error": _safe_error(exc)},
                )
            raise _CallFailed(code) from exc
        finally:
            self.telemetry.api_request_duration.labels(service, method).observe(time.perf_counter() - t0)

    async def _collect_rooms(self, deadline: float, snap: Snapshot) -> None:
        res = await self._call(
            "room", "ListRooms", deadline, lambda: self._lkapi.room.list_rooms(api.ListRoomsRequest())
        )
        snap.rooms = list(res.rooms)

    async def _collect_egress(self, deadline: float, snap: Snapshot) -> None:
        items: list[proto_egress.EgressInfo] = []
        token = ""
        while True:
            req = proto_egress.ListEgressRequest(active=True, page_token=proto_models.TokenPagination(token=token))
            res = await self._call("egress", "ListEgress", deadline, lambda req=req: self._lkapi.egress.list_egress(req))
            items.extend(res.items)
            token = res.next_page_token.token
            if not token:
                break
        snap.egress = items

    async def _collect_ingress(self, deadline: float, snap: Snapshot) -> None:
        items: list[proto_ingress.IngressInfo] = []
        token = ""
        while True:
            req = proto_ingress.ListIngressRequest(page_token=proto_models.TokenPagination(token=token))
            res = await self._call("ingress", "ListIngress", deadline, lambda req=req: self._lkapi.ingress.list_ingress(req))
            items.extend(res.items)
            token = res.next_page_token.token
            if not token:
                break
        snap.ingress = items

    async def _sip_count(self, method: str, deadline: float, list_fn, request_cls, id_field: str) -> int:
        count, after = 0, ""
        while True:
            req = request_cls(page=proto_models.Pagination(after_id=after, limit=SIP_PAGE_SIZE))
            res = await self._call("sip", method, deadline, lambda req=req: list_fn(req))
            count += len(res.items)
            if len(res.items) < SIP_PAGE_SIZE:
                return count
            after = getattr(res.items[-1], id_field)

    async def _collect_sip(self, deadline: float, snap: Snapshot) -> None:
        sip = self._lkapi.sip
        inbound, outbound, rules = await asyncio.gather(
            self._sip_count("ListSIPInboundTrunk", deadline, sip.list_inbound_trunk,
                            proto_sip.ListSIPInboundTrunkRequest, "sip_trunk_id"),
            self._sip_count("ListSIPOutboundTrunk", deadline, sip.list_outbound_trunk,
                            proto_sip.ListSIPOutboundTrunkRequest, "sip_trunk_id"),
            self._sip_count("ListSIPDispatchRule", deadline, sip.list_dispatch_rule,
                            proto_sip.ListSIPDispatchRuleRequest, "sip_dispatch_rule_id"),
            return_exceptions=True,
        )
        for r in (inbound, outbound, rules):
            if isinstance(r, BaseException):
                raise r
        snap.inbound_trunks, snap.outbound_trunks, snap.dispatch_rules = inbound, outbound, rules

    async def _collect_detail(self, deadline: float, snap: Snapshot) -> None:
        det = self.cfg.room_detail
        if snap.rooms is None:
            return
        # The fullest rooms first: they matter most when the cap cuts the list.
        rooms = sorted(snap.rooms, key=lambda r: (-r.num_participants, r.name))
        chosen, snap.detail_skipped_rooms = rooms[: det.max_rooms], max(0, len(rooms) - det.max_rooms)
        sem = asyncio.Semaphore(det.concurrency)
        participants: dict[str, list[proto_models.ParticipantInfo]] = {}
        dispatches: dict[str, list[proto_dispatch.AgentDispatch]] = {}
        failed: set[str] = set()

        async def one(room: str) -> None:
            async with sem:
                try:
                    res = await self._call(
                        "room", "ListParticipants", deadline,
                        lambda: self._lkapi.room.list_participants(api.ListParticipantsRequest(room=room)),
                    )
                    participants[room] = list(res.participants)
                except _CallFailed as e:
                    # A room that closed between ListRooms and now is no failure of the service.
                    if str(e) not in NOT_FOUND_CODES:
                        failed.add("room")
                if det.agent_dispatch:
                    try:
                        dispatches[room] = await self._call(
                            "agent_dispatch", "ListDispatch", deadline,
                            lambda: self._lkapi.agent_dispatch.list_dispatch(room),
                        )
                    except _CallFailed as e:
                        if str(e) not in NOT_FOUND_CODES:
                            failed.add("agent_dispatch")

        await asyncio.gather(*(one(r.name) for r in chosen))
        if "room" in failed:
            snap.up["room"] = False
        else:
            snap.participants = participants
        if det.agent_dispatch:
            snap.up["agent_dispatch"] = "agent_dispatch" not in failed
            if "agent_dispatch" not in failed:
                snap.dispatches = dispatches


def _safe_error(exc: BaseException) -> str:
    """An error's description for logs: a Twirp message or an exception type, never request data."""
    if isinstance(exc, api.TwirpError):
        return f"{exc.code}: {exc.message}"[:200]
    return type(exc).__name__


# -- rendering ---------------------------------------------------------------------------------


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def families(snap: Snapshot, cfg: CollectConfig, services: Iterable[str], guard: LabelGuard) -> list[Any]:
    """Fresh metric families for one snapshot. Families of a failed service are left out."""
    out: list[Any] = []
    up = _gauge("livekit_up", "1 when every enabled LiveKit API service answered this scrape.")
    services = tuple(services)
    up.add_metric([], 1.0 if services and all(snap.up.get(s, False) for s in services) else 0.0)
    api_up = _gauge("livekit_api_up", "1 when this LiveKit API service answered this scrape.", ["service"])
    for s in services:
        api_up.add_metric([s], 1.0 if snap.up.get(s, False) else 0.0)
    out += [up, api_up]
    dur = _gauge(
        "livekit_exporter_scrape_duration_seconds",
        "Time this scrape spent reading the LiveKit API.",
    )
    dur.add_metric([], snap.duration)
    out.append(dur)

    if snap.rooms is not None:
        out += _room_families(snap.rooms, cfg.room_size_buckets)
    if snap.egress is not None:
        out.append(_egress_family(snap.egress))
    if snap.ingress is not None:
        out += _ingress_families(snap.ingress)
    if snap.inbound_trunks is not None:
        trunks = _gauge("livekit_sip_trunks", "SIP trunks configured in LiveKit.", ["direction"])
        trunks.add_metric(["inbound"], snap.inbound_trunks)
        trunks.add_metric(["outbound"], snap.outbound_trunks)
        rules = _gauge("livekit_sip_dispatch_rules", "SIP dispatch rules configured in LiveKit.")
        rules.add_metric([], snap.dispatch_rules)
        out += [trunks, rules]
    if cfg.room_detail.enabled and snap.rooms is not None:
        rd = _gauge(
            "livekit_exporter_room_detail_rooms",
            "Rooms whose per-room detail was read this scrape, and rooms skipped by room_detail.max_rooms.",
            ["result"],
        )
        rd.add_metric(["read"], min(len(snap.rooms), cfg.room_detail.max_rooms))
        rd.add_metric(["skipped"], snap.detail_skipped_rooms)
        out.append(rd)
    if snap.participants is not None:
        out += _participant_families(snap.participants, guard)
    if snap.dispatches is not None:
        out.append(_dispatch_family(snap.dispatches, guard))
    return out


def _room_families(rooms: list[proto_models.Room], bounds: tuple[float, ...]) -> list[Any]:
    occupied = participants = publishers = recording = full = 0
    buckets = [0] * (len(bounds) + 1)
    for r in rooms:
        n = r.num_participants
        participants += n
        publishers += r.num_publishers
        if n:
            occupied += 1
        if r.active_recording:
            recording += 1
        if r.max_participants and n >= r.max_participants:
            full += 1
        for i, b in enumerate(bounds):
            if n <= b:
                buckets[i] += 1
                break
        else:
            buckets[-1] += 1
    rooms_f = _gauge("livekit_rooms", "Open rooms, by whether they have participants (agents and egress not counted).", ["occupancy"])
    rooms_f.add_metric(["empty"], len(rooms) - occupied)
    rooms_f.add_metric(["occupied"], occupied)
    full_f = _gauge("livekit_rooms_full", "Rooms with a participant limit that have reached it.")
    full_f.add_metric([], full)
    part_f = _gauge(
        "livekit_room_participants",
        "Participants in all rooms, as Room.num_participants counts them: agents and egress are not included.",
    )
    part_f.add_metric([], participants)
    pub_f = _gauge("livekit_room_publishers", "Participants publishing media, summed over all rooms.")
    pub_f.add_metric([], publishers)
    rec_f = _gauge("livekit_rooms_recording", "Rooms with an active recording.")
    rec_f.add_metric([], recording)
    size_f = GaugeHistogramMetricFamily(
        "livekit_room_size",
        "Open rooms by number of participants (as Room.num_participants counts them).",
    )
    cumulative, pairs = 0, []
    for b, c in zip(list(bounds) + [float("inf")], buckets, strict=True):
        cumulative += c
        pairs.append(("+Inf" if b == float("inf") else _fmt_bound(b), cumulative))
    size_f.add_metric([], pairs, gsum_value=participants)
    return [rooms_f, full_f, part_f, pub_f, rec_f, size_f]


def _fmt_bound(b: float) -> str:
    return repr(float(b))


def _egress_family(items: list[proto_egress.EgressInfo]) -> GaugeMetricFamily:
    tally = Tally((E.egress_type(e), E.label(E.EGRESS_STATUS, e.status)) for e in items)
    f = _gauge("livekit_egress_active", "Egress jobs that LiveKit lists as active, by type and status.", ["type", "status"])
    for t in E.EGRESS_TYPES:
        for s in E.EGRESS_ACTIVE_STATUSES:
            f.add_metric([t, s], tally.pop((t, s), 0))
    for (t, s), n in sorted(tally.items()):
        f.add_metric([t, s], n)
    return f


def _ingress_families(items: list[proto_ingress.IngressInfo]) -> list[Any]:
    tally: Tally[tuple[str, str]] = Tally()
    bitrate: Tally[tuple[str, str]] = Tally()
    publishing = proto_ingress.IngressState.ENDPOINT_PUBLISHING
    for i in items:
        it = E.label(E.INGRESS_INPUT, i.input_type)
        tally[(it, E.label(E.INGRESS_STATUS, i.state.status))] += 1
        if i.state.status == publishing:
            bitrate[(it, "audio")] += i.state.audio.average_bitrate
            bitrate[(it, "video")] += i.state.video.average_bitrate
    f = _gauge("livekit_ingress", "Ingress endpoints configured in LiveKit, by input type and state.", ["input_type", "status"])
    for it in E.INGRESS_INPUT.values():
        for st in E.INGRESS_STATUS.values():
            f.add_metric([it, st], tally.pop((it, st), 0))
    for (it, st), n in sorted(tally.items()):
        f.add_metric([it, st], n)
    b = _gauge(
        "livekit_ingress_input_bytes_per_second",
        "Average input rate of publishing ingress (IngressState average_bitrate / 8), summed by input type and media.",
        ["input_type", "media"],
    )
    for it in E.INGRESS_INPUT.values():
        for media in ("audio", "video"):
            b.add_metric([it, media], bitrate[(it, media)] / 8)
    return [f, b]


def _participant_families(per_room: dict[str, list[proto_models.ParticipantInfo]], guard: LabelGuard) -> list[Any]:
    by_kind: Tally[tuple[str, str]] = Tally()
    tracks: Tally[tuple[str, str]] = Tally()
    calls: Tally[tuple[str, str]] = Tally()
    sip_kind = proto_models.ParticipantInfo.Kind.SIP
    for plist in per_room.values():
        for p in plist:
            by_kind[(E.label(E.PARTICIPANT_KIND, p.kind), E.label(E.PARTICIPANT_STATE, p.state))] += 1
            for t in p.tracks:
                tracks[(E.label(E.TRACK_TYPE, t.type), E.label(E.TRACK_SOURCE, t.source))] += 1
            if p.kind == sip_kind:
                status = p.attributes.get("sip.callStatus") or E.UNKNOWN
                trunk = p.attributes.get("sip.trunkID") or "none"
                calls[(status, trunk)] += 1
    pf = _gauge("livekit_participants", "Participants in the rooms read for detail, by kind and state.", ["kind", "state"])
    for k in E.PARTICIPANT_KIND.values():
        for s in E.PARTICIPANT_STATE.values():
            pf.add_metric([k, s], by_kind.pop((k, s), 0))
    for (k, s), n in sorted(by_kind.items()):
        pf.add_metric([k, s], n)
    tf = _gauge("livekit_published_tracks", "Tracks published in the rooms read for detail, by type and source.", ["type", "source"])
    for t in E.TRACK_TYPE.values():
        for s in E.TRACK_SOURCE.values():
            tf.add_metric([t, s], tracks.pop((t, s), 0))
    for (t, s), n in sorted(tracks.items()):
        tf.add_metric([t, s], n)
    cf = _gauge("livekit_sip_calls", "SIP calls in the rooms read for detail, by sip.callStatus and trunk id.", ["status", "trunk"])
    folded: Tally[tuple[str, str]] = Tally()
    # Folding keeps the busiest trunks when there are more than the guard admits.
    for (status, trunk), n in sorted(calls.items(), key=lambda kv: -kv[1]):
        folded[(status, guard("livekit_sip_calls", "trunk", trunk))] += n
    for (status, trunk), n in sorted(folded.items()):
        cf.add_metric([status, trunk], n)
    return [pf, tf, cf]


def _dispatch_family(per_room: dict[str, list[proto_dispatch.AgentDispatch]], guard: LabelGuard) -> GaugeMetricFamily:
    jobs: Tally[tuple[str, str]] = Tally()
    for dlist in per_room.values():
        for d in dlist:
            for j in d.state.jobs:
                jobs[(d.agent_name or j.agent_name or "unnamed", E.label(E.JOB_STATUS, j.state.status))] += 1
    f = _gauge("livekit_agent_jobs", "Agent jobs of the dispatches in the rooms read for detail, by agent name and status.", ["agent_name", "status"])
    folded: Tally[tuple[str, str]] = Tally()
    for (name, status), n in sorted(jobs.items(), key=lambda kv: -kv[1]):
        folded[(guard("livekit_agent_jobs", "agent_name", name), status)] += n
    for (name, status), n in sorted(folded.items()):
        f.add_metric([name, status], n)
    return f


class ScrapeView(Collector):
    """What one /metrics response renders: the long-lived registry plus this scrape's families."""

    def __init__(self, registry: Any, fresh: list[Any]):
        self._registry = registry
        self._fresh = fresh

    def collect(self):
        yield from self._fresh
        yield from self._registry.collect()
