"""Scrape cost at scale: the simulator with 10,000 rooms and 100,000 participants.

Three processes on loopback: the simulator, an exporter with the default configuration and one with
per-room detail (100 rooms). This process measures, interleaved round by round so machine noise hits
all alike:
  - bare:         the same LiveKit calls made directly with livekit-api (the floor for the data)
  - exporter:     GET /metrics of the default exporter
  - bare detail:  the calls the detail exporter makes (6 lists + ListParticipants/ListDispatch x 100, 8 at a time)
  - detail:       GET /metrics of the detail exporter
and reports medians, p90, the ratio to the bare calls, and the API calls per scrape counted by the
simulator, the /metrics bytes and each exporter's RSS after the scrapes.

With `--reference`, also Debian's prometheus-node-exporter (`/usr/bin/prometheus-node-exporter`, its
default collectors) on the same machine, scraped `--reference-rounds` times alternating with the
default exporter: a /metrics users know, its median and p99 next to ours.

    .venv/bin/python bench/bench_state.py [--rooms 10000] [--per-room 10] [--rounds 15] [--reference]
                                          [--json PATH]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from livekit import api
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress
from livekit.protocol import models as proto_models
from livekit.protocol import sip as proto_sip

from common import Result, bench_options, free_port, rss_mb, wait_listening

ROOT = Path(__file__).resolve().parent.parent
KEY, SECRET = "benchkey", "bench-secret-" + "b" * 32


async def start(args: list[str], env: dict, ready: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, cwd=ROOT / "exporter",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    if ready:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert ready in line.decode(), line
    return proc


async def wait_http(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(600):
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


async def bare_default(lk: api.LiveKitAPI) -> list:
    """The six list calls of a default scrape, concurrently, reading what the exporter reads."""

    async def rooms():
        res = await lk.room.list_rooms(api.ListRoomsRequest())
        sum(r.num_participants for r in res.rooms)
        return list(res.rooms)

    async def egress():
        return len((await lk.egress.list_egress(proto_egress.ListEgressRequest(active=True))).items)

    async def ingress():
        return len((await lk.ingress.list_ingress(proto_ingress.ListIngressRequest())).items)

    async def sip():
        page = proto_models.Pagination(limit=1000)
        return await asyncio.gather(
            lk.sip.list_inbound_trunk(proto_sip.ListSIPInboundTrunkRequest(page=page)),
            lk.sip.list_outbound_trunk(proto_sip.ListSIPOutboundTrunkRequest(page=page)),
            lk.sip.list_dispatch_rule(proto_sip.ListSIPDispatchRuleRequest(page=page)),
        )

    return (await asyncio.gather(rooms(), egress(), ingress(), sip()))[0]


async def bare_detail(lk: api.LiveKitAPI, max_rooms: int = 100, concurrency: int = 8) -> None:
    rooms = await bare_default(lk)
    chosen = sorted(rooms, key=lambda r: (-r.num_participants, r.name))[:max_rooms]
    sem = asyncio.Semaphore(concurrency)

    async def one(name: str):
        async with sem:
            await lk.room.list_participants(api.ListParticipantsRequest(room=name))
            await lk.agent_dispatch.list_dispatch(name)

    await asyncio.gather(*(one(r.name) for r in chosen))


async def timed(coro) -> float:
    t0 = time.perf_counter()
    await coro
    return time.perf_counter() - t0


async def scrape(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, headers={"X-Prometheus-Scrape-Timeout-Seconds": "30"}) as r:
        body = await r.read()
        assert r.status == 200
        return len(body)


async def calls(session: aiohttp.ClientSession, sim_url: str) -> int:
    async with session.get(f"{sim_url}/_simulator/stats") as r:
        return sum(c["calls"] for c in (await r.json())["api_calls"])


NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main() -> None:
    args = bench_options(
        None, rooms=10_000, per_room=10, rounds=15, reference=(False, "also scrape prometheus-node-exporter"),
        reference_rounds=100,
    ).parse_args()
    node = shutil.which("prometheus-node-exporter") or (NODE_EXPORTER if os.path.exists(NODE_EXPORTER) else None)
    node_proc = None
    ref: dict[str, list[float]] = {"exporter": [], "node": []}
    rss: dict[str, float] = {}

    sim_port, exp_port, det_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = {**os.environ, "LIVEKIT_URL": sim_url, "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET}
    procs = []
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("collect:\n  room_detail: {enabled: true, max_rooms: 100, concurrency: 8}\n")
        detail_cfg = f.name
    try:
        t0 = time.perf_counter()
        procs.append(await start(["-m", "livekit_exporter.simulator", "--port", str(sim_port), "--rooms",
                                  str(args.rooms), "--participants-per-room", str(args.per_room)], env, "ready"))
        print(f"simulator: {args.rooms} rooms x {args.per_room} participants, built in {time.perf_counter() - t0:.1f}s")
        procs.append(await start(["-m", "livekit_exporter.cli", "--web.listen-address", f"127.0.0.1:{exp_port}",
                                  "--log.level", "error"], env, ""))
        procs.append(await start(["-m", "livekit_exporter.cli", "--config.file", detail_cfg,
                                  "--web.listen-address", f"127.0.0.1:{det_port}", "--log.level", "error"], env, ""))
        exp_url, det_url = f"http://127.0.0.1:{exp_port}/metrics", f"http://127.0.0.1:{det_port}/metrics"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await wait_http(session, exp_url.replace("/metrics", "/-/ready"))
            await wait_http(session, det_url.replace("/metrics", "/-/ready"))
            lk = api.LiveKitAPI(sim_url, KEY, SECRET, session=session)
            # warm-up, then the API calls one scrape costs
            sizes = {"exporter": await scrape(session, exp_url), "detail": await scrape(session, det_url)}
            per_scrape = {}
            for name, url in (("exporter", exp_url), ("detail", det_url)):
                before = await calls(session, sim_url)
                await scrape(session, url)
                per_scrape[name] = await calls(session, sim_url) - before
            before = await calls(session, sim_url)
            await bare_default(lk)
            per_scrape["bare"] = await calls(session, sim_url) - before
            before = await calls(session, sim_url)
            await bare_detail(lk)
            per_scrape["bare detail"] = await calls(session, sim_url) - before
            t = {"bare": [], "exporter": [], "bare detail": [], "detail": []}
            for _ in range(args.rounds):
                t["bare"].append(await timed(bare_default(lk)))
                t["exporter"].append(await timed(scrape(session, exp_url)))
                t["bare detail"].append(await timed(bare_detail(lk)))
                t["detail"].append(await timed(scrape(session, det_url)))
            rss = {kind: rss_mb(procs[i].pid, missing=float("nan")) for i, kind in ((1, "exporter"), (2, "detail"))}
            if args.reference and node:
                node_port = free_port()
                node_proc = subprocess.Popen([node, f"--web.listen-address=127.0.0.1:{node_port}"],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_listening(node_port, node_proc)
                node_url = f"http://127.0.0.1:{node_port}/metrics"
                sizes["node"] = await scrape(session, node_url)
                for _ in range(args.reference_rounds):
                    ref["exporter"].append(await timed(scrape(session, exp_url)))
                    ref["node"].append(await timed(scrape(session, node_url)))
    finally:
        if node_proc is not None:
            node_proc.terminate()
            node_proc.wait(10)
        for proc in procs:
            proc.terminate()
            await proc.wait()
        os.unlink(detail_cfg)

    print(f"\n{args.rounds} rounds, interleaved; times in ms\n")
    print("| run | API calls | median | p90 | ratio to its bare calls (median) | /metrics bytes |")
    print("|---|---|---|---|---|---|")
    for name, base in (("bare", "bare"), ("exporter", "bare"), ("bare detail", "bare detail"), ("detail", "bare detail")):
        med = statistics.median(t[name])
        ratio = med / statistics.median(t[base])
        print(f"| {name} | {per_scrape[name]} | {med * 1000:.1f} | {pct(t[name], 0.9) * 1000:.1f} | "
              f"{ratio:.2f} | {sizes.get(name, '')} |")
    print(f"\nRSS after the scrapes: exporter {rss['exporter']:.0f} MB, detail exporter {rss['detail']:.0f} MB")
    if args.reference and ref["node"]:
        print(f"\n{args.reference_rounds} scrapes each, alternating; times in ms\n")
        print("| /metrics of | median | p99 | bytes |\n|---|---|---|---|")
        for name, label in (("exporter", f"livekit-exporter, {args.rooms} rooms"),
                            ("node", "prometheus-node-exporter (Debian, default collectors)")):
            print(f"| {label} | {statistics.median(ref[name]) * 1000:.1f} | {pct(ref[name], 0.99) * 1000:.1f} | "
                  f"{sizes[name]} |")
    elif args.reference:
        print(f"\nno reference: {NODE_EXPORTER} is not installed (Debian package prometheus-node-exporter)")

    res = Result(f"state-{args.rooms}", vars(args))
    ms = {k: [v * 1000 for v in vals] for k, vals in t.items()}
    for name in ("bare", "exporter", "bare detail", "detail"):
        res.measure(name, ms[name], "ms")
    big = args.rooms >= 10_000  # the target of issue 12 is at 10k and 50k rooms
    res.ratio("scrape / bare API fetch", "exporter", "bare",
              "a default scrape's time over the same LiveKit calls made directly with livekit-api (lower is better)",
              target=1.4 if big else None, op="<=")
    res.ratio("detail scrape / bare API fetch", "detail", "bare detail",
              "a scrape with per-room detail (100 rooms) over its calls made directly (lower is better)")
    for name in ("exporter", "detail", "bare", "bare detail"):
        res.fact(f"API calls per scrape, {name}", per_scrape[name])
    res.fact("/metrics bytes, exporter", sizes["exporter"], "bytes")
    res.fact("/metrics bytes, detail", sizes["detail"], "bytes")
    res.fact("RSS after the scrapes, exporter", round(rss["exporter"], 1), "MB")
    res.fact("RSS after the scrapes, detail", round(rss["detail"], 1), "MB")
    if args.reference and ref["node"]:
        res.measure("exporter (reference rounds)", [v * 1000 for v in ref["exporter"]], "ms")
        res.measure("prometheus-node-exporter", [v * 1000 for v in ref["node"]], "ms")
        res.ratio("scrape / node_exporter scrape", "exporter (reference rounds)", "prometheus-node-exporter",
                  "our /metrics over Debian's prometheus-node-exporter's on the same machine (a reference, no target)")
        res.fact("/metrics bytes, prometheus-node-exporter", sizes["node"], "bytes")
    elif args.reference:
        res.data["skipped"] = {"prometheus-node-exporter": f"{NODE_EXPORTER} is not installed "
                               "(Debian package prometheus-node-exporter)"}
    res.write(args.json)


if __name__ == "__main__":
    asyncio.run(main())
