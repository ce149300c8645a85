"""What the alerting bundle costs Prometheus: rule evaluation time and the series it records.

`livekit-exporter demo` (the simulator, its webhooks and simulated voice agents, so every family has
series) is scraped by Debian's prometheus, which loads two rule sets in the same run:
  - the bundle: every group generated from prometheus/mixin.yml (windows as shipped);
  - the baseline: one group with one rule, `count({job="livekit-exporter"})`, which reads every
    series of the exporter once: the floor of any rule that looks at all of it.
It reports the median per-evaluation duration of each (prometheus_rule_group_last_duration_seconds,
sampled every evaluation), their ratio, and the series the bundle's recording rules add against the
series one scrape brings.

    .venv/bin/python bench/bench_rules.py [--seconds 60] [--interval 2s] [--warmup 15] [--json PATH]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from common import Result, bench_options, free_port, start_prometheus, wait_listening

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))

from livekit_exporter.mixin import DEFAULT_CONFIG, generate, load, write  # noqa: E402


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)["data"]["result"]


def own_metric(base: str, name: str) -> dict[str, float]:
    """Prometheus's own gauge by rule_group, read from its /metrics (it does not scrape itself here)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.labels["rule_group"]: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name}


def main() -> int:
    args = bench_options(
        None, seconds=(60.0, "how long to sample once rules run"), interval=("2s", "scrape and evaluation interval"),
        warmup=(15.0, "seconds of scrapes and evaluations before sampling"),
    ).parse_args()
    prometheus = shutil.which("prometheus")
    if not prometheus:
        print("prometheus is not installed (Debian package: prometheus)")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    exporter_port, prom_port = free_port(), free_port()
    files = generate(load(ROOT / DEFAULT_CONFIG, {
        "prometheus.scrape_interval": args.interval, "prometheus.scrape_timeout": args.interval,
        "prometheus.evaluation_interval": args.interval,
        "prometheus.targets.exporter": [f"127.0.0.1:{exporter_port}"],
        "prometheus.targets.livekit_server": [], "prometheus.alertmanagers": [],
    }))
    write({k: v for k, v in files.items() if k.startswith("prometheus/")}, tmp)
    (tmp / "prometheus" / "rules" / "baseline.yml").write_text(
        "groups:\n- name: baseline\n  rules:\n  - record: job:series:count\n"
        "    expr: count({job=\"livekit-exporter\"})\n")
    demo = subprocess.Popen([str(Path(sys.executable).parent / "livekit-exporter"), "demo",
                             f"--web.listen-address=127.0.0.1:{exporter_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom = start_prometheus(prometheus, tmp / "prometheus" / "prometheus.yml", tmp / "data", prom_port)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        wait_listening(exporter_port, demo)
        wait_listening(prom_port, prom)
        time.sleep(args.warmup)  # a few scrapes and evaluations, so every rule has data
        step = float(args.interval.rstrip("s"))
        bundle: list[float] = []
        baseline: list[float] = []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            groups = own_metric(base, "prometheus_rule_group_last_duration_seconds")
            if not any(g.endswith(";baseline") for g in groups):
                raise SystemExit(f"no baseline group among {sorted(groups)}")
            baseline.append(next(v for g, v in groups.items() if g.endswith(";baseline")))
            bundle.append(sum(v for g, v in groups.items() if not g.endswith(";baseline")))
            time.sleep(step)
        scraped = float(query(base, 'scrape_samples_scraped{job="livekit-exporter"}')[0]["value"][1])
        recorded = float(query(base, 'count({__name__=~".+:.+", __name__!="job:series:count"})')[0]["value"][1])
        rules = int(sum(own_metric(base, "prometheus_rule_group_rules").values())) - 1
    finally:
        for p in (prom, demo):
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    b, m = statistics.median(baseline), statistics.median(bundle)
    print(f"samples: {len(bundle)} evaluations, every {args.interval}")
    print("| rule set | rules | median ms per evaluation | p90 ms | ratio to baseline |")
    print("|---|---|---|---|---|")
    p90 = lambda xs: statistics.quantiles(xs, n=10)[-1] * 1000  # noqa: E731
    print(f"| baseline: count() of every exporter series | 1 | {b * 1000:.2f} | {p90(baseline):.2f} | 1.00 |")
    print(f"| the bundle (recording + alerting) | {rules} | {m * 1000:.2f} | {p90(bundle):.2f} | {m / b:.1f} |")
    print(f"series: one scrape {scraped:.0f}, recorded by the bundle {recorded:.0f} ({recorded / scraped:.2f} x)")
    res = Result("rules", vars(args))
    res.measure("baseline: count() of every exporter series", [v * 1000 for v in baseline], "ms")
    res.measure("the bundle (recording + alerting)", [v * 1000 for v in bundle], "ms")
    res.ratio("bundle / count() baseline", "the bundle (recording + alerting)",
              "baseline: count() of every exporter series",
              "the bundle's evaluation time over one rule reading every exporter series once (lower is better)")
    res.ratio("recorded series / scraped series", "series the bundle records", "series one scrape brings",
              "series the bundle's recording rules add over the series one scrape brings", value=recorded / scraped)
    res.fact("rules in the bundle", rules)
    res.fact("series one scrape brings", int(scraped))
    res.fact("series the bundle records", int(recorded))
    res.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
