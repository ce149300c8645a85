"""The push client's and the livekit-agents instrumentation's cost on the agent's event loop.

    /work/main/.venv/bin/python bench/bench_client.py [--rounds 3] [--events 50000] [--turns 5000] [--json PATH]

Loopback only. Part 1, the push client: an "agent" coroutine emits the simulated voice agents'
events (turns, usage, tool calls, call lifecycle) in bursts of 100, sleeping 5 ms between bursts
(`--pace`; 20,000 events a second), while a 5 ms ticker measures how late the loop wakes up. Three runs, each `--rounds` times,
medians printed:

- baseline: the same loop appending the events to a list (what any instrumentation costs at least);
- exporter up: EventsClient (default queue size, 10,000) sending to a real exporter (its own
  process) until all is delivered;
- exporter down: EventsClient pointed at a closed port (connection refused, retries, drops).

Reported per event: emit() itself (median and p99 of single calls: it validates and encodes the
event), and the loop's whole CPU time (process time of this process: emit plus the client's
background HTTP and retries) minus the baseline's.

Part 2, the instrumentation (livekit_exporter.agents) driven by real livekit-agents events: a real
AgentSession emits, per turn, a user and an assistant ChatMessage with livekit-agents' turn
metrics (conversation_item_added), a cumulative session_usage_updated with LLM, STT and TTS usage,
and every third turn a function_tools_executed. Baseline: the same session.emit() calls with a
no-op listener on each event; then with instrument() and an EventsClient sending to the exporter.
Reported per turn: the loop's CPU time, and the p99 of one session.emit(). Takes about 40 s.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))
sys.path.insert(0, str(Path(__file__).parent))

from bench_events import TOKEN, start  # noqa: E402
from common import ListSink, Result, bench_options, free_port, medians  # noqa: E402


# Seconds between bursts of 100: 20,000 events a second, far above what an agent process sends (50
# calls at a turn every 3 s and ten events a turn: about 170 a second), and within what the default
# queue of 10,000 absorbs while batches are in flight. --pace 0 floods instead.
PACE = 0.005


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
        await asyncio.sleep(PACE)  # the agent's other work goes on
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


def session_events(turns: int) -> list:
    """Per turn, what livekit-agents 1.8.9 emits on an AgentSession: (event name, event object)."""
    from livekit.agents import llm
    from livekit.agents.metrics.usage import AgentSessionUsage, LLMModelUsage, STTModelUsage, TTSModelUsage
    from livekit.agents.voice import events as lk

    out = []
    totals = dict(inp=0, out=0, cached=0, stt=0.0, chars=0, tts=0.0)
    for i in range(turns):
        user = llm.ChatMessage(role="user", content=["where is my order?"], metrics={
            "end_of_turn_delay": 0.31, "transcription_delay": 0.12, "stopped_speaking_at": 1000.0 + i,
            "stt_metadata": {"model_provider": "Deepgram", "model_name": "nova-3"}})
        reply = llm.ChatMessage(role="assistant", content=["It ships tomorrow."], interrupted=i % 9 == 0, metrics={
            "e2e_latency": 0.9 + i % 5 / 10, "llm_node_ttft": 0.35, "tts_node_ttfb": 0.18,
            "llm_metadata": {"model_provider": "api.openai.com", "model_name": "gpt-4o-mini"},
            "tts_metadata": {"model_provider": "ElevenLabs", "model_name": "eleven_flash_v2_5"}})
        out.append(("conversation_item_added", lk.ConversationItemAddedEvent(item=user)))
        if i % 3 == 0:
            call = llm.FunctionCall(call_id=f"c{i}", name="lookup_order", arguments="{}", created_at=1000.0 + i)
            output = llm.FunctionCallOutput(call_id=f"c{i}", name="lookup_order", output="ok", is_error=False,
                                            created_at=1000.3 + i)
            out.append(("function_tools_executed", lk.FunctionToolsExecutedEvent(
                function_calls=[call], function_call_outputs=[output])))
        out.append(("conversation_item_added", lk.ConversationItemAddedEvent(item=reply)))
        totals.update(inp=totals["inp"] + 900, out=totals["out"] + 40, cached=totals["cached"] + 300,
                      stt=totals["stt"] + 3.5, chars=totals["chars"] + 120, tts=totals["tts"] + 8.0)
        out.append(("session_usage_updated", lk.SessionUsageUpdatedEvent(usage=AgentSessionUsage(model_usage=[
            LLMModelUsage(provider="api.openai.com", model="gpt-4o-mini", input_tokens=totals["inp"],
                          output_tokens=totals["out"], input_cached_tokens=totals["cached"]),
            STTModelUsage(provider="Deepgram", model="nova-3", audio_duration=totals["stt"]),
            TTSModelUsage(provider="ElevenLabs", model="eleven_flash_v2_5", characters_count=totals["chars"],
                          audio_duration=totals["tts"])]))))
    return out


async def instrumented(kind: str, turns: list, per_turn: int, port: int) -> tuple[dict[str, float], str]:
    """Part 2: session.emit() of real livekit-agents events, with no-op listeners or instrument()."""
    from livekit.agents import AgentSession

    from livekit_exporter.agents import instrument
    from livekit_exporter.client import EventsClient

    session = AgentSession()
    client = None
    if kind == "handlers baseline":
        for name in {name for name, _ in turns}:
            session.on(name, lambda ev: None)
    else:
        client = EventsClient(f"http://127.0.0.1:{port}", TOKEN)
        instrument(session, agent="bench-agent", direction="inbound", client=client)

    class Session:  # run() times emit(e) per event; here an "event" is one session event
        @staticmethod
        def emit(item) -> None:
            session.emit(item[0], item[1])

    async def settle() -> None:
        if client is not None:
            await client.flush(60)

    result = await run(Session, turns, settle)
    result = {**result, "cpu_us_per_turn": result["cpu_us_per_event"] * per_turn}
    note = ""
    if client is not None:
        await client.aclose()
        s = client.stats
        note = f"sent {s.sent}, dropped invalid {getattr(s, 'dropped_invalid', 0)}, queue-full {s.dropped_queue_full}, " \
               f"rejected {s.dropped_rejected}"
    return result, note


async def once(kind: str, events: list, port: int) -> tuple[dict[str, float], str]:
    from livekit_exporter.client import EventsClient

    if kind == "baseline":
        sink = ListSink()

        async def settle() -> None:
            pass

        return await run(sink, events, settle), f"{len(sink.events)} kept"
    if kind == "up":
        client = EventsClient(f"http://127.0.0.1:{port}", TOKEN)  # the default queue size

        async def settle() -> None:
            await client.flush(60)
    else:
        client = EventsClient(f"http://127.0.0.1:{free_port()}", TOKEN, backoff=0.05, max_backoff=0.2)

        async def settle() -> None:
            await asyncio.sleep(1.0)  # a second of retrying against the closed port

    result = await run(client, events, settle)
    await client.aclose(timeout=0.5)
    s = client.stats
    return result, (f"sent {s.sent}, dropped queue-full {s.dropped_queue_full}, failed {s.dropped_failed}, "
                    f"invalid {getattr(s, 'dropped_invalid', 0)}, retries {s.retries}")


def main() -> None:
    global PACE
    args = bench_options(
        __doc__.splitlines()[0], rounds=3, events=50_000, turns=5_000,
        pace=(0.005, "seconds between bursts of 100 (default 0.005)"),
    ).parse_args()
    PACE = args.pace
    events = workload(args.events)
    turns = session_events(args.turns)
    per_turn = len(turns) / args.turns
    proc, port = start("exporter")
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "up": [], "down": []}
    handlers: dict[str, list[dict[str, float]]] = {"handlers baseline": [], "handlers up": []}
    # Each round runs every kind of both: (where its results go, what runs one kind, its line of the round).
    runs = (
        (results, lambda kind: once(kind, events, port),
         "{kind:8s} cpu {cpu_us_per_event:5.2f} µs/event  emit p50 {emit_p50_us:.2f} µs p99 {emit_p99_us:.2f} µs  "
         "loop lag p99 {lag_p99_ms:.2f} ms max {lag_max_ms:.1f} ms"),
        (handlers, lambda kind: instrumented(kind, turns, per_turn, port),
         "{kind:17s} cpu {cpu_us_per_turn:6.1f} µs/turn  session.emit p50 {emit_p50_us:.2f} µs p99 {emit_p99_us:.2f} µs  "
         "loop lag max {lag_max_ms:.1f} ms"),
    )
    try:
        for r in range(args.rounds):
            for rounds_of, run, line in runs:
                for kind in rounds_of:
                    res, note = asyncio.run(run(kind))
                    rounds_of[kind].append(res)
                    print(f"  round {r + 1} {line.format(kind=kind, **res)}  ({note})", flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)

    med = medians(results)
    base = med["baseline"]["cpu_us_per_event"]
    print(f"\n{args.events:,} events in bursts of 100 every {PACE * 1000:g} ms; medians of {args.rounds} rounds\n")
    print("| run | loop CPU per event | over baseline | emit() p50 | emit() p99 | loop lag p99 | loop lag max |")
    print("|---|---|---|---|---|---|---|")
    for kind, label in (("baseline", "baseline: append to a list"), ("up", "EventsClient, exporter up"),
                        ("down", "EventsClient, exporter down")):
        m = med[kind]
        over = "" if kind == "baseline" else f"+{m['cpu_us_per_event'] - base:.2f} µs ({m['cpu_us_per_event'] / base:.1f} x)"
        print(f"| {label} | {m['cpu_us_per_event']:.2f} µs | {over} | {m['emit_p50_us']:.2f} µs | "
              f"{m['emit_p99_us']:.2f} µs | {m['lag_p99_ms']:.2f} ms | {m['lag_max_ms']:.1f} ms |")

    hm = medians(handlers)
    hb = hm["handlers baseline"]["cpu_us_per_turn"]
    print(f"\n{args.turns:,} turns of real livekit-agents session events ({per_turn:.2f} a turn); "
          f"medians of {args.rounds} rounds\n")
    print("| run | loop CPU per turn | over baseline | session.emit() p50 | session.emit() p99 | loop lag max |")
    print("|---|---|---|---|---|---|")
    for kind, label in (("handlers baseline", "AgentSession, no-op listeners"),
                        ("handlers up", "AgentSession + instrument(), exporter up")):
        m = hm[kind]
        over = "" if kind == "handlers baseline" else \
            f"+{m['cpu_us_per_turn'] - hb:.1f} µs ({m['cpu_us_per_turn'] / hb:.1f} x)"
        print(f"| {label} | {m['cpu_us_per_turn']:.1f} µs | {over} | {m['emit_p50_us']:.2f} µs | "
              f"{m['emit_p99_us']:.2f} µs | {m['lag_max_ms']:.1f} ms |")

    res = Result("client", vars(args))
    for kind, label in (("baseline", "baseline: append to a list"), ("up", "EventsClient, exporter up"),
                        ("down", "EventsClient, exporter down")):
        res.measure(f"{label}, loop CPU per event", [r["cpu_us_per_event"] for r in results[kind]], "µs")
        res.measure(f"{label}, emit() p99", [r["emit_p99_us"] for r in results[kind]], "µs")
    for kind, label in (("handlers baseline", "AgentSession, no-op listeners"),
                        ("handlers up", "AgentSession + instrument(), exporter up")):
        res.measure(f"{label}, loop CPU per turn", [r["cpu_us_per_turn"] for r in handlers[kind]], "µs")
    up, down = "EventsClient, exporter up, loop CPU per event", "EventsClient, exporter down, loop CPU per event"
    base_m = "baseline: append to a list, loop CPU per event"
    res.ratio("agent side µs per event, over baseline", up, base_m,
              "not a ratio: the loop CPU per event the push client adds (exporter up) over appending the event to "
              "a list, in µs (lower is better)", target=10.0, op="<=",
              value=med["up"]["cpu_us_per_event"] - med["baseline"]["cpu_us_per_event"])
    res.ratios(
        ("client up / baseline", up, base_m,
         "the loop CPU per event with EventsClient sending over appending to a list (lower is better)"),
        ("client down / baseline", down, base_m, "the same with the exporter down (refused, retries, drops)"),
        ("instrument() / no-op listeners", "AgentSession + instrument(), exporter up, loop CPU per turn",
         "AgentSession, no-op listeners, loop CPU per turn",
         "the loop CPU per turn of real livekit-agents session events with instrument() over no-op listeners "
         "(lower is better)"),
    )
    res.write(args.json)


if __name__ == "__main__":
    main()
