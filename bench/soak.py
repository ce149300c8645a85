"""Soak: a real exporter process under continuous webhooks, events, scrapes and LiveKit faults for
`--minutes`; does its memory level off, do its file descriptors stay put, and does every counter
end equal to what was sent?

    /work/main/.venv/bin/python bench/soak.py [--minutes 10] [--sample-every 5] [--json soak.json]

Loopback only. In this process: the simulator (a LiveKit whose world churns: rooms, participants
with tracks, agents, SIP calls, egress, ingress), its WebhookSender (every change signed as LiveKit
signs it, with retries, lost answers and replays, so the dedup map works), a VoiceAgentFleet
pushing calls, turns and usage through the real EventsClient, a scraper of /metrics every second,
and a fault switch (every `--fault-every` seconds one LiveKit service starts failing, the previous
one heals; each switch also sends one forged webhook and one invalid events batch, which must be
refused). The exporter is `livekit-exporter serve --config.file` in its own process, with the TTLs
shortened so that they pass inside the run: webhooks.dedup_ttl 7m (its minimum),
events.idempotency_ttl 1m. Every `--sample-every` seconds its RSS (/proc/<pid>/status VmRSS) and
open file descriptors (/proc/<pid>/fd) are read.

At the end the load stops, the faults heal, the senders drain, and one last scrape is compared with
the truth: WebhookSender.truth() for every webhook counter and histogram count/sum, the fleet's
Truth for the voice_agent_* counters and gauges, the refused requests for the rejection counters.
Printed as markdown (the curve, start / plateau / end figures, the equality check), and as JSON
with --json. Exits 1 when a counter differs or a scrape failed. Not part of `make bench` (it takes
`--minutes`); tests/test_soak.py runs a short version.

start: the first sample (after the first scrape). plateau: the median of the samples taken after
the longest TTL (dedup_ttl) has passed once, or of the second half when the run is shorter. end:
the median of the last 10% of the samples. slope: least-squares RSS growth over the plateau window,
in MB per minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_busy_room, end_busy_room_call, fleet_series, free_port, rss_mb, stop_process, wait_listening  # noqa: E402

API_KEY = "APIsoak"
API_SECRET = "soak-secret-" + "s" * 32
EVENTS_TOKEN = "soak-events-token-0123456789abcdef"
DEDUP_TTL = 7 * 60.0  # webhooks.dedup_ttl: its minimum
IDEMPOTENCY_TTL = 60.0
KEEP_ROOMS = 20  # the simulated world stays this big: older rooms close
KEEP_EGRESS = 40  # finished egress and ingress kept in the simulator's lists


@dataclass
class Options:
    minutes: float = 10.0
    sample_every: float = 5.0
    fault_every: float = 20.0
    scrape_every: float = 1.0
    seed: int = 1


@dataclass
class Sample:
    t: float  # seconds since the start
    rss_mb: float
    fds: int


@dataclass
class Report:
    options: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    checked: int = 0  # samples compared with the truth
    mismatches: list[str] = field(default_factory=list)
    scrapes: int = 0
    scrape_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.scrape_failures and self.checked > 0


# -- the exporter process ---------------------------------------------------------------------------


def config_text(livekit_url: str) -> str:
    from livekit_exporter.simulator.voice_agents import PRICES

    return json.dumps(  # JSON is YAML
        {
            "livekit": {"url": livekit_url, "api_key": API_KEY, "request_timeout": "2s"},
            "webhooks": {"dedup_ttl": f"{DEDUP_TTL:g}s"},
            "events": {"tokens": [EVENTS_TOKEN], "idempotency_ttl": f"{IDEMPOTENCY_TTL:g}s", "prices": list(PRICES)},
        },
        indent=2,
    )


def start_exporter(config: Path) -> tuple[subprocess.Popen, int]:
    """`livekit-exporter serve` of this checkout on a free port; (the process, the port) once it listens."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "exporter"), "LIVEKIT_API_SECRET": API_SECRET}
    cmd = [sys.executable, "-c", "import sys; from livekit_exporter.cli import main; sys.exit(main())", "serve",
           "--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error"]
    proc = subprocess.Popen(cmd, env=env)
    wait_listening(port, proc)
    return proc, port


