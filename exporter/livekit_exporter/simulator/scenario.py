"""The simulated LiveKit world: rooms, participants, tracks, egress, ingress, SIP and agent dispatch.

The scenario is the single source of truth for tests, the demo and the benchmarks. It holds the
real livekit-protocol messages that the Twirp face serves, keeps the derived fields LiveKit keeps
(Room.num_participants excludes agents and egress; num_publishers counts every publishing
participant, agents and egress included),
records every API call it serves, and tells listeners about every change (the webhook face turns
those into the events LiveKit would send).

`truth()` states, from the scenario's own bookkeeping, what every section-1 metric must read.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from livekit.protocol import agent as proto_agent
from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress
from livekit.protocol import models as proto_models
from livekit.protocol import sip as proto_sip

from .. import lkenums

Kind = proto_models.ParticipantInfo.Kind
State = proto_models.ParticipantInfo.State
# What Scenario._stamped makes: a room or a participant.
_Stamped = TypeVar("_Stamped", proto_models.Room, proto_models.ParticipantInfo)

# Kinds that LiveKit counts apart from Room.num_participants ("dependent" participants).
DEPENDENT_KINDS = frozenset({Kind.AGENT, Kind.EGRESS})
SERVICES = ("room", "egress", "ingress", "sip", "agent_dispatch")
# The egress types, as lkenums maps them ("media" is the unified StartEgress request with a media
# source, "replay" an ExportReplay request).
EGRESS_TYPES = lkenums.EGRESS_TYPES
ACTIVE_EGRESS = frozenset({proto_egress.EGRESS_STARTING, proto_egress.EGRESS_ACTIVE, proto_egress.EGRESS_ENDING})


@dataclass
class Fault:
    """What a service does instead of answering: see twirp.py for how each is served.

    kind: "error" (Twirp `code`), "unauthorized", "hang", "reset", or None with only `latency`.
    """

    kind: str | None = None
    code: str = "internal"
    latency: float = 0.0


@dataclass
class SimRoom:
    info: proto_models.Room
    participants: dict[str, proto_models.ParticipantInfo] = field(default_factory=dict)
    dispatches: dict[str, proto_dispatch.AgentDispatch] = field(default_factory=dict)


Listener = Callable[[str, dict[str, Any]], None]


class Expected(dict[tuple[str, frozenset], float]):
    """What the exporter must report, keyed (sample name, frozenset(labels)); put() adds to a value."""

    def put(self, metric: str, value: float, **labels: str) -> None:
        key = (metric, frozenset(labels.items()))
        self[key] = self.get(key, 0) + value


class Scenario:
    def __init__(self, api_key: str = "devkey", api_secret: str = "secret-" + "x" * 32):
        self.api_key = api_key
        self.api_secret = api_secret
        self.rooms: dict[str, SimRoom] = {}
        self.egress: dict[str, proto_egress.EgressInfo] = {}
        self.ingress: dict[str, proto_ingress.IngressInfo] = {}
        self.inbound_trunks: dict[str, proto_sip.SIPInboundTrunkInfo] = {}
        self.outbound_trunks: dict[str, proto_sip.SIPOutboundTrunkInfo] = {}
        self.dispatch_rules: dict[str, proto_sip.SIPDispatchRuleInfo] = {}
        self.faults: dict[str, Fault] = {}
        # Rooms ListRooms still reports though they have closed: the race between a scrape's
        # ListRooms and its per-room calls, made deterministic.
        self.closing_rooms: dict[str, proto_models.Room] = {}
        self.api_calls: Counter[tuple[str, str]] = Counter()
        self.in_flight: Counter[tuple[str, str]] = Counter()
        self.peak_in_flight: Counter[tuple[str, str]] = Counter()
        # Page sizes LiveKit Cloud would use; 0 answers everything at once like open-source LiveKit.
        self.page_size = 0
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []
        self.clock: Callable[[], float] = time.time

    # -- plumbing -----------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):08d}"

    def _stamped(self, message: Callable[..., _Stamped], prefix: str, stamp: str, **fields: Any) -> _Stamped:
        """A new room or participant: a fresh sid, and now in `stamp` and `stamp`_ms, as LiveKit stamps
        rooms and participants (whole seconds and whole milliseconds)."""
        now = self.clock()
        return message(sid=self._id(prefix), **{stamp: int(now), f"{stamp}_ms": int(now * 1000)}, **fields)

    def _now_ns(self) -> int:
        """Now, as LiveKit stamps egress and ingress: nanoseconds."""
        return int(self.clock() * 1e9)

    def _recording(self, room: str) -> bool:
        """Whether an egress of the room is active (Room.active_recording)."""
        return any(e.room_name == room and e.status in ACTIVE_EGRESS for e in self.egress.values())

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: str, **payload: Any) -> None:
        for listener in self._listeners:
            listener(event, payload)

    def set_fault(self, service: str, fault: Fault | None) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
        if fault is None:
            self.faults.pop(service, None)
        else:
            self.faults[service] = fault

    def reset_calls(self) -> None:
        self.api_calls.clear()
        self.peak_in_flight.clear()

    def _recount(self, room: SimRoom) -> None:
        room.info.num_participants = sum(1 for p in room.participants.values() if p.kind not in DEPENDENT_KINDS)
        # LiveKit's Room.updateProto counts every publisher, agents and egress included; only
        # num_participants leaves the dependent kinds out.
        room.info.num_publishers = sum(1 for p in room.participants.values() if p.tracks)

    # -- rooms and participants ---------------------------------------------------------------

    def add_room(self, name: str, *, max_participants: int = 0) -> proto_models.Room:
        if name in self.rooms:
            raise ValueError(f"room {name!r} exists")
        info = self._stamped(
            proto_models.Room, "RM", "creation_time", name=name, max_participants=max_participants, empty_timeout=300
        )
        self.rooms[name] = SimRoom(info)
        self._emit("room_started", room=info)
        return info

    def close_room_during_scrape(self, name: str) -> None:
        """Closes a room, but lets ListRooms still list it, as if it closed mid-scrape."""
        info = proto_models.Room()
        info.CopyFrom(self.rooms[name].info)
        self.remove_room(name)
        self.closing_rooms[name] = info

    def remove_room(self, name: str, end_reason: proto_models.RoomEndReason = proto_models.ROOM_END_API_DELETE) -> None:
        """Closes a room as LiveKit does: everyone leaves, its egress completes, then room_finished."""
        room = self.rooms[name]
        for identity in list(room.participants):
            self.remove_participant(name, identity, proto_models.DisconnectReason.ROOM_DELETED)
        for eid, e in list(self.egress.items()):
            if e.room_name == name and e.status in ACTIVE_EGRESS:
                self.set_egress_status(eid, proto_egress.EGRESS_COMPLETE)
        del self.rooms[name]
        room.info.num_participants = room.info.num_publishers = 0
        self._emit("room_finished", room=room.info, room_end_reason=end_reason)

    def add_participant(
        self,
        room: str,
        identity: str,
        *,
        kind: Kind = Kind.STANDARD,
        state: State = State.ACTIVE,
        tracks: Iterable[tuple[proto_models.TrackType, proto_models.TrackSource]] = (),
        attributes: dict[str, str] | None = None,
    ) -> proto_models.ParticipantInfo:
        """tracks: (TrackType, TrackSource) pairs published by the participant."""
        r = self.rooms[room]
        if identity in r.participants:
            raise ValueError(f"participant {identity!r} already in room {room!r}")
        p = self._stamped(
            proto_models.ParticipantInfo,
            "PA",
            "joined_at",
            identity=identity,
            kind=kind,
            state=state,
            attributes=attributes or {},
        )
        for ttype, source in tracks:
            p.tracks.append(proto_models.TrackInfo(sid=self._id("TR"), type=ttype, source=source))
        p.is_publisher = bool(p.tracks)
        r.participants[identity] = p
        self._recount(r)
        if state == State.ACTIVE:
            self._emit("participant_joined", room=r.info, participant=p)
            for t in p.tracks:
                self._emit("track_published", room=r.info, participant=p, track=t)
        return p

    def publish_track(
        self, room: str, identity: str, ttype: proto_models.TrackType, source: proto_models.TrackSource
    ) -> proto_models.TrackInfo:
        r = self.rooms[room]
        p = r.participants[identity]
        t = proto_models.TrackInfo(sid=self._id("TR"), type=ttype, source=source)
        p.tracks.append(t)
        p.is_publisher = True
        self._recount(r)
        self._emit("track_published", room=r.info, participant=p, track=t)
        return t

    def unpublish_track(self, room: str, identity: str, track_sid: str) -> None:
        r = self.rooms[room]
        p = r.participants[identity]
        for i, t in enumerate(p.tracks):
            if t.sid == track_sid:
                del p.tracks[i]
                p.is_publisher = bool(p.tracks)
                self._recount(r)
                self._emit("track_unpublished", room=r.info, participant=p, track=t)
                return
        raise KeyError(track_sid)

    def remove_participant(
        self,
        room: str,
        identity: str,
        reason: proto_models.DisconnectReason = proto_models.DisconnectReason.CLIENT_INITIATED,
    ) -> None:
        r = self.rooms[room]
        p = r.participants.pop(identity)
        connected = p.state == State.ACTIVE
        p.state = State.DISCONNECTED
        p.disconnect_reason = reason
        self._recount(r)
        self._emit("participant_left" if connected else "participant_connection_aborted", room=r.info, participant=p)

    # -- egress / ingress ---------------------------------------------------------------------

    def add_egress(
        self,
        room: str,
        etype: str,
        status: proto_egress.EgressStatus = proto_egress.EGRESS_ACTIVE,
        *,
        unified: bool = False,
    ) -> proto_egress.EgressInfo:
        """An egress of ETYPE (one of EGRESS_TYPES); `unified`: started by the unified StartEgress
        request (room_composite and web as its template and web sources; media is always unified)."""
        if etype not in EGRESS_TYPES:
            raise ValueError(f"egress type {etype!r}; one of {', '.join(EGRESS_TYPES)}")
        if unified and etype not in ("room_composite", "web", "media"):
            raise ValueError(f"egress type {etype!r}: the unified request has no such source")
        r = self.rooms[room]
        now_ns = self._now_ns()
        info = proto_egress.EgressInfo(
            egress_id=self._id("EG"),
            room_id=r.info.sid,
            room_name=room,
            status=status,
            started_at=now_ns,
            updated_at=now_ns,
        )
        if etype == "media" or unified:
            getattr(info.egress, {"room_composite": "template"}.get(etype, etype)).SetInParent()
        else:
            getattr(info, etype).SetInParent()
        self.egress[info.egress_id] = info
        r.info.active_recording = self._recording(room)
        self._emit("egress_started", egress_info=info)
        return info

    def set_egress_status(self, egress_id: str, status: proto_egress.EgressStatus, *, output_bytes: int = 0) -> None:
        info = self.egress[egress_id]
        now_ns = self._now_ns()
        info.status = status
        info.updated_at = now_ns
        ended = status not in ACTIVE_EGRESS
        if ended:
            info.ended_at = now_ns
            if output_bytes:
                info.file_results.append(
                    proto_egress.FileInfo(filename="out.mp4", size=output_bytes, duration=now_ns - info.started_at)
                )
        r = self.rooms.get(info.room_name)
        if r is not None:
            r.info.active_recording = self._recording(info.room_name)
        self._emit("egress_ended" if ended else "egress_updated", egress_info=info)

    def add_ingress(
        self,
        input_type: proto_ingress.IngressInput,
        status: proto_ingress.IngressState.Status = proto_ingress.IngressState.ENDPOINT_INACTIVE,
        *,
        room: str = "",
        audio_bitrate: int = 0,
        video_bitrate: int = 0,
    ) -> proto_ingress.IngressInfo:
        info = proto_ingress.IngressInfo(
            ingress_id=self._id("IN"),
            name=f"ingress-{len(self.ingress)}",
            input_type=input_type,
            room_name=room,
            participant_identity=f"ingress-{len(self.ingress)}",
        )
        self.ingress[info.ingress_id] = info
        self.set_ingress_status(info.ingress_id, status, audio_bitrate=audio_bitrate, video_bitrate=video_bitrate)
        return info

    def set_ingress_status(
        self,
        ingress_id: str,
        status: proto_ingress.IngressState.Status,
        *,
        audio_bitrate: int = 0,
        video_bitrate: int = 0,
    ) -> None:
        info = self.ingress[ingress_id]
        was = info.state.status
        now_ns = self._now_ns()
        info.state.status = status
        info.state.updated_at = now_ns
        info.state.audio.average_bitrate = audio_bitrate
        info.state.video.average_bitrate = video_bitrate
        publishing = proto_ingress.IngressState.ENDPOINT_PUBLISHING
        if status == publishing and was != publishing:
            info.state.started_at = now_ns
            self._emit("ingress_started", ingress_info=info)
        elif was == publishing and status != publishing:
            info.state.ended_at = now_ns
            self._emit("ingress_ended", ingress_info=info)

    def remove_ingress(self, ingress_id: str) -> None:
        del self.ingress[ingress_id]

    # -- SIP and agents -----------------------------------------------------------------------

    def add_trunk(self, direction: str, name: str = "") -> str:
        tid = self._id("ST")
        if direction == "inbound":
            self.inbound_trunks[tid] = proto_sip.SIPInboundTrunkInfo(sip_trunk_id=tid, name=name)
        elif direction == "outbound":
            self.outbound_trunks[tid] = proto_sip.SIPOutboundTrunkInfo(sip_trunk_id=tid, name=name)
        else:
            raise ValueError("direction is inbound or outbound")
        return tid

    def add_dispatch_rule(self, trunk_ids: Iterable[str] = ()) -> str:
        rid = self._id("SDR")
        self.dispatch_rules[rid] = proto_sip.SIPDispatchRuleInfo(sip_dispatch_rule_id=rid, trunk_ids=list(trunk_ids))
        return rid

    def add_sip_call(
        self, room: str, trunk_id: str, status: str = "active", identity: str | None = None, state: State = State.ACTIVE
    ) -> proto_models.ParticipantInfo:
        identity = identity or f"sip_{next(self._ids)}"
        call_id = self._id("SCL")
        return self.add_participant(
            room,
            identity,
            kind=Kind.SIP,
            tracks=[(proto_models.AUDIO, proto_models.MICROPHONE)],
            state=state,
            attributes={
                "sip.callID": call_id,
                "sip.trunkID": trunk_id,
                "sip.callStatus": status,
                "sip.phoneNumber": "+15550100" + str(next(self._ids) % 100).zfill(2),
                "sip.trunkPhoneNumber": "+15550199000",
            },
        )

    def add_dispatch(
        self, room: str, agent_name: str, job_statuses: Iterable[proto_agent.JobStatus] = ()
    ) -> proto_dispatch.AgentDispatch:
        r = self.rooms[room]
        d = proto_dispatch.AgentDispatch(id=self._id("AD"), agent_name=agent_name, room=room)
        for status in job_statuses:
            d.state.jobs.append(
                proto_agent.Job(
                    id=self._id("AJ"),
                    dispatch_id=d.id,
                    agent_name=agent_name,
                    state=proto_agent.JobState(status=status),
                )
            )
        r.dispatches[d.id] = d
        return d

    def set_job_status(self, room: str, dispatch_id: str, job_index: int, status: proto_agent.JobStatus) -> None:
        job = self.rooms[room].dispatches[dispatch_id].state.jobs[job_index]
        was = job.state.status
        job.state.status = status
        if status == proto_agent.JS_RUNNING and was != status:
            self._emit("agent_job_started", room=self.rooms[room].info, job=job)
        elif status in (proto_agent.JS_SUCCESS, proto_agent.JS_FAILED, proto_agent.JS_CANCELLED):
            self._emit("agent_job_ended", room=self.rooms[room].info, job=job)

    # -- the truth ------------------------------------------------------------------------------

    def truth(self, *, detail: bool = False, max_rooms: int | None = None) -> dict[tuple[str, frozenset], float]:
        """Every section-1 value the exporter must report, keyed (metric, frozenset(labels))."""
        t = Expected()
        put = t.put
        rooms = list(self.rooms.values())
        people = [sum(1 for p in r.participants.values() if p.kind not in DEPENDENT_KINDS) for r in rooms]
        put("livekit_rooms", sum(1 for n in people if n == 0), occupancy="empty")
        put("livekit_rooms", sum(1 for n in people if n > 0), occupancy="occupied")
        put("livekit_room_participants", sum(people))
        put("livekit_room_publishers", sum(1 for r in rooms for p in r.participants.values() if p.tracks))
        put("livekit_rooms_recording", sum(1 for r in rooms if self._recording(r.info.name)))
        put(
            "livekit_rooms_full",
            sum(
                1
                for r, n in zip(rooms, people, strict=True)
                if r.info.max_participants and n >= r.info.max_participants
            ),
        )
        for e in self.egress.values():
            if e.status in ACTIVE_EGRESS:
                kind = e.WhichOneof("request")
                put(
                    "livekit_egress_active",
                    1,
                    type=e.egress.WhichOneof("source") if kind == "egress" else kind,
                    status=proto_egress.EgressStatus.Name(e.status).removeprefix("EGRESS_").lower(),
                )
        for i in self.ingress.values():
            it = proto_ingress.IngressInput.Name(i.input_type).removesuffix("_INPUT").lower()
            put(
                "livekit_ingress",
                1,
                input_type=it,
                status=proto_ingress.IngressState.Status.Name(i.state.status).removeprefix("ENDPOINT_").lower(),
            )
            if i.state.status == proto_ingress.IngressState.ENDPOINT_PUBLISHING:
                for media, stream in (("audio", i.state.audio), ("video", i.state.video)):
                    put(
                        "livekit_ingress_input_bytes_per_second", stream.average_bitrate / 8, input_type=it, media=media
                    )
        put("livekit_sip_trunks", len(self.inbound_trunks), direction="inbound")
        put("livekit_sip_trunks", len(self.outbound_trunks), direction="outbound")
        put("livekit_sip_dispatch_rules", len(self.dispatch_rules))
        if detail:
            chosen = sorted(rooms, key=lambda r: (-r.info.num_participants, r.info.name))[:max_rooms]
            for r in chosen:
                for p in r.participants.values():
                    put(
                        "livekit_participants",
                        1,
                        kind=proto_models.ParticipantInfo.Kind.Name(p.kind).lower(),
                        state=proto_models.ParticipantInfo.State.Name(p.state).lower(),
                    )
                    for tr in p.tracks:
                        put(
                            "livekit_published_tracks",
                            1,
                            type=proto_models.TrackType.Name(tr.type).lower(),
                            source=proto_models.TrackSource.Name(tr.source).lower(),
                        )
                    if p.kind == Kind.SIP:
                        put(
                            "livekit_sip_calls",
                            1,
                            status=p.attributes["sip.callStatus"],
                            trunk=p.attributes["sip.trunkID"],
                        )
                for d in r.dispatches.values():
                    for j in d.state.jobs:
                        put(
                            "livekit_agent_jobs",
                            1,
                            agent_name=d.agent_name,
                            status=proto_agent.JobStatus.Name(j.state.status).removeprefix("JS_").lower(),
                        )
        return t

    def room_sizes(self) -> list[int]:
        return [r.info.num_participants for r in self.rooms.values()]
