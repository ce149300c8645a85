"""Shared fixtures: the simulator on loopback, an exporter pointed at it, and real-binary lookup."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from livekit_exporter.config import CollectConfig, Config, LiveKitConfig, RoomDetailConfig, Secret
from livekit_exporter.server import build_app
from livekit_exporter.simulator import Scenario, Simulator

# bench/common.py: the helpers the tests share with the benchmark scripts (free_port, stop_process,
# start_prometheus, the simulator's busy rooms, the fleet's series); a test imports them from
# `common`, as the scripts do.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import free_port, start_prometheus, stop_process  # noqa: F401  (re-exported: `from conftest import ...`)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Debian installs Alertmanager as prometheus-alertmanager; upstream tarballs call it alertmanager.
ALIASES = {"alertmanager": ("alertmanager", "prometheus-alertmanager")}


def require_binary(name: str) -> str:
    """The path of a Debian binary; skips on a user's machine without it, fails in CI."""
    for candidate in ALIASES.get(name, (name,)):
        path = shutil.which(candidate)
        if path:
            return path
    msg = f"{name} is not installed (Debian package: {'prometheus-alertmanager' if name in ('amtool', 'alertmanager') else 'prometheus'})"
    if IN_CI:
        pytest.fail(f"{msg}; CI must run this check (.ci/run installs it)")
    pytest.skip(msg)


async def serve_on_loopback(
    app: web.Application, runner_type: type[web.AppRunner] = web.AppRunner
) -> tuple[web.AppRunner, int]:
    """Serves the app on a free loopback port: (its runner, to clean up; the port). runner_type:
    httpguard.ExporterRunner for the server: section's limits, as `livekit-exporter serve` runs it."""
    runner = runner_type(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def finish_held_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes, timeout: float
) -> bytes:
    """Sends the rest of a request held open on a raw connection; returns the answer's status
    line (within `timeout` s) and closes the connection."""
    writer.write(rest)
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), timeout)
    writer.close()
    return head


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Exposition text -> {(sample name, frozenset(labels)): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text_or_samples: Any, name: str, **labels: str) -> float | None:
    s = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return s.get((name, frozenset(labels.items())))


def assert_api_up(text_or_samples: Any, **expected: float | None) -> None:
    """livekit_api_up{service=NAME} is the value given for each NAME (None: no such series)."""
    for service, up in expected.items():
        assert value(text_or_samples, "livekit_api_up", service=service) == up, service


async def get_text(client: Any, path: str = "/metrics", **request: Any) -> str:
    """GET `path` through an aiohttp test client (request: client.get's options): a 200; its body."""
    resp = await client.get(path, **request)
    assert resp.status == 200
    return await resp.text()


async def prometheus_api(http: Any, port: int, path: str, **params: str) -> Any:
    """The JSON answer of GET /api/v1/PATH?PARAMS of the Prometheus on 127.0.0.1:PORT (http: an aiohttp.ClientSession)."""
    async with http.get(f"http://127.0.0.1:{port}/api/v1/{path}", params=params) as r:
        return await r.json()


async def prometheus_query(http: Any, port: int, expr: str) -> list:
    """The result of an instant query that must succeed (a failed one fails the test, naming it)."""
    data = await prometheus_api(http, port, "query", query=expr)
    assert data["status"] == "success", (expr, data)
    return data["data"]["result"]


async def until_prometheus(prom: Any, ready: Callable[[], Any], what: str, wait: float = 60.0) -> None:
    """Polls `await ready()` until it is true: fails naming `what` after `wait` seconds (a bound, not a
    timing), or as soon as the Prometheus process `prom` exits; a refused connection counts as not yet."""
    import aiohttp
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            if await ready():
                return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, f"Prometheus never {what}"
        assert prom.poll() is None, "Prometheus exited"
        await asyncio.sleep(0.5)


async def scrape_samples(aiohttp_client: Callable, server: Any) -> dict[tuple[str, frozenset], float]:
    """The samples a test server's /metrics shows now, read through a new aiohttp test client."""
    client = await aiohttp_client(server)
    return samples(await (await client.get("/metrics")).text())


