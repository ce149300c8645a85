"""`python -m bench` (or `make bench`): every benchmark, then one report, markdown and JSON.

    .venv/bin/python -m bench [--quick] [--out DIR] [--sizes 1000,10000,50000] [--only state,webhooks,...]

Runs each bench/bench_*.py in its own process (their text goes to the terminal as when run alone)
with `--json`, and gathers what they wrote into DIR/report.json and DIR/report.md (DIR: bench/ by
default): per benchmark the median and spread (p10, p90, p99, min, max over its rounds) of each
measure, the ratios (each of two measures of the same run, so machine noise hits both) with the
targets of issue 12 and whether they are met, and single figures (API calls per scrape, bytes
served, RSS). A benchmark whose tool is missing (wrk, prometheus) is skipped with the reason; one
that fails is reported as failed and the command exits 1. `--quick` is a smoke run (about a minute):
few rounds, short durations, 1,000 rooms; its figures say little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"

# The targets of issue 12: (what, the run, its ratio). The scripts set each target on their ratio.
TARGETS = [
    ("scrape at 10k rooms ≤ 1.4 x the bare API fetch", "state-10000", "scrape / bare API fetch"),
    ("scrape at 50k rooms ≤ 1.4 x the bare API fetch", "state-50000", "scrape / bare API fetch"),
    ("verified webhooks ≥ 0.3 x the bare handler", "webhooks", "verified webhooks / bare handler"),
    ("events ≥ 0.25 x the parse-only endpoint", "events", "events / parse-only endpoint"),
    ("events ≥ 5 x Pushgateway at 10k series", "events", "events / Pushgateway"),
    ("agent side ≤ 10 µs per event", "client", "agent side µs per event, over baseline"),
]


def plan(args: argparse.Namespace) -> list[dict]:
    """The runs: name, script, options (full or quick), the tools each needs."""
    q = args.quick
    runs = []
    for i, rooms in enumerate(args.sizes):
        opts = ["--rooms", str(rooms), "--rounds", "3" if q else "15"]
        if i == 0:  # the node_exporter reference next to the smallest size (1,000 rooms by default)
            opts += ["--reference", "--reference-rounds", "20" if q else "100"]
        runs.append({"name": f"state-{rooms}", "script": "bench_state.py", "opts": opts, "needs": []})
    runs += [
        {"name": "webhooks", "script": "bench_webhooks.py", "needs": ["wrk"],
         "opts": ["--rounds", "1", "--duration", "1", "--requests", "5000"] if q else []},
        {"name": "events", "script": "bench_events.py", "needs": ["wrk"],
         "opts": (["--rounds", "1", "--duration", "1"] if q else [])
         + (["--pushgateway", "--pushgateway-series", "10000"] if not args.no_pushgateway else [])},
        {"name": "client", "script": "bench_client.py", "needs": [],
         "opts": ["--rounds", "1", "--events", "5000", "--turns", "500"] if q else []},
        {"name": "exemplars", "script": "bench_exemplars.py", "needs": [],
         "opts": ["--rounds", "3", "--scale", "0.2"] if q else []},
        {"name": "rules", "script": "bench_rules.py", "needs": ["prometheus"],
         "opts": ["--seconds", "4", "--interval", "1s", "--warmup", "5"] if q else []},
        {"name": "series", "script": "bench_series.py", "needs": [],
         "opts": ["--combos", "10", "--rounds", "1"] if q else []},
        {"name": "scale", "script": "bench_scale.py", "needs": ["wrk"],
         "opts": ["--scrape-rounds", "5", "--rounds", "1", "--duration", "1", "--requests", "30000"] if q else []},
    ]
    if args.only:
        wanted = set(args.only)
        runs = [r for r in runs if r["name"] in wanted or r["name"].split("-")[0] in wanted]
    return runs


def run_one(run: dict, tmp: Path, timeout: float) -> dict:
    missing = [tool for tool in run["needs"] if not shutil.which(tool)]
    if missing:
        return {"benchmark": run["name"], "status": "skipped",
                "reason": f"{', '.join(missing)} is not installed (Debian package: {', '.join(missing)})"}
    out = tmp / f"{run['name']}.json"
    cmd = [sys.executable, f"bench/{run['script']}", *run["opts"], "--json", str(out)]
    print(f"\n## {run['name']}: {' '.join(cmd[1:])}\n", flush=True)
    started = time.monotonic()
    try:
        code = subprocess.call(cmd, cwd=HERE.parent, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"benchmark": run["name"], "status": "failed", "reason": f"did not finish in {timeout:.0f} s"}
    seconds = round(time.monotonic() - started, 1)
    if code != 0 or not out.exists():
        return {"benchmark": run["name"], "status": "failed", "reason": f"{run['script']} exited with {code}",
                "seconds": seconds}
    result = json.loads(out.read_text())
    result.update(benchmark=run["name"], status="ok", seconds=seconds, command=" ".join(cmd[1:-2]))
    return result


# -- the report ------------------------------------------------------------------------------------


def fmt(x: float) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, int) or (float(x).is_integer() and abs(x) >= 100):
        return f"{int(x):,}"
    a = abs(x)
    return f"{x:,.0f}" if a >= 1000 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 0.1 else f"{x:.3g}"


def targets(results: list[dict]) -> list[dict]:
    """Each target of issue 12 with its value in this run: met, not met, or not measured (why)."""
    by_name = {r["benchmark"]: r for r in results}
    out = []
    for what, run, ratio in TARGETS:
        r = by_name.get(run)
        x = (r or {}).get("ratios", {}).get(ratio)
        if x is not None:
            status = "met" if x["met"] else "not met"
        elif r is None:
            status = "not measured (not in this run: see --sizes, --only)"
        else:
            why = r.get("reason") or "; ".join(r.get("skipped", {}).values()) or "no such ratio"
            status = f"not measured ({r['status']}: {why})"
        out.append({"target": what, "run": run, "ratio": ratio, "value": x and x["value"], "status": status})
    return out


def markdown(report: dict) -> str:
    results = report["results"]
    lines = [f"# Benchmark report ({'quick' if report['quick'] else 'full'} run)", "",
             f"{report['started']} on {report['machine']}; `{report['command']}`; {report['seconds']:.0f} s.",
             "Every ratio divides two measures of the same run (same machine, same minute); compare ratios, "
             "not absolute figures.", "", "## Targets (issue 12)", "",
             "| target | run | value | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        value = "—" if t["value"] is None else f"{t['value']:.3f}"
        status = "**not met**" if t["status"] == "not met" else t["status"]
        lines.append(f"| {t['target']} | {t['run']} | {value} | {status} |")
    lines += ["", "## Ratios (each to its baseline in the same run)", "",
             "| benchmark | ratio | value | target | met | what it means |", "|---|---|---|---|---|---|"]
    for r in results:
        for name, x in r.get("ratios", {}).items():
            target = f"{x['op'].replace('<=', '≤').replace('>=', '≥')} {fmt(x['target'])}" if "target" in x else ""
            met = ("met" if x["met"] else "**not met**") if "target" in x else ""
            lines.append(f"| {r['benchmark']} | {name} | {fmt(x['value'])} | {target} | {met} | {x['meaning']} |")
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['benchmark']} | — | — | | {r['status']} | {r['reason']} |")
        for what, why in r.get("skipped", {}).items():
            lines.append(f"| {r['benchmark']} | {what} | — | | skipped | {why} |")
    lines += ["", "## Measures (median and spread over the rounds)", "",
              "| benchmark | measure | unit | median | p10 | p90 | p99 | min | max | n |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, m in r.get("measures", {}).items():
            lines.append(f"| {r['benchmark']} | {name} | {m['unit']} | {fmt(m['median'])} | {fmt(m['p10'])} | "
                         f"{fmt(m['p90'])} | {fmt(m['p99'])} | {fmt(m['min'])} | {fmt(m['max'])} | {m['n']} |")
    lines += ["", "## Figures", "", "| benchmark | what | value |", "|---|---|---|"]
    for r in results:
        for name, f in r.get("facts", {}).items():
            lines.append(f"| {r['benchmark']} | {name} | {fmt(f['value'])} {f['unit']} |")
    lines += ["", "## Runs", "", "| benchmark | status | seconds | command |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['benchmark']} | {r['status']} | {r.get('seconds', '')} | "
                     f"`{r.get('command', r.get('reason', ''))}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: few rounds, short durations, 1,000 rooms")
    p.add_argument("--out", type=Path, default=HERE, help="where report.md and report.json go (default: bench/)")
    p.add_argument("--sizes", help="rooms of the scrape benchmark, comma-separated (default 1000,10000,50000; "
                   "--quick: 1000)")
    p.add_argument("--only", help="benchmarks to run, comma-separated (state, webhooks, events, client, "
                   "exemplars, rules, series, scale)")
    p.add_argument("--no-pushgateway", action="store_true", help="skip the Pushgateway comparison of the events bench")
    p.add_argument("--timeout", type=float, help="seconds per benchmark (default 900, --quick 150)")
    args = p.parse_args()
    args.sizes = [int(s) for s in (args.sizes or ("1000" if args.quick else "1000,10000,50000")).split(",") if s]
    args.only = [s.strip() for s in args.only.split(",")] if args.only else None
    timeout = args.timeout or (150 if args.quick else 900)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results = [run_one(run, Path(tmp), timeout) for run in plan(args)]
    report = {
        "started": started, "seconds": round(time.monotonic() - t0, 1), "quick": args.quick,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load}",
        "targets": targets(results), "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (args.out / "report.md").write_text(md)
    print("\n" + md)
    print(f"report: {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
