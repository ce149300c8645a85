"""Voice-agent events per second through POST /v1/events (batches of 100) on one exporter process,
next to a bare aiohttp endpoint that only parses the same JSON, measured in the same run.

    /work/main/.venv/bin/python bench/bench_events.py [--rounds 3] [--duration 5] [--connections 16] [--json PATH]

Loopback only. The batch is 100 events the simulated voice agents send (turns with their stage
latencies, STT/LLM/TTS usage, tool calls, errors, call lifecycle), about 25 KB of JSON. wrk (Debian
package `wrk`) POSTs it with a Lua script, alternating the bare endpoint (reads the body and
orjson-parses it, nothing else) and the exporter (auth, decode + validate with the msgspec model,
apply to the voice_agent_* metrics, answer), each in its own process, for `--rounds` rounds; the
medians and the ratio are printed. The script checks that the exporter applied every event it
answered for. Takes about 2 x rounds x duration seconds plus a few seconds of setup.

With `--pushgateway`, a third server in the same rounds: Debian's prometheus-pushgateway
(/usr/bin/prometheus-pushgateway, persistence off) holding `--pushgateway-series` series (10,000:
the same families pushed by other agent instances), to which wrk pushes (POST, text format) what an
agent would push instead of sending the batch: its registry after those 100 events (the voice_agent_*
series the exporter's pipeline makes of them). Its events/s is 100 x pushes a second.
"""

from __future__ import annotations

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

from common import WRK_RESULT_LUA, ListSink, Result, bench_options, parse_args, require_wrk, start_server, wrk_result  # noqa: E402

TOKEN = "bench-events-token-0123456789abcdef"


def post_lua(body: Path, headers: dict[str, str]) -> str:
    """A wrk script that POSTs the bytes of the file `body` with these headers, and prints its RESULT line."""
    lines = ['wrk.method = "POST"', *(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())]
    lines += [f'local f = io.open("{body}", "rb")', 'wrk.body = f:read("*a")', "f:close()"]
    return "\n".join(lines) + "\n" + WRK_RESULT_LUA


PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"


def pushed_text(body: bytes) -> bytes:
    """What an agent would push to a Pushgateway for the batch: the voice_agent_* series it makes."""
    from prometheus_client import generate_latest

    from livekit_exporter.config import EventsConfig
    from livekit_exporter.events.decode import decode_json
    from livekit_exporter.events.pipeline import Pipeline
    from livekit_exporter.telemetry import Telemetry

    telemetry = Telemetry()
    pipeline = Pipeline(EventsConfig(), telemetry)
    pipeline.apply(decode_json(body, 1000)[0])
    text = generate_latest(telemetry.registry).decode()
    keep, family = [], False
    for line in text.splitlines():
        if line.startswith("# HELP") or line.startswith("# TYPE"):
            family = line.split()[2].startswith("voice_agent_")
        if family:
            keep.append(line)
    return ("\n".join(keep) + "\n").encode()


