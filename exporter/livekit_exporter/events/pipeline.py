"""Validated events -> voice_agent_* metrics, the active-call table and its TTL, and the cost.

Everything here runs after a batch has been decoded and checked whole (decode.py), so applying
cannot fail half-way: a batch is applied entirely or not at all.

Sanity rule for timings (documented in docs/events-api.md): the schema already refuses negative,
NaN, infinite and larger-than-10^6 s numbers (the whole batch gets 400). A turn stage (e2e, end of
utterance, transcription, LLM time to first token, TTS time to first byte) above
`events.max_latency` (default 30 s) passes the schema but is not observed: livekit-agents has
shipped timestamp bugs that report 60-200 s for exactly these stages, and one of them would wreck a
latency histogram's sum. Each such value is counted in
livekit_exporter_event_latencies_discarded_total{type,field} and listed in the response; the rest
of its event is applied. Tool calls and LLM requests can legitimately take minutes: they are
bounded only by the schema.

Cardinality: every voice_agent_* metric shares one admitted set per label (the guard scope
"voice_agent"), so an agent, provider or model is either itself everywhere or __other__
everywhere. Each metric also keeps at most labels.max_series_per_metric series, and all of them (with
the webhook families) at most labels.max_series: a new label combination past a budget is folded
into __other__ (guard.Family), so an agent may be itself in one metric and __other__ in a fuller one.
Gauges that are *set* from reports (queued calls, campaign running, dependency up) never write a
report into __other__: a report whose label overflows, or whose series has no room, is dropped (and
counted by the guard), since one value would hide the others (an __other__ "up" hiding another
dependency's outage).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from prometheus_client import Counter, Gauge, Histogram

from ..config import EventsConfig, Price
from ..expiring import ExpiringMap
from ..guard import Family, LabelGuard, M
from ..telemetry import Telemetry
from . import model as contract

log = logging.getLogger(__name__)

TURN_BUCKETS = (0.3, 0.5, 0.7, 0.8, 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 8)
STAGE_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5)
CALL_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# Tool calls and LLM requests: mostly sub-second, but a tool may wait on a slow backend for minutes.
REQUEST_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120)

# name -> (labels, help, default buckets). The one list of the voice_agent_* histograms; the
# config schema's events.buckets keys are checked against it by a test. Pipeline holds each in the
# attribute named without voice_agent_ and _seconds (voice_agent_turn_latency_seconds: turn_latency).
HISTOGRAMS: dict[str, tuple[tuple[str, ...], str, tuple[float, ...]]] = {
    "voice_agent_call_duration_seconds": (
        ("agent", "direction", "outcome"),
        "Duration of ended calls (call_ended.duration_seconds).",
        CALL_BUCKETS,
    ),
    "voice_agent_call_setup_seconds": (
        ("agent", "direction"),
        "Time from dial to answer (call_answered.setup_seconds).",
        CALL_BUCKETS,
    ),
    "voice_agent_turn_latency_seconds": (
        ("agent",),
        "Voice-to-voice turn latency: the user stops speaking -> the agent's audio starts.",
        TURN_BUCKETS,
    ),
    "voice_agent_end_of_utterance_delay_seconds": (
        ("agent",),
        "End of user speech (VAD) -> the decision that the user's turn ended.",
        STAGE_BUCKETS,
    ),
    "voice_agent_transcription_delay_seconds": (
        ("agent", "provider", "model"),
        "End of user speech -> final transcript, by STT provider and model.",
        STAGE_BUCKETS,
    ),
    "voice_agent_llm_time_to_first_token_seconds": (
        ("agent", "provider", "model"),
        "LLM time to first token in a turn, by provider and model.",
        STAGE_BUCKETS,
    ),
    "voice_agent_llm_request_duration_seconds": (
        ("agent", "provider", "model"),
        "Duration of LLM requests, by provider and model.",
        REQUEST_BUCKETS,
    ),
    "voice_agent_tts_time_to_first_byte_seconds": (
        ("agent", "provider", "model"),
        "TTS time to first audio byte in a turn, by provider and model.",
        STAGE_BUCKETS,
    ),
    "voice_agent_tool_call_duration_seconds": (("agent", "tool"), "Duration of function-tool calls.", REQUEST_BUCKETS),
}

# A bound on the active-call table, whatever the clients send.
MAX_ACTIVE_CALLS = 100_000
UNKNOWN = "unknown"
# The guard scope of every voice_agent_* label (and of the unpriced-usage counter's).
SCOPE = "voice_agent"


@dataclass(frozen=True)
class Discarded:
    index: int
    field: str
    value: float

    def describe(self, max_latency: float, lines: list[int] | None = None) -> dict[str, object]:
        """The answer's entry: JSON paths as in a 400's problems (NDJSON: inside the line, with `line`)."""
        d: dict[str, object] = {
            "index": self.index,
            "path": f"$.{self.field}" if lines is not None else f"$.events[{self.index}].{self.field}",
            "reason": f"{self.value:g} s is above events.max_latency ({max_latency:g} s): not observed "
            "(treated as a clock or timestamp error); the rest of the event was applied",
        }
        if lines is not None:
            d["line"] = lines[self.index]
        return d


@dataclass
class _ActiveCall:
    labels: tuple[str, str]  # agent, direction: as guarded for voice_agent_calls_active
    gauge: Any  # its child of voice_agent_calls_active


def _exemplar(call_id: str | None, trace_id: str | None) -> dict[str, str] | None:
    """A turn's exemplar: its call_id and trace_id, those it has; None without either."""
    if call_id:
        return {"call_id": call_id, "trace_id": trace_id} if trace_id else {"call_id": call_id}
    return {"trace_id": trace_id} if trace_id else None


