"""A lively scenario for the demo: a small LiveKit deployment whose state changes every second."""

from __future__ import annotations

import asyncio
import random
from typing import cast

from livekit.protocol import agent as proto_agent
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress
from livekit.protocol import models as proto_models

from .scenario import EGRESS_TYPES, Kind, Scenario, State

AGENTS = ("support-agent", "sales-agent", "receptionist")


def populate(s: Scenario, rng: random.Random) -> None:
    inbound = [s.add_trunk("inbound", f"inbound-{i}") for i in range(2)]
    s.add_trunk("outbound", "outbound-0")
    s.add_dispatch_rule(inbound)
    for i in range(8):
        _new_room(s, rng, f"room-{i}", inbound)
    for it in proto_ingress.IngressInput.values():
        s.add_ingress(cast(proto_ingress.IngressInput, it), proto_ingress.IngressState.ENDPOINT_INACTIVE)
    s.add_ingress(
        proto_ingress.RTMP_INPUT,
        proto_ingress.IngressState.ENDPOINT_PUBLISHING,
        room="room-0",
        audio_bitrate=128_000,
        video_bitrate=2_500_000,
    )


def _new_room(s: Scenario, rng: random.Random, name: str, trunks: list[str]) -> None:
    s.add_room(name, max_participants=rng.choice((0, 0, 10)))
    for j in range(rng.randint(0, 6)):
        tracks = [(proto_models.AUDIO, proto_models.MICROPHONE)]
        if rng.random() < 0.6:
            tracks.append((proto_models.VIDEO, proto_models.CAMERA))
        s.add_participant(
            name,
            f"user-{j}",
            tracks=tracks if rng.random() < 0.8 else [],
            state=State.ACTIVE if rng.random() < 0.9 else State.JOINED,
        )
    if rng.random() < 0.5:
        agent = rng.choice(AGENTS)
        s.add_participant(name, "agent", kind=Kind.AGENT, tracks=[(proto_models.AUDIO, proto_models.MICROPHONE)])
        s.add_dispatch(name, agent, [proto_agent.JS_RUNNING])
    if rng.random() < 0.4 and trunks:
        s.add_sip_call(name, rng.choice(trunks), rng.choice(("ringing", "active", "active", "automation")))
    if rng.random() < 0.3:
        s.add_egress(name, rng.choice(EGRESS_TYPES), proto_egress.EGRESS_ACTIVE)


async def run(s: Scenario, seed: int = 7, period: float = 1.0) -> None:
    """Changes the world forever: rooms open and close, people come and go, recordings end."""
    rng = random.Random(seed)
    populate(s, rng)
    trunks = list(s.inbound_trunks)
    n = len(s.rooms)
    while True:
        await asyncio.sleep(period)
        roll = rng.random()
        names = list(s.rooms)
        if roll < 0.15 or not names:
            _new_room(s, rng, f"room-{n}", trunks)
            n += 1
        elif roll < 0.25 and len(names) > 3:
            s.remove_room(rng.choice(names))
        elif roll < 0.6:
            room = rng.choice(names)
            s.add_participant(
                room, f"user-{rng.randrange(10**6)}", tracks=[(proto_models.AUDIO, proto_models.MICROPHONE)]
            )
        else:
            sim_room = s.rooms[rng.choice(names)]
            people = [i for i, p in sim_room.participants.items() if p.kind == Kind.STANDARD]
            if people:
                s.remove_participant(sim_room.info.name, rng.choice(people))
        for eid, e in list(s.egress.items()):
            if e.status == proto_egress.EGRESS_ACTIVE and rng.random() < 0.05:
                s.set_egress_status(eid, proto_egress.EGRESS_COMPLETE, output_bytes=rng.randrange(10**6, 10**8))
