"""Verified LiveKit webhooks per second and p99 latency on one exporter process, next to a bare
aiohttp handler that does no work, measured in the same run.

    /work/main/.venv/bin/python bench/bench_webhooks.py [--rounds 3] [--duration 5] [--connections 32]
                                                        [--requests 120000] [--json PATH]

Loopback only. The simulator's scenario churns (rooms, participants, tracks, SIP calls, egress) and
every change becomes the webhook LiveKit would send: protojson body, signed with the key pair,
each with its own event id, so every request is verified, decoded, deduplicated (new id) and
counted. wrk (Debian package `wrk`) replays those requests with a Lua script, alternating
the bare handler and the exporter for `--rounds` rounds; the medians and the ratio are printed.
Each server runs in its own process (this script with --serve), so the load generator and the
server do not share an interpreter. Takes about 2 x rounds x duration seconds plus ~10 s of setup.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))

from common import WRK_RESULT_LUA, Result, bench_options, medians, parse_args, require_wrk, start_server, wrk_result  # noqa: E402

API_KEY = "APIbench"
API_SECRET = "bench-secret-" + "b" * 32

LUA = r"""
-- Each wrk thread replays its share of pre-signed requests (line i: token TAB body), in order.
local threads = {}
local counter = 0
function setup(thread)
  thread:set("index", counter)
  table.insert(threads, thread)
  counter = counter + 1
