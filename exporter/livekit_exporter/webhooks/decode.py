"""Decoding a verified body into an Event: only the fields the metrics read, checked as protobuf's
parser would check them, so applying the Event cannot fail."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from livekit.protocol import agent, egress, ingress, models

from .. import lkenums

EVENTS = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "participant_connection_aborted",
    "track_published",
    "track_unpublished",
    "egress_started",
    "egress_updated",
    "egress_ended",
    "ingress_started",
    "ingress_ended",
    "agent_job_started",
    "agent_job_ended",
)
UNKNOWN_EVENT = "unknown"
# The object each known event must carry, by the first word of the event name (proto names).
_SUBJECT = {
    "room": "room",
    "participant": "participant",
    "track": "track",
    "egress": "egress_info",
    "ingress": "ingress_info",
    "agent": "job",
}


# -- decoding ---------------------------------------------------------------------------------


class Malformed(Exception):
    """A verified body that is not a webhook event; the message names the field."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class _Field:
    """A protojson field: found under its JSON name or its proto name, as protobuf's parser does."""

    __slots__ = ("json", "proto")

    def __init__(self, proto: str):
        self.proto = proto
        self.json = _camel(proto)

    def get(self, doc: dict[str, Any]) -> Any:
        v = doc.get(self.json)
        return doc.get(self.proto) if v is None else v


def _obj(doc: dict[str, Any], f: _Field, where: str) -> dict[str, Any] | None:
    v = f.get(doc)
    if v is None or isinstance(v, dict):
        return v
    raise Malformed(f"{where}{f.json}: expected an object")


_INT64_MAX = (1 << 63) - 1
_NOT_INT64 = "expected an int64 (a JSON integer or a string of decimal digits)"


def _int(doc: dict[str, Any], f: _Field, where: str) -> int:
    """A timestamp or size: an int64 as protojson writes it (a string of decimal digits, or a JSON
    integer) and never negative, as a negative one has no meaning here."""
    v = f.get(doc)
    if v is None:
        return 0
    if isinstance(v, str):
        if not (v.isascii() and v.isdigit()):  # exactly [0-9]+
            negative = v[:1] == "-" and v[1:].isascii() and v[1:].isdigit()
            raise Malformed(f"{where}{f.json}: " + ("must not be negative" if negative else _NOT_INT64))
        v = v.lstrip("0") or "0"  # leading zeros are fine, and int() refuses over 4,300 digits
        if len(v) > 19:
            raise Malformed(f"{where}{f.json}: out of range (above 2^63-1)")
        v = int(v)
    elif not isinstance(v, int) or isinstance(v, bool):
        raise Malformed(f"{where}{f.json}: {_NOT_INT64}")
    if v < 0:
        raise Malformed(f"{where}{f.json}: must not be negative")
    if v > _INT64_MAX:
        raise Malformed(f"{where}{f.json}: out of range (above 2^63-1)")
    return v


def _str(doc: dict[str, Any], f: _Field, where: str) -> str:
    v = f.get(doc)
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    raise Malformed(f"{where}{f.json}: expected a string")


class _Enum:
    """A protojson enum field -> its lkenums label; a name this protocol version lacks -> unknown."""

    __slots__ = ("by_name", "by_number", "field")

    def __init__(self, proto: str, enum: EnumTypeWrapper, table: dict[int, str]):
        self.field = _Field(proto)
        self.by_number = table
        self.by_name = {name: table.get(number, lkenums.UNKNOWN) for name, number in enum.items()}

    def label(self, doc: dict[str, Any], where: str) -> str:
        v = self.field.get(doc)
        if v is None:
            return self.by_number.get(0, lkenums.UNKNOWN)
        if isinstance(v, str):
            return self.by_name.get(v, lkenums.UNKNOWN)
        if isinstance(v, int) and not isinstance(v, bool):
            return self.by_number.get(v, lkenums.UNKNOWN)
        raise Malformed(f"{where}{self.field.json}: expected an enum name or number")


