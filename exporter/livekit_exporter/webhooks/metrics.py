"""The lifecycle counters and duration histograms a decoded Event updates, all at once."""

from __future__ import annotations

from collections.abc import Callable

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


class WebhookMetrics:
    """The long-lived webhook families, on the exporter's registry."""

    def __init__(self, telemetry: Telemetry):
        r = telemetry.registry

        def guarded(name: str, doc: str, labels: tuple[str, ...], label: str) -> Family[Counter]:
            """A counter whose `label` (trunk, agent_name) passes the cardinality guard."""
            return Family(Counter(name, doc, labels, registry=r), name, labels, telemetry.guard, frozenset({label}))

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
        self.sip_started = guarded(
            "livekit_sip_calls_started_total",
            "SIP calls whose participant became active (participant_joined "
            "of kind sip), by trunk id (the sip.trunkID attribute). An outbound call's participant joins "
            "before it dials, so for outbound calls this counts dial attempts, answered or not.",
            ("trunk",),
            "trunk",
        )
        self.sip_ended = guarded(
            "livekit_sip_calls_ended_total",
            "SIP calls whose participant left after becoming active "
            "(participant_left of kind sip), by trunk id and disconnect reason. LiveKit gives "
            "user_unavailable when the callee did not respond in time and user_rejected when the callee "
            "rejected the call (busy); an unanswered call may end with another reason "
            "(sip_trunk_failure, ...). SIP participants that never became active are in "
            'livekit_participant_connections_aborted_total{kind="sip"}.',
            ("trunk", "reason"),
            "trunk",
        )
        self.jobs_started = guarded(
            "livekit_agent_jobs_started_total",
            "Agent jobs started (agent_job_started webhooks, LiveKit Cloud), by agent name.",
            ("agent_name",),
            "agent_name",
        )
        self.jobs_ended = guarded(
            "livekit_agent_jobs_ended_total",
            "Agent jobs ended (agent_job_ended webhooks, LiveKit Cloud), by agent name and final status.",
            ("agent_name", "status"),
            "agent_name",
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
