from conftest import value


async def test_metrics_reads_simulated_rooms(scenario, simulator, exporter_client):
    scenario.add_room("a")
    scenario.add_participant("a", "alice")
    client = await exporter_client()
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert value(text, "livekit_room_participants") == 1
    assert value(text, "livekit_up") == 1
