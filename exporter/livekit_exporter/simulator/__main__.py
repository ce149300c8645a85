"""`python -m livekit_exporter.simulator`: a standalone simulated LiveKit on loopback.

    python -m livekit_exporter.simulator --port 7880 --rooms 10000 --participants-per-room 10
    python -m livekit_exporter.simulator --port 7880 --lively

The API key and secret come from LIVEKIT_API_KEY / LIVEKIT_API_SECRET (defaults: devkey and a
fixed development secret). GET /_simulator/stats returns the API calls served so far, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random

from livekit.protocol import models as proto_models

from . import Scenario, Simulator, lively
from .scenario import Kind


def populate_large(s: Scenario, rooms: int, per_room: int, seed: int = 1) -> None:
    """A big deployment: `rooms` rooms of `per_room` participants of mixed kinds."""
    rng = random.Random(seed)
    kinds = [Kind.STANDARD] * 6 + [Kind.AGENT, Kind.SIP, Kind.EGRESS, Kind.INGRESS]
    trunk = s.add_trunk("inbound")
    for i in range(rooms):
        name = f"room-{i:06d}"
        s.add_room(name)
        for j in range(per_room):
            kind = rng.choice(kinds)
            if kind == Kind.SIP:
                s.add_sip_call(name, trunk, identity=f"p{j}")
            else:
                s.add_participant(
                    name, f"p{j}", kind=kind, tracks=[(proto_models.AUDIO, proto_models.MICROPHONE)] if j % 2 else []
                )


async def main() -> None:
    p = argparse.ArgumentParser(prog="python -m livekit_exporter.simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7880)
    p.add_argument("--rooms", type=int, default=0)
    p.add_argument("--participants-per-room", type=int, default=0)
    p.add_argument("--lively", action="store_true", help="a small world that changes every second")
    args = p.parse_args()
    scenario = Scenario(
        api_key=os.environ.get("LIVEKIT_API_KEY", "devkey"),
        api_secret=os.environ.get("LIVEKIT_API_SECRET", "secret-" + "x" * 32),
    )
    populate_large(scenario, args.rooms, args.participants_per_room)
    async with Simulator(scenario, args.host, args.port) as sim:
        print(f"simulator ready on {sim.url}", flush=True)
        if args.lively:
            await lively.run(scenario)
        else:
            await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
