"""livekit_exporter.agents with the real livekit-agents package: a real AgentSession running real
turns (text mode, a scripted LLM provider built on the package's own LLM base class), the
package's real metric classes and events, and a real exporter on loopback."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import aiohttp
import pytest
from conftest import EVENTS_TOKEN, free_port, require_module, samples, scrape_samples, value

require_module("livekit.agents")

from livekit.agents import Agent, AgentSession, function_tool, llm  # noqa: E402
from livekit.agents.llm import ChatChunk, ChoiceDelta, CompletionUsage, FunctionToolCall  # noqa: E402
from livekit.agents.metrics import EOUMetrics, LLMMetrics, STTMetrics, TTSMetrics  # noqa: E402
from livekit.agents.metrics.base import Metadata  # noqa: E402
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS  # noqa: E402
from livekit.agents.voice import events as lk_events  # noqa: E402

from livekit_exporter.agents import CallInstrumentation, instrument, preferred_mode  # noqa: E402
from livekit_exporter.client import EventsClient  # noqa: E402
from livekit_exporter.server import build_app  # noqa: E402

USAGE = dict(prompt_tokens=120, completion_tokens=8, prompt_cached_tokens=20)


class ScriptedStream(llm.LLMStream):
    """The reply's chunks (_deltas) to the last message, then the request's usage."""

    def _deltas(self, about_an_order: bool) -> list[ChoiceDelta]:
        if about_an_order:
            return [ChoiceDelta(role="assistant", tool_calls=[
                FunctionToolCall(name="lookup_order", arguments='{"order_id": "A17"}', call_id="call-1")])]
        return [ChoiceDelta(role="assistant", content="Happy to help.")]

    async def _run(self) -> None:
        await asyncio.sleep(0.01)
        last = self._chat_ctx.items[-1]
        about_an_order = getattr(last, "role", None) == "user" and "order" in (last.text_content or "")
        for delta in self._deltas(about_an_order):
            self._event_ch.send_nowait(ChatChunk(id="r", delta=delta))
        self._event_ch.send_nowait(ChatChunk(id="r", usage=CompletionUsage(
            total_tokens=USAGE["prompt_tokens"] + USAGE["completion_tokens"], **USAGE)))


class ScriptedLLM(llm.LLM):
    """An LLM provider that answers from a script: a tool call when asked to look up an order."""

    stream_class: type[ScriptedStream] = ScriptedStream

    @property
    def model(self) -> str:
        return "script-1"

    @property
    def provider(self) -> str:
        return "scripted"

    def chat(self, *, chat_ctx, tools=None, conn_options=DEFAULT_API_CONNECT_OPTIONS, **kwargs):
        return self.stream_class(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class SupportAgent(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="Help the caller.")

    @function_tool
    async def lookup_order(self, order_id: str) -> str:
        """Looks an order up."""
        await asyncio.sleep(0.02)
        return f"order {order_id} ships tomorrow"


@pytest.fixture
async def exporter(events_config, aiohttp_server, aiohttp_client):
    server = await aiohttp_server(build_app(events_config()))
    client = await aiohttp_client(server)

    async def scrape() -> dict:
        return samples(await (await client.get("/metrics")).text())

    return str(server.make_url("/")), scrape


def test_the_installed_livekit_agents_has_the_preferred_events():
    assert preferred_mode() == "usage"


async def test_a_real_session_produces_the_expected_metrics(exporter, caplog):
    url, scrape = exporter
    client = EventsClient(url, EVENTS_TOKEN)
    session = AgentSession(llm=ScriptedLLM())
    call = instrument(session, agent="support-agent", direction="inbound", client=client)
    await session.start(SupportAgent())
    await session.run(user_input="hello")
    await session.run(user_input="where is my order?")
    call.set_outcome("resolved")
    await session.aclose()
    await client.aclose()
    assert client.stats.sent > 0 and client.stats.dropped_rejected == client.stats.dropped_failed == 0
    assert "metrics_collected is deprecated" not in caplog.text

    s = await scrape()
    a = "support-agent"
    call_labels = dict(agent=a, direction="inbound", campaign="")
    assert value(s, "voice_agent_calls_started_total", **call_labels) == 1
    assert value(s, "voice_agent_calls_answered_total", **call_labels, answered_by="human") == 1
    assert value(s, "voice_agent_calls_ended_total", **call_labels, outcome="resolved") == 1
    assert value(s, "voice_agent_calls_active", agent=a, direction="inbound") == 0
    assert value(s, "voice_agent_call_duration_seconds_count", agent=a, direction="inbound", outcome="resolved") == 1

    # Three LLM requests (hello; the order question -> a tool call; the answer after the tool), and
    # one assistant message for each spoken reply.
    llm_labels = dict(agent=a, provider="scripted", model="script-1")
    assert value(s, "voice_agent_llm_tokens_total", **llm_labels, type="input") == 3 * USAGE["prompt_tokens"]
    assert value(s, "voice_agent_llm_tokens_total", **llm_labels, type="output") == 3 * USAGE["completion_tokens"]
    assert value(s, "voice_agent_llm_tokens_total", **llm_labels, type="cached") == 3 * USAGE["prompt_cached_tokens"]
    turns = value(s, "voice_agent_turns_total", agent=a, interrupted="false")
    assert turns == 2
    assert value(s, "voice_agent_llm_time_to_first_token_seconds_count", **llm_labels) == turns
    assert 0 < value(s, "voice_agent_llm_time_to_first_token_seconds_sum", **llm_labels) < 1
    assert value(s, "voice_agent_tool_call_duration_seconds_count", agent=a, tool="lookup_order") == 1
    assert 0.02 <= value(s, "voice_agent_tool_call_duration_seconds_sum", agent=a, tool="lookup_order") < 1
    assert value(s, "livekit_exporter_event_requests_rejected_total", reason="invalid") is None


async def close_and_scrape(session, client, scrape, reason) -> dict:
    """The session closes for `reason`, the push client sends what it holds and closes: the exporter's samples then."""
    session.emit("close", lk_events.CloseEvent(reason=reason))
    await client.aclose()
    return await scrape()


