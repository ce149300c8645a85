"""A LiveKit simulator: one scenario (the world and its truth) behind the faces LiveKit shows.

scenario = Scenario()
async with Simulator(scenario) as sim:        # serves the Twirp API on loopback
    api = LiveKitAPI(sim.url, scenario.api_key, scenario.api_secret)
async with WebhookSender(scenario, exporter_url + "/webhook"):   # and LiveKit's webhooks
    ...
"""

from __future__ import annotations

from aiohttp import web

from .scenario import Fault, Scenario
from .server_metrics import ServerMetrics, add_routes
from .service import Service
from .twirp import build_twirp_app
from .webhooks import Delivery, WebhookSender

__all__ = ["Delivery", "Fault", "Scenario", "ServerMetrics", "Simulator", "WebhookSender"]


class Simulator(Service):
    """Runs the simulator's HTTP faces on a loopback port (0 picks a free one)."""

    def __init__(self, scenario: Scenario, host: str | None = "127.0.0.1", port: int = 0, *, ssl_context=None):
        """host None: every address (IPv4 and IPv6)."""
        self.scenario = scenario
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self.app = build_twirp_app(scenario)
        self.server_metrics = ServerMetrics(scenario)  # LiveKit server's own /metrics, at GET /metrics
        add_routes(self.app, self.server_metrics)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in (None, "0.0.0.0", "::") else self.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        # handler_cancellation: like LiveKit, stop serving a request whose client went away (a
        # "hang" fault would otherwise hold shutdown for aiohttp's whole grace period).
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the one picked when asked for port 0

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
