"""Long-term storage: the generated prometheus.yml's remote_write, proven between two real Prometheus.

One Debian `prometheus` is the long-term store (`--web.enable-remote-write-receiver`); the other
scrapes a real exporter on the simulator (webhooks delivered as LiveKit delivers them, simulated
voice agents pushing events), evaluates the bundle's rules, and remote-writes with the prometheus.yml
the mixin renders from `prometheus.remote_write` (its write_relabel_configs as generated). The store
gets the recorded series and `long_term.keep`, nothing else, with the sender's samples.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from livekit.protocol import models as proto_models

from conftest import EVENTS_TOKEN, free_port, prometheus_api, require_binary, start_prometheus
from livekit_exporter.client import EventsClient
from livekit_exporter.config import EventsConfig, Secret
from livekit_exporter.mixin import DEFAULT_CONFIG, generate, load, write
from livekit_exporter.server import build_app
from livekit_exporter.simulator import Delivery, WebhookSender
from livekit_exporter.simulator.voice_agents import VoiceAgentFleet

ROOT = Path(__file__).parent.parent
# Recorded series the store must get (each a long-range rule or one a long-range dashboard reads),
# raw families of long_term.keep, and raw families it must not get (buckets, per-scrape gauges).
RECORDED = ["job:livekit_room_sessions_started:rate5m", "job:livekit_room_sessions_started:rate1h",
            "kind:livekit_participant_sessions_started:rate1h", "event:livekit_webhook_events:rate1h",
            "agent:voice_agent_turns:rate1h", "agent:voice_agent_turn_latency_seconds:p95_5m",
            "agent:voice_agent_turn_latency_seconds:p95_1h", "slo:sli_error:ratio_rate1h"]
KEPT = ["up", "livekit_up", "livekit_rooms", "livekit_webhook_events_total", "livekit_room_sessions_started_total",
        "voice_agent_turns_total"]
DROPPED = ["voice_agent_turn_latency_seconds_bucket", "livekit_webhook_delivery_delay_seconds_bucket",
           "livekit_api_request_duration_seconds_bucket", "scrape_duration_seconds",
           "livekit_exporter_scrape_duration_seconds", "livekit_exporter_events_total"]


async def drive(scenario, exporter_url: str, stop: asyncio.Event) -> None:
    """Rooms and participants that come and go (webhooks), and voice-agent calls (events API)."""
    async with EventsClient(f"{exporter_url}/v1/events", EVENTS_TOKEN, flush_interval=0.2) as events:
        fleet = VoiceAgentFleet(events, seed=7)
        i = 0
        while not stop.is_set():
            room = f"room-{i}"
            scenario.add_room(room)
            scenario.add_participant(room, "caller", tracks=[(proto_models.AUDIO, proto_models.MICROPHONE)])
            fleet.simulate(calls=2)
            await asyncio.sleep(0.5)
            if i >= 2:
                scenario.remove_room(f"room-{i - 2}")
            i += 1
            await asyncio.sleep(0.5)


async def test_remote_write_sends_what_long_term_storage_keeps_and_drops_the_rest(scenario, make_config, tmp_path):
    prometheus_bin = require_binary("prometheus")
    config = replace(make_config(), events=EventsConfig(tokens=(Secret(EVENTS_TOKEN),)))
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    port, sender_port, store_port = free_port(), free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    files = generate(load(ROOT / DEFAULT_CONFIG, {
        "prometheus.scrape_interval": "1s", "prometheus.scrape_timeout": "1s", "prometheus.evaluation_interval": "1s",
        "prometheus.targets.exporter": [f"127.0.0.1:{port}"], "prometheus.targets.livekit_server": [],
        "prometheus.alertmanagers": [], "slos.budget_interval": "1s", "long_term.interval": "1s",
        "prometheus.remote_write": [{"url": f"http://127.0.0.1:{store_port}/api/v1/write", "name": "store"}],
    }))
    write({k: v for k, v in files.items() if k.startswith("prometheus/")}, tmp_path / "sender")
    sender_cfg = yaml.safe_load(files["prometheus/prometheus.yml"])
    (rw,) = sender_cfg["remote_write"]
    (relabel,) = rw["write_relabel_configs"]
    assert relabel["action"] == "keep" and relabel["source_labels"] == ["__name__"]
    keep = re.compile(relabel["regex"])  # Prometheus anchors a relabel regex: fullmatch below
    assert all(keep.fullmatch(n) for n in RECORDED + KEPT) and not any(keep.fullmatch(n) for n in DROPPED)

    store_cfg = tmp_path / "store.yml"
    store_cfg.write_text("global: {scrape_interval: 1m}\n")  # scrapes nothing: it only receives
    store = start_prometheus(prometheus_bin, store_cfg, tmp_path / "store-data", store_port,
                             "--web.enable-remote-write-receiver")
    sender = start_prometheus(prometheus_bin, tmp_path / "sender" / "prometheus" / "prometheus.yml",
                              tmp_path / "sender-data", sender_port)
    stop = asyncio.Event()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def api(prom: int, path: str, **params: str):
                data = await prometheus_api(http, prom, path, **params)
                assert data["status"] == "success", data
                return data["data"]

            async def names(prom: int) -> set[str]:
                return set(await api(prom, "label/__name__/values"))

            async def values(prom: int, expr: str, at: float) -> dict:
                result = (await api(prom, "query", query=expr, time=f"{at:.3f}"))["result"]
                return {tuple(sorted(r["metric"].items())): r["value"][1] for r in result}

            async with WebhookSender(scenario, f"{url}/webhook", delivery=Delivery(retry_wait_min=0.1)):
                world = asyncio.create_task(drive(scenario, url, stop))
                # at least 15 s of data, until the store has every recorded and kept family (bounded: 60 s)
                start = time.monotonic()
                deadline = start + 60
                while True:
                    await asyncio.sleep(1)
                    try:
                        missing = set(RECORDED + KEPT) - await names(store_port)
                    except aiohttp.ClientError:
                        missing = {"(the store is not up yet)"}
                    if (not missing and time.monotonic() > start + 15) or time.monotonic() > deadline:
                        break
                stop.set()
                await world
            assert not missing, f"the store never got {sorted(missing)}"

            sent, stored = await names(sender_port), await names(store_port)
            assert set(DROPPED) <= sent, sorted(set(DROPPED) - sent)  # they exist, and are dropped on the way
            assert stored & set(DROPPED) == set(), sorted(stored & set(DROPPED))
            assert {n for n in stored if not keep.fullmatch(n)} == set()
            assert {n for n in sent if keep.fullmatch(n)} - stored <= {"ALERTS"}, "kept series the store lacks"

            # The same samples on both sides: a counter and a recorded rate, at an instant both have
            # (a few seconds back, past remote write's batching), once the store has caught up.
            for expr in ('livekit_webhook_events_total{event="room_started"}', "voice_agent_turns_total",
                         "job:livekit_room_sessions_started:rate5m"):
                at = time.time() - 6
                for _ in range(20):
                    want, got = await values(sender_port, expr, at), await values(store_port, expr, at)
                    if want and got == want:
                        break
                    await asyncio.sleep(0.5)
                assert want, f"the sender has no {expr}"
                assert got == want, (expr, got, want)
            assert float(next(iter(want.values()))) > 0
    finally:
        stop.set()
        for prom in (sender, store):
            prom.terminate()
            prom.wait(10)
        await runner.cleanup()