def _message(role: str, **metrics) -> lk_events.ConversationItemAddedEvent:
    return lk_events.ConversationItemAddedEvent(item=llm.ChatMessage(role=role, content=["..."], metrics=metrics))


def _instrumented(url: str, **kwargs) -> tuple[AgentSession, EventsClient, CallInstrumentation]:
    """A bare AgentSession, instrument(**kwargs)ed with a client of its own sending to the exporter at url."""
    client = EventsClient(url, EVENTS_TOKEN)
    session = AgentSession()
    return session, client, instrument(session, client=client, **kwargs)


async def test_turn_metrics_usage_errors_and_the_timestamp_bugs(exporter):
    url, scrape = exporter
    session, client, call = _instrumented(url, agent="a", direction="outbound", campaign="spring")
    call.answered("machine", setup_seconds=9.5)
    stt_meta = {"model_provider": "deepgram", "model_name": "nova-3"}
    session.emit("conversation_item_added", _message(
        "user", transcription_delay=150.0, end_of_turn_delay=0.4, stt_metadata=stt_meta))  # #6093-style delay
    session.emit("agent_false_interruption", lk_events.AgentFalseInterruptionEvent(resumed=True))
    reply = llm.ChatMessage(role="assistant", content=["..."], interrupted=True, metrics={
        "e2e_latency": 1.1, "llm_node_ttft": -1.0, "tts_node_ttfb": 0.2,  # -1: "not measured"
        "tts_metadata": {"model_provider": "cartesia", "model_name": "sonic-2"}})
    session.emit("conversation_item_added", lk_events.ConversationItemAddedEvent(item=reply))

    from livekit.agents.metrics.usage import AgentSessionUsage, STTModelUsage, TTSModelUsage

    for chars, audio in ((100, 30.0), (250, 75.0)):  # cumulative, as livekit-agents reports it
        session.emit("session_usage_updated", lk_events.SessionUsageUpdatedEvent(usage=AgentSessionUsage(model_usage=[
            TTSModelUsage(provider="cartesia", model="sonic-2", characters_count=chars),
            STTModelUsage(provider="deepgram", model="nova-3", audio_duration=audio)])))
    from livekit.agents.llm import LLMError
    from livekit.agents._exceptions import APIConnectionError

    session.emit("error", lk_events.ErrorEvent(
        error=LLMError(timestamp=time.time(), label="x", error=APIConnectionError(), recoverable=True),
        source=ScriptedLLM()))
    session.emit("close", lk_events.CloseEvent(reason=lk_events.CloseReason.PARTICIPANT_DISCONNECTED))
    await client.aclose()
    assert client.stats.sent == 9 and client.stats.dropped_rejected == 0

    s = await scrape()
    assert value(s, "voice_agent_calls_answered_total", agent="a", direction="outbound", campaign="spring",
                 answered_by="machine") == 1
    assert value(s, "voice_agent_call_setup_seconds_sum", agent="a", direction="outbound") == 9.5
    assert value(s, "voice_agent_calls_ended_total", agent="a", direction="outbound", campaign="spring",
                 outcome="participant_disconnected") == 1
    assert value(s, "voice_agent_turns_total", agent="a", interrupted="true") == 1
    assert value(s, "voice_agent_interruptions_total", agent="a") == 2  # the false one + the cut reply
    assert value(s, "voice_agent_turn_latency_seconds_sum", agent="a") == 1.1
    assert value(s, "voice_agent_end_of_utterance_delay_seconds_sum", agent="a") == 0.4
    assert value(s, "voice_agent_tts_time_to_first_byte_seconds_sum", agent="a", provider="cartesia",
                 model="sonic-2") == 0.2
    # -1 was left out, 150 s was sent and discarded by the exporter's sanity rule.
    assert value(s, "voice_agent_llm_time_to_first_token_seconds_count", agent="a", provider="unknown",
                 model="unknown") is None
    assert value(s, "voice_agent_transcription_delay_seconds_count", agent="a", provider="deepgram",
                 model="nova-3") is None
    assert value(s, "livekit_exporter_event_latencies_discarded_total", type="turn",
                 field="transcription_delay_seconds") == 1
    assert value(s, "voice_agent_tts_characters_total", agent="a", provider="cartesia", model="sonic-2") == 250
    assert value(s, "voice_agent_stt_audio_seconds_total", agent="a", provider="deepgram", model="nova-3") == 75
    assert value(s, "voice_agent_errors_total", agent="a", component="llm", type="APIConnectionError",
                 recoverable="true") == 1


