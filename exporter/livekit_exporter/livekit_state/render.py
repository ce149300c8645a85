"""Rendering one Snapshot as fresh Prometheus metric families: pure, no I/O.

A family is built only from a list read in full, and built anew on every scrape, so a room that has
gone never lingers as a stale series. A sample of the default output:

    livekit_up 1
    livekit_api_up{service="room"} 1
    livekit_rooms{occupancy="occupied"} 12
    livekit_room_participants 31
    livekit_egress_active{type="room_composite",status="active"} 2
    livekit_ingress{input_type="rtmp",status="publishing"} 1
    livekit_sip_trunks{direction="inbound"} 3
"""

from __future__ import annotations

import itertools
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress
from livekit.protocol import models as proto_models
from prometheus_client import Counter
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import lkenums
from ..config import CollectConfig, LabelsConfig
from ..guard import OTHER

if TYPE_CHECKING:
    from .read import Snapshot


# The gauges of enum labels: name -> (help, each label with its enum's known values, in order).
_ENUM_GAUGES: dict[str, tuple[str, dict[str, Iterable[str]]]] = {
    "livekit_egress_active": (
        "Egress jobs that LiveKit lists as active, by type and status.",
        {"type": lkenums.EGRESS_TYPES, "status": lkenums.EGRESS_ACTIVE_STATUSES},
    ),
    "livekit_ingress": (
        "Ingress endpoints configured in LiveKit, by input type and state.",
        {"input_type": lkenums.INGRESS_INPUT.values(), "status": lkenums.INGRESS_STATUS.values()},
    ),
    "livekit_participants": (
        "Participants in the rooms read for detail, by kind and state.",
        {"kind": lkenums.PARTICIPANT_KIND.values(), "state": lkenums.PARTICIPANT_STATE.values()},
    ),
    "livekit_published_tracks": (
        "Tracks published in the rooms read for detail, by type and source.",
        {"type": lkenums.TRACK_TYPE.values(), "source": lkenums.TRACK_SOURCE.values()},
    ),
}


def _zero_filled(name: str, counts: Mapping[Any, float]) -> GaugeMetricFamily:
    """A gauge of enum labels (_ENUM_GAUGES), each label named with its enum's known values: every
    combination of the known values, at zero when nothing has it (so a series exists before its
    first job), in the enums' order; then any value a newer LiveKit reports."""
    doc, known = _ENUM_GAUGES[name]
    family = _gauge(name, doc, known)
    left = dict(counts)
    for combo in itertools.product(*known.values()):
        family.add_metric(list(combo), left.pop(combo, 0))
    for combo, n in sorted(left.items()):
        family.add_metric(list(combo), n)
    return family


def _gauge(name: str, doc: str, labels: Iterable[str] = (), *, value: float | None = None) -> GaugeMetricFamily:
    """A gauge family; with `value`, its one sample (a gauge without labels)."""
    return GaugeMetricFamily(name, doc, value=value, labels=list(labels) or None)