class PriceTable:
    """(provider, model) -> Price, case-insensitively; an exact model beats the provider's "*" entry.

    Each component reads its own fields (tokens for llm, characters and TTS minutes for tts, STT
    minutes for stt): usage is *priced* when its entry sets at least one of them, even to 0 (free).
    """

    def __init__(self, prices: tuple[Price, ...]):
        self._exact = {(p.provider.lower(), p.model.lower()): p for p in prices if p.model != "*"}
        self._any = {p.provider.lower(): p for p in prices if p.model == "*"}

    def lookup(self, provider: str, model: str) -> Price | None:
        if not self._exact and not self._any:
            return None  # no price table
        provider = provider.lower()
        return self._exact.get((provider, model.lower())) or self._any.get(provider)

    @staticmethod
    def llm_cost(price: Price, usage: contract.LLMUsage) -> float | None:
        if price.usd_per_million_input_tokens is None and price.usd_per_million_output_tokens is None:
            return None
        inp = price.usd_per_million_input_tokens or 0.0
        cached_price = inp if price.usd_per_million_cached_tokens is None else price.usd_per_million_cached_tokens
        return (
            (usage.input_tokens - usage.cached_tokens) * inp
            + usage.cached_tokens * cached_price
            + usage.output_tokens * (price.usd_per_million_output_tokens or 0.0)
        ) / 1e6

    @staticmethod
    def stt_cost(price: Price, usage: contract.STTUsage) -> float | None:
        if price.usd_per_stt_audio_minute is None:
            return None
        return usage.audio_seconds / 60 * price.usd_per_stt_audio_minute

    @staticmethod
    def tts_cost(price: Price, usage: contract.TTSUsage) -> float | None:
        if price.usd_per_million_characters is None and price.usd_per_tts_audio_minute is None:
            return None
        return usage.characters / 1e6 * (price.usd_per_million_characters or 0.0) + usage.audio_seconds / 60 * (
            price.usd_per_tts_audio_minute or 0.0
        )


# Labels whose values users choose, so they pass the cardinality guard; the others are enums.
GUARDED = frozenset({"agent", "campaign", "outcome", "provider", "model", "tool", "dependency"})


class _Declaration(NamedTuple):
    """One voice_agent_* counter or gauge (or, in PLAIN_COUNTERS, an exporter counter outside the guard):
    the Pipeline attribute that holds it, its name, help and labels."""

    attribute: str
    name: str
    help: str
    labels: tuple[str, ...]
    gauge: bool = False
    guarded: frozenset[str] = GUARDED


