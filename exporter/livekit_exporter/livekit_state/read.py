"""Reading LiveKit on each scrape through the official livekit-api client, into a Snapshot.

One scrape: every enabled service is called concurrently under one deadline (the scrape timeout
minus a margin); paginated lists are followed to the end; optional per-room detail runs with bounded
concurrency. Concurrent scrapes share one in-flight collection.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
from livekit import api
from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress
from livekit.protocol import models as proto_models

from ..config import CollectConfig, LiveKitConfig
from ..telemetry import Telemetry
from .render import ScrapeFolder, families

# The package's name, livekit_exporter.livekit_state, as before the split.
log = logging.getLogger(__package__)

SIP_PAGE_SIZE = 1000
# A scrape waits this long past its budget for the collection it started or joined.
COLLECTION_GRACE = 0.1
NOT_FOUND_CODES = frozenset({"not_found"})
# What ListDispatch answers for a room no node hosts any more (psrpc finds no server for its topic).
ROOM_GONE_CODES = frozenset({"unavailable"})


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

    def partial(self, services: Iterable[str], elapsed: float) -> Snapshot:
        """What a collection still running has read: finished services as they are, the rest down.

        Lists are assigned only once read in full, so every list here is complete."""
        view = copy.copy(self)
        view.up = {s: self.up.get(s, False) for s in services}
        view.duration = elapsed
        return view


class _CallFailed(Exception):
    """A failed API call, already counted; `fields` describe it for one log line."""

    def __init__(self, code: str, method: str, error: str):
        super().__init__(code)
        self.code = code
        self.fields = {"method": method, "code": code, "error": error}


def _log_failed(service: str, failure: _CallFailed, project: str = "") -> None:
    """The one log line of a service that failed this scrape (naming its project, with several)."""
    where = {"project": project} if project else {}
    log.warning("LiveKit API service failed", extra={**where, "service": service, **failure.fields})


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

    def __init__(self, livekit: LiveKitConfig, collect: CollectConfig, telemetry: Telemetry, project: str = ""):
        self.livekit = livekit
        self.project = project  # named in its log lines, with several projects
        self.cfg = collect
        self.telemetry = telemetry
        self.folder = ScrapeFolder(
            telemetry.label_max_values, telemetry.label_overflow, telemetry.label_max_series_per_metric
        )
        self._lkapi: api.LiveKitAPI | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Future[Snapshot] | None = None
        self._snap = Snapshot()
        self._started = 0.0
        self.answered_once = False

    async def families(self, budget: float) -> list[Any]:
        """The scrape's fresh state families, read from LiveKit within `budget` seconds: the one call
        the web layer makes."""
        return families(await self.snapshot(budget), self.cfg, self.enabled_services, self.folder)

    @property
    def enabled_services(self) -> tuple[str, ...]:
        services: list[str] = list(self.cfg.services)
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
        """What LiveKit answered within `budget` seconds; joins a collection already in flight.

        A scrape whose budget ends before the collection it joined gets what the collection has
        read so far: the services that finished, and every other one marked down.
        """
        loop = asyncio.get_running_loop()
        joined = self._inflight is not None and not self._inflight.done()
        if scrape:
            self.telemetry.scrapes.labels("joined" if joined else "new").inc()
        if not joined:
            self._snap = Snapshot()
            self._started = loop.time()
            self._inflight = asyncio.ensure_future(self._collect(self._snap, self._started + budget))
        task, snap = self._inflight, self._snap
        assert task is not None  # started above, or joined
        # asyncio.wait never cancels the task: a scrape whose client went away leaves the
        # collection running for the others that share it.
        await asyncio.wait({task}, timeout=budget + COLLECTION_GRACE)
        if task.done():
            return task.result()
        return snap.partial(self.enabled_services, loop.time() - self._started)

    async def _collect(self, snap: Snapshot, deadline: float) -> Snapshot:
        loop = asyncio.get_running_loop()
        start = loop.time()
        jobs: dict[str, Callable[[float, Snapshot], Awaitable[None]]] = {
            "room": self._collect_rooms,
            "egress": self._collect_egress,
            "ingress": self._collect_ingress,
            "sip": self._collect_sip,
        }

        async def run(service: str) -> None:
            try:
                await jobs[service](deadline, snap)
                ok = True
            except _CallFailed as failure:
                ok = False
                _log_failed(service, failure, self.project)
            except Exception:
                ok = False
                log.error("collecting %s failed unexpectedly", service, exc_info=True)
            snap.up[service] = ok

        await asyncio.gather(*(run(s) for s in self.cfg.services if s in jobs))
        snap.duration = loop.time() - start
        if any(snap.up.values()):
            self.answered_once = True
        return snap

    async def _call(
        self,
        service: str,
        method: str,
        deadline: float,
        request: Callable[[], Awaitable[Any]],
        *,
        benign: frozenset[str] = frozenset(),
    ) -> Any:
        """One API call, bounded by the deadline and livekit.request_timeout, timed, and on failure
        counted by code (unless the code is `benign` for this call)."""
        remaining = min(deadline - asyncio.get_running_loop().time(), self.livekit.request_timeout)
        t0 = time.perf_counter()
        try:
            if remaining <= 0:
                raise TimeoutError
            # livekit-api passes timeout=None to aiohttp, which disables the session's own timeout:
            # this is the only bound on a call.
            return await asyncio.wait_for(request(), remaining)
        except Exception as exc:
            code = _error_code(exc)
            if code not in benign:
                self.telemetry.api_errors.labels(service, method, code).inc()
            raise _CallFailed(code, method, _safe_error(exc)) from exc
        finally:
            self.telemetry.api_request_duration.labels(service, method).observe(time.perf_counter() - t0)

    async def _collect_rooms(self, deadline: float, snap: Snapshot) -> None:
        res = await self._call(
            "room", "ListRooms", deadline, lambda: self._api().room.list_rooms(api.ListRoomsRequest())
        )
        rooms = list(res.rooms)
        if self.cfg.room_detail.enabled:
            # Detail runs right after ListRooms, inside the room service's own job: a slow egress
            # or SIP service never eats its time.
            await self._collect_detail(deadline, snap, rooms)
        snap.rooms = rooms

    def _api(self) -> api.LiveKitAPI:
        if self._lkapi is None:
            raise RuntimeError("the LiveKit collector is used before start()")
        return self._lkapi

    async def _collect_egress(self, deadline: float, snap: Snapshot) -> None:
        snap.egress = await self._token_pages(
            "egress",
            "ListEgress",
            deadline,
            lambda page: self._api().egress.list_egress(proto_egress.ListEgressRequest(active=True, page_token=page)),
        )

    async def _collect_ingress(self, deadline: float, snap: Snapshot) -> None:
        snap.ingress = await self._token_pages(
            "ingress",
            "ListIngress",
            deadline,
            lambda page: self._api().ingress.list_ingress(proto_ingress.ListIngressRequest(page_token=page)),
        )

    async def _token_pages(
        self,
        service: str,
        method: str,
        deadline: float,
        fetch: Callable[[proto_models.TokenPagination], Awaitable[Any]],
    ) -> list[Any]:
        """Every item of a list LiveKit pages with a next_page_token (egress, ingress), one call a page."""
        items: list[Any] = []
        token = ""
        while True:
            page = proto_models.TokenPagination(token=token)
            res = await self._call(service, method, deadline, partial(fetch, page))
            items.extend(res.items)
            token = res.next_page_token.token
            if not token:
                return items

    async def _sip_count(self, method: str, deadline: float, list_fn, request_cls, id_field: str) -> int:
        """Follows LiveKit's SIP pagination: ids ascending after `after_id`, at most `limit` a page."""
        count, after = 0, ""
        while True:
            req = request_cls(page=proto_models.Pagination(after_id=after, limit=SIP_PAGE_SIZE))
            res = await self._call("sip", method, deadline, partial(list_fn, req))
            count += len(res.items)
            if len(res.items) < SIP_PAGE_SIZE:
                return count
            last = getattr(res.items[-1], id_field)
            if last <= after:
                # A server that ignores after_id would hand out the same page forever.
                self.telemetry.api_errors.labels("sip", method, "unknown").inc()
                raise _CallFailed("unknown", method, "SIP pagination did not advance (after_id ignored?)")
            after = last

    async def _collect_sip(self, deadline: float, snap: Snapshot) -> None:
        sip = self._api().sip
        lists = (  # inbound trunks, outbound trunks, dispatch rules: (method, call, request, id field)
            ("ListSIPInboundTrunk", sip.list_inbound_trunk, api.ListSIPInboundTrunkRequest, "sip_trunk_id"),
            ("ListSIPOutboundTrunk", sip.list_outbound_trunk, api.ListSIPOutboundTrunkRequest, "sip_trunk_id"),
            ("ListSIPDispatchRule", sip.list_dispatch_rule, api.ListSIPDispatchRuleRequest, "sip_dispatch_rule_id"),
        )
        results = await asyncio.gather(
            *(self._sip_count(method, deadline, call, request, id_field) for method, call, request, id_field in lists),
            return_exceptions=True,
        )
        counts = []
        for r in results:
            if isinstance(r, BaseException):
                raise r
            counts.append(r)
        snap.inbound_trunks, snap.outbound_trunks, snap.dispatch_rules = counts

    async def _collect_detail(self, deadline: float, snap: Snapshot, rooms: list[proto_models.Room]) -> None:
        """ListParticipants (and ListDispatch) for the fullest rooms, `concurrency` at a time.

        The detail families are served only when every chosen room was read: a partial sum would
        be a wrong number. Rooms not reached by the deadline fail the service with one timeout.
        """
        det = self.cfg.room_detail
        loop = asyncio.get_running_loop()
        # The fullest rooms first: they matter most when the cap cuts the list.
        ordered = sorted(rooms, key=lambda r: (-r.num_participants, r.name))
        chosen = ordered[: det.max_rooms]
        snap.detail_skipped_rooms = len(ordered) - len(chosen)
        sem = asyncio.Semaphore(det.concurrency)
        reads: list[_RoomRead] = []  # in the order they finished
        failed: set[str] = set()  # services that failed so far: the rooms still queued skip them

        async def one(room: str) -> None:
            async with sem:
                reads.append(await self._read_room(room, deadline, failed))

        await asyncio.gather(*(one(r.name) for r in chosen))
        verdict = judge_detail(reads, det.agent_dispatch, deadline_passed=loop.time() >= deadline)
        for service, method in verdict.timed_out:
            self.telemetry.api_errors.labels(service, method, "timeout").inc()
        failures = verdict.failures
        if det.agent_dispatch:
            snap.up["agent_dispatch"] = "agent_dispatch" not in failures
            if "agent_dispatch" in failures:
                _log_failed("agent_dispatch", failures["agent_dispatch"], self.project)
            else:
                snap.dispatches = verdict.dispatches
        if "room" in failures:
            raise failures["room"]
        snap.participants = verdict.participants

    async def _read_room(self, room: str, deadline: float, failed: set[str]) -> _RoomRead:
        """One room's ListParticipants and ListDispatch, each skipped once its service has failed
        (or both, once the deadline passed); what they answered, judged later by judge_detail.
        A service's failure goes into `failed` at once, so the rooms still queued skip it."""
        det = self.cfg.room_detail
        read = _RoomRead(room)
        if (
            asyncio.get_running_loop().time() >= deadline
            or len(failed) == 2
            or ("room" in failed and not det.agent_dispatch)
        ):
            read.reached = False
            return read
        if "room" not in failed:
            try:
                res = await self._call(
                    "room",
                    "ListParticipants",
                    deadline,
                    lambda: self._api().room.list_participants(api.ListParticipantsRequest(room=room)),
                    benign=NOT_FOUND_CODES,
                )
                read.participants = list(res.participants)
            except _CallFailed as e:
                # A room that closed since ListRooms is no failure of the service.
                if e.code not in NOT_FOUND_CODES:
                    read.participants_error = e
                    failed.add("room")
        if det.agent_dispatch and "agent_dispatch" not in failed:
            try:
                read.dispatches = await self._call(
                    "agent_dispatch",
                    "ListDispatch",
                    deadline,
                    lambda: self._api().agent_dispatch.list_dispatch(room),
                    benign=NOT_FOUND_CODES,
                )
            except _CallFailed as e:
                if e.code in ROOM_GONE_CODES:
                    # ListDispatch is an RPC to the node hosting the room: for a room that closed
                    # since ListRooms, LiveKit answers "no response" (unavailable). Judged later,
                    # once we know whether other rooms answered.
                    read.room_gone = e
                elif e.code not in NOT_FOUND_CODES:
                    read.dispatch_error = e
                    failed.add("agent_dispatch")
        return read