def proc_stats(pid: int) -> tuple[float, int]:
    """(VmRSS in MB, open file descriptors) of a process."""
    return rss_mb(pid, missing=0.0), len(os.listdir(f"/proc/{pid}/fd"))


# -- the load ----------------------------------------------------------------------------------------


class Load:
    """The simulated world, its webhooks and agents, the scraper and the fault switch."""

    def __init__(self, scenario: Any, url: str, http: Any, sender: Any, fleet: Any, opts: Options, report: Report):
        self.scenario, self.url, self.http, self.sender, self.fleet = scenario, url, http, sender, fleet
        self.opts, self.report = opts, report
        self.rng = random.Random(opts.seed)
        self.stop = asyncio.Event()
        self.forged = 0
        self.invalid_batches = 0
        self.faults_switched = 0
        self.fault: str | None = None
        self.rooms: list[str] = []
        self.finished_egress: list[str] = []
        self.finished_ingress: list[str] = []

    async def _every(self, period: float, step: Any) -> None:
        while not self.stop.is_set():
            await step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), period)

    async def world(self) -> None:
        from livekit.protocol import egress as proto_egress
        from livekit.protocol import ingress as proto_ingress

        from livekit_exporter.simulator.scenario import EGRESS_TYPES

        sc, rng = self.scenario, self.rng
        trunks = [sc.add_trunk("inbound", "in-0"), sc.add_trunk("outbound", "out-0")]
        sc.add_dispatch_rule(trunks[:1])
        n = itertools.count()

        async def step() -> None:
            i = next(n)
            room = f"room-{i}"
            dispatch, sip = add_busy_room(sc, room, rng, trunks[i % 2], max_participants=rng.choice((0, 5)))
            self.rooms.append(room)
            if i % 3 == 0:
                eg = sc.add_egress(room, EGRESS_TYPES[i % len(EGRESS_TYPES)])
                sc.set_egress_status(eg.egress_id, proto_egress.EGRESS_COMPLETE if i % 2 else proto_egress.EGRESS_FAILED,
                                     output_bytes=rng.randrange(10**5, 10**7))
                self.finished_egress.append(eg.egress_id)
            if i % 4 == 0:
                ing = sc.add_ingress(proto_ingress.WHIP_INPUT, proto_ingress.IngressState.ENDPOINT_PUBLISHING,
                                     room=room, audio_bitrate=64_000)
                sc.set_ingress_status(ing.ingress_id, proto_ingress.IngressState.ENDPOINT_COMPLETE)
                self.finished_ingress.append(ing.ingress_id)
            end_busy_room_call(sc, room, dispatch, sip, user_unavailable=bool(i % 2))
            # The world stays the same size: the oldest room closes, old egress and ingress are forgotten.
            while len(self.rooms) > KEEP_ROOMS:
                sc.remove_room(self.rooms.pop(0))
            while len(self.finished_egress) > KEEP_EGRESS:
                del sc.egress[self.finished_egress.pop(0)]
            while len(self.finished_ingress) > KEEP_EGRESS:
                sc.remove_ingress(self.finished_ingress.pop(0))

        await self._every(0.5, step)

    async def agents(self) -> None:
        async def step() -> None:
            self.fleet.simulate(calls=2)

        await self._every(1.0, step)

    async def faults(self) -> None:
        from livekit_exporter.simulator import Fault
        from livekit_exporter.simulator.scenario import SERVICES
        from livekit_exporter.simulator.webhooks import request_headers, sign

        services = itertools.cycle(SERVICES)
        kinds = itertools.cycle([Fault("error", "unavailable"), Fault("hang"), Fault("unauthorized"), Fault("reset")])

        async def step() -> None:
            if self.fault is not None:
                self.scenario.set_fault(self.fault, None)
                self.fault = None
            elif self.faults_switched:  # every other switch: a fault; in between, all healthy
                self.fault = next(services)
                self.scenario.set_fault(self.fault, next(kinds))
            self.faults_switched += 1
            body = b'{"event": "room_started", "id": "EV_forged%d", "room": {}}' % self.faults_switched
            forged = sign(body, API_KEY, "not-the-secret-" + "x" * 32)
            async with self.http.post(f"{self.url}/webhook", data=body, headers=request_headers(forged)) as r:
                assert r.status == 401, r.status
            self.forged += 1
            async with self.http.post(f"{self.url}/v1/events", data=b'{"events": [{"type": "nope"}]}',
                                      headers={"Authorization": f"Bearer {EVENTS_TOKEN}",
                                               "Content-Type": "application/json"}) as r:
                assert r.status == 400, r.status
            self.invalid_batches += 1

        await self._every(self.opts.fault_every, step)

    async def scraper(self) -> None:
        import aiohttp

        async def step() -> None:
            self.report.scrapes += 1
            try:
                async with self.http.get(f"{self.url}/metrics", timeout=aiohttp.ClientTimeout(total=30)) as r:
                    await r.read()
                    if r.status != 200:
                        self.report.scrape_failures.append(f"{time.monotonic():.0f}: HTTP {r.status}")
            except (aiohttp.ClientError, TimeoutError) as e:
                self.report.scrape_failures.append(f"{time.monotonic():.0f}: {type(e).__name__} {e}")

        await self._every(self.opts.scrape_every, step)

    def heal(self) -> None:
        if self.fault is not None:
            self.scenario.set_fault(self.fault, None)
            self.fault = None


