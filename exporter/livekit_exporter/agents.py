"""livekit-agents instrumentation: one call turns an AgentSession's events into exporter events.

    from livekit_exporter.agents import instrument
    instrument(session, agent="support-agent", direction="inbound")

Install with `pip install 'livekit-exporter[agents]'`. The client comes from
LIVEKIT_EXPORTER_EVENTS_URL and LIVEKIT_EXPORTER_EVENTS_TOKEN unless one is passed; one client per
event loop is shared by every session of the process, and each closing session flushes it.

What is read (livekit-agents >= 1.5, where they exist; older versions fall back to the deprecated
`metrics_collected` event):
- `conversation_item_added`: a user ChatMessage carries transcription_delay and end_of_turn_delay,
  the next assistant ChatMessage e2e_latency, llm_node_ttft, tts_node_ttfb and `interrupted`;
  together they make one `turn` event, labelled with the stt/llm/tts metadata they carry.
- `session_usage_updated`: cumulative usage per provider and model; the increase since the last
  update becomes `llm`, `stt` and `tts` usage events.
- `function_tools_executed` -> `tool_call` (and `error` for a failed tool); `agent_false_interruption`
  -> counted in the next turn's interruptions; `error` -> `error`; `close` -> `call_ended`.

Known livekit-agents bugs are guarded against: negative timings (-1 means "not measured", and
timestamp errors) are left out rather than sent, so they never make the exporter refuse a batch;
absurd ones (60-200 s, livekit/agents#6093, #3591, #2388) are sent and the exporter discards and
counts them (events.max_latency). A turn after an agent handoff may lack e2e_latency
(livekit/agents#7157): the turn is still counted, without that observation. With the preferred
events, LLM request durations are not reported by livekit-agents, so
voice_agent_llm_request_duration_seconds is fed only in the fallback mode or by other clients.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import typing
import uuid
import weakref
from typing import Any, Callable, Literal

from livekit.agents import AgentSession, llm
from livekit.agents.metrics import EOUMetrics, LLMMetrics, RealtimeModelMetrics, STTMetrics, TTSMetrics
from livekit.agents.voice import events as lk_events

from .client import EventsClient
from .events import model as m

__all__ = ["CallInstrumentation", "instrument"]

Mode = Literal["usage", "metrics_collected"]

log = logging.getLogger(__name__)

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventsClient]" = weakref.WeakKeyDictionary()

_ERROR_COMPONENTS = {"llm_error": "llm", "realtime_model_error": "llm", "stt_error": "stt", "tts_error": "tts"}


def preferred_mode() -> Mode:
    """'usage' when the installed livekit-agents has session_usage_updated and ChatMessage.metrics."""
    has_usage = "session_usage_updated" in typing.get_args(lk_events.EventTypes)
    has_turn_metrics = "metrics" in llm.ChatMessage.model_fields
    return "usage" if has_usage and has_turn_metrics else "metrics_collected"


def default_client() -> EventsClient:
    """The process's client for the running event loop, built from the environment once."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = EventsClient.from_env()
    return client


def _safe(handler: Callable[..., None]) -> Callable[..., None]:
    """Session event handlers never raise into livekit-agents: a bug here must not hurt the call."""

    @functools.wraps(handler)
    def wrapper(self: "CallInstrumentation", ev: Any) -> None:
        try:
            handler(self, ev)
        except Exception:
            log.exception("livekit-exporter instrumentation failed on a session event",
                          extra={"event": getattr(ev, "type", type(ev).__name__)})

    return wrapper


def _seconds(value: Any) -> float | None:
    """A timing livekit-agents reported, or None when it is absent, a sentinel (-1) or not a number."""
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _name(value: Any) -> str | None:
    return value[:128] if isinstance(value, str) and value else None


