"""Scrape time, event-loop stall and memory with agents x providers x models label combinations,
with the series budget (labels.max_series_per_metric, labels.max_series) and without it.

    /work/main/.venv/bin/python bench/bench_series.py [--combos 50] [--rounds 3] [--events llm|all]
                                                      [--before-src DIR] [--kinds before,unbounded,default]
                                                      [--json PATH]

Loopback only. Each exporter runs in its own process:
  unbounded  both budgets at 10^9: every combination keeps its own series (rendering off the loop)
  default    the budgets' defaults (10,000 series per metric, 100,000 in total)
  before     with --before-src (the exporter/ directory of a checkout of the commit before the series
             budget, e.g. `git worktree add /tmp/before <commit>`): that code, rendering on the loop
Into each, the script pushes one `llm` event per (agent, provider, model), `--combos` of each
(50 x 50 x 50 = 125,000 events, 1000 a request): input tokens and a request duration, so each
combination is one voice_agent_llm_tokens_total series, one voice_agent_llm_request_duration_seconds
child (18 series) and an unpriced-usage series per (provider, model), the 2.5 million series of
issue 11. With `--events all`, each combination also sends an stt, a tts and a turn event with its
three stage latencies (three more histograms by agent, provider and model, two more counters): at
50 the default budgets fill up (100,000 series in all). Then `--rounds` scrapes (Accept-Encoding gzip, as Prometheus sends, and a 120 s scrape
timeout so that even the unbounded one is rendered to the end), each while /-/healthy is asked every
50 ms: its slowest answer is how long the event loop stalled. Printed: series and bytes of /metrics,
the medians of scrape time and of the slowest /-/healthy, and the RSS after the push and after the
scrapes, then the ratios to the unbounded (or before) run. Takes about a minute per unbounded
exporter at the default 50.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_EXPORTER_SRC", str(ROOT / "exporter")))

from common import Result, bench_options, parse_args, rss_mb, start_server  # noqa: E402

TOKEN = "bench-series-token-0123456789abcdef"
HUGE = 10**9


def serve(kind: str, port: int) -> None:
    import logging

    from aiohttp import web

    logging.disable(logging.WARNING)  # no LiveKit behind it: its state collector would complain
    from livekit_exporter.config import Config, EventsConfig, LabelsConfig, LiveKitConfig, Secret
    from livekit_exporter.server import build_app

    labels = {
        "unbounded": LabelsConfig(max_values=HUGE, max_series_per_metric=HUGE, max_series=HUGE),
        "default": LabelsConfig(max_values=HUGE),
        "before": LabelsConfig(max_values=HUGE),  # that code has no series budget
    }[kind]
    config = Config(
        livekit=LiveKitConfig(url="http://127.0.0.1:9", api_key="k", api_secret=Secret("s" * 32)),
        labels=labels,
        events=EventsConfig(tokens=(Secret(TOKEN),), max_events=1000, max_body_bytes=1 << 22),
        source="<bench>",
    )
    web.run_app(build_app(config), host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


def events_of(agent: str, provider: str, model: str, kinds: str) -> list[dict]:
    names = {"agent": agent, "provider": provider, "model": model}
    out = [{"type": "llm", **names, "input_tokens": 100, "duration_seconds": 0.4}]
    if kinds == "all":
        out += [
            {"type": "stt", **names, "audio_seconds": 3},
            {"type": "tts", **names, "characters": 80},
            {"type": "turn", "agent": agent, "e2e_latency_seconds": 0.9, "transcription_delay_seconds": 0.2,
             "llm_ttft_seconds": 0.3, "tts_ttfb_seconds": 0.15, "stt_provider": provider, "stt_model": model,
             "llm_provider": provider, "llm_model": model, "tts_provider": provider, "tts_model": model},
        ]
    return out


async def push(port: int, combos: int, kinds: str) -> float:
    import aiohttp

    names = range(combos)
    events = [
        event
        for a in names for p in names for m in names
        for event in events_of(f"agent-{a}", f"provider-{p}", f"model-{m}", kinds)
    ]
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        for i in range(0, len(events), 1000):
            async with session.post(f"http://127.0.0.1:{port}/v1/events", json={"events": events[i : i + 1000]},
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                if resp.status != 200:
                    raise SystemExit(f"push: {resp.status} {await resp.text()}")
    return time.perf_counter() - started


async def scrape_round(port: int) -> dict[str, float]:
    """One scrape, /-/healthy asked every 50 ms meanwhile: scrape seconds, slowest healthy, series, bytes."""
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        done = asyncio.Event()
        waits: list[float] = []

        async def ping() -> None:
            while not done.is_set():
                t = time.perf_counter()
                async with session.get(f"{base}/-/healthy") as resp:
                    await resp.read()
                waits.append(time.perf_counter() - t)
                await asyncio.sleep(0.05)

        pinger = asyncio.ensure_future(ping())
        await asyncio.sleep(0.1)
        t = time.perf_counter()
        async with session.get(f"{base}/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "120",
                                                         "Accept-Encoding": "gzip"}, auto_decompress=False) as resp:
            raw = await resp.read()
            status = resp.status
        seconds = time.perf_counter() - t
        done.set()
        await pinger
    if status != 200:
        raise SystemExit(f"scrape: {status} {raw[:200]!r}")
    text = gzip.decompress(raw)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return {"scrape_s": seconds, "healthy_max_s": max(waits), "series": series, "bytes": len(text),
            "gzip_bytes": len(raw)}


def run(kind: str, combos: int, rounds: int, kinds: str, src: str | None) -> dict[str, float]:
    env = dict(os.environ, BENCH_EXPORTER_SRC=src) if src else None
    proc, port = start_server(__file__, kind, env=env)
    try:
        push_s = asyncio.run(push(port, combos, kinds))
        after_push = rss_mb(proc.pid)
        results = []
        for r in range(rounds):
            res = asyncio.run(scrape_round(port))
            results.append(res)
            print(f"  {kind:9s} round {r + 1}: scrape {res['scrape_s']:6.2f} s, slowest /-/healthy "
                  f"{res['healthy_max_s'] * 1000:8.1f} ms, {res['series']:,.0f} series", flush=True)
        out = {m: statistics.median(r[m] for r in results) for m in results[0]}
        out.update(push_s=push_s, rss_push_mb=after_push, rss_scrape_mb=rss_mb(proc.pid))
        out["rounds"] = results  # type: ignore[assignment]
        return out
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def main() -> None:
    p = bench_options(__doc__.splitlines()[0], combos=(50, "agents, providers and models, each"), rounds=3)
    p.add_argument("--events", choices=("llm", "all"), default="llm", help="what each combination sends")
    p.add_argument("--before-src", help="the exporter/ directory of the code to compare with")
    p.add_argument("--kinds", help="the exporters to run, comma-separated (default: before if --before-src, "
                   "unbounded, default)")
    args = parse_args(p, serve)
    kinds = args.kinds.split(",") if args.kinds else (["before"] if args.before_src else []) + ["unbounded", "default"]
    if "before" in kinds and not args.before_src:
        raise SystemExit("the before exporter needs --before-src")
    print(f"{args.combos ** 3:,} combinations ({args.events} events), {args.rounds} scrapes each", flush=True)
    res = {kind: run(kind, args.combos, args.rounds, args.events, args.before_src if kind == "before" else None)
           for kind in kinds}
    print("\n| exporter | series | /metrics MB (gzip MB) | push s | scrape s (median) | slowest /-/healthy "
          "(median) | RSS after push MB | RSS after scrapes MB |\n|---|---|---|---|---|---|---|---|")
    for kind, r in res.items():
        print(f"| {kind} | {r['series']:,.0f} | {r['bytes'] / 1e6:.1f} ({r['gzip_bytes'] / 1e6:.1f}) | "
              f"{r['push_s']:.1f} | {r['scrape_s']:.3f} | {r['healthy_max_s'] * 1000:.0f} ms | "
              f"{r['rss_push_mb']:.0f} | {r['rss_scrape_mb']:.0f} |")
    base = "before" if "before" in res else "unbounded"
    out = Result("series", {k: v for k, v in vars(args).items() if k != "serve"})
    for kind, r in res.items():
        out.measure(f"{kind}, scrape", [x["scrape_s"] * 1000 for x in r["rounds"]], "ms")
        out.measure(f"{kind}, slowest /-/healthy", [x["healthy_max_s"] * 1000 for x in r["rounds"]], "ms")
        out.fact(f"{kind}: series", int(r["series"]))
        out.fact(f"{kind}: /metrics bytes", int(r["bytes"]), "bytes")
        out.fact(f"{kind}: RSS after the scrapes", round(r["rss_scrape_mb"], 1), "MB")
    if "default" not in res or base not in res:
        out.write(args.json)
        return
    d, b = res["default"], res[base]
    print(f"\ndefault / {base}: series {d['series'] / b['series']:.3f} x, scrape {d['scrape_s'] / b['scrape_s']:.3f} x, "
          f"slowest /-/healthy {d['healthy_max_s'] / b['healthy_max_s']:.3f} x, "
          f"RSS {d['rss_scrape_mb'] / b['rss_scrape_mb']:.3f} x")
    out.ratio(f"budgeted scrape / {base}", "default, scrape", f"{base}, scrape",
              f"scrape time with the series budget's defaults over the {base} exporter, same combinations")
    out.ratio(f"budgeted stall / {base}", "default, slowest /-/healthy", f"{base}, slowest /-/healthy",
              "the slowest /-/healthy during a scrape (event-loop stall), budgeted over " + base)
    out.ratio(f"budgeted series / {base}", "default: series", f"{base}: series",
              "series kept with the budget over series without it", value=d["series"] / b["series"])
    out.ratio(f"budgeted RSS / {base}", "default: RSS after the scrapes", f"{base}: RSS after the scrapes", "RSS after the scrapes, budgeted over " + base,
              value=d["rss_scrape_mb"] / b["rss_scrape_mb"])
    out.write(args.json)


if __name__ == "__main__":
    main()