async def sampler(pid: int, t0: float, every: float, report: Report, stop: asyncio.Event) -> None:
    while True:
        rss, fds = proc_stats(pid)
        report.samples.append(Sample(round(time.monotonic() - t0, 1), round(rss, 2), fds))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return


# -- the truth ---------------------------------------------------------------------------------------


def compare(got: dict, sender: Any, fleet: Any, load: Load, report: Report) -> None:
    """Every counter (and gauge) the truth knows, against the exporter's last scrape."""

    def check(what: str, key: tuple[str, frozenset], expected: float) -> None:
        report.checked += 1
        actual = got.get(key)
        if actual is None or not math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9):
            report.mismatches.append(f"{what}: {key[0]}{dict(key[1])} is {actual}, sent {expected}")

    def k(name: str, **labels: str) -> tuple[str, frozenset]:
        return name, frozenset(labels.items())

    def total(name: str) -> float:
        return sum(v for (n, _), v in got.items() if n == name)

    for key, expected in sender.truth().items():
        check("webhooks", key, expected)
    check("webhooks", k("livekit_webhook_duplicates_total"), sender.stats["lost_answers"] + sender.stats["replays"])
    report.checked += 2
    if total("livekit_webhook_rejected_total") != load.forged:
        report.mismatches.append(f"livekit_webhook_rejected_total is {total('livekit_webhook_rejected_total')}, "
                                 f"forged webhooks sent {load.forged}")
    rejected = total("livekit_exporter_event_requests_rejected_total")
    if rejected != load.invalid_batches:
        report.mismatches.append(f"livekit_exporter_event_requests_rejected_total is {rejected}, "
                                 f"invalid batches sent {load.invalid_batches}")

    t = fleet.truth

    def check_fleet(*fields: str) -> None:
        for truth_field, name, labels, sent in fleet_series(t, *fields):
            if sent or truth_field not in ("interruptions", "llm_tokens", "tts_characters"):  # their zeros are not checked
                check("events", k(name, **labels), sent)

    check_fleet("calls_started", "calls_answered", "calls_ended", "active", "queued", "campaign_running", "turns",
                "interruptions")
    for agent, latencies in t.turn_latency.items():
        check("events", k("voice_agent_turn_latency_seconds_count", agent=agent), len(latencies))
        check("events", k("voice_agent_turn_latency_seconds_sum", agent=agent), math.fsum(latencies))
    for (agent, provider, model), ttfts in t.llm_ttft.items():
        labels = {"agent": agent, "provider": provider, "model": model}
        check("events", k("voice_agent_llm_time_to_first_token_seconds_count", **labels), len(ttfts))
        check("events", k("voice_agent_llm_time_to_first_token_seconds_sum", **labels), math.fsum(ttfts))
    check_fleet("llm_tokens", "tts_characters", "stt_audio_seconds", "tool_calls", "errors", "events")
    overflow = total("livekit_exporter_label_overflow_total")
    if overflow:
        report.mismatches.append(f"livekit_exporter_label_overflow_total is {overflow}: the guard folded labels")


