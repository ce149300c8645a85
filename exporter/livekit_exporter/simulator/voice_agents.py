"""Simulated voice agents: a fleet pushing realistic call traffic through the real push client.

Three agents (inbound support, an outbound sales campaign with a dialer queue, a web concierge),
each with its STT, LLM and TTS providers, whose latencies follow per-provider log-normal
distributions. Calls are answered by humans or machines, or not at all, or fail; turns are
sometimes interrupted; tools are called; providers fail now and then.

`Truth` records what the fleet sent (only events the client accepted), so tests compare the
exporter's metrics with it and nobody hand-counts an expectation.

    fleet = VoiceAgentFleet(client, seed=3)
    fleet.simulate(calls=50)          # whole calls at once (tests, metricsdoc)
    await fleet.run()                 # calls spread over real time, forever (the demo)
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..client import EventsClient
from ..events import model as contract


@dataclass(frozen=True)
class Provider:
    name: str
    model: str
    median: float  # seconds, of the stage latency this provider drives
    spread: float = 0.35  # sigma of the log-normal


@dataclass(frozen=True)
class AgentProfile:
    name: str
    direction: contract.Direction
    stt: Provider
    llm: Provider
    tts: Provider
    tools: tuple[str, ...]
    campaign: str = ""
    outcomes: tuple[tuple[str, float], ...] = ()  # outcome of answered calls, with weights


DEEPGRAM = Provider("deepgram", "nova-3", 0.22)
ASSEMBLYAI = Provider("assemblyai", "universal-streaming", 0.32)
OPENAI = Provider("openai", "gpt-4o-mini", 0.38, 0.45)
ANTHROPIC = Provider("anthropic", "claude-haiku-4-5", 0.52, 0.4)
GROQ = Provider("groq", "llama-3.3-70b-versatile", 0.16, 0.3)
ELEVENLABS = Provider("elevenlabs", "eleven_flash_v2_5", 0.21)
CARTESIA = Provider("cartesia", "sonic-2", 0.11, 0.3)

AGENTS = (
    AgentProfile(
        "support-agent",
        "inbound",
        DEEPGRAM,
        OPENAI,
        ELEVENLABS,
        ("lookup_order", "create_ticket", "transfer_call"),
        outcomes=(("resolved", 6), ("transferred", 2), ("abandoned", 1)),
    ),
    AgentProfile(
        "sales-agent",
        "outbound",
        DEEPGRAM,
        ANTHROPIC,
        CARTESIA,
        ("check_calendar", "book_meeting"),
        campaign="spring-renewals",
        outcomes=(("qualified", 3), ("not_interested", 5), ("callback_requested", 2)),
    ),
    AgentProfile(
        "web-concierge",
        "web",
        ASSEMBLYAI,
        GROQ,
        CARTESIA,
        ("search_catalog",),
        outcomes=(("resolved", 5), ("abandoned", 1)),
    ),
)

# Prices the demo and tests configure (US dollars), so the cost counter has something to show.
PRICES: tuple[dict[str, Any], ...] = (
    {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usd_per_million_input_tokens": 0.15,
        "usd_per_million_output_tokens": 0.6,
        "usd_per_million_cached_tokens": 0.075,
    },
    {
        "provider": "anthropic",
        "usd_per_million_input_tokens": 1.0,
        "usd_per_million_output_tokens": 5.0,
        "usd_per_million_cached_tokens": 0.1,
    },
    {"provider": "groq", "usd_per_million_input_tokens": 0.59, "usd_per_million_output_tokens": 0.79},
    {"provider": "deepgram", "usd_per_stt_audio_minute": 0.0077},
    {"provider": "assemblyai", "usd_per_stt_audio_minute": 0.0025},
    {"provider": "elevenlabs", "usd_per_million_characters": 50.0},
    {"provider": "cartesia", "usd_per_million_characters": 30.0},
)

ERROR_TYPES = {
    "stt": ("timeout", "connection_closed"),
    "llm": ("rate_limited", "APITimeoutError"),
    "tts": ("timeout", "quota_exceeded"),
}


@dataclass
class Truth:
    """What the fleet sent, keyed by the label values the exporter should show."""

    events: Counter[str] = field(default_factory=Counter)
    calls_started: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    calls_answered: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    calls_ended: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    active: Counter[tuple[str, str]] = field(default_factory=Counter)
    queued: dict[tuple[str, str], int] = field(default_factory=dict)
    campaign_running: dict[str, int] = field(default_factory=dict)
    turns: Counter[tuple[str, str]] = field(default_factory=Counter)
    interruptions: Counter[str] = field(default_factory=Counter)
    turn_latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    llm_ttft: dict[tuple[str, str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    llm_tokens: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    tts_characters: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    stt_audio_seconds: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    tool_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)


@dataclass
class SimCall:
    profile: AgentProfile
    call_id: str
    answered: bool = False
    turns_left: int = 0

    def labels(self) -> dict[str, Any]:
        """The fields every call lifecycle event (started, answered, ended) carries."""
        p = self.profile
        return {"agent": p.name, "call_id": self.call_id, "direction": p.direction, "campaign": p.campaign}


class VoiceAgentFleet:
    def __init__(self, client: EventsClient, seed: int = 1, agents: tuple[AgentProfile, ...] = AGENTS):
        self.client = client
        self.rng = random.Random(seed)
        self.agents = agents
        self.truth = Truth()
        self._ids = itertools.count(1)

    # -- sending, and recording what was sent ------------------------------------------------------

    def _send(self, event: contract.Event) -> bool:
        if not self.client.emit(event):
            return False
        t = self.truth
        t.events[str(event.__struct_config__.tag)] += 1
        if isinstance(event, contract.CallStarted):
            t.calls_started[event.agent, event.direction, event.campaign] += 1
            t.active[event.agent, event.direction] += 1
        elif isinstance(event, contract.CallAnswered):
            t.calls_answered[event.agent, event.direction, event.campaign, event.answered_by] += 1
        elif isinstance(event, contract.CallEnded):
            t.calls_ended[event.agent, event.direction, event.campaign, event.outcome] += 1
            t.active[event.agent, event.direction] -= 1
        elif isinstance(event, contract.CallsQueued):
            t.queued[event.agent, event.campaign] = event.queued
        elif isinstance(event, contract.CampaignStatus):
            t.campaign_running[event.campaign] = int(event.running)
        elif isinstance(event, contract.Turn):
            t.turns[event.agent, "true" if event.interrupted else "false"] += 1
            t.interruptions[event.agent] += event.interruptions or 0
            if event.e2e_latency_seconds is not None:
                t.turn_latency[event.agent].append(event.e2e_latency_seconds)
            if event.llm_ttft_seconds is not None and event.llm_provider and event.llm_model:
                t.llm_ttft[event.agent, event.llm_provider, event.llm_model].append(event.llm_ttft_seconds)
        elif isinstance(event, contract.LLMUsage):
            for kind, n in (
                ("input", event.input_tokens),
                ("output", event.output_tokens),
                ("cached", event.cached_tokens),
            ):
                t.llm_tokens[event.agent, event.provider, event.model, kind] += n
        elif isinstance(event, contract.TTSUsage):
            t.tts_characters[event.agent, event.provider, event.model] += event.characters
        elif isinstance(event, contract.STTUsage):
            t.stt_audio_seconds[event.agent, event.provider, event.model] += event.audio_seconds
        elif isinstance(event, contract.ToolCall):
            t.tool_calls[event.agent, event.tool] += 1
        elif isinstance(event, contract.Error):
            t.errors[event.agent, event.component, event.error_type, str(event.recoverable).lower()] += 1
        return True

    def _send_usage(self, usage: Callable[..., contract.Event], agent: str, provider: Provider, **amounts: Any) -> None:
        """A usage event (contract.STTUsage, LLMUsage, TTSUsage) of one agent's provider and its model."""
        self._send(usage(agent=agent, provider=provider.name, model=provider.model, **amounts))

    def _latency(self, p: Provider) -> float:
        return round(p.median * math.exp(self.rng.gauss(0, p.spread)), 4)

    # -- one call, step by step ----------------------------------------------------------------------

    def start_call(self, profile: AgentProfile) -> SimCall:
        call = SimCall(profile, f"sim-{next(self._ids):06d}")
        self._send(contract.CallStarted(**call.labels()))
        return call

    def connect(self, call: SimCall) -> bool:
        """Answers the call, or ends it unanswered / failed. True when a conversation follows."""
        p, rng = call.profile, self.rng
        if p.direction == "outbound":
            roll = rng.random()
            if roll < 0.25:
                return self._end(call, "no_answer", round(rng.uniform(20, 45), 2))
            if roll < 0.30:
                self._send(contract.Error(agent=p.name, component="transport", error_type="sip_503"))
                return self._end(call, "failed", round(rng.uniform(0.5, 3), 2))
            by: Literal["machine", "human"] = "machine" if roll < 0.42 else "human"
            setup = round(rng.uniform(4, 25), 2)
        else:
            by, setup = "human", round(rng.uniform(0.3, 2.0), 2)
        self._send(contract.CallAnswered(**call.labels(), answered_by=by, setup_seconds=setup))
        if by == "machine":
            return self._end(call, "voicemail", round(rng.uniform(10, 30), 2))
        call.answered = True
        call.turns_left = rng.randint(2, 9)
        return True

    def turn(self, call: SimCall) -> None:
        p, rng = call.profile, self.rng
        eou = round(rng.uniform(0.15, 0.6), 4)
        transcription, ttft, ttfb = self._latency(p.stt), self._latency(p.llm), self._latency(p.tts)
        interrupted = rng.random() < 0.12
        if rng.random() < 0.03:
            component: Literal["stt", "llm", "tts"] = rng.choice(("stt", "llm", "tts"))
            kind = rng.choice(ERROR_TYPES[component])
            # Timeouts and rate limits are retried past; the others fail the request.
            self._send(
                contract.Error(
                    agent=p.name, component=component, error_type=kind, recoverable=kind in ("timeout", "rate_limited")
                )
            )
        self._send(
            contract.Turn(
                agent=p.name,
                interrupted=interrupted,
                interruptions=int(interrupted) + (1 if rng.random() < 0.05 else 0),
                e2e_latency_seconds=round(eou + ttft + ttfb + 0.05, 4),
                end_of_utterance_delay_seconds=eou,
                transcription_delay_seconds=transcription,
                llm_ttft_seconds=ttft,
                tts_ttfb_seconds=ttfb,
                stt_provider=p.stt.name,
                stt_model=p.stt.model,
                llm_provider=p.llm.name,
                llm_model=p.llm.model,
                tts_provider=p.tts.name,
                tts_model=p.tts.model,
                call_id=call.call_id,
                trace_id=f"{rng.getrandbits(128):032x}",
            )
        )
        speech = round(rng.uniform(1.5, 8), 2)
        self._send_usage(contract.STTUsage, p.name, p.stt, audio_seconds=speech)
        prompt = rng.randint(400, 3000)
        self._send_usage(
            contract.LLMUsage,
            p.name,
            p.llm,
            input_tokens=prompt,
            cached_tokens=rng.randint(0, prompt // 2),
            output_tokens=rng.randint(15, 120),
            duration_seconds=round(ttft + rng.uniform(0.2, 1.5), 4),
        )
        chars = rng.randint(40, 300)
        self._send_usage(contract.TTSUsage, p.name, p.tts, characters=chars, audio_seconds=round(chars / 15, 2))
        if p.tools and rng.random() < 0.3:
            self._send(
                contract.ToolCall(
                    agent=p.name,
                    tool=rng.choice(p.tools),
                    duration_seconds=round(rng.lognormvariate(math.log(0.3), 0.6), 4),
                )
            )
        call.turns_left -= 1

    def finish(self, call: SimCall) -> None:
        p = call.profile
        outcome = self.rng.choices([o for o, _ in p.outcomes], [w for _, w in p.outcomes])[0]
        self._end(call, outcome, round(self.rng.uniform(30, 600), 2))

    def _end(self, call: SimCall, outcome: str, duration: float) -> bool:
        self._send(contract.CallEnded(**call.labels(), outcome=outcome, duration_seconds=duration))
        return False

    def report_dialers(self, queued: int | None = None) -> None:
        for p in self.agents:
            if p.campaign:
                self._send(contract.CampaignStatus(campaign=p.campaign, running=True))
                self._send(
                    contract.CallsQueued(
                        agent=p.name, campaign=p.campaign, queued=self.rng.randint(0, 40) if queued is None else queued
                    )
                )
        for p in self.agents:
            for prov in (p.stt, p.llm, p.tts):
                self._send(contract.DependencyStatus(agent=p.name, dependency=prov.name, up=self.rng.random() > 0.02))

    # -- whole runs ---------------------------------------------------------------------------------

    def simulate(self, calls: int, leave_open: int = 0) -> list[SimCall]:
        """`calls` whole calls, round-robin over the agents, plus `leave_open` that never end."""
        self.report_dialers()
        for i in range(calls):
            call = self.start_call(self.agents[i % len(self.agents)])
            if self.connect(call):
                while call.turns_left > 0:
                    self.turn(call)
                self.finish(call)
        return [self.start_call(self.agents[i % len(self.agents)]) for i in range(leave_open)]

    async def run(self, period: float = 1.0, max_concurrent: int = 12) -> None:
        """Calls spread over real time: a few start each period, each turn takes a period."""
        ongoing: list[SimCall] = []
        tick = 0
        while True:
            if tick % 10 == 0:
                self.report_dialers()
            if len(ongoing) < max_concurrent:
                for _ in range(self.rng.randint(0, 2)):
                    call = self.start_call(self.rng.choice(self.agents))
                    if self.connect(call):
                        ongoing.append(call)
            for call in list(ongoing):
                if call.turns_left > 0:
                    self.turn(call)
                else:
                    self.finish(call)
                    ongoing.remove(call)
            tick += 1
            await asyncio.sleep(period)