def add_room(scenario: Scenario, name: str, identity: str = "u") -> None:
    """A room with one participant, `identity`."""
    scenario.add_room(name)
    scenario.add_participant(name, identity)


def add_rooms(scenario: Scenario, count: int, *, prefix: str = "r", identity: str = "u") -> None:
    """`count` rooms, {prefix}0, {prefix}1, ..., each with one participant, `identity`."""
    for i in range(count):
        add_room(scenario, f"{prefix}{i}", identity)


@pytest.fixture
def scenario() -> Scenario:
    return Scenario(api_key="APItestkey", api_secret="test-secret-" + "s" * 32)


@pytest.fixture
async def simulator(scenario: Scenario):
    async with Simulator(scenario) as sim:
        yield sim


@pytest.fixture
def make_config(simulator: Simulator, scenario: Scenario) -> Callable[..., Config]:
    def make(*, detail: bool = False, max_rooms: int = 100, concurrency: int = 8, **collect: Any) -> Config:
        return Config(
            livekit=LiveKitConfig(
                url=simulator.url, api_key=scenario.api_key, api_secret=Secret(scenario.api_secret),
                request_timeout=5.0,
            ),
            collect=replace(
                CollectConfig(**collect),
                room_detail=RoomDetailConfig(enabled=detail, max_rooms=max_rooms, concurrency=concurrency),
            ),
            source="<test>",
        )

    return make


@pytest.fixture
def exporter_client(aiohttp_client, make_config):
    """An aiohttp test client for an exporter built from make_config(**kwargs)."""

    async def start(config: Config | None = None, **kwargs: Any):
        return await aiohttp_client(build_app(config or make_config(**kwargs)))

    return start


# -- the voice-agent events API -------------------------------------------------------------------

EVENTS_TOKEN = "test-events-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {EVENTS_TOKEN}"}


@pytest.fixture
def events_config(make_config) -> Callable[..., Config]:
    """make_config() with the events API configured by EventsConfig(**kwargs) (a token by default)."""
    from livekit_exporter.config import EventsConfig

    def make(**events: Any) -> Config:
        events.setdefault("tokens", (Secret(EVENTS_TOKEN),))
        return replace(make_config(), events=EventsConfig(**events))

    return make


@pytest.fixture
def events_exporter(aiohttp_client, events_config):
    """An aiohttp test client (real HTTP on loopback) for an exporter with the events API."""

    async def start(**events: Any):
        return await aiohttp_client(build_app(events_config(**events)))

    return start


def require_module(name: str) -> None:
    """Imports an optional dependency; skips without it on a user's machine, fails in CI."""
    import importlib

    try:
        importlib.import_module(name)
    except ImportError as e:
        if IN_CI:
            pytest.fail(f"{name} is not installed ({e}); CI installs the extras with `make test`")
        pytest.skip(f"{name} is not installed: pip install -e '.[agents]'")


# The bundle's Prometheus side with timings fit for a test: every second, no Alertmanager.
FAST_BUNDLE = {"prometheus.scrape_interval": "1s", "prometheus.scrape_timeout": "1s",
               "prometheus.evaluation_interval": "1s", "prometheus.alertmanagers": []}  # fmt: skip


def start_bundle_prometheus(tmp_path: Path, port: int, overrides: dict[str, Any], *flags: str) -> tuple[dict, Any]:
    """The bundle generated from prometheus/mixin.yml with FAST_BUNDLE and `overrides`, its prometheus/ files
    written under tmp_path, and the real Prometheus (require_binary) serving them on `port`: (files, process)."""
    from livekit_exporter.mixin import DEFAULT_CONFIG, generate, load, write

    binary = require_binary("prometheus")
    files = generate(load(Path(__file__).resolve().parent.parent / DEFAULT_CONFIG, {**FAST_BUNDLE, **overrides}))
    write({k: v for k, v in files.items() if k.startswith("prometheus/")}, tmp_path)
    return files, start_prometheus(binary, tmp_path / "prometheus" / "prometheus.yml", tmp_path / "data", port, *flags)
