"""The lifecycle counters and duration histograms a decoded Event updates, all at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from prometheus_client import Counter, Histogram

from ..guard import Family
from ..telemetry import Telemetry
from .decode import EVENTS, Event
from .verify import REJECTIONS

DELIVERY_DELAY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120)
ROOM_DURATION_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400)
PARTICIPANT_DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
EGRESS_DURATION_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800)


# -- metrics ----------------------------------------------------------------------------------


class _Declaration(NamedTuple):
    """One webhook family: the WebhookMetrics attribute that holds it, its name, help and labels."""

    attribute: str
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None  # a histogram's
    guarded_label: str | None = None  # a counter whose label (trunk, agent_name) passes the cardinality guard


# Registered in this order (the order of the exposition).
DECLARATIONS: tuple[_Declaration, ...] = (
    _Declaration(
        "events",
        "livekit_webhook_events_total",
        "LiveKit webhook events accepted (signature verified, first delivery of the event id), by event type;"
        ' a type this version does not know counts as event="unknown".',
        ("event",),
    ),
    _Declaration(
        "rejected",
        "livekit_webhook_rejected_total",
        "Webhook requests rejected with a 4xx, by reason; a rejected request changes no other metric.",
        ("reason",),
    ),
    _Declaration(
        "duplicates",
        "livekit_webhook_duplicates_total",
        "Verified webhook deliveries of an event id already counted (LiveKit's retries, replays); answered "
        "200 and not counted again.",
    ),
    _Declaration(
        "delay",
        "livekit_webhook_delivery_delay_seconds",
        "Time from the event's created_at (whole seconds, set by LiveKit) to its arrival here, by event type;"
        " clock skew below 0 counts as 0.",
        ("event",),
        buckets=DELIVERY_DELAY_BUCKETS,
    ),
    _Declaration(
        "rooms_started",
        "livekit_room_sessions_started_total",
        "Rooms created (room_started webhooks).",
    ),
    _Declaration(
        "rooms_ended",
        "livekit_room_sessions_ended_total",
        'Rooms closed (room_finished webhooks), by the event\'s room_end_reason; end_reason="unknown" when '
        "LiveKit sent none (servers that do not set the field) or one this version does not know.",
        ("end_reason",),
    ),
    _Declaration(
        "room_duration",
        "livekit_room_session_duration_seconds",
        "Room lifetimes: room_finished time minus the room's creation_time.",
        buckets=ROOM_DURATION_BUCKETS,
    ),
    _Declaration(
        "participants_started",
        "livekit_participant_sessions_started_total",
        "Participants who connected (participant_joined webhooks, sent when a participant becomes active), by kind.",
        ("kind",),
    ),
    _Declaration(
        "participants_ended",
        "livekit_participant_sessions_ended_total",
        "Connected participants who left (participant_left webhooks), by kind and disconnect reason.",
        ("kind", "reason"),
    ),
    _Declaration(
        "participants_aborted",
        "livekit_participant_connections_aborted_total",
        "Participants who left before their connection became active (participant_connection_aborted "
        "webhooks), by kind.",
        ("kind",),
    ),
    _Declaration(
        "participant_duration",
        "livekit_participant_session_duration_seconds",
        "Participant sessions: participant_left time minus joined_at, by kind.",
        ("kind",),
        buckets=PARTICIPANT_DURATION_BUCKETS,
    ),
    _Declaration(
        "tracks",
        "livekit_track_publications_total",
        "Tracks published (track_published webhooks), by type and source.",
        ("type", "source"),
    ),
    _Declaration(
        "egress_started",
        "livekit_egress_started_total",
        "Egress started (egress_started webhooks), by egress type.",
        ("type",),
    ),
    _Declaration(
        "egress_ended",
        "livekit_egress_ended_total",
        "Egress ended (egress_ended webhooks), by egress type and final status; LiveKit sends one for an "
        "auto-egress that never started too, so it can exceed livekit_egress_started_total.",
        ("type", "status"),
    ),
    _Declaration(
        "egress_duration",
        "livekit_egress_duration_seconds",
        "Egress run time: ended_at minus started_at of ended egress (LiveKit sends nanoseconds), by egress type.",
        ("type",),
        buckets=EGRESS_DURATION_BUCKETS,
    ),
    _Declaration(
        "egress_bytes",
        "livekit_egress_output_bytes_total",
        "Bytes written by ended egress (sizes of its file and segment results), by egress type.",
        ("type",),
    ),
    _Declaration(
        "ingress_started",
        "livekit_ingress_started_total",
        "Ingress that started publishing (ingress_started webhooks), by input type.",
        ("input_type",),
    ),
    _Declaration(
        "ingress_ended",
        "livekit_ingress_ended_total",
        "Ingress state changes into error, inactive or complete (ingress_ended webhooks, sent on every such "
        "change, whether or not the ingress had published), by input type and the new status.",
        ("input_type", "status"),
    ),
    _Declaration(
        "sip_started",
        "livekit_sip_calls_started_total",
        "SIP calls whose participant became active (participant_joined of kind sip), by trunk id (the "
        "sip.trunkID attribute). An outbound call's participant joins before it dials, so for outbound calls "
        "this counts dial attempts, answered or not.",
        ("trunk",),
        guarded_label="trunk",
    ),
    _Declaration(
        "sip_ended",
        "livekit_sip_calls_ended_total",
        "SIP calls whose participant left after becoming active (participant_left of kind sip), by trunk id "
        "and disconnect reason. LiveKit gives user_unavailable when the callee did not respond in time and "
        "user_rejected when the callee rejected the call (busy); an unanswered call may end with another "
        "reason (sip_trunk_failure, ...). SIP participants that never became active are in "
        'livekit_participant_connections_aborted_total{kind="sip"}.',
        ("trunk", "reason"),
        guarded_label="trunk",
    ),
    _Declaration(
        "jobs_started",
        "livekit_agent_jobs_started_total",
        "Agent jobs started (agent_job_started webhooks, LiveKit Cloud), by agent name.",
        ("agent_name",),
        guarded_label="agent_name",
    ),
    _Declaration(
        "jobs_ended",
        "livekit_agent_jobs_ended_total",
        "Agent jobs ended (agent_job_ended webhooks, LiveKit Cloud), by agent name and final status.",
        ("agent_name", "status"),
        guarded_label="agent_name",
    ),
)


class WebhookMetrics:
    """The long-lived webhook families, on the exporter's registry."""

    events: Counter
    rejected: Counter
    duplicates: Counter
    delay: Histogram
    rooms_started: Counter
    rooms_ended: Counter
    room_duration: Histogram
    participants_started: Counter
    participants_ended: Counter
    participants_aborted: Counter
    participant_duration: Histogram
    tracks: Counter
    egress_started: Counter
    egress_ended: Counter
    egress_duration: Histogram
    egress_bytes: Counter
    ingress_started: Counter
    ingress_ended: Counter
    sip_started: Family[Counter]
    sip_ended: Family[Counter]
    jobs_started: Family[Counter]
    jobs_ended: Family[Counter]

    def __init__(self, telemetry: Telemetry):
        r = telemetry.registry
        for d in DECLARATIONS:
            family: Counter | Histogram | Family[Counter]
            if d.buckets is not None:
                family = Histogram(d.name, d.help, d.labels, buckets=d.buckets, registry=r)
            elif d.guarded_label is not None:
                counter = Counter(d.name, d.help, d.labels, registry=r)
                family = Family(counter, d.name, d.labels, telemetry.guard, frozenset({d.guarded_label}))
            else:
                family = Counter(d.name, d.help, d.labels, registry=r)
            setattr(self, d.attribute, family)
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

    def _participant_joined(self, ev: Event, steps: list) -> None:
        steps.append((self.participants_started.labels(ev.kind).inc, 1.0))
        if ev.trunk is not None:
            steps.append((self.sip_started(ev.trunk or "none").inc, 1.0))

    def _participant_left(self, ev: Event, steps: list) -> None:
        steps.append((self.participants_ended.labels(ev.kind, ev.reason).inc, 1.0))
        if ev.duration is not None:
            steps.append((self.participant_duration.labels(ev.kind).observe, ev.duration))
        if ev.trunk is not None:
            steps.append((self.sip_ended(ev.trunk or "none", ev.reason).inc, 1.0))

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

    def _job_started(self, ev: Event, steps: list) -> None:
        steps.append((self.jobs_started(ev.agent_name).inc, 1.0))

    def _job_ended(self, ev: Event, steps: list) -> None:
        steps.append((self.jobs_ended(ev.agent_name, ev.status).inc, 1.0))
