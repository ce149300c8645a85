"""The simulator's fourth face: LiveKit server's own Prometheus metrics (its `prometheus: port:`).

Names, types, labels, units and bucket bounds are livekit/livekit's pkg/telemetry/prometheus
(rooms.go, packets.go, quality.go; ../shared/LIVEKIT.md), written as its Go client writes them
("4", not "4.0", in `le`), every series with the constant labels node_id and node_type ("SERVER":
the open-source server never sets the node type). The room, participant and track gauges are the
scenario's; the media statistics are the simulator's own, one observation a scrape for each
participant (connection quality, a MOS from 1 to 4.5) and for each published track (loss percent,
jitter in microseconds, RTT in milliseconds), with `media_quality` (1 = as good as LiveKit gets)
scaling how bad they are, so a test can degrade them.

    GET /metrics on the simulator's port (LiveKit serves them on its own port, at any path)
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict

from aiohttp import web
from livekit.protocol import models as proto_models

from .scenario import Scenario, State

QUALITY_BUCKETS = (1.0, 2.0, 2.5, 3.0, 3.25, 3.5, 3.75, 4.0, 4.25, 4.5)
LOSS_BUCKETS = (0.0, 0.1, 0.3, 0.5, 0.7, 1, 5, 10, 40, 100)
JITTER_BUCKETS = (1000, 10000, 30000, 50000, 70000, 100000, 300000, 600000, 1000000)
RTT_BUCKETS = (50, 100, 150, 200, 250, 500, 750, 1000, 5000, 10000)


def _go(x: float) -> str:
    """A float as Go's strconv.FormatFloat(x, 'g', -1, 64) writes it (client_golang's le labels)."""
    return f"{x:g}" if abs(x) < 1e21 else repr(x)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.series: dict[tuple[tuple[str, str], ...], list[float]] = {}  # labels -> [counts..., +Inf, sum]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))
        for i, b in enumerate(self.buckets):
            if value <= b:
                counts[i] += 1
        counts[-2] += 1
        counts[-1] += value

    def lines(self, name: str, const: str) -> list[str]:
        out = []
        for key, counts in sorted(self.series.items()):
            lab = "".join(f',{k}="{v}"' for k, v in key)
            for b, c in zip(self.buckets, counts, strict=False):
                out.append(f'{name}_bucket{{{const}{lab},le="{_go(b)}"}} {c:g}')
            out.append(f'{name}_bucket{{{const}{lab},le="+Inf"}} {counts[-2]:g}')
            out.append(f"{name}_sum{{{const}{lab}}} {counts[-1]:g}")
            out.append(f"{name}_count{{{const}{lab}}} {counts[-2]:g}")
        return out


class Counters:
    """Counter series by name and labels, written as a Go client writes them (no _total added)."""

    def __init__(self) -> None:
        self.series: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(lambda: defaultdict(float))

    def add(self, name: str, n: float = 1, **labels: str) -> None:
        self.series[name][tuple(sorted(labels.items()))] += n

    def lines(self, const: str) -> list[str]:
        out = []
        for name, series in sorted(self.series.items()):
            out.append(f"# TYPE {name} counter")
            for key, v in sorted(series.items()):
                out.append(f"{name}{{{const}{''.join(f',{k}={chr(34)}{val}{chr(34)}' for k, val in key)}}} {v:g}")
        return out


class ServerMetrics:
    """LiveKit server's /metrics for one node, advanced by one observation round per scrape."""

    def __init__(self, scenario: Scenario, node_id: str = "ND_simulated", seed: int = 1):
        self.scenario = scenario
        self.const = f'node_id="{node_id}",node_type="SERVER"'
        self.rng = random.Random(seed)
        self.media_quality = 1.0
        self.quality = Histogram(QUALITY_BUCKETS)
        self.loss = Histogram(LOSS_BUCKETS)
        self.jitter = Histogram(JITTER_BUCKETS)
        self.rtt = Histogram(RTT_BUCKETS)
        self.counters = Counters()
        self.joined: set[str] = set()

    def advance(self) -> None:
        bad = max(self.media_quality, 0.0)
        rng = self.rng
        for room in self.scenario.rooms.values():
            for p in room.participants.values():
                if p.sid not in self.joined:
                    self.joined.add(p.sid)
                    self.counters.add("livekit_participant_join_total", 1, state="signal_connected", warp="")
                    self.counters.add("livekit_participant_join_total", 1, state="rtc_connected", warp="")
                    ok = p.state == State.ACTIVE
                    self.counters.add(
                        "livekit_participant_join_total", 1, state="rtc_success" if ok else "rtc_failure", warp="false"
                    )
                if p.state != State.ACTIVE:
                    continue
                base = 4.5 - (zlib.crc32(p.identity.encode()) % 60) / 100  # 3.9 to 4.5 when all is well
                self.quality.observe(max(1.0, min(4.5, base - (bad - 1) * 1.2 + rng.gauss(0, 0.05))))
                for t in p.tracks:
                    kind = proto_models.TrackType.Name(t.type)
                    source = proto_models.TrackSource.Name(t.source)
                    for direction in ("incoming", "outgoing"):
                        labels = {"direction": direction, "source": source, "type": kind, "country": ""}
                        packets = 50 * (1 if t.type == proto_models.AUDIO else 30)
                        loss = max(0.0, rng.gauss(0.2, 0.1) * bad)
                        self.loss.observe(loss, **labels)
                        self.jitter.observe(max(1.0, rng.gauss(4000, 1500) * bad), **labels)
                        self.rtt.observe(max(1.0, rng.gauss(60, 20) * bad), **labels)
                        self.counters.add(
                            "livekit_packet_total", packets, direction=direction, transmission="initial", country=""
                        )
                        self.counters.add("livekit_packet_loss_total", packets * loss / 100, **labels)
                        self.counters.add(
                            "livekit_nack_total", rng.randint(0, 3) * bad, direction=direction, country=""
                        )
                        if t.type == proto_models.VIDEO:
                            self.counters.add(
                                "livekit_pli_total", rng.randint(0, 1) * bad, direction=direction, country=""
                            )

    def text(self) -> str:
        self.advance()
        c = self.const
        rooms = list(self.scenario.rooms.values())
        participants = sum(1 for r in rooms for p in r.participants.values() if p.state == State.ACTIVE)
        tracks: dict[str, int] = defaultdict(int)
        subscribed: dict[str, int] = defaultdict(int)  # every other active participant of the room subscribes
        for r in rooms:
            active = sum(1 for p in r.participants.values() if p.state == State.ACTIVE)
            for p in r.participants.values():
                for t in p.tracks:
                    kind = proto_models.TrackType.Name(t.type)
                    tracks[kind] += 1
                    subscribed[kind] += max(active - 1, 0)
        lines = [
            "# TYPE livekit_room_total gauge",
            f"livekit_room_total{{{c}}} {len(rooms)}",
            "# TYPE livekit_participant_total gauge",
            f"livekit_participant_total{{{c}}} {participants}",
            "# TYPE livekit_track_published_total gauge",
            *(f'livekit_track_published_total{{{c},kind="{k}"}} {n}' for k, n in sorted(tracks.items())),
            "# TYPE livekit_track_subscribed_total gauge",
            *(f'livekit_track_subscribed_total{{{c},kind="{k}"}} {n}' for k, n in sorted(subscribed.items())),
        ]
        for name, hist in (
            ("livekit_quality_score", self.quality),
            ("livekit_packet_loss_percent", self.loss),
            ("livekit_jitter_us", self.jitter),
            ("livekit_rtt_ms", self.rtt),
        ):
            lines += [f"# TYPE {name} histogram", *hist.lines(name, c)]
        lines += self.counters.lines(c)
        return "\n".join(lines) + "\n"


def add_routes(app: web.Application, metrics: ServerMetrics) -> None:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=metrics.text(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/metrics", handle)