class ScrapeFolder:
    """The cardinality guard for gauges rebuilt on every scrape: the `max_values` busiest values of a
    label this scrape keep their name, the rest are summed into __other__ (nothing is lost), and each
    folded value is counted in livekit_exporter_label_overflow_total once per scrape. Then the
    family's series are bounded by `max_series` (labels.max_series_per_metric): the busiest keep
    their labels, the rest are summed into their series with the label __other__ (into one series
    with every label __other__ if even those would be too many)."""

    def __init__(self, max_values: int, overflow: Counter, max_series: int = LabelsConfig.max_series_per_metric):
        self.max_values = max_values
        self.max_series = max_series
        self.overflow = overflow

    def fold(self, metric: str, labels: list[str], tally: Mapping[Any, int], label: str) -> Mapping[Any, int]:
        index = labels.index(label)
        return self._fold_series(metric, labels, self._fold_values(metric, label, tally, index), index)

    def _fold_values(self, metric: str, label: str, tally: Mapping[Any, int], index: int) -> Mapping[Any, int]:
        per_value: Tally[str] = Tally()
        for key, n in tally.items():
            per_value[key[index]] += n
        if len(per_value) <= self.max_values:
            return tally
        ranked = sorted(per_value.items(), key=lambda kv: (-kv[1], kv[0]))
        keep = {v for v, _ in ranked[: self.max_values]}
        folded: Tally[tuple[str, ...]] = Tally()
        for key, n in tally.items():
            if key[index] not in keep:
                key = (*key[:index], OTHER, *key[index + 1 :])
            folded[key] += n
        self.overflow.labels(metric, label).inc(len(per_value) - len(keep))
        return folded

    def _fold_series(self, metric: str, labels: list[str], tally: Mapping[Any, int], index: int) -> Mapping[Any, int]:
        if len(tally) <= self.max_series:
            return tally
        ranked = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))

        def other(key: tuple[str, ...]) -> tuple[str, ...]:
            return (*key[:index], OTHER, *key[index + 1 :])

        # Moving a series from kept to folded adds at most one folded series: shrink until both fit.
        keep = self.max_series
        while keep > 0:
            kept = {key for key, _ in ranked[:keep]}
            excess = keep + len({other(key) for key, _ in ranked[keep:]} - kept) - self.max_series
            if excess <= 0:
                break
            keep -= excess
        folded: Tally[tuple[str, ...]] = Tally()
        if keep <= 0:  # the rest would still be too many with `label` folded: one series holds it
            keep = self.max_series - 1
            for key, n in ranked[:keep]:
                folded[key] += n
            folded[(OTHER,) * len(labels)] += sum(n for _, n in ranked[keep:])
            folding = list(enumerate(labels))
        else:
            for key, n in ranked[:keep]:
                folded[key] += n
            for key, n in ranked[keep:]:
                folded[other(key)] += n
            folding = [(index, labels[index])]
        moved = ranked[keep:]
        for i, name in folding:
            values = {key[i] for key, _ in moved if key[i] != OTHER}
            if values:
                self.overflow.labels(metric, name).inc(len(values))
        return folded

    def gauge(self, name: str, doc: str, labels: list[str], tally: Mapping[Any, int], label: str) -> GaugeMetricFamily:
        """A gauge of `tally` (label values -> count) with its `label` folded, in label order."""
        family = _gauge(name, doc, labels)
        for key, n in sorted(self.fold(name, labels, tally, label).items()):
            family.add_metric(list(key), n)
        return family


def families(snap: Snapshot, cfg: CollectConfig, services: Iterable[str], folder: ScrapeFolder) -> list[Any]:
    """Fresh metric families for one snapshot: a family is served when its list was read in full."""
    out: list[Any] = []
    services = tuple(services)
    up = _gauge(
        "livekit_up",
        "1 when every enabled LiveKit API service answered this scrape.",
        value=1.0 if services and all(snap.up.get(s, False) for s in services) else 0.0,
    )
    api_up = _gauge("livekit_api_up", "1 when this LiveKit API service answered this scrape.", ["service"])
    for s in services:
        api_up.add_metric([s], 1.0 if snap.up.get(s, False) else 0.0)
    out += [up, api_up]
    dur = _gauge(
        "livekit_exporter_scrape_duration_seconds",
        "Time this scrape spent reading the LiveKit API.",
        value=snap.duration,
    )
    out.append(dur)

    if snap.rooms is not None:
        out += _room_families(snap.rooms, cfg.room_size_buckets)
    if snap.egress is not None:
        out.append(_egress_family(snap.egress))
    if snap.ingress is not None:
        out += _ingress_families(snap.ingress)
    if snap.inbound_trunks is not None and snap.outbound_trunks is not None and snap.dispatch_rules is not None:
        trunks = _gauge("livekit_sip_trunks", "SIP trunks configured in LiveKit.", ["direction"])
        trunks.add_metric(["inbound"], snap.inbound_trunks)
        trunks.add_metric(["outbound"], snap.outbound_trunks)
        rules = _gauge(
            "livekit_sip_dispatch_rules", "SIP dispatch rules configured in LiveKit.", value=snap.dispatch_rules
        )
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
        out += _participant_families(snap.participants, folder)
    if snap.dispatches is not None:
        out.append(_dispatch_family(snap.dispatches, folder))
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
    rooms_f = _gauge(
        "livekit_rooms", "Open rooms, by whether they have participants (agents and egress not counted).", ["occupancy"]
    )
    rooms_f.add_metric(["empty"], len(rooms) - occupied)
    rooms_f.add_metric(["occupied"], occupied)
    full_f = _gauge("livekit_rooms_full", "Rooms with a participant limit that have reached it.", value=full)
    part_f = _gauge(
        "livekit_room_participants",
        "Participants in all rooms, as Room.num_participants counts them: agents and egress are not included.",
        value=participants,
    )
    pub_f = _gauge(
        "livekit_room_publishers",
        "Participants publishing media, summed over all rooms (Room.num_publishers: agents and egress included).",
        value=publishers,
    )
    rec_f = _gauge("livekit_rooms_recording", "Rooms with an active recording.", value=recording)
    size_f = GaugeHistogramMetricFamily(
        "livekit_room_size",
        "Open rooms by number of participants (as Room.num_participants counts them).",
    )
    cumulative, pairs = 0, []
    for b, c in zip([*list(bounds), float("inf")], buckets, strict=True):
        cumulative += c
        pairs.append(("+Inf" if b == float("inf") else _fmt_bound(b), cumulative))
    size_f.add_metric([], pairs, gsum_value=participants)
    return [rooms_f, full_f, part_f, pub_f, rec_f, size_f]