async def test_the_fallback_reads_the_real_metric_classes(exporter, caplog):
    url, scrape = exporter
    session, client, _ = _instrumented(url, agent="old", mode="metrics_collected")
    assert "metrics_collected is deprecated" in caplog.text  # livekit-agents 1.8 says so, once
    meta = Metadata(model_provider="api.openai.com", model_name="gpt-4o-mini")  # as the openai plugin says
    now = time.time()
    # In livekit-agents' order: STT and end-of-utterance metrics, the user message, then the reply's.
    for x in (
        STTMetrics(label="stt", request_id="1", timestamp=now, duration=0.0, audio_duration=4.5, streamed=True,
                   metadata=Metadata(model_provider="Deepgram", model_name="nova-3")),
        EOUMetrics(timestamp=now, end_of_utterance_delay=0.3, transcription_delay=0.1,
                   on_user_turn_completed_delay=0.0),
    ):
        session.emit("metrics_collected", lk_events.MetricsCollectedEvent(metrics=x))
    session.emit("conversation_item_added", _message("user"))
    for x in (
        LLMMetrics(label="llm", request_id="2", timestamp=now, duration=0.9, ttft=0.25, cancelled=False,
                   completion_tokens=12, prompt_tokens=300, prompt_cached_tokens=100, total_tokens=312,
                   tokens_per_second=13.3, metadata=meta),
        TTSMetrics(label="tts", request_id="3", timestamp=now, ttfb=0.15, duration=1.0, audio_duration=3.0,
                   cancelled=False, characters_count=42, streamed=True,
                   metadata=Metadata(model_provider="ElevenLabs", model_name="flash")),
    ):
        session.emit("metrics_collected", lk_events.MetricsCollectedEvent(metrics=x))
    session.emit("conversation_item_added", _message("assistant"))
    await client.aclose()

    s = await scrape()
    llm_labels = dict(agent="old", provider="openai", model="gpt-4o-mini")
    assert value(s, "voice_agent_llm_request_duration_seconds_sum", **llm_labels) == 0.9
    assert value(s, "voice_agent_llm_tokens_total", **llm_labels, type="input") == 300
    assert value(s, "voice_agent_llm_time_to_first_token_seconds_sum", **llm_labels) == 0.25
    assert value(s, "voice_agent_transcription_delay_seconds_sum", agent="old", provider="deepgram",
                 model="nova-3") == 0.1
    assert value(s, "voice_agent_tts_time_to_first_byte_seconds_sum", agent="old", provider="elevenlabs",
                 model="flash") == 0.15
    # LiveKit's formula for the total when the turn metrics are not there: eou + ttft + ttfb.
    assert value(s, "voice_agent_turn_latency_seconds_sum", agent="old") == pytest.approx(0.7)
    assert value(s, "voice_agent_tts_characters_total", agent="old", provider="elevenlabs", model="flash") == 42
    assert value(s, "voice_agent_stt_audio_seconds_total", agent="old", provider="deepgram", model="nova-3") == 4.5


