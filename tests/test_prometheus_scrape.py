"""The real Prometheus server scrapes the exporter over loopback.

Prometheus sends X-Prometheus-Scrape-Timeout-Seconds; with a LiveKit service that hangs, the
scrape must still succeed inside that timeout (up == 1) while the service reads as down.
"""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
import pytest

from conftest import add_rooms, free_port, require_binary, serve_on_loopback, stop_process
from livekit_exporter.server import build_app
from livekit_exporter.simulator import Fault


@pytest.fixture
async def exporter_port(make_config):
    runner, port = await serve_on_loopback(build_app(make_config()))
    yield port
    await runner.cleanup()


@pytest.fixture
async def prometheus(exporter_port, tmp_path):
    binary = require_binary("prometheus")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: livekit\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> dict[str, float]:
    """Instant query -> {service label or '': value}; empty while Prometheus is starting."""
    try:
        async with session.get(f"{base}/api/v1/query", params={"query": promql}) as r:
            data = await r.json()
    except aiohttp.ClientConnectionError:
        return {}
    return {s["metric"].get("service", ""): float(s["value"][1]) for s in data["data"]["result"]}


async def eventually(session, base, promql, want, timeout: float = 30.0) -> dict[str, float]:
    got: dict[str, float] = {}
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        got = await query(session, base, promql)
        if want(got):
            return got
        await asyncio.sleep(0.25)
    raise AssertionError(f"{promql}: still {got} after {timeout}s")


async def test_prometheus_scrapes_within_its_timeout_while_a_service_hangs(scenario, simulator, prometheus):
    add_rooms(scenario, 3)
    async with aiohttp.ClientSession() as session:
        await eventually(session, prometheus, "livekit_room_participants", lambda g: g.get("") == 3)
        await eventually(session, prometheus, 'up{job="livekit"}', lambda g: g.get("") == 1)

        scenario.set_fault("egress", Fault("hang"))
        scenario.add_participant("r0", "v")
        got = await eventually(session, prometheus, "livekit_api_up", lambda g: g.get("egress") == 0)
        assert got["room"] == 1
        # the scrape itself still succeeded, inside Prometheus's 1 s timeout, with fresh numbers
        await eventually(session, prometheus, "livekit_room_participants", lambda g: g.get("") == 4)
        assert (await query(session, prometheus, 'up{job="livekit"}'))[""] == 1
        timeouts = await query(
            session, prometheus, 'livekit_api_errors_total{service="egress",code="timeout"}'
        )
        assert timeouts.get("egress", 0) >= 1

        scenario.set_fault("egress", None)
        await eventually(session, prometheus, "livekit_up", lambda g: g.get("") == 1)
