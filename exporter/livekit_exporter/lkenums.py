"""LiveKit protobuf enums -> Prometheus label values. One place, shared by every source.

Label values are the enum names, lower-cased, with the enum's own prefix or suffix dropped
(EGRESS_ACTIVE -> active, RTMP_INPUT -> rtmp, JS_RUNNING -> running). Values appear in the
proto order, which is the order zero-filled series are emitted in.
"""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from livekit.protocol import agent, egress, ingress, models

UNKNOWN = "unknown"


def _labels(enum: EnumTypeWrapper, prefix: str = "", suffix: str = "") -> dict[int, str]:
    out = {}
    for name, number in enum.items():
        if prefix and name.startswith(prefix):
            name = name[len(prefix) :]
        if suffix and name.endswith(suffix):
            name = name[: -len(suffix)]
        out[number] = name.lower()
    return out


PARTICIPANT_KIND = _labels(models.ParticipantInfo.Kind)
PARTICIPANT_STATE = _labels(models.ParticipantInfo.State)
TRACK_TYPE = _labels(models.TrackType)
TRACK_SOURCE = _labels(models.TrackSource)
EGRESS_STATUS = _labels(egress.EgressStatus, prefix="EGRESS_")
INGRESS_INPUT = _labels(ingress.IngressInput, suffix="_INPUT")
INGRESS_STATUS = _labels(ingress.IngressState.Status, prefix="ENDPOINT_")
JOB_STATUS = _labels(agent.JobStatus, prefix="JS_")
DISCONNECT_REASON = _labels(models.DisconnectReason)
ROOM_END_REASON = _labels(models.RoomEndReason, prefix="ROOM_END_")
# The egress type: the `request` oneof of EgressInfo, except that the unified StartEgress request
# (`egress`) is named by its source (template -> room_composite, web, media). All are exported,
# zero when none runs; a type a newer LiveKit adds appears when it is reported.
EGRESS_TYPES = ("room_composite", "web", "participant", "track_composite", "track", "media", "replay")
UNIFIED_EGRESS = "egress"
_UNIFIED_SOURCE = {"template": "room_composite", "web": "web", "media": "media"}
# The oneof members as (JSON name, proto name): webhooks carry protojson, which may use either.
EGRESS_REQUEST_FIELDS = tuple(
    (f.json_name, f.name) for f in egress.EgressInfo.DESCRIPTOR.oneofs_by_name["request"].fields
)
UNIFIED_SOURCE_FIELDS = tuple(
    (f.json_name, f.name) for f in egress.StartEgressRequest.DESCRIPTOR.oneofs_by_name["source"].fields
)
# ListEgress(active=True) returns egress in these states.
EGRESS_ACTIVE_STATUSES = ("starting", "active", "ending")


def label(table: dict[int, str], number: int) -> str:
    return table.get(number, UNKNOWN)


def egress_type_of(request: str | None, source: str | None = None) -> str:
    """The one mapping of (the `request` member, the unified request's `source` member) to a type,
    used by the scrape path, the webhook path and the simulator's truth alike."""
    if request == UNIFIED_EGRESS:
        return _UNIFIED_SOURCE.get(source or "", UNKNOWN)
    return request or UNKNOWN


def egress_type(info: egress.EgressInfo) -> str:
    """The type of an EgressInfo message (the scrape path: ListEgress)."""
    request = info.WhichOneof("request")
    return egress_type_of(request, info.egress.WhichOneof("source") if request == UNIFIED_EGRESS else None)


def _member(doc: dict, fields: tuple[tuple[str, str], ...]) -> str | None:
    return next(
        (proto for json_name, proto in fields if doc.get(json_name) is not None or doc.get(proto) is not None), None
    )


def egress_type_json(info: dict) -> str:
    """The type of an EgressInfo in protojson (the webhook path), under either field spelling."""
    request = _member(info, EGRESS_REQUEST_FIELDS)
    source = None
    if request == UNIFIED_EGRESS:
        unified = info.get(UNIFIED_EGRESS)
        source = _member(unified, UNIFIED_SOURCE_FIELDS) if isinstance(unified, dict) else None
    return egress_type_of(request, source)