async def test_with_the_exporter_down_the_agent_is_never_blocked():
    client = EventsClient(f"http://127.0.0.1:{free_port()}", EVENTS_TOKEN, backoff=0.05, max_retries=2)
    session = AgentSession(llm=ScriptedLLM())
    instrument(session, agent="offline", client=client)
    await session.start(SupportAgent())
    worst, period = 0.0, 0.005

    async def ticker():
        nonlocal worst
        while True:
            t = time.perf_counter()
            await asyncio.sleep(period)
            worst = max(worst, time.perf_counter() - t - period)

    gc.collect()  # a full GC pass over the test session's heap (100-200 ms) is not the client's doing
    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    for _ in range(5):
        await session.run(user_input="hello")
    elapsed = time.perf_counter() - started
    tick.cancel()
    await session.aclose()
    await client.aclose(timeout=0.1)
    assert elapsed < 5, f"5 turns took {elapsed:.1f}s with the exporter down"
    assert worst < 0.1, f"the agent's loop stalled for {worst * 1000:.0f} ms"
    assert client.stats.sent == 0 and client.stats.retries >= 1
    logging.getLogger(__name__).info("exporter down: worst loop lag %.1f ms", worst * 1000)


# -- turns: a user message completed by its first reply ---------------------------------------------


class TalkativeStream(ScriptedStream):
    """Says something before calling the tool, as real LLMs often do ("Let me check...")."""

    def _deltas(self, about_an_order: bool) -> list[ChoiceDelta]:
        if about_an_order:
            return [ChoiceDelta(role="assistant", content="Let me check."), *super()._deltas(True)]
        return [ChoiceDelta(role="assistant", content="Hello!")]


class TalkativeLLM(ScriptedLLM):
    stream_class = TalkativeStream

    @property
    def provider(self) -> str:
        return "api.openai.com"  # what livekit-plugins-openai reports


class GreetingAgent(SupportAgent):
    async def on_enter(self) -> None:
        self.session.generate_reply(instructions="greet the caller")