# -- the run -----------------------------------------------------------------------------------------


async def soak(opts: Options) -> Report:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    from livekit_exporter.client import EventsClient
    from livekit_exporter.simulator import Delivery, Scenario, Simulator, WebhookSender
    from livekit_exporter.simulator.voice_agents import VoiceAgentFleet

    report = Report(options=asdict(opts))
    scenario = Scenario(api_key=API_KEY, api_secret=API_SECRET)
    async with Simulator(scenario) as sim:
        tmp = Path(tempfile.mkdtemp(prefix="soak-"))
        (tmp / "config.yaml").write_text(config_text(sim.url))
        proc, port = await asyncio.to_thread(start_exporter, tmp / "config.yaml")
        url = f"http://127.0.0.1:{port}"
        try:
            # LiveKit's delivery with shorter waits; a few answers lost and requests replayed (deduplicated).
            delivery = Delivery(retry_wait_min=0.2, retry_wait_max=2.0, max_age=120.0, lost_answer_rate=0.01,
                                replay_rate=0.01, reorder_window=4, seed=opts.seed)
            async with aiohttp.ClientSession() as http, \
                    WebhookSender(scenario, f"{url}/webhook", delivery=delivery) as sender, \
                    EventsClient(f"{url}/v1/events", EVENTS_TOKEN, flush_interval=0.2) as events:
                fleet = VoiceAgentFleet(events, seed=opts.seed)
                load = Load(scenario, url, http, sender, fleet, opts, report)
                t0 = time.monotonic()
                samples = asyncio.create_task(sampler(proc.pid, t0, opts.sample_every, report, load.stop))
                tasks = [asyncio.create_task(c) for c in (load.world(), load.agents(), load.faults(), load.scraper())]
                await asyncio.wait(tasks, timeout=opts.minutes * 60, return_when=asyncio.FIRST_EXCEPTION)
                load.stop.set()
                await asyncio.gather(*tasks)  # raises what a task raised
                await samples
                load.heal()
                await sender.flush()
                await events.flush(timeout=60)
                async with http.get(f"{url}/metrics") as r:
                    text = await r.text()
                got = {(s.name, frozenset(s.labels.items())): s.value
                       for fam in text_string_to_metric_families(text) for s in fam.samples}
                compare(got, sender, fleet, load, report)
                report.sent = {
                    "webhooks generated": len(sender.events),
                    "webhooks accepted": len(sender.accepted),
                    **{f"webhook {k}": v for k, v in sorted(sender.stats.items())},
                    "events sent": events.stats.sent,
                    "events dropped": events.stats.dropped_failed + events.stats.dropped_queue_full
                    + events.stats.dropped_rejected + events.stats.dropped_invalid,
                    "event batches retried": events.stats.retries,
                    "forged webhooks": load.forged,
                    "invalid batches": load.invalid_batches,
                    "fault switches": load.faults_switched,
                    "scrapes": report.scrapes,
                }
                if events.stats.sent != sum(fleet.truth.events.values()):
                    report.mismatches.append(f"the client sent {events.stats.sent} events, the fleet emitted "
                                             f"{sum(fleet.truth.events.values())}")
        finally:
            stop_process(proc)
    report.figures = figures(report.samples, opts.minutes * 60)
    return report