_FIELDS = {
    n: _Field(n)
    for n in (
        "event",
        "id",
        "created_at",
        "creation_time",
        "joined_at",
        "attributes",
        "started_at",
        "ended_at",
        "file_results",
        "segment_results",
        "file",
        "segments",
        "size",
        "state",
        "agent_name",
        *_SUBJECT.values(),
    )
}
_KIND = _Enum("kind", models.ParticipantInfo.Kind, lkenums.PARTICIPANT_KIND)
_DISCONNECT = _Enum("disconnect_reason", models.DisconnectReason, lkenums.DISCONNECT_REASON)
_END_REASON = _Enum("room_end_reason", models.RoomEndReason, lkenums.ROOM_END_REASON)
_TRACK_TYPE = _Enum("type", models.TrackType, lkenums.TRACK_TYPE)
_TRACK_SOURCE = _Enum("source", models.TrackSource, lkenums.TRACK_SOURCE)
_EGRESS_STATUS = _Enum("status", egress.EgressStatus, lkenums.EGRESS_STATUS)
_INGRESS_INPUT = _Enum("input_type", ingress.IngressInput, lkenums.INGRESS_INPUT)
_INGRESS_STATUS = _Enum("status", ingress.IngressState.Status, lkenums.INGRESS_STATUS)
_JOB_STATUS = _Enum("status", agent.JobStatus, lkenums.JOB_STATUS)


@dataclass(slots=True)
class Event:
    """What one webhook says, reduced to label values and finite non-negative numbers, so applying it
    cannot fail; nothing here is unbounded but `trunk` and `agent_name`, which pass the cardinality
    guard when applied."""

    name: str  # one of EVENTS, or UNKNOWN_EVENT
    id: str
    key: bytes  # a digest of the id: what deduplication remembers, 16 bytes whatever the id's length
    created_at: float  # seconds; 0 when absent
    kind: str = ""
    reason: str = ""
    type: str = ""
    source: str = ""
    status: str = ""
    trunk: str | None = None  # SIP participants only
    agent_name: str = ""
    duration: float | None = None  # seconds
    output_bytes: float = 0.0
    raw_name: str = ""  # the event name as sent, for logging an unknown one


def _unique_keys(pairs: list[tuple[str, Any]]) -> None:
    if len(dict(pairs)) != len(pairs):
        seen: set[str] = set()
        for duplicate, _ in pairs:
            if duplicate in seen:
                break
            seen.add(duplicate)
        raise Malformed(f"the key {duplicate[:64]!r} appears twice in one object (protobuf's parser refuses that)")


# orjson keeps the last of duplicate keys silently; the json module shows every object to a hook
# (about 4 µs for a typical event, with one decoder for all).
_DUPLICATE_KEYS = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _no_repeated_keys(body: bytes, doc: dict[str, Any]) -> bool:
    """True when no object in `body` (parsed by orjson into `doc`) repeats a key; False when that
    cannot be shown cheaply (the json module then looks). As events/decode.py counts them: without
    a backslash in the body, each key and string value is two quotes, in the body as in `doc`
    re-encoded, and a repeated key is two quotes (at least) that `doc` lacks (about 1 µs)."""
    if b"\\" in body:
        return False
    try:
        return body.count(b'"') == orjson.dumps(doc).count(b'"')
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return False