async def test_greeting_and_a_tool_call_make_one_turn(events_config, aiohttp_server, aiohttp_client):
    from livekit_exporter.config import Price

    prices = (Price("openai", "script-1", usd_per_million_input_tokens=2.0, usd_per_million_output_tokens=8.0,
                    usd_per_million_cached_tokens=0.5),)
    server = await aiohttp_server(build_app(events_config(prices=prices)))
    client = EventsClient(str(server.make_url("/")), EVENTS_TOKEN)
    session = AgentSession(llm=TalkativeLLM())
    items = []
    session.on("conversation_item_added",
               lambda ev: isinstance(ev.item, llm.ChatMessage) and items.append(ev.item.role))
    instrument(session, agent="greeter", direction="inbound", client=client)
    await session.start(GreetingAgent())
    for _ in range(100):  # the greeting is spoken
        if "assistant" in items:
            break
        await asyncio.sleep(0.01)
    await session.run(user_input="where is my order?")
    await session.aclose()
    await client.aclose()
    # greeting, the user, "Let me check.", the answer after the tool: one user message, one turn.
    assert items == ["assistant", "user", "assistant", "assistant"]
    s = await scrape_samples(aiohttp_client, server)
    assert value(s, "voice_agent_turns_total", agent="greeter", interrupted="false") == 1
    assert value(s, "voice_agent_turns_total", agent="greeter", interrupted="true") is None
    llm_labels = dict(agent="greeter", provider="openai", model="script-1")
    assert value(s, "voice_agent_llm_time_to_first_token_seconds_count", **llm_labels) == 1
    # api.openai.com is openai, so the price applies: 3 requests (greeting, the tool call, the answer).
    per_request = ((USAGE["prompt_tokens"] - USAGE["prompt_cached_tokens"]) * 2.0
                   + USAGE["prompt_cached_tokens"] * 0.5 + USAGE["completion_tokens"] * 8.0) / 1e6
    assert value(s, "voice_agent_estimated_cost_dollars_total", component="llm", **llm_labels) == \
        pytest.approx(3 * per_request)
    assert value(s, "livekit_exporter_unpriced_usage_events_total", component="llm", provider="openai",
                 model="script-1") is None


async def test_user_turns_without_a_reply_are_counted(exporter):
    url, scrape = exporter
    session, client, _ = _instrumented(url, agent="b", direction="inbound")
    # The user speaks; the reply is cut before any audio (no assistant message); the user speaks
    # again and gets an answer; the user speaks a third time and hangs up before the reply.
    session.emit("conversation_item_added", _message("user", end_of_turn_delay=0.5, transcription_delay=0.2))
    session.emit("conversation_item_added", _message("user", end_of_turn_delay=0.6, transcription_delay=0.3))
    session.emit("conversation_item_added", _message("assistant", e2e_latency=1.0))
    session.emit("conversation_item_added", _message("user", end_of_turn_delay=0.7, transcription_delay=0.4))
    s = await close_and_scrape(session, client, scrape, lk_events.CloseReason.PARTICIPANT_DISCONNECTED)
    assert value(s, "voice_agent_turns_total", agent="b", interrupted="false") == 3
    assert value(s, "voice_agent_end_of_utterance_delay_seconds_count", agent="b") == 3
    assert value(s, "voice_agent_end_of_utterance_delay_seconds_sum", agent="b") == pytest.approx(1.8)
    assert value(s, "voice_agent_turn_latency_seconds_count", agent="b") == 1  # only the answered one
    assert value(s, "voice_agent_turn_latency_seconds_sum", agent="b") == 1.0


