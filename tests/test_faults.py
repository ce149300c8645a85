"""Faults: a failing LiveKit service never takes /metrics down with it."""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import pytest

from conftest import value
from livekit_exporter.simulator import Fault

TIMEOUT_HEADER = {"X-Prometheus-Scrape-Timeout-Seconds": "1.5"}
SERVICES = ("room", "egress", "ingress", "sip")
METHOD = {"room": "ListRooms", "egress": "ListEgress", "ingress": "ListIngress", "sip": "ListSIPInboundTrunk"}

FAULTS = [
    pytest.param(Fault("error", "internal"), "internal", id="500-internal"),
    pytest.param(Fault("error", "unavailable"), "unavailable", id="503-unavailable"),
    pytest.param(Fault("error", "resource_exhausted"), "resource_exhausted", id="429-resource-exhausted"),
    pytest.param(Fault("unauthorized"), "unauthenticated", id="401"),
    pytest.param(Fault("hang"), "timeout", id="hang"),
    pytest.param(Fault("reset"), "connection", id="connection-reset"),
]


async def scrape(client) -> tuple[str, float]:
    t0 = time.monotonic()
    resp = await client.get("/metrics", headers=TIMEOUT_HEADER)
    assert resp.status == 200
    return await resp.text(), time.monotonic() - t0


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("fault,code", FAULTS)
async def test_a_failing_service_is_marked_down_and_recovers(scenario, simulator, exporter_client, service, fault, code):
    scenario.add_room("r")
    scenario.add_participant("r", "u")
    scenario.add_trunk("inbound")
    client = await exporter_client()
    await scrape(client)
    scenario.set_fault(service, fault)

    text, took = await scrape(client)
    assert took < 1.5, f"the scrape took {took:.2f}s, over the 1.5s scrape timeout"
    assert value(text, "livekit_up") == 0
    assert value(text, "livekit_api_up", service=service) == 0
    for other in SERVICES:
        if other != service:
            assert value(text, "livekit_api_up", service=other) == 1
    errors = value(text, "livekit_api_errors_total", service=service, method=METHOD[service], code=code)
    assert errors == 1
    # What did answer is still served; what did not is absent, not zero.
    if service == "room":
        assert value(text, "livekit_room_participants") is None
    else:
        assert value(text, "livekit_room_participants") == 1

    scenario.set_fault(service, None)
    text, _ = await scrape(client)
    assert value(text, "livekit_up") == 1
    assert value(text, "livekit_api_up", service=service) == 1
    assert value(text, "livekit_room_participants") == 1
    assert value(text, "livekit_api_errors_total", service=service, method=METHOD[service], code=code) == 1


async def test_slow_service_within_the_budget_is_up(scenario, simulator, exporter_client):
    scenario.set_fault("egress", Fault(latency=0.3))
    client = await exporter_client()
    text, _ = await scrape(client)
    assert value(text, "livekit_api_up", service="egress") == 1


async def test_detail_failures_mark_their_service(scenario, simulator, exporter_client):
    scenario.add_room("r")
    scenario.add_participant("r", "u")
    client = await exporter_client(detail=True)
    scenario.set_fault("agent_dispatch", Fault("error", "internal"))
    text, _ = await scrape(client)
    assert value(text, "livekit_api_up", service="agent_dispatch") == 0
    assert value(text, "livekit_api_up", service="room") == 1
    assert value(text, "livekit_participants", kind="standard", state="active") == 1
    assert value(text, "livekit_api_errors_total", service="agent_dispatch", method="ListDispatch", code="internal") == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_refused_connections(make_config, exporter_client):
    cfg = make_config()
    cfg = replace(cfg, livekit=replace(cfg.livekit, url=f"http://127.0.0.1:{_closed_port()}"))
    client = await exporter_client(cfg)
    for _ in range(2):  # and again: nothing breaks after the first failure
        text, took = await scrape(client)
        assert took < 1.5
        assert value(text, "livekit_up") == 0
        for s in SERVICES:
            assert value(text, "livekit_api_up", service=s) == 0
        assert value(text, "livekit_api_errors_total", service="room", method="ListRooms", code="connection") >= 1
    ready = await client.get("/-/ready")
    assert ready.status == 503
    healthy = await client.get("/-/healthy")
    assert healthy.status == 200


async def test_wrong_secret_is_unauthenticated_and_never_shown(scenario, simulator, make_config, exporter_client, caplog):
    cfg = make_config()
    wrong = "wrong-secret-" + "q" * 30
    from livekit_exporter.config import Secret

    cfg = replace(cfg, livekit=replace(cfg.livekit, api_secret=Secret(wrong)))
    client = await exporter_client(cfg)
    text, _ = await scrape(client)
    assert value(text, "livekit_api_errors_total", service="room", method="ListRooms", code="unauthenticated") >= 1
    assert wrong not in text and scenario.api_secret not in text
    logged = " ".join(str(r.__dict__) for r in caplog.records)
    assert wrong not in logged and scenario.api_secret not in logged
    assert any(getattr(r, "code", None) == "unauthenticated" for r in caplog.records)