# The guarded counters and gauges, registered in this order (the order of the exposition), before the histograms.
FAMILIES: tuple[_Declaration, ...] = (
    _Declaration(
        "calls_started",
        "voice_agent_calls_started_total",
        "Calls started (call_started events).",
        ("agent", "direction", "campaign"),
    ),
    _Declaration(
        "calls_answered",
        "voice_agent_calls_answered_total",
        "Calls answered, by who answered (call_answered events).",
        ("agent", "direction", "campaign", "answered_by"),
    ),
    _Declaration(
        "calls_ended",
        "voice_agent_calls_ended_total",
        "Calls ended, by their user-defined outcome (call_ended events).",
        ("agent", "direction", "campaign", "outcome"),
    ),
    _Declaration(
        "calls_expired",
        "voice_agent_calls_expired_total",
        "Calls taken out of voice_agent_calls_active because no call_ended arrived within events.call_ttl.",
        ("agent", "direction"),
    ),
    _Declaration(
        "calls_active",
        "voice_agent_calls_active",
        "Calls started and not yet ended; a call with no end leaves after events.call_ttl.",
        ("agent", "direction"),
        gauge=True,
    ),
    _Declaration(
        "calls_queued",
        "voice_agent_calls_queued",
        "Calls waiting to be dialled, as last reported by dialers.",
        ("agent", "campaign"),
        gauge=True,
    ),
    _Declaration(
        "campaign_running",
        "voice_agent_campaign_running",
        "1 while a campaign runs, 0 when paused or ended (reported by dialers); gone after "
        "events.campaign_ttl without a report.",
        ("campaign",),
        gauge=True,
    ),
    _Declaration(
        "dependency_up",
        "voice_agent_dependency_up",
        "1 when the agent reports the dependency healthy, 0 when not; gone after events.dependency_ttl "
        "without a report.",
        ("agent", "dependency"),
        gauge=True,
    ),
    _Declaration(
        "turns",
        "voice_agent_turns_total",
        "Conversational turns, by whether the user cut the agent's reply short.",
        ("agent", "interrupted"),
    ),
    _Declaration(
        "interruptions",
        "voice_agent_interruptions_total",
        "Times users spoke over the agent, false interruptions (the agent resumed) included.",
        ("agent",),
    ),
    _Declaration(
        "llm_tokens",
        "voice_agent_llm_tokens_total",
        "LLM tokens by type: input (every prompt token), cached (the part of input served from cache), output.",
        ("agent", "provider", "model", "type"),
    ),
    _Declaration(
        "tts_characters",
        "voice_agent_tts_characters_total",
        "Characters synthesized by TTS.",
        ("agent", "provider", "model"),
    ),
    _Declaration(
        "stt_audio",
        "voice_agent_stt_audio_seconds_total",
        "Seconds of audio transcribed by STT.",
        ("agent", "provider", "model"),
    ),
    _Declaration(
        "errors",
        "voice_agent_errors_total",
        'Errors by pipeline component and error type; recoverable="true" for those the agent retried past.',
        ("agent", "component", "type", "recoverable"),
        guarded=frozenset({"agent", "type"}),
    ),
    _Declaration(
        "cost",
        "voice_agent_estimated_cost_dollars_total",
        "Estimated spend in US dollars: usage times the price table in events.prices (unpriced usage adds nothing).",
        ("agent", "component", "provider", "model"),
    ),
    _Declaration(
        "unpriced",
        "livekit_exporter_unpriced_usage_events_total",
        "Usage events (stt, llm, tts) that events.prices does not price: they add no estimated cost.",
        ("component", "provider", "model"),
    ),
)

# The exporter's own counters of the events API, registered after the histograms; not guarded.
PLAIN_COUNTERS: tuple[_Declaration, ...] = (
    _Declaration(
        "events_total",
        "livekit_exporter_events_total",
        "Events accepted by the events API, by type.",
        ("type",),
    ),
    _Declaration(
        "latencies_discarded",
        "livekit_exporter_event_latencies_discarded_total",
        "Turn-stage timings above events.max_latency, not observed (the rest of their event was applied).",
        ("type", "field"),
    ),
    _Declaration(
        "requests_rejected",
        "livekit_exporter_event_requests_rejected_total",
        "Requests to the events API refused whole (none of their events applied), by reason.",
        ("reason",),
    ),
)