async def test_a_reply_cut_by_a_failed_tts_is_a_tts_error_not_an_interruption(exporter):
    from livekit.agents.tts import TTSError

    url, scrape = exporter
    session, client, _ = _instrumented(url, agent="t")
    session.emit("conversation_item_added", _message("user", end_of_turn_delay=0.4))
    # livekit-agents reports the TTS failure (retries exhausted), then adds the reply as interrupted.
    session.emit("error", lk_events.ErrorEvent(
        error=TTSError(timestamp=time.time(), label="tts", error=TimeoutError(), recoverable=False), source=None))
    reply = llm.ChatMessage(role="assistant", content=["Your order"], interrupted=True, metrics={"e2e_latency": 0.9})
    session.emit("conversation_item_added", lk_events.ConversationItemAddedEvent(item=reply))
    s = await close_and_scrape(session, client, scrape, lk_events.CloseReason.USER_INITIATED)
    assert value(s, "voice_agent_turns_total", agent="t", interrupted="false") == 1
    assert value(s, "voice_agent_turns_total", agent="t", interrupted="true") is None
    assert value(s, "voice_agent_interruptions_total", agent="t") is None
    assert value(s, "voice_agent_errors_total", agent="t", component="tts", type="TimeoutError",
                 recoverable="false") == 1
    assert value(s, "voice_agent_errors_total", agent="t", component="tts", type="tts_failed",
                 recoverable="false") is None  # counted once, as livekit-agents reported it


# -- bad arguments, a missing environment, the job's shutdown ---------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(agent=""), "agent, call_id, direction or campaign: Expected `str` of length >= 1 - at `$.agent`"),
    (dict(agent="a" * 129), "Expected `str` of length <= 128 - at `$.agent`"),
    (dict(agent="a", direction="sideways"), "Invalid enum value 'sideways' - at `$.direction`"),
    (dict(agent="a", campaign="c" * 200), "at `$.campaign`"),
])
async def test_bad_arguments_fail_at_once(kwargs, message):
    client = EventsClient("http://127.0.0.1:1", EVENTS_TOKEN)
    with pytest.raises(ValueError) as e:
        instrument(AgentSession(), client=client, **kwargs)
    assert message in str(e.value)
    call = instrument(AgentSession(), agent="a", client=client)
    with pytest.raises(ValueError, match=r"dependency name: .* at `\$.dependency`"):
        call.dependency("", up=True)
    with pytest.raises(ValueError, match=r"outcome: .* at `\$.outcome`"):
        call.set_outcome("")
    await client.aclose(timeout=0)
    assert client.stats.dropped_invalid == 0


async def test_absurd_timings_reach_the_exporter_capped_and_are_counted_there(exporter):
    url, scrape = exporter
    session, client, _ = _instrumented(url, agent="c")
    session.emit("conversation_item_added", _message("user", end_of_turn_delay=5e9))  # a clock jump
    session.emit("conversation_item_added", _message("assistant", e2e_latency=0.8))
    await client.aclose()
    assert client.stats.dropped_invalid == 0 and client.stats.dropped_rejected == 0
    s = await scrape()
    assert value(s, "voice_agent_turn_latency_seconds_sum", agent="c") == 0.8
    assert value(s, "livekit_exporter_event_latencies_discarded_total", type="turn",
                 field="end_of_utterance_delay_seconds") == 1


async def test_without_the_environment_the_agent_runs_uninstrumented(monkeypatch, caplog):
    from livekit_exporter import agents

    monkeypatch.delenv("LIVEKIT_EXPORTER_EVENTS_URL", raising=False)
    monkeypatch.delenv("LIVEKIT_EXPORTER_EVENTS_TOKEN", raising=False)
    monkeypatch.setattr(agents, "_logged", set())
    calls = [instrument(AgentSession(llm=ScriptedLLM()), agent="x") for _ in range(2)]
    session = AgentSession(llm=ScriptedLLM())
    instrument(session, agent="x")
    await session.start(SupportAgent())
    await session.run(user_input="hello")
    await session.aclose()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "livekit_exporter.agents"]
    assert len(errors) == 1
    assert "set LIVEKIT_EXPORTER_EVENTS_URL and LIVEKIT_EXPORTER_EVENTS_TOKEN" in errors[0].getMessage()
    assert calls[0].client is calls[1].client and calls[0].client.stats.dropped_failed > 0


