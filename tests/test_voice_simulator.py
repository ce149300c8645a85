"""The simulated voice agents push through the real client to the real exporter, and the exporter
shows exactly what they sent (their Truth); the demo serves voice_agent_* metrics."""

from __future__ import annotations

import asyncio

import pytest
from common import fleet_series
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
    exact = ("calls_started", "calls_answered", "calls_ended", "active", "queued", "campaign_running", "turns",
             "interruptions", "llm_tokens", "tts_characters", "tool_calls", "errors", "events")
    for _, name, labels, sent in fleet_series(t, *exact):
        assert value(s, name, **labels) == sent, (name, labels)
    for _, name, labels, sent in fleet_series(t, "stt_audio_seconds"):
        assert value(s, name, **labels) == pytest.approx(sent), (name, labels)
    assert sum(t.active.values()) == 3
    for agent, latencies in t.turn_latency.items():
        assert value(s, "voice_agent_turn_latency_seconds_count", agent=agent) == len(latencies)
        assert value(s, "voice_agent_turn_latency_seconds_sum", agent=agent) == pytest.approx(sum(latencies))
        assert value(s, "voice_agent_turn_latency_seconds_bucket", agent=agent, le="1.0") == \
            sum(1 for x in latencies if x <= 1.0)
    for (agent, provider, model), ttfts in t.llm_ttft.items():
        labels = dict(agent=agent, provider=provider, model=model)
        assert value(s, "voice_agent_llm_time_to_first_token_seconds_count", **labels) == len(ttfts)
        assert value(s, "voice_agent_llm_time_to_first_token_seconds_sum", **labels) == pytest.approx(sum(ttfts))
    assert {r for *_, r in t.errors} == {"true", "false"}
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
