from conftest import add_room, get_text, value


async def test_metrics_reads_simulated_rooms(scenario, simulator, exporter_client):
    add_room(scenario, "a", "alice")
    client = await exporter_client()
    text = await get_text(client)
    assert value(text, "livekit_room_participants") == 1
    assert value(text, "livekit_up") == 1
