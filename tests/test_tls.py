"""LiveKit behind TLS with a private CA (livekit.tls_ca_file)."""

from __future__ import annotations

import ssl
from dataclasses import replace

import pytest
import trustme

from conftest import value
from livekit_exporter.server import build_app
from livekit_exporter.simulator import Simulator


@pytest.fixture
def ca():
    return trustme.CA()


async def test_private_ca(scenario, make_config, aiohttp_client, ca, tmp_path):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    scenario.add_room("r")
    async with Simulator(scenario, ssl_context=server_ctx) as sim:
        base = make_config()
        trusted = replace(base, livekit=replace(base.livekit, url=sim.url, tls_ca_file=str(ca_file)))
        client = await aiohttp_client(build_app(trusted))
        text = await (await client.get("/metrics")).text()
        assert value(text, "livekit_api_up", service="room") == 1
        assert value(text, "livekit_rooms", occupancy="empty") == 1

        untrusted = replace(base, livekit=replace(base.livekit, url=sim.url))
        client = await aiohttp_client(build_app(untrusted))
        text = await (await client.get("/metrics")).text()
        assert value(text, "livekit_api_up", service="room") == 0
        assert value(text, "livekit_api_errors_total", service="room", method="ListRooms", code="tls") >= 1
