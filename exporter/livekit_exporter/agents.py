"""livekit-agents instrumentation: one call turns an AgentSession's events into exporter events.

    from livekit_exporter.agents import instrument
    instrument(session, agent="support-agent", direction="inbound", job_ctx=ctx)

Install with `pip install 'livekit-exporter[agents]'`. The client comes from
LIVEKIT_EXPORTER_EVENTS_URL and LIVEKIT_EXPORTER_EVENTS_TOKEN unless one is passed; one client per
event loop is shared by every session of the process, and each closing session flushes it. With
`job_ctx`, the job's shutdown closes it (flushing what is left). Without those variables the call
is not instrumented: an error is logged once and a disabled client drops every event; the agent
runs on unharmed.

Arguments are checked at once (ValueError naming the argument): an agent name, campaign, call id,
outcome or dependency the exporter would refuse fails here, not later in a batch.

What is read (livekit-agents >= 1.5, where they exist; older versions fall back to the deprecated
`metrics_collected` event), as livekit-agents 1.8.9's voice/agent_activity.py emits it:
- `conversation_item_added`: a user ChatMessage (transcription_delay, end_of_turn_delay) opens a
  turn; the first assistant ChatMessage after it (e2e_latency, llm_node_ttft, tts_node_ttfb,
  `interrupted`) completes it: one `turn` event, labelled with the stt/llm/tts metadata they carry.
  Assistant speech with no user message before it is not a turn: the greeting, `say()`, a second
  message of the same reply (text spoken before a tool call, then the answer after the tool), a
  reply after a handoff. A user message that got no reply (the user spoke again, or hung up) is
  sent as a turn without e2e latency, when the next user message arrives or the session closes.
  livekit-agents marks a reply cut short by a failed TTS as `interrupted`; that is not the user
  interrupting: it is counted as a TTS error (`error_type` tts_failed, unless livekit-agents
  already reported the unrecoverable TTS error), and the turn as not interrupted.
- `session_usage_updated`: cumulative usage per provider and model; the increase since the last
  update becomes `llm`, `stt` and `tts` usage events.
- `function_tools_executed` -> `tool_call` (and `error` for a failed tool); `agent_false_interruption`
  and interrupted assistant speech outside a turn -> counted in the next turn's interruptions;
  `error` -> `error` with `recoverable` as livekit-agents reports it (each failed attempt that is
  retried is recoverable; the final failure is not); `close` -> `call_ended`.

Provider names: livekit-agents reports what each plugin says, e.g. `api.openai.com` (OpenAI and
OpenAI-compatible plugins report their API host), `api.anthropic.com`, `Deepgram`, `ElevenLabs`,
`Cartesia`. They are normalised (provider_name()) to short lowercase names, openai, anthropic,
deepgram, elevenlabs, cartesia, google, groq..., so one price table entry matches them all.

Known livekit-agents bugs are guarded against: negative timings (-1 means "not measured", and
timestamp errors) are left out rather than sent, so they never make the exporter refuse a batch;
absurd turn stages (60-200 s, livekit/agents#6093, #3591, #2388) are sent, capped at the schema's
maximum, and the exporter discards and counts them (events.max_latency); other timings above the
schema's maximum are left out. A turn after an agent handoff may lack e2e_latency
(livekit/agents#7157): the turn is still counted, without that observation. With the preferred
events, LLM request durations are not reported by livekit-agents, so
voice_agent_llm_request_duration_seconds is fed only in the fallback mode or by other clients.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
import typing
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from livekit.agents import AgentSession, llm
from livekit.agents.metrics import EOUMetrics, LLMMetrics, RealtimeModelMetrics, STTMetrics, TTSMetrics
from livekit.agents.voice import events as lk_events

from .client import DisabledClient, EventsClient, validate
from .events import model as contract

__all__ = ["CallInstrumentation", "instrument", "provider_name"]

Mode = Literal["usage", "metrics_collected"]

log = logging.getLogger(__name__)

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventsClient | DisabledClient] = (
    weakref.WeakKeyDictionary()
)
# Clients whose closing a job's shutdown already does (one callback per client, not per session).
_closed_at_shutdown: weakref.WeakSet[EventsClient | DisabledClient] = weakref.WeakSet()

_ERROR_COMPONENTS = {"llm_error": "llm", "realtime_model_error": "llm", "stt_error": "stt", "tts_error": "tts"}

# API hosts the livekit-agents plugins report as their provider -> the short name a price table uses.
PROVIDER_HOSTS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.deepgram.com": "deepgram",
    "api.elevenlabs.io": "elevenlabs",
    "api.cartesia.ai": "cartesia",
    "generativelanguage.googleapis.com": "google",
    "aiplatform.googleapis.com": "google",
    "api.groq.com": "groq",
    "api.cerebras.ai": "cerebras",
    "api.fireworks.ai": "fireworks",
    "api.together.xyz": "together",
    "api.x.ai": "xai",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral",
    "api.perplexity.ai": "perplexity",
    "openrouter.ai": "openrouter",
    "api.assemblyai.com": "assemblyai",
    "api.rime.ai": "rime",
    "api.lmnt.com": "lmnt",
    "api.neuphonic.com": "neuphonic",
    "api.speechmatics.com": "speechmatics",
    "api.sarvam.ai": "sarvam",
    "inference.baseten.co": "baseten",
    "api.telnyx.com": "telnyx",
}
_SELF_HOSTED = ("localhost", "127.", "10.", "192.168.", "0.0.0.0", "[::1]", "::1", "host.docker.internal")


@functools.lru_cache(maxsize=512)
def provider_name(raw: str) -> str:
    """A provider as livekit-agents reports it -> the short lowercase name prices and labels use.

    "api.openai.com" -> "openai" (known API hosts, URLs too); "ElevenLabs" -> "elevenlabs";
    an unknown host loses a leading "api." and its top-level domain ("api.acme.ai" -> "acme",
    "*.openai.azure.com" -> "azure"); localhost and private addresses -> "self_hosted"."""
    p = raw.strip().lower()
    if "://" in p:
        p = urlsplit(p).netloc or p
    p = p.split("/", 1)[0]
    if p.count(":") == 1:  # a port
        p = p.split(":", 1)[0]
    if p in PROVIDER_HOSTS:
        return PROVIDER_HOSTS[p]
    if p.startswith(_SELF_HOSTED):
        return "self_hosted"
    if p.endswith(".azure.com"):
        return "azure"
    if "." in p and " " not in p:  # an unknown host
        parts = p.split(".")
        if parts[0] in ("api", "www") and len(parts) > 2:
            parts = parts[1:]
        return ".".join(parts[:-1]) or p
    return "_".join(p.split()) or "unknown"


def preferred_mode() -> Mode:
    """'usage' when the installed livekit-agents has session_usage_updated and ChatMessage.metrics."""
    has_usage = "session_usage_updated" in typing.get_args(lk_events.EventTypes)
    has_turn_metrics = "metrics" in llm.ChatMessage.model_fields
    return "usage" if has_usage and has_turn_metrics else "metrics_collected"


def default_client() -> EventsClient | DisabledClient:
    """The process's client for the running event loop, built from the environment once.

    Without the environment variables: a DisabledClient (events dropped), and one error logged."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.closed:  # closed: by an earlier job's shutdown
        try:
            client = EventsClient.from_env()
        except (RuntimeError, ValueError) as e:
            _log_once(f"livekit-exporter instrumentation is disabled: {e}; the agent runs without it")
            client = DisabledClient()
        _clients[loop] = client
    return client


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.error(message)