class _Reports:
    """The series of a report gauge, each gone `ttl` seconds after its last report."""

    def __init__(
        self,
        family: Family[Gauge],
        ttl: float,
        guard: LabelGuard,
        clock: Callable[[], float],
        forget: tuple[str, ...] = (),
    ):
        self.family, self.guard = family, guard
        # The guard bounds the series (values per label); the map only times them out.
        self.series: ExpiringMap[tuple[str, ...], None] = ExpiringMap(math.inf, ttl, timer=clock, on_drop=self._drop)
        # Labels used by this gauge only: their values are freed in the guard when no series holds them.
        self._forget = [(i, label) for i, label in enumerate(family.labelnames) if label in forget]
        self._held: dict[tuple[int, str], int] = {}
        self._children: dict[tuple[str, ...], Any] = {}  # labels -> the gauge's child, while the series lives

    def set(self, values: tuple[str, ...], value: float) -> None:
        self.series.expire()  # so that a series past its ttl is dropped (its labels and series freed) first
        labels = self.family.report(*values)
        if labels is None:
            return
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.family.metric.labels(*labels)
        child.set(value)
        if labels not in self.series:
            for i, _ in self._forget:
                self._held[(i, labels[i])] = self._held.get((i, labels[i]), 0) + 1
        self.series[labels] = None  # its ttl starts again

    def _drop(self, labels: tuple[str, ...], _: None) -> None:
        self._children.pop(labels, None)
        self.family.remove(labels)
        for i, label in self._forget:
            n = self._held.pop((i, labels[i])) - 1
            if n:
                self._held[(i, labels[i])] = n
            else:
                self.guard.forget(SCOPE, label, labels[i])


