"""The push client's cost on the agent's event loop, with the exporter up and down.

    /work/main/.venv/bin/python bench/bench_client.py [--rounds 3] [--events 50000]

Loopback only. An "agent" coroutine emits the simulated voice agents' events (turns, usage,
tool calls, call lifecycle) in bursts of 100, yielding to the loop between bursts, while a 5 ms
ticker measures how late the loop wakes up. Three runs, each `--rounds` times, medians printed:

- baseline: the same loop appending the events to a list (what any instrumentation costs at least);
- exporter up: EventsClient sending to a real exporter (its own process) until all is delivered;
- exporter down: EventsClient pointed at a closed port (connection refused, retries, drops).

Reported per event: emit() itself (median and p99 of single calls), and the loop's whole CPU time
(process time of this process: emit plus the client's background encoding, HTTP and retries) minus
the baseline's. Takes about 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))
sys.path.insert(0, str(Path(__file__).parent))

from bench_events import TOKEN, start  # noqa: E402
from common import ListSink  # noqa: E402


def workload(n: int) -> list:
    from livekit_exporter.simulator.voice_agents import VoiceAgentFleet

    sink = ListSink()
    fleet = VoiceAgentFleet(sink, seed=9)  # type: ignore[arg-type]
    while len(sink.events) < n:
        fleet.simulate(calls=50)
    return sink.events[:n]


async def run(emitter, events: list, settle) -> dict[str, float]:
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    emit_ns: list[int] = []
    cpu0 = time.process_time()
    perf = time.perf_counter_ns
    emit = emitter.emit
    for start_ in range(0, len(events), 100):
        for e in events[start_:start_ + 100]:
            t = perf()
            emit(e)
            emit_ns.append(perf() - t)
        await asyncio.sleep(0)  # the agent's other work goes on
    await settle()
    cpu = time.process_time() - cpu0
    tick.cancel()
    emit_ns.sort()
    lags.sort()
    return {
        "cpu_us_per_event": cpu / len(events) * 1e6,
        "emit_p50_us": emit_ns[len(emit_ns) // 2] / 1000,
        "emit_p99_us": emit_ns[int(len(emit_ns) * 0.99)] / 1000,
        "lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000 if lags else 0.0,
        "lag_max_ms": lags[-1] * 1000 if lags else 0.0,
    }


async def once(kind: str, events: list, port: int) -> tuple[dict[str, float], str]:
    from livekit_exporter.client import EventsClient

    if kind == "baseline":
        sink = ListSink()

        async def settle() -> None:
            pass

        return await run(sink, events, settle), f"{len(sink.events)} kept"
    if kind == "up":
        client = EventsClient(f"http://127.0.0.1:{port}", TOKEN, max_queue=len(events))

        async def settle() -> None:
            await client.flush(60)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        client = EventsClient(f"http://127.0.0.1:{dead}", TOKEN, backoff=0.05, max_backoff=0.2)

        async def settle() -> None:
            await asyncio.sleep(1.0)  # a second of retrying against the closed port

    result = await run(client, events, settle)
    await client.aclose(timeout=0.5)
    s = client.stats
    return result, (f"sent {s.sent}, dropped queue-full {s.dropped_queue_full}, failed {s.dropped_failed}, "
                    f"retries {s.retries}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--events", type=int, default=50_000)
    args = p.parse_args()
    events = workload(args.events)
    proc, port = start("exporter")
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "up": [], "down": []}
    try:
        for r in range(args.rounds):
            for kind in results:
                res, note = asyncio.run(once(kind, events, port))
                results[kind].append(res)
                print(f"  round {r + 1} {kind:8s} cpu {res['cpu_us_per_event']:5.2f} µs/event  "
                      f"emit p50 {res['emit_p50_us']:.2f} µs p99 {res['emit_p99_us']:.2f} µs  "
                      f"loop lag p99 {res['lag_p99_ms']:.2f} ms max {res['lag_max_ms']:.1f} ms  ({note})", flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)

    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    base = med["baseline"]["cpu_us_per_event"]
    print(f"\n{args.events:,} events in bursts of 100; medians of {args.rounds} rounds\n")
    print("| run | loop CPU per event | over baseline | emit() p50 | emit() p99 | loop lag p99 | loop lag max |")
    print("|---|---|---|---|---|---|---|")
    for kind, label in (("baseline", "baseline: append to a list"), ("up", "EventsClient, exporter up"),
                        ("down", "EventsClient, exporter down")):
        m = med[kind]
        over = "" if kind == "baseline" else f"+{m['cpu_us_per_event'] - base:.2f} µs ({m['cpu_us_per_event'] / base:.1f} x)"
        print(f"| {label} | {m['cpu_us_per_event']:.2f} µs | {over} | {m['emit_p50_us']:.2f} µs | "
              f"{m['emit_p99_us']:.2f} µs | {m['lag_p99_ms']:.2f} ms | {m['lag_max_ms']:.1f} ms |")


if __name__ == "__main__":
    main()