def _safe(handler: Callable[..., None]) -> Callable[..., None]:
    """Session event handlers never raise into livekit-agents: a bug here must not hurt the call."""

    @functools.wraps(handler)
    def wrapper(self: CallInstrumentation, ev: Any) -> None:
        try:
            handler(self, ev)
        except Exception:
            log.exception(
                "livekit-exporter instrumentation failed on a session event",
                extra={"event": getattr(ev, "type", type(ev).__name__)},
            )

    return wrapper


def _seconds(value: Any) -> float | None:
    """A timing livekit-agents reported, or None when it is absent, a sentinel (-1), not a number,
    or above the schema's maximum (which no real call reaches)."""
    if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= contract.MAX_SECONDS:
        return float(value)
    return None


_EXEMPLAR_CALL_ID = re.compile(contract.EXEMPLAR_CALL_ID_PATTERN.strip("^$"))


def _trace_id() -> str | None:
    """The current OpenTelemetry span's trace id (livekit-agents traces every turn), if there is one."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


def _stage(value: Any) -> float | None:
    """A turn stage: like _seconds, but an absurd value is capped at the schema's maximum and sent,
    so the exporter discards it and counts the timestamp bug (events.max_latency)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and not math.isnan(value):
        return float(min(value, contract.MAX_SECONDS))
    return None