def decode(body: bytes) -> Event:
    """Validated Event from a verified body; raises Malformed saying which field is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Malformed(f"not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(doc, dict):
        raise Malformed("not a JSON object")
    try:
        if not _no_repeated_keys(body, doc):
            _DUPLICATE_KEYS.decode(body.decode())  # orjson has checked the UTF-8 and the syntax
    except RecursionError:
        raise Malformed("nested too deeply for a webhook event") from None
    name = _str(doc, _FIELDS["event"], "")
    event_id = _str(doc, _FIELDS["id"], "")
    if not name:
        raise Malformed("no event name (the `event` field)")
    if not event_id:
        raise Malformed("no event id (the `id` field), so a retry could not be recognised")
    ev = Event(
        name=name if name in _DECODERS else UNKNOWN_EVENT,
        id=event_id,
        key=hashlib.sha256(event_id.encode()).digest()[:16],
        created_at=float(_int(doc, _FIELDS["created_at"], "")),
        raw_name=name,
    )
    decoder = _DECODERS.get(name)
    if decoder is not None:
        field = _FIELDS[_SUBJECT[name.split("_", 1)[0]]]
        subject = _obj(doc, field, "")
        if subject is None:
            raise Malformed(f"a {name} event without its `{field.json}` object")
        decoder(ev, doc, subject, field.json + ".")
    return ev


def _since(ev: Event, start: int) -> float | None:
    """Seconds from `start` to the event; clock skew between LiveKit nodes never makes it negative."""
    if not start or not ev.created_at:
        return None
    return max(0.0, ev.created_at - start)


def _room_finished(ev: Event, doc: dict, room: dict, where: str) -> None:
    ev.reason = _END_REASON.label(doc, "")
    ev.duration = _since(ev, _int(room, _FIELDS["creation_time"], where))


def _participant(ev: Event, doc: dict, p: dict, where: str) -> None:
    ev.kind = _KIND.label(p, where)
    if ev.kind == "sip":
        attrs = _obj(p, _FIELDS["attributes"], where) or {}
        trunk = attrs.get("sip.trunkID")
        ev.trunk = trunk if isinstance(trunk, str) and trunk else "none"


def _participant_ended(ev: Event, doc: dict, p: dict, where: str) -> None:
    _participant(ev, doc, p, where)
    ev.reason = _DISCONNECT.label(p, where)
    ev.duration = _since(ev, _int(p, _FIELDS["joined_at"], where))


def _track(ev: Event, doc: dict, t: dict, where: str) -> None:
    ev.type = _TRACK_TYPE.label(t, where)
    ev.source = _TRACK_SOURCE.label(t, where)


def _egress(ev: Event, doc: dict, info: dict, where: str) -> None:
    ev.type = lkenums.egress_type_json(info)  # the scrape path's mapping (lkenums), on protojson
    ev.status = _EGRESS_STATUS.label(info, where)


def _egress_ended(ev: Event, doc: dict, info: dict, where: str) -> None:
    _egress(ev, doc, info, where)
    started, ended = _int(info, _FIELDS["started_at"], where), _int(info, _FIELDS["ended_at"], where)
    if started > 0 and ended >= started:
        ev.duration = (ended - started) / 1e9  # EgressInfo times are nanoseconds
    # LiveKit fills the repeated results and, for one output, the deprecated `file` / `segments`
    # too: count the repeated ones, and the deprecated ones only when alone.
    results = []
    for f in (_FIELDS["file_results"], _FIELDS["segment_results"]):
        items = f.get(info)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise Malformed(f"{where}{f.json}: expected a list of objects")
        results.extend(items)
    if not results:
        results = [r for r in (_obj(info, _FIELDS["file"], where), _obj(info, _FIELDS["segments"], where)) if r]
    ev.output_bytes = float(sum(_int(r, _FIELDS["size"], where + "results.") for r in results))


def _ingress(ev: Event, doc: dict, info: dict, where: str) -> None:
    ev.type = _INGRESS_INPUT.label(info, where)
    ev.status = _INGRESS_STATUS.label(_obj(info, _FIELDS["state"], where) or {}, where + "state.")


def _job(ev: Event, doc: dict, job: dict, where: str) -> None:
    ev.agent_name = _str(job, _FIELDS["agent_name"], where) or "unnamed"
    ev.status = _JOB_STATUS.label(_obj(job, _FIELDS["state"], where) or {}, where + "state.")


def _nothing(ev: Event, doc: dict, subject: dict, where: str) -> None:
    """Events counted only in livekit_webhook_events_total; their object must still be there."""


_DECODERS: dict[str, Callable[[Event, dict, dict, str], None]] = {
    "room_started": _nothing,
    "room_finished": _room_finished,
    "participant_joined": _participant,
    "participant_left": _participant_ended,
    "participant_connection_aborted": _participant_ended,
    "track_published": _track,
    "track_unpublished": _nothing,
    "egress_started": _egress,
    "egress_updated": _nothing,
    "egress_ended": _egress_ended,
    "ingress_started": _ingress,
    "ingress_ended": _ingress,
    "agent_job_started": _job,
    "agent_job_ended": _job,
}
