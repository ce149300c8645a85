"""The HTTP surface: landing page, content negotiation, gzip, health and readiness, the CLI server."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from conftest import free_port, get_text, require_binary, value
from livekit_exporter.server import build_app, scrape_budget


async def test_landing_page_links_everything(scenario, simulator, exporter_client):
    client = await exporter_client()
    body = await get_text(client, "/")
    for link in ("/metrics", "/-/healthy", "/-/ready"):
        assert f'href="{link}"' in body
    assert scenario.api_secret not in body


async def test_openmetrics_when_asked(scenario, simulator, exporter_client):
    scenario.add_room("r")
    client = await exporter_client()
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await resp.text()
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in om_parse(text)}
    assert fams["livekit_room_size"].type == "gaugehistogram"
    assert fams["livekit_rooms"].type == "gauge"
    plain = await client.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")


async def test_gzip_when_asked(scenario, simulator, exporter_client):
    scenario.add_room("r")
    client = await exporter_client()
    resp = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(await resp.read()).decode()
    assert value(text, "livekit_rooms", occupancy="empty") == 1


async def test_ready_turns_green_once_livekit_answered(scenario, simulator, exporter_client):
    client = await exporter_client()
    for _ in range(100):  # the startup probe runs in the background
        if (await client.get("/-/ready")).status == 200:
            break
        await asyncio.sleep(0.02)
    assert (await client.get("/-/ready")).status == 200
    assert (await client.get("/-/healthy")).status == 200


async def test_custom_telemetry_path(aiohttp_client, make_config):
    client = await aiohttp_client(build_app(make_config(), telemetry_path="/custom"))
    assert (await client.get("/custom")).status == 200
    assert (await client.get("/metrics")).status == 404


def test_scrape_budget():
    assert scrape_budget("10", 10, 0.5, 120) == 9.5
    assert scrape_budget(None, 8, 0.5, 120) == 7.5
    assert scrape_budget("garbage", 8, 0.5, 120) == 7.5
    assert scrape_budget("0.6", 10, 0.5, 120) == 0.3  # never less than half of a short timeout
    for absurd in ("inf", "nan", "-3", "0"):
        assert scrape_budget(absurd, 8, 0.5, 120) == 7.5
    assert scrape_budget("1e9", 8, 0.5, 120) == 119.5  # cut to collect.max_scrape_timeout


def test_listen_address():
    from livekit_exporter.server import parse_listen_address

    assert parse_listen_address(":9784") == (None, 9784)  # every address, IPv6 included
    assert parse_listen_address("127.0.0.1:9784") == ("127.0.0.1", 9784)
    assert parse_listen_address("[::1]:9784") == ("::1", 9784)


async def test_promtool_finds_nothing_in_the_output(scenario, simulator, exporter_client):
    from test_state import build_world
    from livekit_exporter.simulator import Fault

    promtool = require_binary("promtool")
    build_world(scenario)
    client = await exporter_client(detail=True)
    scenario.set_fault("ingress", Fault("error", "internal"))  # error counters present too
    await client.get("/metrics")
    scenario.set_fault("ingress", None)
    text = await (await client.get("/metrics")).text()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


async def test_the_command_serves_with_flags_and_never_logs_a_secret(scenario, simulator, tmp_path):
    """The installed command, as a user runs it: config file + env + flags, JSON logs at debug."""
    scenario.add_room("r")
    secret_file = tmp_path / "secret"
    secret_file.write_text(scenario.api_secret)
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(f"livekit: {{url: '{simulator.url}', api_secret_file: '{secret_file}'}}\n")
    port = free_port()
    env = {**os.environ, "LIVEKIT_API_KEY": scenario.api_key}
    env.pop("LIVEKIT_API_SECRET", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livekit_exporter.cli", "--config.file", str(cfg),
        "--web.listen-address", f"127.0.0.1:{port}", "--web.telemetry-path", "/m",
        "--log.level", "debug", "--log.format", "json",
        env=env, cwd=Path(__file__).parent.parent / "exporter",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        text = None
        async with aiohttp.ClientSession() as session:
            for _ in range(150):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/m") as resp:
                        text = await resp.text()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert text is not None, "the exporter did not start"
            assert value(text, "livekit_rooms", occupancy="empty") == 1
    finally:
        proc.terminate()
        out, err = await proc.communicate()
    logs = err.decode()
    assert '"msg": "starting livekit-exporter"' in logs
    assert scenario.api_secret not in logs + out.decode()


@pytest.mark.parametrize("header, wanted", [
    ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("*", True), ("br;q=1, *;q=0.1", True),
    ("gzip;q=0", False), ("gzip; q=0.0", False), ("*;q=0", False), ("identity", False), ("", False),
    ("x-gzip", False), ("*, gzip;q=0", False), ("gzip;q=bogus", False),
])
async def test_gzip_follows_the_accept_encoding_weights(scenario, simulator, exporter_client, header, wanted):
    client = await exporter_client()
    resp = await client.get("/metrics", headers={"Accept-Encoding": header}, auto_decompress=False)
    assert resp.status == 200 and resp.headers["Vary"] == "Accept-Encoding"
    assert (resp.headers.get("Content-Encoding") == "gzip") is wanted
    body = await resp.read()
    text = (gzip.decompress(body) if wanted else body).decode()
    assert "livekit_up" in text


@pytest.mark.parametrize("path, says, commands", [
    ("nometrics", "must start with /", ("serve", "demo")),
    ("/", "the landing page", ("serve", "demo")),
    ("/-/healthy", "already served as /-/healthy", ("serve", "demo")),
    ("/-/ready", "already served as /-/ready", ("serve",)),
    ("/-/reload", "already served as /-/reload", ("serve",)),
    ("/webhook", "webhooks.path", ("demo",)),  # the default; this configuration moves it
    ("/hooks", "webhooks.path", ("serve",)),  # where this configuration puts it
    ("/v1/events", "events.path", ("serve", "demo")),
    ("/{name}", "URL path characters", ("serve",)),  # aiohttp would take it for a pattern matching everything
])  # fmt: skip
def test_a_telemetry_path_the_exporter_cannot_serve_is_refused_with_exit_2(tmp_path, path, says, commands):
    cfg = tmp_path / "cfg.yml"
    cfg.write_text("livekit: {url: 'http://127.0.0.1:1', api_key: k, api_secret: s}\nwebhooks: {path: /hooks}\n")
    flags = {
        "serve": ["serve", f"--config.file={cfg}", "--web.listen-address=127.0.0.1:0"],
        "demo": ["demo", "--web.listen-address=127.0.0.1:0"],
    }
    for command in commands:
        argv = [sys.executable, "-m", "livekit_exporter.cli", *flags[command], f"--web.telemetry-path={path}"]
        r = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).parent.parent / "exporter", timeout=60)
        assert r.returncode == 2, (command, r.returncode, r.stderr)
        assert says in r.stderr and "--web.telemetry-path" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