def _name(value: Any) -> str | None:
    return value[:128] if isinstance(value, str) and value else None


def _provider(value: Any) -> str | None:
    name = _name(value)
    return provider_name(name)[:128] if name else None


def _stage_models(user: dict[str, Any], reply: dict[str, Any]) -> dict[str, str | None]:
    """A turn's stt_provider, stt_model, llm_provider, ... tts_model: each stage's metadata, the reply's first."""
    models: dict[str, str | None] = {}
    for stage in ("stt", "llm", "tts"):
        meta = reply.get(f"{stage}_metadata") or user.get(f"{stage}_metadata") or {}
        models[f"{stage}_provider"] = _provider(meta.get("model_provider"))
        models[f"{stage}_model"] = _name(meta.get("model_name"))
    return models


def _checked(event: contract.Event, argument: str) -> contract.Event:
    """The event, or ValueError naming the instrument() argument the exporter would refuse."""
    _, problem = validate(event)
    if problem:
        raise ValueError(f"livekit_exporter.agents: {argument}: {problem}")
    return event


# A call event's type, for CallInstrumentation._call_event.
_CallEvent = TypeVar("_CallEvent", contract.CallStarted, contract.CallAnswered, contract.CallEnded)

_USER_STAGES = ("end_of_turn_delay", "transcription_delay", "stt_metadata", "stopped_speaking_at")


