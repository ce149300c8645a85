"""Faults: a failing LiveKit service never takes /metrics down with it."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from conftest import add_room, add_rooms, assert_api_up, free_port, get_text, value
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
    return await get_text(client, headers=TIMEOUT_HEADER), time.monotonic() - t0


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("fault,code", FAULTS)
async def test_a_failing_service_is_marked_down_and_recovers(scenario, simulator, exporter_client, service, fault, code):
    add_room(scenario, "r")
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
    add_room(scenario, "r")
    client = await exporter_client(detail=True)
    scenario.set_fault("agent_dispatch", Fault("error", "internal"))
    text, _ = await scrape(client)
    assert_api_up(text, agent_dispatch=0, room=1)
    assert value(text, "livekit_participants", kind="standard", state="active") == 1
    assert value(text, "livekit_api_errors_total", service="agent_dispatch", method="ListDispatch", code="internal") == 1


async def test_refused_connections(make_config, exporter_client):
    cfg = make_config()
    cfg = replace(cfg, livekit=replace(cfg.livekit, url=f"http://127.0.0.1:{free_port()}"))
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


async def test_a_hanging_service_leaves_room_detail_alone(scenario, simulator, exporter_client):
    """Detail follows ListRooms inside the room job: a hung egress cannot starve it."""
    for i in range(20):
        scenario.add_room(f"r{i}")
        scenario.add_participant(f"r{i}", "u")
        scenario.add_dispatch(f"r{i}", "agent", [1])
    client = await exporter_client(detail=True)
    scenario.set_fault("egress", Fault("hang"))
    text, took = await scrape(client)
    assert took < 1.5
    assert_api_up(text, egress=0, room=1, agent_dispatch=1)
    assert value(text, "livekit_participants", kind="standard", state="active") == 20
    assert value(text, "livekit_agent_jobs", agent_name="agent", status="running") == 20
    assert value(text, "livekit_api_errors_total", service="room", method="ListParticipants", code="timeout") is None


async def test_detail_that_misses_the_deadline_is_one_timeout_not_a_wrong_sum(scenario, simulator, exporter_client):
    add_rooms(scenario, 30)
    client = await exporter_client(detail=True, max_rooms=30, concurrency=2)
    await scrape(client)
    scenario.set_fault("room", Fault(latency=0.1))  # 30 rooms, 2 at a time, 0.2 s a room: ~3 s > 1 s budget
    text, took = await scrape(client)
    assert took < 1.5
    assert_api_up(text, room=0, egress=1)
    assert value(text, "livekit_participants", kind="standard", state="active") is None  # no partial sum
    assert value(text, "livekit_rooms", occupancy="occupied") is None
    errors = value(text, "livekit_api_errors_total", service="room", method="ListParticipants", code="timeout")
    assert errors is not None and errors <= 3  # the calls in flight at the deadline, plus one for the rest


async def test_a_joiner_with_a_shorter_timeout_gets_what_was_read(scenario, simulator, exporter_client):
    """An HA pair of Prometheus servers with different scrape timeouts share one collection."""
    import asyncio

    add_room(scenario, "r")
    client = await exporter_client()
    await scrape(client)
    scenario.set_fault("egress", Fault("hang"))
    long = asyncio.ensure_future(client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "4"}))
    await asyncio.sleep(0.2)
    resp = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1"})
    text = await resp.text()
    assert value(text, "livekit_api_up", service="egress") == 0
    for s in ("room", "ingress", "sip"):
        assert value(text, "livekit_api_up", service=s) == 1
    assert value(text, "livekit_room_participants") == 1
    long_text = await (await long).text()
    assert value(long_text, "livekit_api_up", service="room") == 1
    assert value(long_text, "livekit_api_errors_total", service="egress", method="ListEgress", code="timeout") == 1


async def test_request_timeout_bounds_each_call(scenario, simulator, make_config, exporter_client):
    cfg = make_config()
    cfg = replace(cfg, livekit=replace(cfg.livekit, request_timeout=0.3))
    client = await exporter_client(cfg)
    scenario.set_fault("sip", Fault("hang"))
    t0 = time.monotonic()
    resp = await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "30"})
    took = time.monotonic() - t0
    text = await resp.text()
    assert took < 2, f"request_timeout 0.3 s did not bound the call ({took:.1f} s)"
    assert value(text, "livekit_api_up", service="sip") == 0
    assert value(text, "livekit_api_errors_total", service="sip", method="ListSIPInboundTrunk", code="timeout") == 1


async def test_an_absurd_timeout_header_is_cut(scenario, simulator, make_config, exporter_client):
    client = await exporter_client(make_config(max_scrape_timeout=1.0))
    scenario.set_fault("ingress", Fault("hang"))
    t0 = time.monotonic()
    text = await (await client.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1e9"})).text()
    assert time.monotonic() - t0 < 2
    assert value(text, "livekit_api_up", service="ingress") == 0