end
function init(args)
  local nthreads = tonumber(args[2])
  local offset = tonumber(args[3])
  reqs = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == index then
      local tab = line:find("\t", 1, true)
      local headers = {["Authorization"] = line:sub(1, tab - 1),
                       ["Content-Type"] = "application/webhook+json"}
      reqs[#reqs + 1] = wrk.format("POST", wrk.path, headers, line:sub(tab + 1))
    end
    i = i + 1
  end
  -- Continue where the previous run stopped, so every run sends ids not sent before.
  n = math.floor(offset / nthreads)
end
function request()
  n = n + 1
  return reqs[(n - 1) % #reqs + 1]
end
""" + WRK_RESULT_LUA


# -- the two servers (each in its own process) ------------------------------------------------


def serve(kind: str, port: int) -> None:
    from aiohttp import web

    if kind == "bare":
        async def nothing(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/webhook", nothing)
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
        return

    from livekit_exporter.config import Config, LiveKitConfig, Secret
    from livekit_exporter.server import build_app
    from livekit_exporter.simulator import Scenario, Simulator

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        # An idle simulated LiveKit, so the exporter's startup collection has something to read.
        async with Simulator(Scenario(api_key=API_KEY, api_secret=API_SECRET)) as sim:
            cfg = Config(livekit=LiveKitConfig(url=sim.url, api_key=API_KEY, api_secret=Secret(API_SECRET)))
            runner = web.AppRunner(build_app(cfg), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await stop.wait()
            await runner.cleanup()

    asyncio.run(main())


# -- the requests -----------------------------------------------------------------------------


def make_requests(count: int, path: Path) -> None:
    """`count` distinct webhooks from a churning scenario, signed as LiveKit signs them."""
    from livekit.protocol import egress, models

    from livekit_exporter.simulator import Scenario
    from livekit_exporter.simulator.webhooks import build_event, encode, sign

    scenario = Scenario(api_key=API_KEY, api_secret=API_SECRET)
    changes: list[tuple[str, dict]] = []
    ids = iter(range(10**9))

    def keep(name: str, payload: dict) -> None:
        ev = build_event(name, payload, event_id=f"EV_bench{next(ids):010d}", created_at=int(time.time()))
        changes.append((name, ev))

    scenario.subscribe(keep)
    rng = random.Random(1)
    trunk = scenario.add_trunk("inbound")
    n_room = 0
    while len(changes) < count:
        room = f"room-{n_room}"
        n_room += 1
        scenario.add_room(room)
        for j in range(rng.randint(1, 6)):
            scenario.add_participant(room, f"user-{j}", tracks=[(models.AUDIO, models.MICROPHONE)])
        if rng.random() < 0.4:
            scenario.add_sip_call(room, trunk)
        if rng.random() < 0.3:
            eg = scenario.add_egress(room, "room_composite")
            scenario.set_egress_status(eg.egress_id, egress.EGRESS_COMPLETE, output_bytes=rng.randrange(10**6, 10**8))
        scenario.remove_room(room)
    with path.open("w") as f:
        for _, ev in changes[:count]:
            body = encode(ev)
            f.write(sign(body, API_KEY, API_SECRET) + "\t" + body.decode() + "\n")


def micro(path: Path) -> dict[str, float]:
    """In-process cost per request of each step, next to livekit-api's WebhookReceiver.receive."""
    from google.protobuf.json_format import Parse
    from livekit.api import TokenVerifier, WebhookReceiver
    from livekit.protocol.webhook import WebhookEvent

    from livekit_exporter.config import KeyPair, Secret
    from livekit_exporter.telemetry import Telemetry
    from livekit_exporter.webhooks import Verifier, WebhookMetrics, decode

    lines = [line.rstrip("\n").split("\t", 1) for line in path.open()][:2000]
    reqs = [(tok, body, body.encode()) for tok, body in lines]
    receiver = WebhookReceiver(TokenVerifier(API_KEY, API_SECRET))
    token_verifier = TokenVerifier(API_KEY, API_SECRET)
    verifier = Verifier([KeyPair(API_KEY, Secret(API_SECRET))])
    metrics = WebhookMetrics(Telemetry())
    events = [decode(raw) for _, _, raw in reqs]
    steps = {
        "livekit-api WebhookReceiver.receive": lambda: [receiver.receive(body, tok) for tok, body, _ in reqs],
        "  of which json_format.Parse": lambda: [Parse(body, WebhookEvent(), ignore_unknown_fields=True)
                                                  for _, body, _ in reqs],
        "exporter Verifier: token, then sha256": lambda: [verifier.check_body(raw, verifier.verify_token(tok))
                                                          for tok, _, raw in reqs],
        "  of which TokenVerifier.verify": lambda: [token_verifier.verify(tok) for tok, _, _ in reqs],
        "exporter decode (orjson, duplicate keys)": lambda: [decode(raw) for _, _, raw in reqs],
        "exporter metrics update": lambda: [metrics.apply(ev, time.time()) for ev in events],
    }
    return {name: min(_timed(fn) for _ in range(3)) / len(reqs) * 1e6 for name, fn in steps.items()}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- the driver -------------------------------------------------------------------------------


def run_wrk(port: int, script: Path, requests: Path, offset: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "-s", str(script),
           f"http://127.0.0.1:{port}/webhook", "--", str(requests), str(args.threads), str(offset)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60).stdout
    r = wrk_result(out)
    if r["non2xx"] or r["errors"]:
        raise SystemExit(f"wrk saw {r['non2xx']:.0f} non-2xx answers and {r['errors']:.0f} socket errors on port "
                         f"{port}:\n{out}")
    return {"rps": r["requests"] / r["seconds"], "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "requests": int(r["requests"])}


def exporter_counts(port: int) -> tuple[float, float, float]:
    """(events counted, duplicates, rejections) as the exporter reports them."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    sums = {"livekit_webhook_events_total": 0.0, "livekit_webhook_duplicates_total": 0.0,
            "livekit_webhook_rejected_total": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in sums:
                sums[s.name] += s.value
    return tuple(sums.values())  # type: ignore[return-value]


def main() -> None:
    p = bench_options(
        __doc__.split("\n\n")[0], rounds=3, duration=(5, "seconds per wrk run"), connections=32,
        threads=(1, "wrk threads (the machine has few cores)"), requests=(120_000, "distinct signed webhooks to replay"),
    )
    args = parse_args(p, serve)
    require_wrk()

    with tempfile.TemporaryDirectory() as tmp:
        script, requests = Path(tmp) / "replay.lua", Path(tmp) / "requests.tsv"
        script.write_text(LUA)
        t = time.monotonic()
        make_requests(args.requests, requests)
        size = requests.stat().st_size / args.requests
        print(f"{args.requests} distinct signed webhooks ({size:.0f} bytes a line) in {time.monotonic() - t:.1f} s")
        steps = micro(requests)
        for name, us in steps.items():
            print(f"  in process, per request: {name:38s} {us:6.1f} us")

        procs = {}
        ports = {}
        try:
            for kind in ("bare", "exporter"):
                procs[kind], ports[kind] = start_server(__file__, kind, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            results: dict[str, list[dict[str, float]]] = {"bare": [], "exporter": []}
            sent = 0
            for r in range(args.rounds):
                for kind in ("bare", "exporter"):
                    res = run_wrk(ports[kind], script, requests, sent if kind == "exporter" else 0, args)
                    results[kind].append(res)
                    if kind == "exporter":
                        sent += res["requests"]
                    print(f"round {r + 1} {kind:8s}: {res['rps']:8.0f} req/s  p50 {res['p50_ms']:6.2f} ms  "
                          f"p99 {res['p99_ms']:6.2f} ms")
            counted, duplicates, rejected = exporter_counts(ports["exporter"])
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    med = medians(results)
    print()
    print(f"median of {args.rounds} rounds, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, one server process each:")
    print(f"  bare aiohttp handler (no work): {med['bare']['rps']:8.0f} req/s  p99 {med['bare']['p99_ms']:6.2f} ms")
    print(f"  exporter, verified webhooks:    {med['exporter']['rps']:8.0f} req/s  p99 {med['exporter']['p99_ms']:6.2f} ms")
    print(f"  ratio exporter / bare:          {med['exporter']['rps'] / med['bare']['rps']:8.2f} x throughput, "
          f"{med['exporter']['p99_ms'] / med['bare']['p99_ms']:.2f} x p99")
    print(f"  exporter counted {counted:.0f} events + {duplicates:.0f} duplicates of {sent} requests "
          f"({rejected:.0f} rejected)")
    # wrk stops counting at the deadline; requests then in flight may still reach the server.
    if rejected or not sent <= counted + duplicates <= sent + args.connections * args.rounds:
        raise SystemExit("the exporter did not account for every request: the benchmark is not valid")

    res = Result("webhooks", {k: v for k, v in vars(args).items() if k != "serve"})
    for kind, label in (("bare", "bare aiohttp handler"), ("exporter", "exporter, verified webhooks")):
        res.measure(f"{label}, req/s", [r["rps"] for r in results[kind]], "req/s")
        res.measure(f"{label}, p99", [r["p99_ms"] for r in results[kind]], "ms")
    res.ratio("verified webhooks / bare handler", "exporter, verified webhooks, req/s", "bare aiohttp handler, req/s",
              "verified webhooks a second over a bare aiohttp POST handler that does no work (higher is better)",
              target=0.3, op=">=")
    res.ratio("webhooks p99 / bare p99", "exporter, verified webhooks, p99", "bare aiohttp handler, p99",
              "the p99 latency under the same wrk load over the bare handler's (lower is better)")
    for name, us in steps.items():
        res.fact(f"in process: {name.strip()}", round(us, 1), "µs a request")
    res.fact("requests counted by the exporter", int(counted + duplicates))
    res.write(args.json)


if __name__ == "__main__":
    main()