class CallInstrumentation:
    """The events of one call handled by one AgentSession. Built by instrument()."""

    def __init__(
        self,
        session: AgentSession,
        client: EventsClient | DisabledClient,
        *,
        agent: str,
        direction: str,
        campaign: str,
        call_id: str,
        answered: bool,
        mode: Mode,
        clock: Callable[[], float],
    ):
        self.session = session
        self.client, self.agent, self.direction, self.campaign = client, agent, direction, campaign
        self.call_id, self.mode, self.clock = call_id, mode, clock
        started = _checked(self._call_event(contract.CallStarted), "agent, call_id, direction or campaign")
        self.outcome: str | None = None
        self.started = clock()
        # The user turn waiting for its first reply (its metrics), or None.
        self._pending: dict[str, Any] | None = None
        # Fallback mode: stage timings from metrics_collected, taken by the next user / assistant message.
        self._stages: dict[str, Any] = {}
        # Interruptions not yet in a turn: false interruptions, and interrupted speech outside a turn.
        self._interruptions = 0
        # Unrecoverable TTS errors livekit-agents reported since the last assistant message.
        self._tts_errors = 0
        self._usage: dict[tuple[str, str, str], dict[str, float]] = {}
        self._ended = False
        self._flush: asyncio.Task[bool] | None = None
        self._emit(started)
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

    def answered(
        self, answered_by: Literal["human", "machine", "unknown"] = "unknown", setup_seconds: float | None = None
    ) -> None:
        """The callee picked up (outbound calls: when create_sip_participant returns answered)."""
        answer = self._call_event(contract.CallAnswered, answered_by=answered_by, setup_seconds=_seconds(setup_seconds))
        self._emit(_checked(answer, "answered_by"))

    def set_outcome(self, outcome: str) -> None:
        """The outcome reported when the session closes (default: the close reason)."""
        _checked(self._call_ended(outcome), "outcome")
        self.outcome = outcome

    def dependency(self, name: str, up: bool) -> None:
        """Reports a dependency's health (voice_agent_dependency_up); re-send it periodically."""
        self._emit(_checked(contract.DependencyStatus(agent=self.agent, dependency=name, up=up), "dependency name"))

    # -- session events ---------------------------------------------------------------------------------

    def _emit(self, event: contract.Event) -> None:
        self.client.emit(event)

    def _emit_usage(self, usage: Callable[..., contract.Event], provider: str, model: str, **amounts: Any) -> None:
        """A usage event (contract.STTUsage, LLMUsage, TTSUsage) of this call's agent and one provider and model."""
        self._emit(usage(agent=self.agent, provider=provider, model=model, **amounts))

    def _emit_llm_usage(
        self, provider: str, model: str, tokens_in: int, tokens_out: int, cached: int, duration: float | None = None
    ) -> None:
        """LLM usage; cached tokens are a part of the input tokens, so never more than them."""
        self._emit_usage(
            contract.LLMUsage,
            provider,
            model,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cached_tokens=min(cached, tokens_in),
            duration_seconds=duration,
        )

    def _call_event(self, event: Callable[..., _CallEvent], **fields: Any) -> _CallEvent:
        """A call event (contract.CallStarted, CallAnswered, CallEnded) with this call's agent, call_id,
        direction and campaign."""
        return event(agent=self.agent, call_id=self.call_id, direction=self.direction, campaign=self.campaign, **fields)

    def _call_ended(self, outcome: str, duration_seconds: float | None = None) -> contract.CallEnded:
        return self._call_event(contract.CallEnded, outcome=outcome, duration_seconds=duration_seconds)

    def _turn(self, user: dict[str, Any], reply: dict[str, Any] | None, interrupted: bool) -> None:
        """One turn: the user's metrics, and its first reply's (None: the user got no reply)."""
        metrics = reply or {}
        if self.mode == "metrics_collected" and reply is not None:
            # Fallback: LiveKit's own formula for the total, when every stage is there.
            parts = [user.get("end_of_turn_delay"), metrics.get("llm_node_ttft"), metrics.get("tts_node_ttfb")]
            if all(p is not None for p in parts):
                metrics = {**metrics, "e2e_latency": sum(parts)}
        interruptions = self._interruptions + (1 if interrupted else 0)
        self._interruptions = 0
        self._emit(
            contract.Turn(
                agent=self.agent,
                interrupted=interrupted,
                interruptions=interruptions,
                e2e_latency_seconds=_stage(metrics.get("e2e_latency")),
                end_of_utterance_delay_seconds=_stage(user.get("end_of_turn_delay")),
                transcription_delay_seconds=_stage(user.get("transcription_delay")),
                llm_ttft_seconds=_stage(metrics.get("llm_node_ttft")),
                tts_ttfb_seconds=_stage(metrics.get("tts_node_ttfb")),
                **_stage_models(user, metrics),
                # exemplars of the turn's latencies: its call, and the agent's current OpenTelemetry trace
                call_id=self.call_id if _EXEMPLAR_CALL_ID.fullmatch(self.call_id) else None,
                trace_id=_trace_id(),
            )
        )

    def _take_stages(self, keys: tuple[str, ...] | None) -> dict[str, Any]:
        """Fallback mode: pops the stage timings collected so far (only `keys`, or all the others)."""
        if keys is None:
            taken, self._stages = self._stages, {}
            return taken
        return {k: self._stages.pop(k) for k in keys if k in self._stages}

    def _tts_failed(self, item: llm.ChatMessage) -> bool:
        """Whether an `interrupted` reply was cut short by a failed TTS rather than by the user.

        livekit-agents 1.8.9 (agent_activity.py) sets `interrupted` on the assistant message when
        the speech was interrupted *or* a TTS segment failed; the speech handle, still the
        session's current speech when the message is added, tells them apart."""
        if not item.interrupted:
            return False
        speech = getattr(self.session, "current_speech", None)
        if speech is not None:
            return not speech.interrupted
        return self._tts_errors > 0

    @_safe
    def _on_item(self, ev: lk_events.ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage):
            return
        if item.role == "user":
            if self._pending is not None:  # the previous user turn got no reply
                self._turn(self._pending, None, False)
            if self.mode == "usage":
                self._pending = dict(getattr(item, "metrics", None) or {})
            else:
                self._pending = self._take_stages(_USER_STAGES)
            return
        if item.role != "assistant":
            return
        tts_failed = self._tts_failed(item)
        if tts_failed and self._tts_errors == 0:
            self._emit(contract.Error(agent=self.agent, component="tts", error_type="tts_failed"))
        self._tts_errors = 0
        interrupted = bool(item.interrupted) and not tts_failed
        if self.mode == "usage":
            reply = dict(getattr(item, "metrics", None) or {})
        else:
            late_user = self._take_stages(_USER_STAGES)  # user stages reported after the user message
            reply = self._take_stages(None)
            if self._pending is not None:
                self._pending = {**late_user, **self._pending}
        user, self._pending = self._pending, None
        if user is None:
            # Speech that answers no user message (greeting, say(), the rest of a reply): not a turn.
            self._interruptions += 1 if interrupted else 0
            return
        self._turn(user, reply, interrupted)

    def _delta(self, kind: str, provider: str, model: str, totals: dict[str, float]) -> dict[str, float]:
        """Increase of each cumulative total since the last update (a reset restarts from zero)."""
        last = self._usage.get((kind, provider, model), {})
        self._usage[(kind, provider, model)] = totals
        return {k: (v - last.get(k, 0) if v >= last.get(k, 0) else v) for k, v in totals.items()}

    @_safe
    def _on_usage(self, ev: lk_events.SessionUsageUpdatedEvent) -> None:
        for u in ev.usage.model_usage:
            provider, model = _provider(u.provider) or "unknown", _name(u.model) or "unknown"
            if u.type == "llm_usage":
                d = self._delta(
                    "llm",
                    provider,
                    model,
                    {"input": u.input_tokens, "output": u.output_tokens, "cached": u.input_cached_tokens},
                )
                if any(d.values()):
                    self._emit_llm_usage(provider, model, int(d["input"]), int(d["output"]), int(d["cached"]))
            elif u.type == "stt_usage":
                d = self._delta("stt", provider, model, {"audio": u.audio_duration})
                if d["audio"] > 0:
                    self._emit_usage(
                        contract.STTUsage, provider, model, audio_seconds=min(d["audio"], contract.MAX_SECONDS)
                    )
            elif u.type == "tts_usage":
                d = self._delta("tts", provider, model, {"chars": u.characters_count, "audio": u.audio_duration})
                if d["chars"] > 0 or d["audio"] > 0:
                    self._emit_usage(
                        contract.TTSUsage,
                        provider,
                        model,
                        characters=int(d["chars"]),
                        audio_seconds=min(d["audio"], contract.MAX_SECONDS),
                    )

    @_safe
    def _on_metrics(self, ev: lk_events.MetricsCollectedEvent) -> None:
        """Fallback for livekit-agents without session_usage_updated / ChatMessage.metrics."""
        x = ev.metrics
        meta = getattr(x, "metadata", None)
        provider = _provider(getattr(meta, "model_provider", None)) or "unknown"
        model = _name(getattr(meta, "model_name", None)) or "unknown"
        stage_meta = {"model_provider": provider, "model_name": model}
        if isinstance(x, EOUMetrics):
            # 0.0 means "end of speech not detected" for both delays.
            if x.end_of_utterance_delay > 0:
                self._stages["end_of_turn_delay"] = x.end_of_utterance_delay
            if x.transcription_delay > 0:
                self._stages["transcription_delay"] = x.transcription_delay
        elif isinstance(x, (LLMMetrics, RealtimeModelMetrics)):
            if isinstance(x, LLMMetrics):
                inp, out, cached = x.prompt_tokens, x.completion_tokens, x.prompt_cached_tokens
            else:
                inp, out, cached = x.input_tokens, x.output_tokens, x.input_token_details.cached_tokens
            self._emit_llm_usage(provider, model, inp, out, cached, _seconds(x.duration))
            if _seconds(x.ttft) is not None and "llm_node_ttft" not in self._stages:
                self._stages["llm_node_ttft"] = x.ttft
                self._stages["llm_metadata"] = stage_meta
        elif isinstance(x, TTSMetrics):
            self._emit_usage(
                contract.TTSUsage,
                provider,
                model,
                characters=x.characters_count,
                audio_seconds=_seconds(x.audio_duration) or 0.0,
            )
            if _seconds(x.ttfb) is not None and "tts_node_ttfb" not in self._stages:
                self._stages["tts_node_ttfb"] = x.ttfb
                self._stages["tts_metadata"] = stage_meta
        elif isinstance(x, STTMetrics):
            if x.audio_duration > 0:
                self._emit_usage(
                    contract.STTUsage, provider, model, audio_seconds=min(x.audio_duration, contract.MAX_SECONDS)
                )
            self._stages["stt_metadata"] = stage_meta

    @_safe
    def _on_tools(self, ev: lk_events.FunctionToolsExecutedEvent) -> None:
        for call, output in ev.zipped():
            duration = _seconds(output.created_at - call.created_at)
            if duration is not None:
                self._emit(
                    contract.ToolCall(agent=self.agent, tool=_name(call.name) or "unknown", duration_seconds=duration)
                )
            if output.is_error:
                self._emit(contract.Error(agent=self.agent, component="tool", error_type="tool_error"))

    @_safe
    def _on_false_interruption(self, ev: Any) -> None:
        self._interruptions += 1

    @_safe
    def _on_error(self, ev: lk_events.ErrorEvent) -> None:
        err = ev.error
        kind = getattr(err, "type", "")
        component = _ERROR_COMPONENTS.get(kind, "other")
        recoverable = bool(getattr(err, "recoverable", False))
        if kind == "tts_error" and not recoverable:
            self._tts_errors += 1
        cause = getattr(err, "error", err)
        self._emit(
            contract.Error(
                agent=self.agent,
                component=component,  # type: ignore[arg-type]
                error_type=type(cause).__name__[:128],
                recoverable=recoverable,
            )
        )

    @_safe
    def _on_close(self, ev: lk_events.CloseEvent) -> None:
        if self._ended:
            return
        self._ended = True
        if self._pending is not None:  # the last user turn got no reply (the caller hung up)
            self._turn(self._pending, None, False)
            self._pending = None
        reason = getattr(ev.reason, "value", str(ev.reason))
        self._emit(self._call_ended((self.outcome or reason)[:128] or "unknown", _seconds(self.clock() - self.started)))
        # Kept on self: the loop holds only a weak reference to a task.
        self._flush = asyncio.get_running_loop().create_task(self.client.flush(5.0), name="livekit-exporter-flush")


