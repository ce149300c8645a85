"""LiveKit webhooks: verify -> decode -> deduplicate -> apply to lifecycle counters and durations.

The package mirrors `events/`: verify.py (the token and the body hash), decode.py (the body into an
Event), metrics.py (the families an Event updates), handler.py (the HTTP face and deduplication).

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

from .decode import EVENTS, UNKNOWN_EVENT, Event, Malformed, decode
from .handler import (
    CONTENT_TYPES,
    REJECTION_LOG_LINES,
    REJECTION_LOG_WINDOW,
    RecentIds,
    RejectionLog,
    WebhookHandler,
    setup,
)
from .metrics import WebhookMetrics
from .verify import MAX_TOKEN_LIFETIME, REJECTIONS, Rejected, Verifier

__all__ = [
    "CONTENT_TYPES",
    "EVENTS",
    "MAX_TOKEN_LIFETIME",
    "REJECTIONS",
    "REJECTION_LOG_LINES",
    "REJECTION_LOG_WINDOW",
    "UNKNOWN_EVENT",
    "Event",
    "Malformed",
    "RecentIds",
    "Rejected",
    "RejectionLog",
    "Verifier",
    "WebhookHandler",
    "WebhookMetrics",
    "decode",
    "setup",
]
