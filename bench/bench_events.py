"""Voice-agent events per second through POST /v1/events (batches of 100) on one exporter process,
next to a bare aiohttp endpoint that only parses the same JSON, measured in the same run.

    /work/main/.venv/bin/python bench/bench_events.py [--rounds 3] [--duration 5] [--connections 16]

Loopback only. The batch is 100 events the simulated voice agents send (turns with their stage
latencies, STT/LLM/TTS usage, tool calls, errors, call lifecycle), about 25 KB of JSON. wrk (Debian
package `wrk`) POSTs it with a Lua script, alternating the bare endpoint (reads the body and
orjson-parses it, nothing else) and the exporter (auth, decode + validate with the msgspec model,
apply to the voice_agent_* metrics, answer), each in its own process, for `--rounds` rounds; the
medians and the ratio are printed. The script checks that the exporter applied every event it
answered for. Takes about 2 x rounds x duration seconds plus a few seconds of setup.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))

from common import WRK_RESULT_LUA, ListSink, parse_args, require_wrk, start_server, wrk_result  # noqa: E402

TOKEN = "bench-events-token-0123456789abcdef"

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
local f = io.open("%s", "rb")
wrk.body = f:read("*a")
f:close()
"""


def batch_of_100() -> bytes:
    import msgspec

    from livekit_exporter.events.model import Batch, CallStarted, CallEnded
    from livekit_exporter.simulator.voice_agents import VoiceAgentFleet

    sink = ListSink()
    VoiceAgentFleet(sink, seed=3).simulate(calls=30)  # type: ignore[arg-type]
    # Every request sends the same body: call ids repeat, which the active-call table tolerates
    # (a repeated start counts once), so keep the lifecycle events but mostly turns and usage.
    events = [e for e in sink.events if not isinstance(e, (CallStarted, CallEnded))][:96]
    events += [e for e in sink.events if isinstance(e, (CallStarted, CallEnded))][:4]
    assert len(events) == 100
    return msgspec.json.encode(Batch(events=events))


# -- the two servers (each in its own process) ------------------------------------------------


def serve(kind: str, port: int) -> None:
    from aiohttp import web

    if kind == "bare":
        import orjson

        async def handler(request: web.Request) -> web.Response:
            orjson.loads(await request.read())
            return web.json_response({"ok": True})

        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/v1/events", handler)
    else:
        import logging

        logging.disable(logging.WARNING)  # no LiveKit behind it: its state collector would complain
        from livekit_exporter.config import Config, EventsConfig, LiveKitConfig, Secret
        from livekit_exporter.server import build_app

        config = Config(
            livekit=LiveKitConfig(url="http://127.0.0.1:9", api_key="k", api_secret=Secret("s" * 32)),
            events=EventsConfig(tokens=(Secret(TOKEN),)),
            source="<bench>",
        )
        app = build_app(config)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


def start(kind: str) -> tuple[subprocess.Popen, int]:
    return start_server(__file__, kind)


def wrk(port: int, script: str, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", script, f"http://127.0.0.1:{port}/v1/events"],
        capture_output=True, text=True, check=True,
    ).stdout
    return wrk_result(out)


def events_applied(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("livekit_exporter_events_total{"))


# -- in process: where the time goes ------------------------------------------------------------


def breakdown(body: bytes) -> None:
    import json

    import orjson

    from livekit_exporter.events.decode import decode_json
    from livekit_exporter.events.pipeline import Pipeline
    from livekit_exporter.config import EventsConfig
    from livekit_exporter.telemetry import Telemetry

    def per_call(fn, n: int = 2000) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - t) / n)
        return statistics.median(times) * 1e6

    pipeline = Pipeline(EventsConfig(), Telemetry())
    events, _ = decode_json(body, 1000)
    print("\nPer batch of 100, in process (median of 5 x 2000):")
    print(f"  json.loads                                  {per_call(lambda: json.loads(body)):7.1f} µs")
    print(f"  orjson.loads (the bare endpoint's work)     {per_call(lambda: orjson.loads(body)):7.1f} µs")
    print(f"  exporter decode + validate (msgspec model)  {per_call(lambda: decode_json(body, 1000)):7.1f} µs")
    print(f"  exporter apply to the voice_agent_* metrics {per_call(lambda: pipeline.apply(events)):7.1f} µs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--connections", type=int, default=16)
    args = parse_args(p, serve)
    require_wrk()

    body = batch_of_100()
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    (tmp / "batch.json").write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(LUA % (TOKEN, tmp / "batch.json") + WRK_RESULT_LUA)
    print(f"batch: 100 events, {len(body):,} bytes; wrk -t1 -c{args.connections} -d{args.duration}s, "
          f"{args.rounds} rounds, alternating", flush=True)

    servers = {kind: start(kind) for kind in ("bare", "exporter")}
    results: dict[str, list[dict[str, float]]] = {"bare": [], "exporter": []}
    try:
        for r in range(args.rounds):
            for kind, (_, port) in servers.items():
                res = wrk(port, str(script), args.duration, args.connections)
                if res["non2xx"] or res["errors"]:
                    raise SystemExit(f"{kind}: {res['non2xx']:.0f} non-2xx answers, {res['errors']:.0f} errors")
                results[kind].append(res)
                print(f"  round {r + 1} {kind:8s} {res['requests'] / res['seconds']:9,.0f} req/s "
                      f"= {100 * res['requests'] / res['seconds']:11,.0f} events/s   "
                      f"p50 {res['p50_us'] / 1000:.2f} ms  p99 {res['p99_us'] / 1000:.2f} ms", flush=True)
        sent = sum(res["requests"] for res in results["exporter"]) * 100
        applied = events_applied(servers["exporter"][1])
        # wrk counts answered requests; a request cut at the end of a run may be applied unanswered.
        if not sent <= applied <= sent + 100 * args.connections * args.rounds:
            raise SystemExit(f"the exporter applied {applied:.0f} events for {sent:.0f} answered")
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in servers.values():
            proc.wait(10)

    med = {k: statistics.median(r["requests"] / r["seconds"] for r in v) for k, v in results.items()}
    p99 = {k: statistics.median(r["p99_us"] for r in v) / 1000 for k, v in results.items()}
    print("\n| server | batches/s (median) | events/s | p99 (median) |\n|---|---|---|---|")
    print(f"| bare aiohttp, orjson parse only | {med['bare']:,.0f} | {100 * med['bare']:,.0f} | {p99['bare']:.2f} ms |")
    print(f"| exporter /v1/events | {med['exporter']:,.0f} | {100 * med['exporter']:,.0f} | {p99['exporter']:.2f} ms |")
    print(f"| ratio exporter / bare | {med['exporter'] / med['bare']:.2f} x | | {p99['exporter'] / p99['bare']:.1f} x |")
    print(f"\nThe exporter applied every event it answered for ({applied:,.0f}).")
    breakdown(body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
