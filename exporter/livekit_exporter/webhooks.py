"""LiveKit webhooks: verify -> deduplicate -> apply to lifecycle counters and durations.

LiveKit POSTs every event to `webhooks.path` (default /webhook) as protojson (camelCase keys, enum
names, int64 as strings), with `Authorization: <JWT>`: HS256 with a key pair both sides know,
5-minute expiry, and a `sha256` claim holding base64(SHA-256(body)). A request walks one path,
cheapest checks first, and reads the body only once the token is good:

    Content-Length limit -> content type -> token (issuer picks the key, livekit-api's TokenVerifier
    checks signature, expiry and not-before; the exporter its lifetime) -> body, read up to the limit
    -> body hash -> decode into an Event -> first time this id? -> metrics -> remember the id

LiveKit retries 5xx and connection errors (never a 4xx) and drops events older than 30 s, so every
bad request gets a 4xx, and a retried delivery is recognised by its event id and counted once. An
event changes the metrics all at once or not at all: decode does every check and conversion, so
applying it cannot fail, and its id is remembered only once it is applied.

Why not `WebhookReceiver.receive`: it parses the body into the full protobuf WebhookEvent with
`json_format.Parse`, which alone costs as much as all of our own checks (bench/README.md), and it
raises one bare Exception for every failure. We keep its checks (TokenVerifier, then the sha256
claim against the raw bytes) and decode only the fields the metrics read, straight from orjson.
We refuse what protobuf's parser refuses in them (duplicate keys, wrong types, int64 out of range)
and a little more: an int64 must be a JSON integer or a string of decimal digits (not 5.0), and a
timestamp or size must not be negative. Like it, we take camelCase or proto field names, enum names
or numbers, and absent fields as defaults.

A sample of the output:

    livekit_webhook_events_total{event="participant_left"} 41
    livekit_participant_sessions_ended_total{kind="standard",reason="client_initiated"} 38
    livekit_egress_duration_seconds_bucket{type="room_composite",le="600.0"} 3
    livekit_sip_calls_ended_total{reason="user_unavailable",trunk="ST_xQ3b"} 2
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from aiohttp import web
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from livekit.api import TokenVerifier
from livekit.protocol import agent, egress, ingress, models
from prometheus_client import Counter, Histogram

from . import lkenums as E
from .config import WEBHOOK_CLOCK_LEEWAY, WEBHOOK_TOKEN_TTL, Config, KeyPair, WebhooksConfig
from .logsetup import RateLimitedLog
from .telemetry import Telemetry

log = logging.getLogger(__name__)

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
# reason -> (HTTP status, when). Every status is a 4xx: LiveKit never retries those. The README and
# docs/metrics.md list these; a test checks the README's table against this one.
REJECTIONS: dict[str, tuple[int, str]] = {
    "missing_auth": (401, "no Authorization header, or an empty one"),
    "bad_signature": (401, "not a JWT, or its HS256 signature does not verify with the key pair its issuer names"),
    "invalid_token": (
        401,
        (
            "a verified token LiveKit would not issue: no exp, no issuer, a lifetime beyond "
            "5 minutes, a non-string sha256 claim, claims livekit-api cannot read"
        ),
    ),
    "expired": (401, "the token's exp is more than 1 minute in the past"),
    "not_yet_valid": (401, "the token's nbf is more than 1 minute in the future (LiveKit's clock runs ahead)"),
    "unknown_key": (401, "the token's issuer is not a configured API key"),
    "hash_mismatch": (401, "the token's sha256 claim is missing, not base64, or not the SHA-256 of the body"),
    "malformed": (
        400,
        (
            "a validly signed body that is not a webhook event: not JSON, duplicate keys, no "
            "event name or id, a field of the wrong type or out of range"
        ),
    ),
    "too_large": (413, "the body exceeds webhooks.max_body_bytes"),
    "unsupported_media_type": (415, "a Content-Type other than application/webhook+json or application/json"),
}
# LiveKit sends application/webhook+json; plain JSON is what a relay in between may turn it into.
CONTENT_TYPES = frozenset({"application/webhook+json", "application/json"})
# The object each known event must carry, by the first word of the event name (proto names).
_SUBJECT = {
    "room": "room",
    "participant": "participant",
    "track": "track",
    "egress": "egress_info",
    "ingress": "ingress_info",
    "agent": "job",
}
NO_AUTH = "no Authorization header: LiveKit signs every webhook; point only LiveKit here"
# A token may claim to live this long from now: LiveKit's 5 minutes, plus its clock running ahead.
MAX_TOKEN_LIFETIME = WEBHOOK_TOKEN_TTL + WEBHOOK_CLOCK_LEEWAY
# Warnings per rejection reason and minute; the rest are summed up in one line when the minute ends.
# livekit_webhook_rejected_total carries the rate.
REJECTION_LOG_LINES = 5
REJECTION_LOG_WINDOW = 60.0

DELIVERY_DELAY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120)
ROOM_DURATION_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
PARTICIPANT_DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
EGRESS_DURATION_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800)


class Rejected(Exception):
    """A request that is not a webhook we count; `detail` says what was wrong and what to do."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.status = REJECTIONS[reason][0]
        self.detail = detail