def _fmt_bound(b: float) -> str:
    return repr(float(b))


def _egress_family(items: list[proto_egress.EgressInfo]) -> GaugeMetricFamily:
    tally = Tally((lkenums.egress_type(e), lkenums.label(lkenums.EGRESS_STATUS, e.status)) for e in items)
    return _zero_filled("livekit_egress_active", tally)


def _ingress_families(items: list[proto_ingress.IngressInfo]) -> list[Any]:
    tally: Tally[tuple[str, str]] = Tally()
    bitrate: Tally[tuple[str, str]] = Tally()
    publishing = proto_ingress.IngressState.ENDPOINT_PUBLISHING
    for i in items:
        it = lkenums.label(lkenums.INGRESS_INPUT, i.input_type)
        tally[(it, lkenums.label(lkenums.INGRESS_STATUS, i.state.status))] += 1
        if i.state.status == publishing:
            bitrate[(it, "audio")] += i.state.audio.average_bitrate
            bitrate[(it, "video")] += i.state.video.average_bitrate
    f = _zero_filled("livekit_ingress", tally)
    b = _gauge(
        "livekit_ingress_input_bytes_per_second",
        "Average input rate of publishing ingress (IngressState average_bitrate / 8), summed by input type and media.",
        ["input_type", "media"],
    )
    for it in lkenums.INGRESS_INPUT.values():
        for media in ("audio", "video"):
            b.add_metric([it, media], bitrate[(it, media)] / 8)
    return [f, b]


def _participant_families(per_room: dict[str, list[proto_models.ParticipantInfo]], folder: ScrapeFolder) -> list[Any]:
    by_kind: Tally[tuple[str, str]] = Tally()
    tracks: Tally[tuple[str, str]] = Tally()
    calls: Tally[tuple[str, str]] = Tally()
    sip_kind = proto_models.ParticipantInfo.Kind.SIP
    for plist in per_room.values():
        for p in plist:
            by_kind[
                (lkenums.label(lkenums.PARTICIPANT_KIND, p.kind), lkenums.label(lkenums.PARTICIPANT_STATE, p.state))
            ] += 1
            for t in p.tracks:
                tracks[(lkenums.label(lkenums.TRACK_TYPE, t.type), lkenums.label(lkenums.TRACK_SOURCE, t.source))] += 1
            if p.kind == sip_kind:
                status = p.attributes.get("sip.callStatus") or lkenums.UNKNOWN
                trunk = p.attributes.get("sip.trunkID") or "none"
                calls[(status, trunk)] += 1
    pf = _zero_filled("livekit_participants", by_kind)
    tf = _zero_filled("livekit_published_tracks", tracks)
    cf = folder.gauge(
        "livekit_sip_calls",
        "SIP calls in the rooms read for detail, by sip.callStatus and trunk id.",
        ["status", "trunk"],
        calls,
        "trunk",
    )
    return [pf, tf, cf]


def _dispatch_family(
    per_room: dict[str, list[proto_dispatch.AgentDispatch]], folder: ScrapeFolder
) -> GaugeMetricFamily:
    jobs: Tally[tuple[str, str]] = Tally()
    for dlist in per_room.values():
        for d in dlist:
            for j in d.state.jobs:
                jobs[
                    (d.agent_name or j.agent_name or "unnamed", lkenums.label(lkenums.JOB_STATUS, j.state.status))
                ] += 1
    return folder.gauge(
        "livekit_agent_jobs",
        "Agent jobs of the dispatches in the rooms read for detail, by agent name and status.",
        ["agent_name", "status"],
        jobs,
        "agent_name",
    )


class ScrapeView(Collector):
    """What one /metrics response renders: the long-lived registry plus this scrape's families."""

    def __init__(self, registry: Any, fresh: list[Any]):
        self._registry = registry
        self._fresh = fresh

    def collect(self):
        yield from self._fresh
        yield from self._registry.collect()
