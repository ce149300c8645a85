"""`livekit-exporter demo`: the simulator with a lively scenario, the exporter pointed at it, the
simulator's webhooks delivered to the exporter's webhook endpoint, and simulated voice agents
pushing call-pipeline events to its events API."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal

from aiohttp import web

from .client import EventsClient
from .config import CollectConfig, Config, EventsConfig, LiveKitConfig, Price, RoomDetailConfig, Secret
from .server import build_app
from .simulator import Scenario, Simulator, WebhookSender, lively
from .simulator.voice_agents import PRICES, VoiceAgentFleet

log = logging.getLogger(__name__)


def demo_config(livekit_url: str, scenario: Scenario, events_token: str) -> Config:
    return Config(
        livekit=LiveKitConfig(url=livekit_url, api_key=scenario.api_key, api_secret=Secret(scenario.api_secret)),
        collect=CollectConfig(room_detail=RoomDetailConfig(enabled=True)),
        events=EventsConfig(tokens=(Secret(events_token),), prices=tuple(Price(**p) for p in PRICES)),
        source="<demo>",
    )


async def run_demo(
    host: str | None, port: int, telemetry_path: str = "/metrics", simulator: tuple[str | None, int] = ("127.0.0.1", 0)
) -> None:
    """Until Ctrl+C or SIGTERM (a container's stop), either of which ends it cleanly; a
    cancellation from elsewhere propagates as usual."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminated: list[int] = []

    def on_sigterm() -> None:
        terminated.append(signal.SIGTERM)
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        handled = True
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
        handled = False
    try:
        await _run_demo(host, port, telemetry_path, simulator)
    except asyncio.CancelledError:
        if not terminated:
            raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


async def _run_demo(host: str | None, port: int, telemetry_path: str, simulator: tuple[str | None, int]) -> None:
    scenario = Scenario(api_key="demo", api_secret=secrets.token_urlsafe(32))
    events_token = secrets.token_urlsafe(24)
    sim_host, sim_port = simulator
    async with Simulator(scenario, sim_host, sim_port) as sim:  # None: every address, as the exporter's
        sim_url = sim.url
        config = demo_config(sim_url, scenario, events_token)
        app = build_app(config, telemetry_path=telemetry_path)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        port = runner.addresses[0][1]  # the one picked when asked for port 0
        shown = "127.0.0.1" if host in (None, "0.0.0.0", "::") else host
        webhook_url = f"http://{shown}:{port}{config.webhooks.path}"
        print(f"LiveKit simulator (Twirp API): {sim_url}", flush=True)
        print(f"LiveKit server's own metrics:  {sim_url}/metrics (simulated)", flush=True)
        print(f"Exporter:                      http://{shown}:{port}/", flush=True)
        print(f"Metrics:                       http://{shown}:{port}{telemetry_path}", flush=True)
        print(f"Webhooks:                      POST {webhook_url} (signed as LiveKit signs them)", flush=True)
        print(
            f"Voice-agent events:            POST http://{shown}:{port}{config.events.path} (simulated agents)",
            flush=True,
        )
        print("Press Ctrl+C to stop.", flush=True)
        client = EventsClient(f"http://{shown}:{port}{config.events.path}", events_token)
        try:
            async with WebhookSender(scenario, webhook_url):
                await asyncio.gather(lively.run(scenario), VoiceAgentFleet(client, seed=11).run())
        finally:
            await client.aclose(timeout=1.0)
            await runner.cleanup()
