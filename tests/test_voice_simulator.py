"""The simulated voice agents push through the real client to the real exporter, and the exporter
shows exactly what they sent (their Truth); the demo serves voice_agent_* metrics."""

from __future__ import annotations

import asyncio

import pytest
from conftest import EVENTS_TOKEN, free_port, samples, scrape_samples, value

from livekit_exporter.client import EventsClient
from livekit_exporter.config import Price
from livekit_exporter.server import build_app
from livekit_exporter.simulator.voice_agents import AGENTS, PRICES, VoiceAgentFleet


async def test_the_exporter_shows_what_the_fleet_sent(events_config, aiohttp_server, aiohttp_client):
    server = await aiohttp_server(build_app(events_config(prices=tuple(Price(**p) for p in PRICES))))
    async with EventsClient(str(server.make_url("/")), EVENTS_TOKEN) as client:
        fleet = VoiceAgentFleet(client, seed=42)
        fleet.simulate(calls=60, leave_open=3)
    assert client.stats.sent == sum(fleet.truth.events.values())
    s = await scrape_samples(aiohttp_client, server)
    t = fleet.truth

    assert {o for (_, d, _, o) in t.calls_ended if d == "outbound"} >= {"no_answer", "failed", "voicemail"}
    assert {b for (*_, b) in t.calls_answered} == {"human", "machine"}
    for (agent, direction, campaign), n in t.calls_started.items():
        assert value(s, "voice_agent_calls_started_total", agent=agent, direction=direction, campaign=campaign) == n
    for (agent, direction, campaign, by), n in t.calls_answered.items():
        assert value(s, "voice_agent_calls_answered_total", agent=agent, direction=direction, campaign=campaign,
                     answered_by=by) == n
    for (agent, direction, campaign, outcome), n in t.calls_ended.items():
        assert value(s, "voice_agent_calls_ended_total", agent=agent, direction=direction, campaign=campaign,
                     outcome=outcome) == n
    for (agent, direction), n in t.active.items():
        assert value(s, "voice_agent_calls_active", agent=agent, direction=direction) == n
    assert sum(t.active.values()) == 3
    for (agent, campaign), n in t.queued.items():
        assert value(s, "voice_agent_calls_queued", agent=agent, campaign=campaign) == n
    for campaign, running in t.campaign_running.items():
        assert value(s, "voice_agent_campaign_running", campaign=campaign) == running
    for (agent, interrupted), n in t.turns.items():
        assert value(s, "voice_agent_turns_total", agent=agent, interrupted=interrupted) == n
    for agent, n in t.interruptions.items():
        assert value(s, "voice_agent_interruptions_total", agent=agent) == n
    for agent, latencies in t.turn_latency.items():
        assert value(s, "voice_agent_turn_latency_seconds_count", agent=agent) == len(latencies)
        assert value(s, "voice_agent_turn_latency_seconds_sum", agent=agent) == pytest.approx(sum(latencies))
        assert value(s, "voice_agent_turn_latency_seconds_bucket", agent=agent, le="1.0") == \
            sum(1 for x in latencies if x <= 1.0)
    for (agent, provider, model), ttfts in t.llm_ttft.items():
        labels = dict(agent=agent, provider=provider, model=model)
        assert value(s, "voice_agent_llm_time_to_first_token_seconds_count", **labels) == len(ttfts)
        assert value(s, "voice_agent_llm_time_to_first_token_seconds_sum", **labels) == pytest.approx(sum(ttfts))
    for (agent, provider, model, kind), n in t.llm_tokens.items():
        assert value(s, "voice_agent_llm_tokens_total", agent=agent, provider=provider, model=model, type=kind) == n
    for (agent, provider, model), n in t.tts_characters.items():
        assert value(s, "voice_agent_tts_characters_total", agent=agent, provider=provider, model=model) == n
    for (agent, provider, model), n in t.stt_audio_seconds.items():
        assert value(s, "voice_agent_stt_audio_seconds_total", agent=agent, provider=provider,
                     model=model) == pytest.approx(n)
    for (agent, tool), n in t.tool_calls.items():
        assert value(s, "voice_agent_tool_call_duration_seconds_count", agent=agent, tool=tool) == n
    for (agent, component, kind, recoverable), n in t.errors.items():
        assert value(s, "voice_agent_errors_total", agent=agent, component=component, type=kind,
                     recoverable=recoverable) == n
    assert {r for *_, r in t.errors} == {"true", "false"}
    for name, n in t.events.items():
        assert value(s, "livekit_exporter_events_total", type=name) == n
    # Every simulated provider is priced: each agent has a cost for each of its three components.
    for p in AGENTS:
        for component, prov in (("stt", p.stt), ("llm", p.llm), ("tts", p.tts)):
            assert value(s, "voice_agent_estimated_cost_dollars_total", agent=p.name, component=component,
                         provider=prov.name, model=prov.model) > 0


async def test_the_demo_serves_voice_agent_metrics(aiohttp_client):
    import aiohttp

    from livekit_exporter.demo import run_demo

    port = free_port()
    demo = asyncio.create_task(run_demo("127.0.0.1", port))
    try:
        async with aiohttp.ClientSession() as http:
            text = ""
            for _ in range(100):
                await asyncio.sleep(0.1)
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                        text = await r.text()
                except aiohttp.ClientConnectionError:
                    continue
                if "voice_agent_turns_total{" in text and "voice_agent_calls_active{" in text:
                    break
        s = samples(text)
        assert sum(v for (name, _), v in s.items() if name == "voice_agent_turns_total") > 0
        assert value(s, "voice_agent_campaign_running", campaign="spring-renewals") == 1
        assert value(s, "livekit_up") == 1
    finally:
        demo.cancel()
        with pytest.raises(asyncio.CancelledError):
            await demo