def figures(samples: list[Sample], duration: float) -> dict[str, float]:
    if not samples:
        return {}
    after_ttl = [s for s in samples if s.t >= DEDUP_TTL + 30]
    window = after_ttl if len(after_ttl) >= 3 and duration >= DEDUP_TTL + 60 else samples[len(samples) // 2:]
    tail = samples[-max(1, len(samples) // 10):]
    out = {
        "start_rss_mb": samples[0].rss_mb,
        "plateau_rss_mb": statistics.median(s.rss_mb for s in window),
        "end_rss_mb": statistics.median(s.rss_mb for s in tail),
        "max_rss_mb": max(s.rss_mb for s in samples),
        "start_fds": samples[0].fds,
        "plateau_fds": statistics.median(s.fds for s in window),
        "end_fds": statistics.median(s.fds for s in tail),
        "max_fds": max(s.fds for s in samples),
        "plateau_from_s": window[0].t,
        "slope_mb_per_min": 0.0,
    }
    if len(window) >= 2 and window[-1].t > window[0].t:
        slope, _ = statistics.linear_regression([s.t for s in window], [s.rss_mb for s in window])
        out["slope_mb_per_min"] = round(slope * 60, 3)
    return out


def markdown(report: Report, rows: int = 40) -> str:
    lines = ["| t (s) | RSS (MB) | fds |", "|---|---|---|"]
    step = max(1, math.ceil(len(report.samples) / rows))
    shown = report.samples[::step]
    if report.samples and shown[-1] is not report.samples[-1]:
        shown.append(report.samples[-1])
    lines += [f"| {s.t:.0f} | {s.rss_mb:.1f} | {s.fds} |" for s in shown]
    f = report.figures
    lines += ["", "| | start | plateau | end | max |", "|---|---|---|---|---|",
              f"| RSS (MB) | {f['start_rss_mb']:.1f} | {f['plateau_rss_mb']:.1f} | {f['end_rss_mb']:.1f} | "
              f"{f['max_rss_mb']:.1f} |",
              f"| open fds | {f['start_fds']} | {f['plateau_fds']:g} | {f['end_fds']:g} | {f['max_fds']} |",
              "", f"Plateau window from t = {f['plateau_from_s']:.0f} s; RSS slope over it "
              f"{f['slope_mb_per_min']:+.3f} MB/min.", ""]
    lines.append("| sent | |\n|---|---|")
    lines += [f"| {k} | {v:,} |" for k, v in report.sent.items()]
    lines.append("")
    if report.ok:
        lines.append(f"Equality check: every one of {report.checked:,} samples equals what was sent; "
                     f"{report.scrapes:,} scrapes, none failed.")
    else:
        lines.append(f"Equality check FAILED ({report.checked:,} samples compared):")
        lines += [f"- {m}" for m in report.mismatches[:50]]
        lines += [f"- scrape failed: {m}" for m in report.scrape_failures[:20]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS/fd samples (default 5)")
    p.add_argument("--fault-every", type=float, default=20.0, help="seconds between fault switches (default 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = p.parse_args()
    opts = Options(minutes=args.minutes, sample_every=args.sample_every, fault_every=args.fault_every, seed=args.seed)
    print(f"soak: {opts.minutes:g} min, RSS/fds every {opts.sample_every:g} s, a fault switch every "
          f"{opts.fault_every:g} s; webhooks.dedup_ttl {DEDUP_TTL:g} s, events.idempotency_ttl "
          f"{IDEMPOTENCY_TTL:g} s", flush=True)
    report = asyncio.run(soak(opts))
    print(markdown(report))
    data = {**asdict(report), "ok": report.ok}
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    else:
        print("\n```json\n" + json.dumps({k: v for k, v in data.items() if k != "samples"}, indent=2) + "\n```")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