# -- verification -----------------------------------------------------------------------------


def _unverified_claims(token: str) -> dict[str, Any]:
    """The token's claims, read without trusting them: `iss` only picks the key to verify with,
    and the rest is read once the signature vouched for these very bytes."""
    try:
        _header, payload, _signature = token.split(".")
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise Rejected("bad_signature", "the Authorization header is not a JWT") from None
    if not isinstance(claims, dict):
        raise Rejected("bad_signature", "the Authorization header is not a JWT (its payload is not an object)")
    return claims


class Verifier:
    """Checks a request exactly as LiveKit signs it, with any of the configured key pairs."""

    def __init__(self, keys: Iterable[KeyPair]):
        leeway = datetime.timedelta(seconds=WEBHOOK_CLOCK_LEEWAY)
        self._by_key = {k.api_key: TokenVerifier(k.api_key, k.api_secret.reveal(), leeway=leeway) for k in keys}

    def verify_token(self, authorization: str) -> bytes:
        """The SHA-256 digest a configured key pair vouches for; raises Rejected otherwise."""
        token = authorization.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].lstrip()
        if not token:
            raise Rejected("missing_auth", NO_AUTH)
        unverified = _unverified_claims(token)
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise Rejected("invalid_token", "the token names no issuer (iss claim): it cannot come from LiveKit")
        verifier = self._by_key.get(iss)
        if verifier is None:
            raise Rejected(
                "unknown_key",
                f"signed with API key {iss[:40]!r}, which is not configured: add it to webhooks.keys "
                "(the key in LiveKit's webhook.api_key)",
            )
        try:
            claims = verifier.verify(token)
        except jwt.ExpiredSignatureError:
            raise Rejected(
                "expired",
                "the token has expired: a replay, or the clocks of LiveKit and the "
                "exporter differ by more than a minute (check NTP on both)",
            ) from None
        except jwt.ImmatureSignatureError:
            raise Rejected(
                "not_yet_valid",
                "the token is not valid yet (nbf): LiveKit's clock runs more than "
                "a minute ahead of the exporter's (check NTP on both)",
            ) from None
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
            raise Rejected(
                "bad_signature",
                f"the signature does not verify with the secret of API key {iss!r}: check webhooks.keys",
            ) from None
        except jwt.InvalidTokenError as e:  # PyJWT's messages name the claim, never a value
            raise Rejected("invalid_token", f"the token is not one LiveKit issues: {str(e)[:120]}") from None
        except Exception as e:
            raise Rejected(
                "invalid_token",
                f"the token's claims are not ones LiveKit issues (livekit-api cannot read them: {type(e).__name__})",
            ) from None
        # These bytes are verified now, and PyJWT took int() of exp, so this cannot fail.
        exp, now = int(unverified["exp"]), time.time()
        if exp > now + MAX_TOKEN_LIFETIME:
            raise Rejected(
                "invalid_token",
                f"the token is valid for another {exp - int(now)} s: LiveKit signs "
                f"webhooks for {WEBHOOK_TOKEN_TTL:.0f} s, and a longer-lived token could be replayed "
                "after its event id is forgotten",
            )
        sha256 = claims.sha256
        if not isinstance(sha256, str):
            raise Rejected("invalid_token", "the token's sha256 claim is not a string")
        if not sha256:
            raise Rejected("hash_mismatch", "the token carries no sha256 claim, so it does not vouch for this body")
        try:
            return base64.b64decode(sha256, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("hash_mismatch", "the token's sha256 claim is not base64") from None

    @staticmethod
    def check_body(body: bytes, digest: bytes) -> None:
        if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
            raise Rejected("hash_mismatch", "the body is not the one the token was signed for (altered on the way?)")


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
        self.by_name = {name: table.get(number, E.UNKNOWN) for name, number in enum.items()}

    def label(self, doc: dict[str, Any], where: str) -> str:
        v = self.field.get(doc)
        if v is None:
            return self.by_number.get(0, E.UNKNOWN)
        if isinstance(v, str):
            return self.by_name.get(v, E.UNKNOWN)
        if isinstance(v, int) and not isinstance(v, bool):
            return self.by_number.get(v, E.UNKNOWN)
        raise Malformed(f"{where}{self.field.json}: expected an enum name or number")


_F = {
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
_KIND = _Enum("kind", models.ParticipantInfo.Kind, E.PARTICIPANT_KIND)
_DISCONNECT = _Enum("disconnect_reason", models.DisconnectReason, E.DISCONNECT_REASON)
_END_REASON = _Enum("room_end_reason", models.RoomEndReason, E.ROOM_END_REASON)
_TRACK_TYPE = _Enum("type", models.TrackType, E.TRACK_TYPE)
_TRACK_SOURCE = _Enum("source", models.TrackSource, E.TRACK_SOURCE)
_EGRESS_STATUS = _Enum("status", egress.EgressStatus, E.EGRESS_STATUS)
_INGRESS_INPUT = _Enum("input_type", ingress.IngressInput, E.INGRESS_INPUT)
_INGRESS_STATUS = _Enum("status", ingress.IngressState.Status, E.INGRESS_STATUS)
_JOB_STATUS = _Enum("status", agent.JobStatus, E.JOB_STATUS)


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


def decode(body: bytes) -> Event:
    """Validated Event from a verified body; raises Malformed saying which field is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Malformed(f"not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(doc, dict):
        raise Malformed("not a JSON object")
    try:
        _DUPLICATE_KEYS.decode(body.decode())  # orjson has checked the UTF-8 and the syntax
    except RecursionError:
        raise Malformed("nested too deeply for a webhook event") from None
    name = _str(doc, _F["event"], "")
    event_id = _str(doc, _F["id"], "")
    if not name:
        raise Malformed("no event name (the `event` field)")
    if not event_id:
        raise Malformed("no event id (the `id` field), so a retry could not be recognised")
    ev = Event(
        name=name if name in _DECODERS else UNKNOWN_EVENT,
        id=event_id,
        key=hashlib.sha256(event_id.encode()).digest()[:16],
        created_at=float(_int(doc, _F["created_at"], "")),
        raw_name=name,
    )
    decoder = _DECODERS.get(name)
    if decoder is not None:
        field = _F[_SUBJECT[name.split("_", 1)[0]]]
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
    ev.duration = _since(ev, _int(room, _F["creation_time"], where))


def _participant(ev: Event, doc: dict, p: dict, where: str) -> None:
    ev.kind = _KIND.label(p, where)
    if ev.kind == "sip":
        attrs = _obj(p, _F["attributes"], where) or {}
        trunk = attrs.get("sip.trunkID")
        ev.trunk = trunk if isinstance(trunk, str) and trunk else "none"


def _participant_ended(ev: Event, doc: dict, p: dict, where: str) -> None:
    _participant(ev, doc, p, where)
    ev.reason = _DISCONNECT.label(p, where)
    ev.duration = _since(ev, _int(p, _F["joined_at"], where))


def _track(ev: Event, doc: dict, t: dict, where: str) -> None:
    ev.type = _TRACK_TYPE.label(t, where)
    ev.source = _TRACK_SOURCE.label(t, where)


def _egress(ev: Event, doc: dict, info: dict, where: str) -> None:
    ev.type = E.egress_type_json(info)  # the scrape path's mapping (lkenums), on protojson
    ev.status = _EGRESS_STATUS.label(info, where)


def _egress_ended(ev: Event, doc: dict, info: dict, where: str) -> None:
    _egress(ev, doc, info, where)
    started, ended = _int(info, _F["started_at"], where), _int(info, _F["ended_at"], where)
    if started > 0 and ended >= started:
        ev.duration = (ended - started) / 1e9  # EgressInfo times are nanoseconds
    # LiveKit fills the repeated results and, for one output, the deprecated `file` / `segments`
    # too: count the repeated ones, and the deprecated ones only when alone.
    results = []
    for f in (_F["file_results"], _F["segment_results"]):
        items = f.get(info)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise Malformed(f"{where}{f.json}: expected a list of objects")
        results.extend(items)
    if not results:
        results = [r for r in (_obj(info, _F["file"], where), _obj(info, _F["segments"], where)) if r]
    ev.output_bytes = float(sum(_int(r, _F["size"], where + "results.") for r in results))


def _ingress(ev: Event, doc: dict, info: dict, where: str) -> None:
    ev.type = _INGRESS_INPUT.label(info, where)
    ev.status = _INGRESS_STATUS.label(_obj(info, _F["state"], where) or {}, where + "state.")


def _job(ev: Event, doc: dict, job: dict, where: str) -> None:
    ev.agent_name = _str(job, _F["agent_name"], where) or "unnamed"
    ev.status = _JOB_STATUS.label(_obj(job, _F["state"], where) or {}, where + "state.")


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


# -- deduplication ----------------------------------------------------------------------------


class RecentIds:
    """Event ids (their fixed-size digests) seen in the last `ttl` seconds, at most `max_entries`:
    an id is forgotten when its ttl ends or when max_entries newer ones came, whichever is first.

    The ttl is the same for every id, so insertion order is expiry order: expired ids are dropped
    from the front on each insert, and memory never exceeds max_entries entries of a fixed size.
    """

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: bytes) -> bool:
        until = self._expiry.get(key)
        return until is not None and until > self._clock()

    def add(self, key: bytes) -> None:
        """Remembers `key` for ttl seconds from now."""
        now = self._clock()
        expiry = self._expiry
        while expiry:
            oldest, until = next(iter(expiry.items()))
            if until > now:
                break
            del expiry[oldest]
        expiry.pop(key, None)
        expiry[key] = now + self.ttl
        if len(expiry) > self.max_entries:
            expiry.popitem(last=False)


# -- metrics ----------------------------------------------------------------------------------


class WebhookMetrics:
    """The long-lived webhook families, on the exporter's registry."""

    def __init__(self, telemetry: Telemetry):
        r = telemetry.registry
        self.guard = telemetry.guard
        self.events = Counter(
            "livekit_webhook_events_total",
            "LiveKit webhook events accepted (signature verified, first delivery "
            'of the event id), by event type; a type this version does not know counts as event="unknown".',
            ["event"],
            registry=r,
        )
        self.rejected = Counter(
            "livekit_webhook_rejected_total",
            "Webhook requests rejected with a 4xx, by reason; a rejected request changes no other metric.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "livekit_webhook_duplicates_total",
            "Verified webhook deliveries of an event id already counted "
            "(LiveKit's retries, replays); answered 200 and not counted again.",
            registry=r,
        )
        self.delay = Histogram(
            "livekit_webhook_delivery_delay_seconds",
            "Time from the event's created_at (whole seconds, "
            "set by LiveKit) to its arrival here, by event type; clock skew below 0 counts as 0.",
            ["event"],
            buckets=DELIVERY_DELAY_BUCKETS,
            registry=r,
        )
        self.rooms_started = Counter(
            "livekit_room_sessions_started_total", "Rooms created (room_started webhooks).", registry=r
        )
        self.rooms_ended = Counter(
            "livekit_room_sessions_ended_total",
            "Rooms closed (room_finished webhooks), by the event's "
            'room_end_reason; end_reason="unknown" when LiveKit sent none (servers that do not set the '
            "field) or one this version does not know.",
            ["end_reason"],
            registry=r,
        )
        self.room_duration = Histogram(
            "livekit_room_session_duration_seconds",
            "Room lifetimes: room_finished time minus the room's creation_time.",
            buckets=ROOM_DURATION_BUCKETS,
            registry=r,
        )
        self.participants_started = Counter(
            "livekit_participant_sessions_started_total",
            "Participants who connected (participant_joined "
            "webhooks, sent when a participant becomes active), by kind.",
            ["kind"],
            registry=r,
        )
        self.participants_ended = Counter(
            "livekit_participant_sessions_ended_total",
            "Connected participants who left (participant_left webhooks), by kind and disconnect reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.participants_aborted = Counter(
            "livekit_participant_connections_aborted_total",
            "Participants who left before their connection "
            "became active (participant_connection_aborted webhooks), by kind.",
            ["kind"],
            registry=r,
        )
        self.participant_duration = Histogram(
            "livekit_participant_session_duration_seconds",
            "Participant sessions: participant_left time minus joined_at, by kind.",
            ["kind"],
            buckets=PARTICIPANT_DURATION_BUCKETS,
            registry=r,
        )
        self.tracks = Counter(
            "livekit_track_publications_total",
            "Tracks published (track_published webhooks), by type and source.",
            ["type", "source"],
            registry=r,
        )
        self.egress_started = Counter(
            "livekit_egress_started_total",
            "Egress started (egress_started webhooks), by egress type.",
            ["type"],
            registry=r,
        )
        self.egress_ended = Counter(
            "livekit_egress_ended_total",
            "Egress ended (egress_ended webhooks), by egress type and final "
            "status; LiveKit sends one for an auto-egress that never started too, so it can "
            "exceed livekit_egress_started_total.",
            ["type", "status"],
            registry=r,
        )
        self.egress_duration = Histogram(
            "livekit_egress_duration_seconds",
            "Egress run time: ended_at minus started_at of ended egress (LiveKit sends nanoseconds), by egress type.",
            ["type"],
            buckets=EGRESS_DURATION_BUCKETS,
            registry=r,
        )
        self.egress_bytes = Counter(
            "livekit_egress_output_bytes_total",
            "Bytes written by ended egress (sizes of its file and segment results), by egress type.",
            ["type"],
            registry=r,
        )
        self.ingress_started = Counter(
            "livekit_ingress_started_total",
            "Ingress that started publishing (ingress_started webhooks), by input type.",
            ["input_type"],
            registry=r,
        )
        self.ingress_ended = Counter(
            "livekit_ingress_ended_total",
            "Ingress state changes into error, inactive or complete "
            "(ingress_ended webhooks, sent on every such change, whether or not the ingress had "
            "published), by input type and the new status.",
            ["input_type", "status"],
            registry=r,
        )
        self.sip_started = Counter(
            "livekit_sip_calls_started_total",
            "SIP calls whose participant became active (participant_joined "
            "of kind sip), by trunk id (the sip.trunkID attribute). An outbound call's participant joins "
            "before it dials, so for outbound calls this counts dial attempts, answered or not.",
            ["trunk"],
            registry=r,
        )
        self.sip_ended = Counter(
            "livekit_sip_calls_ended_total",
            "SIP calls whose participant left after becoming active "
            "(participant_left of kind sip), by trunk id and disconnect reason. LiveKit gives "
            "user_unavailable when the callee did not respond in time and user_rejected when the callee "
            "rejected the call (busy); an unanswered call may end with another reason "
            "(sip_trunk_failure, ...). SIP participants that never became active are in "
            'livekit_participant_connections_aborted_total{kind="sip"}.',
            ["trunk", "reason"],
            registry=r,
        )
        self.jobs_started = Counter(
            "livekit_agent_jobs_started_total",
            "Agent jobs started (agent_job_started webhooks, LiveKit Cloud), by agent name.",
            ["agent_name"],
            registry=r,
        )
        self.jobs_ended = Counter(
            "livekit_agent_jobs_ended_total",
            "Agent jobs ended (agent_job_ended webhooks, LiveKit Cloud), by agent name and final status.",
            ["agent_name", "status"],
            registry=r,
        )
        # Known label values exist from the start, so rate() works from the first event.
        for name in EVENTS:
            self.events.labels(name)
        for reason in REJECTIONS:
            self.rejected.labels(reason)
        self._updates_by_event = {
            "room_started": self._room_started,
            "room_finished": self._room_finished,
            "participant_joined": self._participant_joined,
            "participant_left": self._participant_left,
            "participant_connection_aborted": self._participant_aborted,
            "track_published": self._track_published,
            "egress_started": self._egress_started,
            "egress_ended": self._egress_ended,
            "ingress_started": self._ingress_started,
            "ingress_ended": self._ingress_ended,
            "agent_job_started": self._job_started,
            "agent_job_ended": self._job_ended,
        }

    def apply(self, ev: Event, now: float) -> None:
        """Every update of one event, all or none: the series are looked up first, then updated with
        finite non-negative numbers (Event holds no other kind), which cannot fail."""
        for update, amount in self._updates(ev, now):
            update(amount)

    def _updates(self, ev: Event, now: float) -> list[tuple[Callable[[float], None], float]]:
        steps: list[tuple[Callable[[float], None], float]] = [(self.events.labels(ev.name).inc, 1.0)]
        if ev.created_at:
            steps.append((self.delay.labels(ev.name).observe, max(0.0, now - ev.created_at)))
        handler = self._updates_by_event.get(ev.name)
        if handler is not None:
            handler(ev, steps)
        return steps

    def _room_started(self, ev: Event, steps: list) -> None:
        steps.append((self.rooms_started.inc, 1.0))

    def _room_finished(self, ev: Event, steps: list) -> None:
        steps.append((self.rooms_ended.labels(ev.reason).inc, 1.0))
        if ev.duration is not None:
            steps.append((self.room_duration.observe, ev.duration))

    def _trunk(self, metric: str, ev: Event) -> str:
        return self.guard(metric, "trunk", ev.trunk or "none")

    def _participant_joined(self, ev: Event, steps: list) -> None:
        steps.append((self.participants_started.labels(ev.kind).inc, 1.0))
        if ev.trunk is not None:
            steps.append((self.sip_started.labels(self._trunk("livekit_sip_calls_started_total", ev)).inc, 1.0))

    def _participant_left(self, ev: Event, steps: list) -> None:
        steps.append((self.participants_ended.labels(ev.kind, ev.reason).inc, 1.0))
        if ev.duration is not None:
            steps.append((self.participant_duration.labels(ev.kind).observe, ev.duration))
        if ev.trunk is not None:
            trunk = self._trunk("livekit_sip_calls_ended_total", ev)
            steps.append((self.sip_ended.labels(trunk, ev.reason).inc, 1.0))

    def _participant_aborted(self, ev: Event, steps: list) -> None:
        # Not a SIP call ended: it never counted as started (no participant_joined), and
        # livekit_sip_calls_started_total - livekit_sip_calls_ended_total must not go below zero.
        steps.append((self.participants_aborted.labels(ev.kind).inc, 1.0))

    def _track_published(self, ev: Event, steps: list) -> None:
        steps.append((self.tracks.labels(ev.type, ev.source).inc, 1.0))

    def _egress_started(self, ev: Event, steps: list) -> None:
        steps.append((self.egress_started.labels(ev.type).inc, 1.0))

    def _egress_ended(self, ev: Event, steps: list) -> None:
        steps.append((self.egress_ended.labels(ev.type, ev.status).inc, 1.0))
        if ev.duration is not None:
            steps.append((self.egress_duration.labels(ev.type).observe, ev.duration))
        if ev.output_bytes:
            steps.append((self.egress_bytes.labels(ev.type).inc, ev.output_bytes))

    def _ingress_started(self, ev: Event, steps: list) -> None:
        steps.append((self.ingress_started.labels(ev.type).inc, 1.0))

    def _ingress_ended(self, ev: Event, steps: list) -> None:
        steps.append((self.ingress_ended.labels(ev.type, ev.status).inc, 1.0))

    def _agent(self, metric: str, ev: Event) -> str:
        return self.guard(metric, "agent_name", ev.agent_name)

    def _job_started(self, ev: Event, steps: list) -> None:
        steps.append((self.jobs_started.labels(self._agent("livekit_agent_jobs_started_total", ev)).inc, 1.0))

    def _job_ended(self, ev: Event, steps: list) -> None:
        steps.append((self.jobs_ended.labels(self._agent("livekit_agent_jobs_ended_total", ev), ev.status).inc, 1.0))


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

    def __init__(self, cfg: WebhooksConfig, verifier: Verifier, metrics: WebhookMetrics):
        self.max_body = cfg.max_body_bytes
        self.verifier = verifier
        self.metrics = metrics
        self.seen = RecentIds(cfg.dedup_ttl, cfg.dedup_max_entries)
        self.rejections = RejectionLog()
        self._unknown_logged: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        try:
            self._check_headers(request)
            digest = self.verifier.verify_token(request.headers.get("Authorization", ""))
            body = await self._read(request)
            self.verifier.check_body(body, digest)
            try:
                ev = decode(body)
            except Malformed as e:
                raise Rejected("malformed", f"a validly signed body that is not a LiveKit webhook event: {e}") from None
        except Rejected as r:
            self.metrics.rejected.labels(r.reason).inc()
            self.rejections.warn(r, request.remote)
            return _answer(r.status, error=r.detail, reason=r.reason)
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
    handler = WebhookHandler(cfg, Verifier(keys), WebhookMetrics(telemetry))
    app.router.add_post(cfg.path, handler.handle)
    return handler