async def test_the_jobs_shutdown_closes_the_client(exporter, monkeypatch):
    """With job_ctx, the job's shutdown (run as livekit-agents runs its shutdown callbacks) sends
    what is still queued and closes the shared client."""
    from livekit import rtc
    from livekit.agents import JobContext, JobExecutorType, JobProcess
    from livekit.agents.job import JobAcceptArguments, RunningJobInfo
    from livekit.protocol import agent as agent_pb

    url, scrape = exporter
    monkeypatch.setenv("LIVEKIT_EXPORTER_EVENTS_URL", url)
    monkeypatch.setenv("LIVEKIT_EXPORTER_EVENTS_TOKEN", EVENTS_TOKEN)
    ctx = JobContext(
        proc=JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None),
        info=RunningJobInfo(accept_arguments=JobAcceptArguments(name="", identity="agent", metadata=""),
                            job=agent_pb.Job(id="job-1"), url="ws://localhost", token="", worker_id="w",
                            fake_job=True),
        room=rtc.Room(), on_connect=lambda: None, on_shutdown=lambda reason: None, inference_executor=None)
    sessions = [AgentSession(), AgentSession()]
    calls = [instrument(s, agent="job", client=None, job_ctx=ctx) for s in sessions]
    client = calls[0].client
    assert isinstance(client, EventsClient) and calls[1].client is client
    assert len(ctx._shutdown_callbacks) == 1  # one per client, not per session
    for callback in ctx._shutdown_callbacks:  # as livekit-agents' job process does at shutdown
        await callback("job ended")
    assert client.closed and client.stats.sent == 4  # two call_started, two call_answered
    s = await scrape()
    assert value(s, "voice_agent_calls_active", agent="job", direction="web") == 2


@pytest.mark.parametrize("reported, name", [
    ("api.openai.com", "openai"), ("https://api.openai.com/v1", "openai"), ("api.anthropic.com", "anthropic"),
    ("api.deepgram.com", "deepgram"), ("Deepgram", "deepgram"), ("ElevenLabs", "elevenlabs"),
    ("api.elevenlabs.io", "elevenlabs"), ("api.cartesia.ai", "cartesia"), ("Cartesia", "cartesia"),
    ("generativelanguage.googleapis.com", "google"), ("api.groq.com", "groq"), ("api.acme-voice.ai", "acme-voice"),
    ("my-res.openai.azure.com", "azure"), ("localhost:8000", "self_hosted"), ("http://10.0.0.7:8080/v1", "self_hosted"),
    ("Google Cloud", "google_cloud"), ("openai", "openai"),
])
def test_provider_names_are_normalised(reported, name):
    from livekit_exporter.agents import provider_name

    assert provider_name(reported) == name


async def test_a_turn_carries_its_call_and_the_agents_trace_as_exemplars(exporter):
    """The turn's latencies get exemplars: the call id, and the trace id of the span current when the
    turn completes (livekit-agents traces every turn)."""
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    url, _ = exporter
    session, client, _ = _instrumented(url, agent="a", direction="inbound", call_id="call-77")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("agent_turn") as span:
        session.emit("conversation_item_added", _message("user", end_of_turn_delay=0.3))
        session.emit("conversation_item_added", lk_events.ConversationItemAddedEvent(item=llm.ChatMessage(
            role="assistant", content=["ok"], metrics={"e2e_latency": 0.95, "llm_node_ttft": 0.4, "tts_node_ttfb": 0.2})))
        trace_id = f"{span.get_span_context().trace_id:032x}"
    await client.aclose()
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
            text = await r.text()
    exemplars = [s.exemplar for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "voice_agent_turn_latency_seconds_bucket" and s.exemplar]
    assert [e.labels for e in exemplars] == [{"call_id": "call-77", "trace_id": trace_id}]
    assert exemplars[0].value == 0.95