def start_pushgateway(text: bytes, series: int) -> tuple[subprocess.Popen, int, int]:
    """The Pushgateway, persistence off, holding about `series` series pushed by other instances."""
    import urllib.request

    from common import free_port, wait_listening

    port = free_port()
    proc = subprocess.Popen([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    per_push = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    groups = -(-series // per_push)
    for i in range(groups):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics/job/voice_agent/instance/stored-{i}",
                                     data=text, method="PUT", headers={"Content-Type": "text/plain; version=0.0.4"})
        urllib.request.urlopen(req, timeout=30).close()
    return proc, port, groups * per_push


def batch_of_100() -> bytes:
    import msgspec

    from livekit_exporter.events.model import Batch, CallEnded, CallStarted
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


def wrk(port: int, script: str, duration: int, connections: int, path: str = "/v1/events") -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", script, f"http://127.0.0.1:{port}{path}"],
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


def breakdown(body: bytes) -> dict[str, float]:
    import json

    import orjson

    from livekit_exporter.config import EventsConfig
    from livekit_exporter.events.decode import decode_json
    from livekit_exporter.events.pipeline import Pipeline
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
    steps = {
        "json.loads": per_call(lambda: json.loads(body)),
        "orjson.loads (the bare endpoint's work)": per_call(lambda: orjson.loads(body)),
        "exporter decode + validate (msgspec model)": per_call(lambda: decode_json(body, 1000)),
        "exporter apply to the voice_agent_* metrics": per_call(lambda: pipeline.apply(events)),
    }
    print("\nPer batch of 100, in process (median of 5 x 2000):")
    for name, us in steps.items():
        print(f"  {name:43s} {us:7.1f} µs")
    return steps


def main() -> None:
    p = bench_options(
        __doc__.splitlines()[0], rounds=3, duration=5, connections=16,
        pushgateway=(False, "also push the same observations to a Pushgateway"),
        pushgateway_series=(10_000, "series the Pushgateway holds"),
    )
    args = parse_args(p, serve)
    require_wrk()

    body = batch_of_100()
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    (tmp / "batch.json").write_bytes(body)
    script = tmp / "post.lua"
    script.write_text(post_lua(tmp / "batch.json", {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}))
    print(f"batch: 100 events, {len(body):,} bytes; wrk -t1 -c{args.connections} -d{args.duration}s, "
          f"{args.rounds} rounds, alternating", flush=True)

    servers = {kind: start(kind) for kind in ("bare", "exporter")}
    results: dict[str, list[dict[str, float]]] = {"bare": [], "exporter": []}
    scripts = {"bare": script, "exporter": script}
    paths = {"bare": "/v1/events", "exporter": "/v1/events"}
    skipped: dict[str, str] = {}
    stored = 0
    if args.pushgateway and not os.path.exists(PUSHGATEWAY):
        skipped["pushgateway"] = f"{PUSHGATEWAY} is not installed (Debian package prometheus-pushgateway)"
        print(f"no Pushgateway comparison: {skipped['pushgateway']}")
    elif args.pushgateway:
        text = pushed_text(body)
        (tmp / "push.txt").write_bytes(text)
        (tmp / "push.lua").write_text(post_lua(tmp / "push.txt", {"Content-Type": "text/plain; version=0.0.4"}))
        gw, gw_port, stored = start_pushgateway(text, args.pushgateway_series)
        servers["pushgateway"] = (gw, gw_port)
        results["pushgateway"], scripts["pushgateway"] = [], tmp / "push.lua"
        paths["pushgateway"] = "/metrics/job/voice_agent/instance/bench"
        print(f"Pushgateway (persistence off) holding {stored:,} series; each push: {len(text):,} bytes", flush=True)
    try:
        for r in range(args.rounds):
            for kind, (_, port) in servers.items():
                res = wrk(port, str(scripts[kind]), args.duration, args.connections, paths[kind])
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
    if "pushgateway" in results:
        gm = statistics.median(r["requests"] / r["seconds"] for r in results["pushgateway"])
        gp = statistics.median(r["p99_us"] for r in results["pushgateway"]) / 1000
        print(f"\nPushgateway, {stored:,} series stored: {gm:,.0f} pushes/s = {100 * gm:,.0f} events/s, p99 {gp:.2f} ms; "
              f"exporter / Pushgateway {100 * statistics.median(r['requests'] / r['seconds'] for r in results['exporter']) / (100 * gm):.1f} x")

    med = {k: statistics.median(r["requests"] / r["seconds"] for r in v) for k, v in results.items()}
    p99 = {k: statistics.median(r["p99_us"] for r in v) / 1000 for k, v in results.items()}
    print("\n| server | batches/s (median) | events/s | p99 (median) |\n|---|---|---|---|")
    print(f"| bare aiohttp, orjson parse only | {med['bare']:,.0f} | {100 * med['bare']:,.0f} | {p99['bare']:.2f} ms |")
    print(f"| exporter /v1/events | {med['exporter']:,.0f} | {100 * med['exporter']:,.0f} | {p99['exporter']:.2f} ms |")
    print(f"| ratio exporter / bare | {med['exporter'] / med['bare']:.2f} x | | {p99['exporter'] / p99['bare']:.1f} x |")
    print(f"\nThe exporter applied every event it answered for ({applied:,.0f}).")
    steps = breakdown(body)

    res = Result("events", {k: v for k, v in vars(args).items() if k != "serve"})
    if skipped:
        res.data["skipped"] = skipped
    for kind, label in (("bare", "bare aiohttp, orjson parse only"), ("exporter", "exporter /v1/events")):
        res.measure(f"{label}, events/s", [100 * r["requests"] / r["seconds"] for r in results[kind]], "events/s")
        res.measure(f"{label}, p99", [r["p99_us"] / 1000 for r in results[kind]], "ms")
    res.ratio("events / parse-only endpoint", "exporter /v1/events, events/s", "bare aiohttp, orjson parse only, events/s",
              "events a second through /v1/events (batches of 100) over an endpoint that only parses the same "
              "JSON (higher is better)", target=0.25, op=">=")
    res.ratio("events p99 / parse-only p99", "exporter /v1/events, p99", "bare aiohttp, orjson parse only, p99",
              "the p99 latency of a batch under the same wrk load over the parse-only endpoint's (lower is better)")
    if "pushgateway" in results:
        label = f"Pushgateway, {stored:,} series stored"
        res.measure(f"{label}, events/s", [100 * r["requests"] / r["seconds"] for r in results["pushgateway"]],
                    "events/s")
        res.measure(f"{label}, p99", [r["p99_us"] / 1000 for r in results["pushgateway"]], "ms")
        res.ratio("events / Pushgateway", "exporter /v1/events, events/s", f"{label}, events/s",
                  "events a second through /v1/events over pushing the same observations (the voice_agent_* "
                  f"series of each batch) to Debian's Pushgateway holding {stored:,} series (higher is better)",
                  target=5.0, op=">=")
        res.fact("Pushgateway series stored", stored)
    for name, us in steps.items():
        res.fact(f"in process, a batch of 100: {name}", round(us, 1), "µs")
    res.fact("batch bytes", len(body), "bytes")
    res.write(args.json)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
