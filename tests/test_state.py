"""Section 1 of the catalogue: the real livekit-api client against the simulator over loopback.

Expectations come from Scenario.truth(), never from hand counts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from livekit import api
from livekit.protocol import agent as proto_agent
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress
from livekit.protocol import models as proto_models

from conftest import assert_api_up, get_text, samples, value
from livekit_exporter.config import LabelsConfig
from livekit_exporter.simulator import Scenario
from livekit_exporter.simulator.scenario import EGRESS_TYPES, Kind

SECTION_1 = {
    "livekit_rooms", "livekit_rooms_full", "livekit_room_participants", "livekit_room_publishers",
    "livekit_rooms_recording", "livekit_egress_active", "livekit_ingress",
    "livekit_ingress_input_bytes_per_second", "livekit_sip_trunks", "livekit_sip_dispatch_rules",
    "livekit_participants", "livekit_published_tracks", "livekit_sip_calls", "livekit_agent_jobs",
}
DETAIL_ONLY = {"livekit_participants", "livekit_published_tracks", "livekit_sip_calls", "livekit_agent_jobs"}


def build_world(s: Scenario) -> None:
    """A world with every kind of thing section 1 reports, in uneven numbers."""
    trunks = [s.add_trunk("inbound") for _ in range(3)] + [s.add_trunk("outbound") for _ in range(2)]
    s.add_dispatch_rule(trunks[:2])
    s.add_dispatch_rule()
    kinds = list(proto_models.ParticipantInfo.Kind.values())
    states = list(proto_models.ParticipantInfo.State.values())
    track_kinds = [(t, src) for t in proto_models.TrackType.values() for src in proto_models.TrackSource.values()]
    for i in range(7):
        s.add_room(f"room-{i}", max_participants=3 if i == 2 else 0)
    n = 0
    for i in range(1, 7):
        for j in range(i * 2):
            kind = kinds[(i + j) % len(kinds)]
            state = states[(i * j) % len(states)]
            tracks = [track_kinds[(i * 7 + j * 3 + k) % len(track_kinds)] for k in range(j % 3)]
            if kind == Kind.SIP:
                s.add_sip_call(f"room-{i}", trunks[j % 3], ("ringing", "active", "automation")[j % 3], identity=f"p{n}")
            else:
                s.add_participant(f"room-{i}", f"p{n}", kind=kind, state=state, tracks=tracks)
            n += 1
    job_statuses = list(proto_agent.JobStatus.values())
    s.add_dispatch("room-1", "support", job_statuses)
    s.add_dispatch("room-3", "sales", [proto_agent.JS_RUNNING, proto_agent.JS_RUNNING])
    s.add_dispatch("room-4", "support", [proto_agent.JS_PENDING])
    for k, etype in enumerate(EGRESS_TYPES):
        for status in proto_egress.EgressStatus.values():
            if (k + status) % 2 == 0:
                e = s.add_egress(f"room-{k % 6 + 1}", etype, proto_egress.EGRESS_ACTIVE)
                if status != proto_egress.EGRESS_ACTIVE:
                    s.set_egress_status(e.egress_id, status)
    for it in proto_ingress.IngressInput.values():
        for st in proto_ingress.IngressState.Status.values():
            s.add_ingress(it, st, audio_bitrate=64_000 * (it + 1), video_bitrate=1_000_000 * (st + 1))


def section1(text: str) -> dict:
    return {k: v for k, v in samples(text).items() if k[0] in SECTION_1}


def assert_matches_truth(text: str, truth: dict) -> None:
    got = section1(text)
    for key, expected in truth.items():
        assert got.get(key) == expected, f"{key}: exported {got.get(key)}, truth {expected}"
    for key, v in got.items():
        assert key in truth or v == 0, f"{key} = {v} is not in the truth"


async def scrape(client, **headers) -> str:
    return await get_text(client, headers=headers)


async def counted_scrape(scenario, client) -> str:
    """A second scrape, after a first one, with the scenario's API call counts reset in between:
    what one steady scrape costs is in scenario.api_calls."""
    await scrape(client)
    scenario.reset_calls()
    return await scrape(client)


async def scrape_the_world(scenario, exporter_client, **config: Any) -> tuple[Any, str]:
    """build_world(), and an exporter of it (exporter_client(**config)): its test client and first scrape."""
    build_world(scenario)
    client = await exporter_client(**config)
    return client, await scrape(client)


async def test_every_section1_metric_equals_the_truth(scenario, simulator, exporter_client):
    _, text = await scrape_the_world(scenario, exporter_client, detail=True)
    assert value(text, "livekit_up") == 1
    truth = scenario.truth(detail=True, max_rooms=100)
    # the world is rich enough for the comparison to mean something
    assert len([k for k in truth if k[0] in DETAIL_ONLY]) > 30
    assert_matches_truth(text, truth)
    assert_api_up(text, room=1, egress=1, ingress=1, sip=1, agent_dispatch=1)


async def test_default_scrape_has_no_detail(scenario, simulator, exporter_client):
    _, text = await scrape_the_world(scenario, exporter_client)
    got = section1(text)
    assert not [k for k in got if k[0] in DETAIL_ONLY]
    assert_matches_truth(text, {k: v for k, v in scenario.truth().items()})
    assert value(text, "livekit_api_up", service="agent_dispatch") is None


async def test_room_size_gauge_histogram(scenario, simulator, exporter_client):
    _, text = await scrape_the_world(scenario, exporter_client, room_size_buckets=(1, 2, 5))
    s = samples(text)
    sizes = scenario.room_sizes()
    for le, bound in (("1.0", 1), ("2.0", 2), ("5.0", 5), ("+Inf", float("inf"))):
        assert s[("livekit_room_size_bucket", frozenset({("le", le)}))] == sum(1 for n in sizes if n <= bound)
    assert s[("livekit_room_size_gcount", frozenset())] == len(sizes)
    assert s[("livekit_room_size_gsum", frozenset())] == sum(sizes)


async def test_a_room_that_leaves_leaves_metrics_at_the_next_scrape(scenario, simulator, exporter_client):
    client, before = await scrape_the_world(scenario, exporter_client, detail=True)
    assert value(before, "livekit_agent_jobs", agent_name="sales", status="running") == 2
    scenario.remove_room("room-3")
    after = await scrape(client)
    assert value(after, "livekit_agent_jobs", agent_name="sales", status="running") is None
    assert_matches_truth(after, scenario.truth(detail=True, max_rooms=100))
    assert value(after, "livekit_rooms", occupancy="occupied") == value(before, "livekit_rooms", occupancy="occupied") - 1


async def test_paginated_lists_are_followed_to_the_end(scenario, simulator, exporter_client):
    scenario.page_size = 2
    scenario.add_room("r")
    for _ in range(7):
        scenario.add_egress("r", "track", proto_egress.EGRESS_ACTIVE)
        scenario.add_ingress(proto_ingress.WHIP_INPUT, proto_ingress.IngressState.ENDPOINT_BUFFERING)
    for _ in range(2345):  # SIP lists page by 1000 through Pagination.after_id
        scenario.add_trunk("inbound")
    text = await counted_scrape(scenario, await exporter_client())
    assert value(text, "livekit_egress_active", type="track", status="active") == 7
    assert value(text, "livekit_ingress", input_type="whip", status="buffering") == 7
    assert value(text, "livekit_sip_trunks", direction="inbound") == 2345
    assert scenario.api_calls[("egress", "ListEgress")] == 4
    assert scenario.api_calls[("ingress", "ListIngress")] == 4
    assert scenario.api_calls[("sip", "ListSIPInboundTrunk")] == 3


@pytest.mark.parametrize("rooms", [5, 300])
async def test_default_cost_is_constant_in_the_number_of_rooms(scenario, simulator, exporter_client, rooms):
    for i in range(rooms):
        scenario.add_room(f"r{i}")
        scenario.add_participant(f"r{i}", "u")
    text = await counted_scrape(scenario, await exporter_client())
    assert value(text, "livekit_room_participants") == rooms
    assert sum(scenario.api_calls.values()) == 6
    assert set(scenario.api_calls) == {
        ("room", "ListRooms"), ("egress", "ListEgress"), ("ingress", "ListIngress"),
        ("sip", "ListSIPInboundTrunk"), ("sip", "ListSIPOutboundTrunk"), ("sip", "ListSIPDispatchRule"),
    }


async def test_detail_is_capped_in_rooms_and_concurrency(scenario, simulator, exporter_client):
    from livekit_exporter.simulator import Fault

    for i in range(12):
        scenario.add_room(f"r{i:02d}")
        for j in range(i):
            scenario.add_participant(f"r{i:02d}", f"u{j}")
    client = await exporter_client(detail=True, max_rooms=5, concurrency=2)
    await scrape(client)
    scenario.reset_calls()
    scenario.set_fault("room", Fault(latency=0.02))  # let calls overlap so the cap is what limits them
    text = await scrape(client)
    assert scenario.api_calls[("room", "ListParticipants")] == 5
    assert scenario.api_calls[("agent_dispatch", "ListDispatch")] == 5
    assert scenario.peak_in_flight[("room", "ListParticipants")] == 2
    assert value(text, "livekit_exporter_room_detail_rooms", result="read") == 5
    assert value(text, "livekit_exporter_room_detail_rooms", result="skipped") == 7
    # the fullest five: 11 + 10 + 9 + 8 + 7 standard participants
    assert value(text, "livekit_participants", kind="standard", state="active") == 45
    assert_matches_truth(text, scenario.truth(detail=True, max_rooms=5))


async def test_user_named_labels_pass_the_guard(scenario, simulator, exporter_client, make_config):
    from dataclasses import replace

    scenario.add_room("r")
    for i in range(5):
        scenario.add_dispatch("r", f"agent-{i}", [proto_agent.JS_RUNNING] * (i + 1))
    cfg = replace(make_config(detail=True), labels=LabelsConfig(max_values=3))
    client = await exporter_client(cfg)
    text = await scrape(client)
    names = {dict(k[1])["agent_name"] for k in samples(text) if k[0] == "livekit_agent_jobs"}
    assert len(names) == 4 and "__other__" in names
    total = sum(v for k, v in samples(text).items() if k[0] == "livekit_agent_jobs")
    assert total == 15  # nothing is lost by folding
    assert value(text, "livekit_exporter_label_overflow_total", metric="livekit_agent_jobs", label="agent_name") >= 2


async def test_simulator_checks_jwt_and_grants(scenario, simulator):
    """The simulator answers as LiveKit does: a wrong key and a missing grant are both 401
    unauthenticated (LiveKit's twirpAuthError), told apart only by the message."""
    scenario.add_room("r")
    async with aiohttp.ClientSession() as session:
        bad = api.LiveKitAPI(simulator.url, scenario.api_key, "w" * 40, session=session)
        with pytest.raises(api.TwirpError) as e:
            await bad.room.list_rooms(api.ListRoomsRequest())
        assert (e.value.status, e.value.code) == (401, "unauthenticated")
        # a valid token that grants only roomJoin may not list rooms
        token = api.AccessToken(scenario.api_key, scenario.api_secret).with_identity("u").with_grants(
            api.VideoGrants(room_join=True, room="r")).to_jwt()
        limited = api.LiveKitAPI.with_token(token, simulator.url, session=session)
        with pytest.raises(api.TwirpError) as e:
            await limited.room.list_rooms(api.ListRoomsRequest())
        assert (e.value.status, e.value.code, e.value.message) == (401, "unauthenticated", "permissions denied")
        # roomAdmin for room "r" does not let you list the participants of another room
        token = api.AccessToken(scenario.api_key, scenario.api_secret).with_grants(
            api.VideoGrants(room_admin=True, room="other")).to_jwt()
        with pytest.raises(api.TwirpError) as e:
            await api.LiveKitAPI.with_token(token, simulator.url, session=session).room.list_participants(
                api.ListParticipantsRequest(room="r"))
        assert (e.value.code, e.value.message) == ("unauthenticated", "permissions denied")
        good = api.LiveKitAPI(simulator.url, scenario.api_key, scenario.api_secret, session=session)
        assert [r.name for r in (await good.room.list_rooms(api.ListRoomsRequest())).rooms] == ["r"]
        # Twirp error bodies are JSON with the right status
        async with session.post(f"{simulator.url}/twirp/livekit.RoomService/NoSuchMethod",
                                headers={"Content-Type": "application/protobuf"}) as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == "bad_route"


async def test_concurrent_scrapes_share_one_collection(scenario, simulator, exporter_client):
    from livekit_exporter.simulator import Fault

    scenario.add_room("r")
    client = await exporter_client()
    joined_before = value(await scrape(client), "livekit_exporter_scrapes_total", collection="joined") or 0
    scenario.reset_calls()
    scenario.set_fault("room", Fault(latency=0.2))
    texts = await asyncio.gather(*(scrape(client) for _ in range(5)))
    assert all(value(t, "livekit_rooms", occupancy="empty") == 1 for t in texts)
    assert scenario.api_calls[("room", "ListRooms")] == 1
    scenario.set_fault("room", None)
    after = await scrape(client)
    assert value(after, "livekit_exporter_scrapes_total", collection="joined") - joined_before == 4


async def test_publishers_count_agents_as_livekit_does(scenario, simulator, exporter_client):
    """Room.num_participants leaves agents and egress out; num_publishers does not (Room.updateProto)."""
    scenario.add_room("call")
    trunk = scenario.add_trunk("inbound")
    scenario.add_sip_call("call", trunk)
    scenario.add_participant("call", "agent", kind=Kind.AGENT, tracks=[(proto_models.AUDIO, proto_models.MICROPHONE)])
    client = await exporter_client()
    text = await scrape(client)
    assert value(text, "livekit_room_participants") == 1
    assert value(text, "livekit_room_publishers") == 2


async def test_unified_and_replay_egress_types(scenario, simulator, exporter_client):
    scenario.add_room("r")
    scenario.add_egress("r", "media")
    scenario.add_egress("r", "replay")
    client = await exporter_client()
    text = await scrape(client)
    assert value(text, "livekit_egress_active", type="media", status="active") == 1
    assert value(text, "livekit_egress_active", type="replay", status="active") == 1
    assert value(text, "livekit_egress_active", type="web", status="active") == 0


async def test_a_room_closing_mid_scrape_is_not_a_service_failure(scenario, simulator, exporter_client):
    """ListRooms still lists a room that has closed by the time its per-room calls run: LiveKit then
    lists no participants, and ListDispatch finds no node for the room (Twirp unavailable)."""
    for name in ("a", "b", "c"):
        scenario.add_room(name)
        scenario.add_participant(name, "u")
        scenario.add_dispatch(name, "agent", [proto_agent.JS_RUNNING])
    client = await exporter_client(detail=True)
    scenario.close_room_during_scrape("b")
    text = await scrape(client)
    assert_api_up(text, room=1, agent_dispatch=1)
    assert value(text, "livekit_agent_jobs", agent_name="agent", status="running") == 2
    assert value(text, "livekit_api_errors_total", service="agent_dispatch", method="ListDispatch", code="unavailable") == 1
    # ... but when no room answers at all, it is the service that is failing
    scenario.close_room_during_scrape("a")
    scenario.close_room_during_scrape("c")
    text = await scrape(client)
    assert value(text, "livekit_api_up", service="agent_dispatch") == 0
    assert value(text, "livekit_agent_jobs", agent_name="agent", status="running") is None


def test_the_detail_judge_is_a_pure_function_of_the_room_reads():
    from livekit_exporter.livekit_state import _CallFailed, _RoomRead, judge_detail

    gone = _CallFailed("unavailable", "ListDispatch", "no response")
    ok = _RoomRead("a", participants=[], dispatches=[])
    # A room that closed in between is no failure when another room answered...
    v = judge_detail([ok, _RoomRead("b", participants=[], room_gone=gone)], True, deadline_passed=False)
    assert v.failures == {} and set(v.participants) == {"a", "b"} and set(v.dispatches) == {"a"}
    # ...but when no room answered ListDispatch, the service is down.
    v = judge_detail([_RoomRead("b", participants=[], room_gone=gone)], True, deadline_passed=False)
    assert v.failures == {"agent_dispatch": gone}
    # The first failure of a service fails it; rooms left unread by the deadline fail the other one.
    first, second = (_CallFailed("internal", "ListParticipants", str(n)) for n in (1, 2))
    reads = [_RoomRead("a", participants_error=first), _RoomRead("b", participants_error=second),
             _RoomRead("c", reached=False)]
    v = judge_detail(reads, True, deadline_passed=True)
    assert v.failures["room"] is first and v.failures["agent_dispatch"].code == "timeout"
    assert v.timed_out == [("agent_dispatch", "ListDispatch")]
    assert "1 of 3 rooms not read" in v.failures["agent_dispatch"].fields["error"]
    # Unreached rooms before the deadline (skipped after a failure) add no timeout.
    assert judge_detail(reads, False, deadline_passed=False).timed_out == []
