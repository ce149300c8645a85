"""What exemplars cost: applying 100 turns with call_id and trace_id against the same 100 turns
without them, and rendering the registry as OpenMetrics (the only format that carries exemplars),
with and without them, against the text format; in process, alternating rounds, medians printed
with the ratios.

    .venv/bin/python bench/bench_exemplars.py [--rounds 9] [--json PATH]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))

from common import Result, bench_options  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics  # noqa: E402

from livekit_exporter.config import EventsConfig  # noqa: E402
from livekit_exporter.events import model as m  # noqa: E402
from livekit_exporter.events.pipeline import Pipeline  # noqa: E402
from livekit_exporter.telemetry import Telemetry  # noqa: E402


def turns(with_ids: bool) -> list[m.Turn]:
    out = []
    for i in range(100):
        ids = {"call_id": f"call-{i:06d}", "trace_id": f"{i:032x}"} if with_ids else {}
        out.append(m.Turn(agent=f"agent-{i % 3}", e2e_latency_seconds=0.6 + (i % 17) / 10,
                          end_of_utterance_delay_seconds=0.3, transcription_delay_seconds=0.2, llm_ttft_seconds=0.4,
                          tts_ttfb_seconds=0.2, stt_provider="deepgram", stt_model="nova-3", llm_provider="openai",
                          llm_model="gpt-4o-mini", tts_provider="cartesia", tts_model="sonic-2", **ids))
    return out


def per_call(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    args = bench_options(None, rounds=9, scale=(1.0, "fraction of the calls timed per round")).parse_args()
    plain_t, ids_t = Telemetry(), Telemetry()
    plain_p, ids_p = Pipeline(EventsConfig(), plain_t), Pipeline(EventsConfig(), ids_t)
    plain, ids = turns(False), turns(True)
    results = {"apply, no exemplars": [], "apply, call_id + trace_id": [], "render text": [],
               "render OpenMetrics, none": [], "render OpenMetrics": []}
    for _ in range(args.rounds):
        n_apply, n_render = max(1, int(300 * args.scale)), max(1, int(100 * args.scale))
        results["apply, no exemplars"].append(per_call(lambda: plain_p.apply(plain), n_apply))
        results["apply, call_id + trace_id"].append(per_call(lambda: ids_p.apply(ids), n_apply))
        results["render text"].append(per_call(lambda: generate_latest(ids_t.registry), n_render))
        results["render OpenMetrics, none"].append(per_call(lambda: generate_openmetrics(plain_t.registry), n_render))
        results["render OpenMetrics"].append(per_call(lambda: generate_openmetrics(ids_t.registry), n_render))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"medians of {args.rounds} alternating rounds, µs per call")
    print("| what | median µs | ratio |\n|---|---|---|")
    print(f"| apply 100 turns, no exemplars (baseline) | {med['apply, no exemplars']:.1f} | 1.00 |")
    print(f"| apply 100 turns with call_id and trace_id | {med['apply, call_id + trace_id']:.1f} | "
          f"{med['apply, call_id + trace_id'] / med['apply, no exemplars']:.2f} |")
    print(f"| render the registry as text (baseline) | {med['render text']:.1f} | 1.00 |")
    print(f"| render the same series as OpenMetrics, no exemplars | {med['render OpenMetrics, none']:.1f} | "
          f"{med['render OpenMetrics, none'] / med['render text']:.2f} |")
    print(f"| render them as OpenMetrics, with exemplars | {med['render OpenMetrics']:.1f} | "
          f"{med['render OpenMetrics'] / med['render text']:.2f} |")

    res = Result("exemplars", vars(args))
    for name, values in results.items():
        res.measure(name, values, "µs")
    res.ratios(
        ("apply with ids / without", "apply, call_id + trace_id", "apply, no exemplars",
         "applying 100 turns carrying call_id and trace_id (exemplars) over the same turns without them"),
        ("OpenMetrics, no exemplars / text", "render OpenMetrics, none", "render text",
         "rendering the registry as OpenMetrics without exemplars over the text format"),
        ("OpenMetrics with exemplars / text", "render OpenMetrics", "render text",
         "rendering it as OpenMetrics with exemplars over the text format"),
    )
    res.write(args.json)


if __name__ == "__main__":
    main()