@dataclass
class _RoomRead:
    """What one room's detail calls answered."""

    room: str
    reached: bool = True  # False: skipped (deadline passed, or its services had failed)
    participants: list[proto_models.ParticipantInfo] | None = None
    participants_error: _CallFailed | None = None  # a failure of the room service (not "room gone")
    dispatches: list[proto_dispatch.AgentDispatch] | None = None
    dispatch_error: _CallFailed | None = None  # a failure of the agent_dispatch service
    room_gone: _CallFailed | None = None  # ListDispatch's "unavailable": the room closed, or the service is down


@dataclass
class _DetailVerdict:
    failures: dict[str, _CallFailed]  # service -> the failure that fails it this scrape
    participants: dict[str, list[proto_models.ParticipantInfo]]
    dispatches: dict[str, list[proto_dispatch.AgentDispatch]]
    timed_out: list[tuple[str, str]]  # (service, method) failed by rooms the deadline left unread


def judge_detail(reads: list[_RoomRead], agent_dispatch: bool, *, deadline_passed: bool) -> _DetailVerdict:
    """The detail of one scrape, judged from its rooms' reads (in the order they finished): the
    first failure of each service fails it; rooms left unread by the deadline fail both services
    with one timeout; "room gone" answers fail agent_dispatch only when no room answered at all."""
    failures: dict[str, _CallFailed] = {}
    for read in reads:
        if read.participants_error:
            failures.setdefault("room", read.participants_error)
        if read.dispatch_error:
            failures.setdefault("agent_dispatch", read.dispatch_error)
    participants = {r.room: r.participants for r in reads if r.participants is not None}
    dispatches = {r.room: r.dispatches for r in reads if r.dispatches is not None}
    unreached = sum(1 for r in reads if not r.reached)
    timed_out = []
    if unreached and deadline_passed:
        for service, method in (("room", "ListParticipants"), ("agent_dispatch", "ListDispatch")):
            if (service == "room" or agent_dispatch) and service not in failures:
                timed_out.append((service, method))
                failures[service] = _CallFailed(
                    "timeout", method, f"{unreached} of {len(reads)} rooms not read before the scrape deadline"
                )
    gone = [r.room_gone for r in reads if r.room_gone is not None]
    if gone and not dispatches and "agent_dispatch" not in failures:
        # No room answered at all: that is the service failing, not rooms closing.
        failures["agent_dispatch"] = gone[0]
    return _DetailVerdict(failures, participants, dispatches, timed_out)


def _safe_error(exc: BaseException) -> str:
    """An error's description for logs: what LiveKit said, or the exception type; never request data."""
    if isinstance(exc, api.TwirpError):
        text = f"HTTP {exc.status} {exc.code}: {exc.message}"[:200]
        if exc.code == "unknown" or not exc.message:
            text += " (no Twirp error from the server: is livekit.url the LiveKit server itself?)"
        elif exc.code == "unauthenticated":
            text += " (a wrong API key or secret, or a key without the grant this call needs)"
        return text
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer before the scrape deadline or livekit.request_timeout"
    return (
        f"{type(exc).__name__}: {exc}"[:200] if isinstance(exc, OSError | aiohttp.ClientError) else type(exc).__name__
    )