class Pipeline:
    """Owns the voice_agent_* metrics of one exporter and applies validated batches to them."""

    calls_started: Family[Counter]
    calls_answered: Family[Counter]
    calls_ended: Family[Counter]
    calls_expired: Family[Counter]
    calls_active: Family[Gauge]
    calls_queued: Family[Gauge]
    campaign_running: Family[Gauge]
    dependency_up: Family[Gauge]
    turns: Family[Counter]
    interruptions: Family[Counter]
    llm_tokens: Family[Counter]
    tts_characters: Family[Counter]
    stt_audio: Family[Counter]
    errors: Family[Counter]
    cost: Family[Counter]
    unpriced: Family[Counter]
    events_total: Counter
    latencies_discarded: Counter
    requests_rejected: Counter
    call_duration: Family[Histogram]
    call_setup: Family[Histogram]
    turn_latency: Family[Histogram]
    end_of_utterance_delay: Family[Histogram]
    llm_request_duration: Family[Histogram]
    tool_call_duration: Family[Histogram]
    transcription_delay: Family[Histogram]
    llm_time_to_first_token: Family[Histogram]
    tts_time_to_first_byte: Family[Histogram]

    def __init__(self, config: EventsConfig, telemetry: Telemetry, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.guard = telemetry.guard
        self.prices = PriceTable(config.prices)
        self.max_latency = config.max_latency
        # A bound on the active-call table, whatever the clients send: past it the oldest call is
        # expired early. Either way it leaves voice_agent_calls_active and counts as expired.
        self._active: ExpiringMap[str, _ActiveCall] = ExpiringMap(
            MAX_ACTIVE_CALLS, config.call_ttl, timer=self._now, on_drop=self._expire
        )
        self._warned_unpriced: set[tuple[str, str, str]] = set()
        r = telemetry.registry

        guard = telemetry.guard

        def family(metric: M, name: str, labels: tuple[str, ...], guarded: frozenset[str] = GUARDED) -> Family[M]:
            """A voice_agent_* metric under the cardinality guard (scope "voice_agent"): its children
            are looked up by the raw label values. Values a gauge's expiry frees (guard.forget) belong
            to report gauges, which use `report()` and never the children cache."""
            return Family(metric, name, labels, guard, guarded, SCOPE)

        for d in FAMILIES:
            kind = Gauge if d.gauge else Counter
            setattr(self, d.attribute, family(kind(d.name, d.help, d.labels, registry=r), d.name, d.labels, d.guarded))
        self.histograms: dict[str, Family[Histogram]] = {}
        for name, (labels, doc, default) in HISTOGRAMS.items():
            buckets = config.buckets.get(name, default)
            self.histograms[name] = family(Histogram(name, doc, labels, buckets=buckets, registry=r), name, labels)
            setattr(self, name.removeprefix("voice_agent_").removesuffix("_seconds"), self.histograms[name])
        for d in PLAIN_COUNTERS:
            setattr(self, d.attribute, Counter(d.name, d.help, d.labels, registry=r))
        events_total = {
            kind: self.events_total.labels(t) for kind, t in zip(contract.EVENT_TYPES, contract.TYPE_NAMES, strict=True)
        }
        self._queued = _Reports(self.calls_queued, config.campaign_ttl, guard, self._now)
        self._campaigns = _Reports(self.campaign_running, config.campaign_ttl, guard, self._now)
        self._dependencies = _Reports(self.dependency_up, config.dependency_ttl, guard, self._now, ("dependency",))
        appliers: dict[type, Callable[[Any, int, list[Discarded]], None]] = {
            contract.CallStarted: self._call_started,
            contract.CallAnswered: self._call_answered,
            contract.CallEnded: self._call_ended,
            contract.CallsQueued: self._calls_queued,
            contract.CampaignStatus: self._campaign_status,
            contract.DependencyStatus: self._dependency_status,
            contract.Turn: self._turn,
            contract.STTUsage: self._stt,
            contract.LLMUsage: self._llm,
            contract.TTSUsage: self._tts,
            contract.ToolCall: self._tool_call,
            contract.Error: self._error,
        }
        # event type -> (how it is applied, its child of livekit_exporter_events_total)
        self._apply = {kind: (apply, events_total[kind]) for kind, apply in appliers.items()}

    # -- applying ----------------------------------------------------------------------------------

    def apply(self, events: list[contract.Event]) -> list[Discarded]:
        """Applies a validated batch; returns the timings that were discarded by the sanity rule."""
        discarded: list[Discarded] = []
        counts: dict[Any, int] = {}  # child of livekit_exporter_events_total -> events of its type
        appliers = self._apply
        for index, event in enumerate(events):
            apply, counted = appliers[type(event)]
            apply(event, index, discarded)
            counts[counted] = counts.get(counted, 0) + 1
        for counted, n in counts.items():
            counted.inc(n)
        for timing in discarded:
            self.latencies_discarded.labels(events[timing.index].__struct_config__.tag, timing.field).inc()
        return discarded

    def _latency(self, value: float | None, name: str, index: int, discarded: list[Discarded]) -> bool:
        """Whether a turn stage is to be observed; records it when the sanity rule discards it."""
        if value is None:
            return False
        if value > self.max_latency:
            discarded.append(Discarded(index, name, value))
            return False
        return True

    def _call_started(self, event: contract.CallStarted, index: int, discarded: list[Discarded]) -> None:
        self.calls_started(event.agent, event.direction, event.campaign).inc()
        if event.call_id in self._active:
            return  # a retried delivery of the same start: the call is counted active once
        # The guarded labels also label voice_agent_calls_expired_total when the call expires.
        labels = self.calls_active.resolve((event.agent, event.direction))
        gauge = self.calls_active.metric.labels(*labels)
        self._active[event.call_id] = _ActiveCall((labels[0], labels[1]), gauge)
        gauge.inc()

    def _call_answered(self, event: contract.CallAnswered, index: int, discarded: list[Discarded]) -> None:
        self.calls_answered(event.agent, event.direction, event.campaign, event.answered_by).inc()
        if event.setup_seconds is not None:
            self.call_setup(event.agent, event.direction).observe(event.setup_seconds)

    def _call_ended(self, event: contract.CallEnded, index: int, discarded: list[Discarded]) -> None:
        self.calls_ended(event.agent, event.direction, event.campaign, event.outcome).inc()
        if event.duration_seconds is not None:
            self.call_duration(event.agent, event.direction, event.outcome).observe(event.duration_seconds)
        call = self._active.pop(event.call_id, None)
        if call is not None:
            call.gauge.dec()

    def _calls_queued(self, event: contract.CallsQueued, index: int, discarded: list[Discarded]) -> None:
        self._queued.set((event.agent, event.campaign), event.queued)

    def _campaign_status(self, event: contract.CampaignStatus, index: int, discarded: list[Discarded]) -> None:
        self._campaigns.set((event.campaign,), 1 if event.running else 0)

    def _dependency_status(self, event: contract.DependencyStatus, index: int, discarded: list[Discarded]) -> None:
        self._dependencies.set((event.agent, event.dependency), 1 if event.up else 0)

    def _turn(self, event: contract.Turn, index: int, discarded: list[Discarded]) -> None:
        agent = event.agent
        self.turns(agent, "true" if event.interrupted else "false").inc()
        interruptions = event.interruptions if event.interruptions is not None else int(event.interrupted)
        if interruptions:
            self.interruptions(agent).inc(interruptions)
        # call_id / trace_id become exemplars of the latency observations (OpenMetrics only; never labels)
        exemplar = _exemplar(event.call_id, event.trace_id)
        latency = self._latency
        if latency(event.e2e_latency_seconds, "e2e_latency_seconds", index, discarded):
            self.turn_latency(agent).observe(event.e2e_latency_seconds, exemplar)
        if latency(event.end_of_utterance_delay_seconds, "end_of_utterance_delay_seconds", index, discarded):
            self.end_of_utterance_delay(agent).observe(event.end_of_utterance_delay_seconds, exemplar)
        if latency(event.transcription_delay_seconds, "transcription_delay_seconds", index, discarded):
            self.transcription_delay(agent, event.stt_provider or UNKNOWN, event.stt_model or UNKNOWN).observe(
                event.transcription_delay_seconds, exemplar
            )
        if latency(event.llm_ttft_seconds, "llm_ttft_seconds", index, discarded):
            self.llm_time_to_first_token(agent, event.llm_provider or UNKNOWN, event.llm_model or UNKNOWN).observe(
                event.llm_ttft_seconds, exemplar
            )
        if latency(event.tts_ttfb_seconds, "tts_ttfb_seconds", index, discarded):
            self.tts_time_to_first_byte(agent, event.tts_provider or UNKNOWN, event.tts_model or UNKNOWN).observe(
                event.tts_ttfb_seconds, exemplar
            )

    def _add_cost(
        self,
        component: str,
        event: contract.STTUsage | contract.LLMUsage | contract.TTSUsage,
        cost: Callable[[Price, Any], float | None],
    ) -> None:
        price = self.prices.lookup(event.provider, event.model)
        amount = None if price is None else cost(price, event)
        if amount is None:
            self._unpriced(component, event.provider, event.model)
        elif amount > 0:
            self.cost(event.agent, component, event.provider, event.model).inc(amount)

    def _unpriced(self, component: str, provider: str, model: str) -> None:
        self.unpriced(component, provider, model).inc()
        if not self.config.prices:  # no price table at all: one warning, not one per model
            key = ("", "", "")
            message = (
                "events.prices is empty: usage adds no estimated cost (counted in "
                "livekit_exporter_unpriced_usage_events_total); add prices to estimate it"
            )
        else:
            key = (component, provider, model)
            message = (
                "usage has no price in events.prices: it adds no estimated cost (counted in "
                "livekit_exporter_unpriced_usage_events_total); add a price entry for it"
            )
        if key not in self._warned_unpriced and len(self._warned_unpriced) < 1000:
            self._warned_unpriced.add(key)
            log.warning(message, extra={"component": component, "provider": provider, "model": model})

    def _stt(self, event: contract.STTUsage, index: int, discarded: list[Discarded]) -> None:
        self.stt_audio(event.agent, event.provider, event.model).inc(event.audio_seconds)
        self._add_cost("stt", event, PriceTable.stt_cost)

    def _llm(self, event: contract.LLMUsage, index: int, discarded: list[Discarded]) -> None:
        agent, provider, model = event.agent, event.provider, event.model
        if event.input_tokens:
            self.llm_tokens(agent, provider, model, "input").inc(event.input_tokens)
        if event.output_tokens:
            self.llm_tokens(agent, provider, model, "output").inc(event.output_tokens)
        if event.cached_tokens:
            self.llm_tokens(agent, provider, model, "cached").inc(event.cached_tokens)
        if event.duration_seconds is not None:  # not a turn stage: bounded by the schema only
            self.llm_request_duration(event.agent, event.provider, event.model).observe(event.duration_seconds)
        self._add_cost("llm", event, PriceTable.llm_cost)

    def _tts(self, event: contract.TTSUsage, index: int, discarded: list[Discarded]) -> None:
        if event.characters:
            self.tts_characters(event.agent, event.provider, event.model).inc(event.characters)
        self._add_cost("tts", event, PriceTable.tts_cost)

    def _tool_call(self, event: contract.ToolCall, index: int, discarded: list[Discarded]) -> None:
        self.tool_call_duration(event.agent, event.tool).observe(event.duration_seconds)

    def _error(self, event: contract.Error, index: int, discarded: list[Discarded]) -> None:
        self.errors(event.agent, event.component, event.error_type, "true" if event.recoverable else "false").inc()

    # -- time-to-live ------------------------------------------------------------------------------

    def _now(self) -> float:
        """The pipeline's clock, read at each call (a test may replace it)."""
        return self.clock()

    def _expire(self, call_id: str, call: _ActiveCall) -> None:
        call.gauge.dec()
        self.calls_expired(*call.labels).inc()

    def sweep(self) -> None:
        """Ends calls older than call_ttl; drops dependency reports older than dependency_ttl, and
        queue and campaign reports older than campaign_ttl."""
        now = self.clock()
        for table in (self._active, self._dependencies.series, self._campaigns.series, self._queued.series):
            table.expire(now)