def instrument(
    session: AgentSession,
    *,
    agent: str,
    direction: Literal["inbound", "outbound", "web"] = "web",
    campaign: str = "",
    call_id: str | None = None,
    client: EventsClient | DisabledClient | None = None,
    answered: bool | None = None,
    mode: Mode | None = None,
    job_ctx: Any = None,
    clock: Callable[[], float] = time.monotonic,
) -> CallInstrumentation:
    """Reports this session's call, turns, usage, tool calls and errors to the exporter.

    Call it inside the job's event loop, once the session exists (before or after start()).
    `answered` defaults to True for inbound and web calls (the agent takes them at once); for an
    outbound call, call `.answered(...)` when the callee picks up. `mode` forces the fallback
    ('metrics_collected') or the preferred ('usage') source of numbers; by default the best one
    the installed livekit-agents offers. With `job_ctx` (the entrypoint's JobContext), the job's
    shutdown closes the client, sending what is still queued. Raises ValueError for an argument
    the exporter would refuse (an empty or over-long agent, campaign or call id; a bad direction).
    """
    client = client or default_client()
    call = CallInstrumentation(
        session,
        client,
        agent=agent,
        direction=direction,
        campaign=campaign,
        call_id=call_id or uuid.uuid4().hex,
        answered=direction != "outbound" if answered is None else answered,
        mode=mode or preferred_mode(),
        clock=clock,
    )
    if job_ctx is not None and client not in _closed_at_shutdown:
        _closed_at_shutdown.add(client)

        async def close_events_client(reason: str) -> None:
            await client.aclose()

        job_ctx.add_shutdown_callback(close_events_client)
    return call