class CallInstrumentation:
    """The events of one call handled by one AgentSession. Built by instrument()."""

    def __init__(self, session: AgentSession, client: EventsClient, *, agent: str, direction: str,
                 campaign: str, call_id: str, answered: bool, mode: Mode, clock: Callable[[], float]):
        self.client, self.agent, self.direction, self.campaign = client, agent, direction, campaign
        self.call_id, self.mode, self.clock = call_id, mode, clock
        self.outcome: str | None = None
        self.started = clock()
        self._user: dict[str, Any] = {}  # the pending user turn's metrics
        self._false_interruptions = 0
        self._usage: dict[tuple[str, str, str], dict[str, float]] = {}
        self._ended = False
        self._flush: asyncio.Task[bool] | None = None
        self._emit(m.CallStarted(agent=agent, call_id=call_id, direction=direction, campaign=campaign))
        if answered:
            self.answered("human")
        session.on("conversation_item_added", self._on_item)
        session.on("function_tools_executed", self._on_tools)
        session.on("agent_false_interruption", self._on_false_interruption)
        session.on("error", self._on_error)
        session.on("close", self._on_close)
        if mode == "usage":
            session.on("session_usage_updated", self._on_usage)
        else:
            session.on("metrics_collected", self._on_metrics)

    # -- what the developer may call ---------------------------------------------------------------

    def answered(self, answered_by: Literal["human", "machine", "unknown"] = "unknown",
                 setup_seconds: float | None = None) -> None:
        """The callee picked up (outbound calls: when create_sip_participant returns answered)."""
        self._emit(m.CallAnswered(agent=self.agent, call_id=self.call_id, direction=self.direction,
                                  campaign=self.campaign, answered_by=answered_by,
                                  setup_seconds=_seconds(setup_seconds)))

    def set_outcome(self, outcome: str) -> None:
        """The outcome reported when the session closes (default: the close reason)."""
        self.outcome = outcome

    def dependency(self, name: str, up: bool) -> None:
        self._emit(m.DependencyStatus(agent=self.agent, dependency=name, up=up))

    # -- session events ---------------------------------------------------------------------------------

    def _emit(self, event: m.Event) -> None:
        self.client.emit(event)

    @_safe
    def _on_item(self, ev: lk_events.ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage):
            return
        metrics = getattr(item, "metrics", None) or {}
        if item.role == "user":
            if self.mode == "usage":
                self._user = dict(metrics)
            return
        if item.role != "assistant":
            return
        user, self._user = self._user, {}
        if self.mode == "metrics_collected":
            # Fallback: the stages came from metrics_collected; LiveKit's own formula for the total.
            metrics = user
            parts = [user.get(k) for k in ("end_of_turn_delay", "llm_node_ttft", "tts_node_ttfb")]
            if all(p is not None for p in parts):
                metrics = {**user, "e2e_latency": sum(parts)}
        stt, llm_meta, tts = (metrics.get(k) or user.get(k) or {} for k in
                              ("stt_metadata", "llm_metadata", "tts_metadata"))
        interruptions = self._false_interruptions + (1 if item.interrupted else 0)
        self._false_interruptions = 0
        self._emit(m.Turn(
            agent=self.agent,
            interrupted=item.interrupted,
            interruptions=interruptions,
            e2e_latency_seconds=_seconds(metrics.get("e2e_latency")),
            end_of_utterance_delay_seconds=_seconds(user.get("end_of_turn_delay")),
            transcription_delay_seconds=_seconds(user.get("transcription_delay")),
            llm_ttft_seconds=_seconds(metrics.get("llm_node_ttft")),
            tts_ttfb_seconds=_seconds(metrics.get("tts_node_ttfb")),
            stt_provider=_name(stt.get("model_provider")), stt_model=_name(stt.get("model_name")),
            llm_provider=_name(llm_meta.get("model_provider")), llm_model=_name(llm_meta.get("model_name")),
            tts_provider=_name(tts.get("model_provider")), tts_model=_name(tts.get("model_name")),
        ))

    def _delta(self, kind: str, provider: str, model: str, totals: dict[str, float]) -> dict[str, float]:
        """Increase of each cumulative total since the last update (a reset restarts from zero)."""
        last = self._usage.get((kind, provider, model), {})
        self._usage[(kind, provider, model)] = totals
        return {k: (v - last.get(k, 0) if v >= last.get(k, 0) else v) for k, v in totals.items()}

    @_safe
    def _on_usage(self, ev: lk_events.SessionUsageUpdatedEvent) -> None:
        for u in ev.usage.model_usage:
            provider, model = _name(u.provider) or "unknown", _name(u.model) or "unknown"
            if u.type == "llm_usage":
                d = self._delta("llm", provider, model, {"input": u.input_tokens, "output": u.output_tokens,
                                                         "cached": u.input_cached_tokens})
                if any(d.values()):
                    self._emit(m.LLMUsage(agent=self.agent, provider=provider, model=model,
                                          input_tokens=int(d["input"]), output_tokens=int(d["output"]),
                                          cached_tokens=int(min(d["cached"], d["input"]))))
            elif u.type == "stt_usage":
                d = self._delta("stt", provider, model, {"audio": u.audio_duration})
                if d["audio"] > 0:
                    self._emit(m.STTUsage(agent=self.agent, provider=provider, model=model,
                                          audio_seconds=d["audio"]))
            elif u.type == "tts_usage":
                d = self._delta("tts", provider, model, {"chars": u.characters_count, "audio": u.audio_duration})
                if d["chars"] > 0 or d["audio"] > 0:
                    self._emit(m.TTSUsage(agent=self.agent, provider=provider, model=model,
                                          characters=int(d["chars"]), audio_seconds=d["audio"]))

    @_safe
    def _on_metrics(self, ev: lk_events.MetricsCollectedEvent) -> None:
        """Fallback for livekit-agents without session_usage_updated / ChatMessage.metrics."""
        x = ev.metrics
        meta = getattr(x, "metadata", None)
        provider = _name(getattr(meta, "model_provider", None)) or "unknown"
        model = _name(getattr(meta, "model_name", None)) or "unknown"
        stage_meta = {"model_provider": provider, "model_name": model}
        if isinstance(x, EOUMetrics):
            # 0.0 means "end of speech not detected" for both delays.
            if x.end_of_utterance_delay > 0:
                self._user["end_of_turn_delay"] = x.end_of_utterance_delay
            if x.transcription_delay > 0:
                self._user["transcription_delay"] = x.transcription_delay
        elif isinstance(x, (LLMMetrics, RealtimeModelMetrics)):
            if isinstance(x, LLMMetrics):
                inp, out, cached = x.prompt_tokens, x.completion_tokens, x.prompt_cached_tokens
            else:
                inp, out, cached = x.input_tokens, x.output_tokens, x.input_token_details.cached_tokens
            self._emit(m.LLMUsage(agent=self.agent, provider=provider, model=model, input_tokens=inp,
                                  output_tokens=out, cached_tokens=min(cached, inp),
                                  duration_seconds=_seconds(x.duration)))
            if _seconds(x.ttft) is not None and "llm_node_ttft" not in self._user:
                self._user["llm_node_ttft"] = x.ttft
                self._user["llm_metadata"] = stage_meta
        elif isinstance(x, TTSMetrics):
            self._emit(m.TTSUsage(agent=self.agent, provider=provider, model=model,
                                  characters=x.characters_count, audio_seconds=_seconds(x.audio_duration) or 0.0))
            if _seconds(x.ttfb) is not None and "tts_node_ttfb" not in self._user:
                self._user["tts_node_ttfb"] = x.ttfb
                self._user["tts_metadata"] = stage_meta
        elif isinstance(x, STTMetrics):
            if x.audio_duration > 0:
                self._emit(m.STTUsage(agent=self.agent, provider=provider, model=model,
                                      audio_seconds=x.audio_duration))
            self._user["stt_metadata"] = stage_meta

    @_safe
    def _on_tools(self, ev: lk_events.FunctionToolsExecutedEvent) -> None:
        for call, output in ev.zipped():
            duration = _seconds(output.created_at - call.created_at)
            if duration is not None:
                self._emit(m.ToolCall(agent=self.agent, tool=_name(call.name) or "unknown",
                                      duration_seconds=duration))
            if output.is_error:
                self._emit(m.Error(agent=self.agent, component="tool", error_type="tool_error"))

    @_safe
    def _on_false_interruption(self, ev: Any) -> None:
        self._false_interruptions += 1

    @_safe
    def _on_error(self, ev: lk_events.ErrorEvent) -> None:
        err = ev.error
        component = _ERROR_COMPONENTS.get(getattr(err, "type", ""), "other")
        cause = getattr(err, "error", err)
        self._emit(m.Error(agent=self.agent, component=component,  # type: ignore[arg-type]
                           error_type=type(cause).__name__[:128],
                           recoverable=bool(getattr(err, "recoverable", False))))

    @_safe
    def _on_close(self, ev: lk_events.CloseEvent) -> None:
        if self._ended:
            return
        self._ended = True
        reason = getattr(ev.reason, "value", str(ev.reason))
        self._emit(m.CallEnded(agent=self.agent, call_id=self.call_id, direction=self.direction,
                               campaign=self.campaign, outcome=(self.outcome or reason)[:128],
                               duration_seconds=_seconds(self.clock() - self.started)))
        # Kept on self: the loop holds only a weak reference to a task.
        self._flush = asyncio.get_running_loop().create_task(self.client.flush(5.0), name="livekit-exporter-flush")


def instrument(session: AgentSession, *, agent: str, direction: Literal["inbound", "outbound", "web"] = "web",
               campaign: str = "", call_id: str | None = None, client: EventsClient | None = None,
               answered: bool | None = None, mode: Mode | None = None,
               clock: Callable[[], float] = time.monotonic) -> CallInstrumentation:
    """Reports this session's call, turns, usage, tool calls and errors to the exporter.

    Call it inside the job's event loop, once the session exists (before or after start()).
    `answered` defaults to True for inbound and web calls (the agent takes them at once); for an
    outbound call, call `.answered(...)` when the callee picks up. `mode` forces the fallback
    ('metrics_collected') or the preferred ('usage') source of numbers; by default the best one
    the installed livekit-agents offers.
    """
    return CallInstrumentation(
        session, client or default_client(), agent=agent, direction=direction, campaign=campaign,
        call_id=call_id or uuid.uuid4().hex, answered=direction != "outbound" if answered is None else answered,
        mode=mode or preferred_mode(), clock=clock,
    )
