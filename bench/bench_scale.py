"""Several projects and several replicas: scrapes, webhooks and events with 3 LiveKit projects in one
exporter, and webhooks and events split across 2 exporter replicas, each next to one project on one
exporter, measured in the same run.

    /work/main/.venv/bin/python bench/bench_scale.py [--rooms 1000] [--scrape-rounds 40] [--rounds 5]
                                                     [--duration 2] [--json PATH]

Loopback only. Three simulated LiveKit projects (each a simulator process with its own key pair and
`--rooms` rooms of `--per-room` participants) and three exporter processes
(`python -m livekit_exporter.cli serve --config.file`): "single" (the livekit section, on the first
project's simulator), "replica" (the same configuration: a second replica of it) and "three" (a
`projects:` section naming the three). Interleaved, round by round:

- scrapes: /metrics of the single exporter alone, then the three targets of the three-project exporter
  (/metrics?project=<name>) at once, as Prometheus scrapes them; per-target time, API calls per scrape
  (the simulators' own counts), bytes, and each exporter's RSS after the scrapes;
- webhooks (wrk, bench_webhooks.py's signed requests and replay script): the single exporter; the
  three-project exporter with the requests signed round-robin by the three projects' keys; the single
  exporter and its replica, each wrk thread sending to one of them;
- events (wrk, bench_events.py's batch of 100): the same three, the three-project exporter with each
  project's own token in turn.

Every wrk run is the same load generator (`--threads` threads, `--connections` connections in all);
the two-replica run points its threads at the two processes. The machine's cores are shared by wrk,
the exporters and (for scrapes) the simulators: see bench/README.md for what the ratios can show.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import bench_events
import bench_state
import bench_webhooks
from common import (
    WRK_RESULT_LUA,
    Result,
    bench_options,
    free_port,
    require_wrk,
    rss_mb,
    stop_process,
    wait_listening,
    wrk_result,
)

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = ("production", "staging", "eu")
# The first project's key pair is the one bench_webhooks signs with; the others have their own.
KEYS = {
    name: (bench_webhooks.API_KEY, bench_webhooks.API_SECRET)
    if i == 0
    else (f"API{name}", f"{name}-secret-" + "s" * 32)
    for i, name in enumerate(PROJECTS)
}
TOKENS = {name: f"{name}-bench-events-token-0123456789" for name in PROJECTS}
FIRST = PROJECTS[0]

# Prepended to a wrk script: thread k sends to the k-th port of PORTS (round-robin), whatever the URL says.
ADDRESSES_LUA = r"""
local ports = {%s}
local threads_started = 0
local script_setup = setup
function setup(thread)
  thread.addr = wrk.lookup("127.0.0.1", ports[threads_started %% #ports + 1])[1]
  threads_started = threads_started + 1
  if script_setup then script_setup(thread) end
end
"""

# The events script: the batch (args[1]) POSTed with each token of TOKENS in turn.
EVENTS_LUA = r"""
local tokens = {%s}
function init(args)
  local f = io.open(args[1], "rb")
  local body = f:read("*a")
  f:close()
  reqs = {}
  for i, token in ipairs(tokens) do
    reqs[i] = wrk.format("POST", wrk.path, {["Content-Type"] = "application/json",
                                            ["Authorization"] = "Bearer " .. token}, body)
  end
  n = 0
end
function request()
  n = n + 1
  return reqs[(n - 1) %% #reqs + 1]
end
""" + WRK_RESULT_LUA.replace("%", "%%")

# Per load: what a request carries (webhooks: one; events: a batch of 100), the unit of its rate, and
# the samples that count what the exporter did with them.
LOADS = {
    "webhooks": (1, "req/s", ("livekit_webhook_events_total", "livekit_webhook_duplicates_total")),
    "events": (100, "events/s", ("livekit_exporter_events_total",)),
}
# Each exporter's scrape targets (?project=<name>; "" is /metrics alone).
TARGETS = {"single": ("",), "replica": ("",), "three": (*PROJECTS, "")}
# The three load runs of each round: (name, the exporters wrk's threads send to, in turn).
RUNS = (("one project", ("single",)), ("3 projects", ("three",)), ("2 replicas", ("single", "replica")))


def with_addresses(script: str, ports: list[int]) -> str:
    """`script` (a wrk Lua script defining setup() or not) with its threads sent to these ports in turn."""
    return script + ADDRESSES_LUA % ", ".join(f'"{port}"' for port in ports)


def lua_strings(values: list[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


# -- the processes --------------------------------------------------------------------------------


def start_simulators(rooms: int, per_room: int) -> dict[str, tuple[subprocess.Popen, str]]:
    """A simulated LiveKit per project, each with its key pair and `rooms` rooms: name -> (process, URL)."""
    sims = {}
    for name, (key, secret) in KEYS.items():
        port = free_port()
        env = {**os.environ, "LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "livekit_exporter.simulator",
                "--port",
                str(port),
                "--rooms",
                str(rooms),
                "--participants-per-room",
                str(per_room),
            ],
            cwd=ROOT / "exporter",
            env=env,
            stdout=subprocess.DEVNULL,
        )
        sims[name] = (proc, f"http://127.0.0.1:{port}")
    for proc, url in sims.values():
        wait_listening(int(url.rsplit(":", 1)[1]), proc, timeout=300)
    return sims


def livekit_yaml(url: str, project: str) -> str:
    key, secret = KEYS[project]
    return f"{{url: '{url}', api_key: {key}, api_secret: '{secret}'}}"


def configs(sims: dict[str, tuple[subprocess.Popen, str]]) -> dict[str, str]:
    """The exporters' configuration files: one project (its events token in events.tokens), and three."""
    single = f"livekit: {livekit_yaml(sims[FIRST][1], FIRST)}\nevents:\n  tokens: [{TOKENS[FIRST]}]\n"
    three = "projects:\n" + "".join(
        f"  - name: {name}\n    livekit: {livekit_yaml(url, name)}\n    events_tokens: [{TOKENS[name]}]\n"
        for name, (_, url) in sims.items()
    )
    return {"single": single, "replica": single, "three": three}


def start_exporter(config: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livekit_exporter.cli",
            "serve",
            "--config.file",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "error",
        ],
        cwd=ROOT / "exporter",
    )
    wait_listening(port, proc, timeout=120)
    return proc, port


# -- 1. scrapes ------------------------------------------------------------------------------------


async def scrapes(sims: dict, ports: dict[str, int], rounds: int) -> dict:
    """Per round, the single exporter's /metrics alone and the three projects' targets at once (the
    order alternating); then the API calls a scrape costs each project, bytes, RSS."""
    single = f"http://127.0.0.1:{ports['single']}/metrics"
    targets = {name: f"http://127.0.0.1:{ports['three']}/metrics?project={name}" for name in PROJECTS}
    sim_urls = {name: url for name, (_, url) in sims.items()}
    times: dict[str, list[float]] = {"single": [], "all three": [], **{name: [] for name in PROJECTS}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for kind in ("single", "three"):
            await bench_state.wait_http(session, f"http://127.0.0.1:{ports[kind]}/-/ready")
        sizes = {"single": await bench_state.scrape(session, single)}  # warm-up, and the bytes served
        sizes.update(
            zip(
                PROJECTS, await asyncio.gather(*(bench_state.scrape(session, u) for u in targets.values())), strict=True
            )
        )
        before = {name: await bench_state.calls(session, url) for name, url in sim_urls.items()}
        await bench_state.scrape(session, single)
        calls = {"single": await bench_state.calls(session, sim_urls[FIRST]) - before[FIRST]}
        before[FIRST] += calls["single"]
        await asyncio.gather(*(bench_state.scrape(session, u) for u in targets.values()))
        for name, url in sim_urls.items():
            calls[name] = await bench_state.calls(session, url) - before[name]

        async def three_at_once() -> None:
            started = time.perf_counter()
            took = await asyncio.gather(*(bench_state.timed(bench_state.scrape(session, u)) for u in targets.values()))
            times["all three"].append((time.perf_counter() - started) * 1000)
            for name, seconds in zip(PROJECTS, took, strict=True):
                times[name].append(seconds * 1000)

        async def single_alone() -> None:
            times["single"].append(await bench_state.timed(bench_state.scrape(session, single)) * 1000)

        for r in range(rounds):
            for step in (single_alone, three_at_once) if r % 2 == 0 else (three_at_once, single_alone):
                await step()
    return {"times": times, "calls": calls, "sizes": sizes}


# -- 2-4. webhooks and events through wrk -------------------------------------------------------------


def wrk(ports: list[int], path: str, script: Path, args: argparse.Namespace, *script_args: str) -> dict[str, float]:
    """One wrk run: `--threads` threads sending to `ports` in turn; refuses any error or non-2xx answer."""
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{ports[0]}{path}",
        "--",
        *script_args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60).stdout
    r = wrk_result(out)
    if r["non2xx"] or r["errors"]:
        raise SystemExit(
            f"wrk saw {r['non2xx']:.0f} non-2xx answers and {r['errors']:.0f} socket errors on {ports}:\n{out}"
        )
    return {"per_s": r["requests"] / r["seconds"], "p99_ms": r["p99_us"] / 1000, "requests": int(r["requests"])}


def signed_requests(count: int, tmp: Path) -> dict[str, Path]:
    """bench_webhooks' signed webhooks for the first project ("one project"), and the first half of the
    same bodies signed in turn by the three projects' keys ("3 projects": another process, its own dedup)."""
    from livekit_exporter.simulator.webhooks import sign

    one, three = tmp / "one-project.tsv", tmp / "three-projects.tsv"
    bench_webhooks.make_requests(count, one)
    keys = list(KEYS.values())
    with one.open() as src, three.open("w") as out:
        for i, line in zip(range(count // 2), src, strict=False):
            body = line.split("\t", 1)[1]
            key, secret = keys[i % len(keys)]
            out.write(sign(body.rstrip("\n").encode(), key, secret) + "\t" + body)
    return {"one project": one, "2 replicas": one, "3 projects": three}


def counted(port: int, target_names: tuple[str, ...], families: tuple[str, ...]) -> float:
    """The sum of these samples over the exporter's targets (/metrics?project=<name>; "" is /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for name in target_names:
        url = f"http://127.0.0.1:{port}/metrics" + (f"?project={name}" if name else "")
        text = urllib.request.urlopen(url, timeout=60).read().decode()
        total += sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name in families)
    return total


def load_rounds(ports: dict[str, int], args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, list[dict]]]:
    """Per round, webhooks then events: one project, 3 projects, 2 replicas; checks that the exporters
    counted every webhook (none rejected) and applied every event they answered for."""
    webhook_files = signed_requests(args.requests, tmp)
    lines = {name: sum(1 for _ in path.open()) for name, path in webhook_files.items()}
    batch = tmp / "batch.json"
    batch.write_bytes(bench_events.batch_of_100())
    scripts: dict[tuple[str, str], Path] = {}
    for run, kinds in RUNS:
        run_ports = [ports[kind] for kind in kinds]
        tokens = [TOKENS[name] for name in (PROJECTS if run == "3 projects" else (FIRST,))]
        for load, text in (("webhooks", bench_webhooks.LUA), ("events", EVENTS_LUA % lua_strings(tokens))):
            scripts[load, run] = tmp / f"{load}-{run.replace(' ', '-')}.lua"
            scripts[load, run].write_text(with_addresses(text, run_ports))
    # Where each webhook file goes on: every run sends ids its exporters have not seen (wrk stops
    # counting at its deadline, so skip a connection's worth of requests in flight).
    offsets = {webhook_files["one project"]: 0, webhook_files["3 projects"]: 0}
    results: dict[str, dict[str, list[dict]]] = {load: {run: [] for run, _ in RUNS} for load in ("webhooks", "events")}
    for r in range(args.rounds):
        for run, kinds in RUNS:
            run_ports = [ports[kind] for kind in kinds]
            file = webhook_files[run]
            res = wrk(
                run_ports, "/webhook", scripts["webhooks", run], args, str(file), str(args.threads), str(offsets[file])
            )
            offsets[file] += res["requests"] + args.connections
            if offsets[file] > lines[run]:
                raise SystemExit(
                    f"{file.name}: {offsets[file]} requests sent of {lines[run]} distinct ones: raise --requests"
                )
            keep(results, "webhooks", run, res, r)
        for run, kinds in RUNS:
            res = wrk([ports[kind] for kind in kinds], "/v1/events", scripts["events", run], args, str(batch))
            keep(results, "events", run, res, r)
    check_counts(ports, results, args)
    return results


def keep(results: dict[str, dict[str, list[dict]]], load: str, run: str, res: dict, round_index: int) -> None:
    results[load][run].append(res)
    per_request, unit, _ = LOADS[load]
    print(
        f"round {round_index + 1} {load:8s} {run:12s} {per_request * res['per_s']:9,.0f} {unit:8s}  "
        f"p99 {res['p99_ms']:6.2f} ms",
        flush=True,
    )


def check_counts(ports: dict[str, int], results: dict[str, dict[str, list[dict]]], args: argparse.Namespace) -> None:
    for load, (per_request, _, families) in LOADS.items():
        sent = {kinds: per_request * sum(res["requests"] for res in results[load][run]) for run, kinds in RUNS}
        for exporters in (("single", "replica"), ("three",)):
            mine = [kinds for kinds in sent if set(kinds) <= set(exporters)]
            answered = sum(sent[kinds] for kinds in mine)
            got = sum(counted(ports[kind], TARGETS[kind], families) for kind in exporters)
            # a request cut at the end of a wrk run may be applied unanswered
            if not answered <= got <= answered + per_request * args.connections * args.rounds * len(mine):
                raise SystemExit(f"{load}: {' and '.join(exporters)} counted {got:.0f} for {answered:.0f} answered")
        print(f"{load}: every exporter counted what it answered for")
    rejected = sum(counted(port, TARGETS[kind], ("livekit_webhook_rejected_total",)) for kind, port in ports.items())
    if rejected:
        raise SystemExit(f"{rejected:.0f} webhooks rejected: the benchmark is not valid")


# -- the report -------------------------------------------------------------------------------------


def report(args: argparse.Namespace, scraped: dict, rss: dict[str, float], loads: dict) -> Result:
    res = Result("scale", vars(args))
    times = scraped["times"]
    alone, at_once = "scrape, one project alone", "scrape, 3 projects at once, per target"
    res.measure(alone, times["single"], "ms")
    res.measure(at_once, [t for name in PROJECTS for t in times[name]], "ms")
    for name in PROJECTS:
        res.measure(f"scrape, 3 projects at once, {name}", times[name], "ms")
    res.measure("scrape, 3 projects at once, until the last answer", times["all three"], "ms")
    measures = res.data["measures"]
    res.ratio(
        "scrape p50, 3 projects / one",
        at_once,
        alone,
        "the median time of a project's target scraped with the two others at once, over one project's "
        "exporter scraped alone (the same rooms)",
    )
    res.ratio(
        "scrape p99, 3 projects / one",
        at_once,
        alone,
        "the same, of the p99 over the rounds",
        value=measures[at_once]["p99"] / measures[alone]["p99"],
    )
    res.ratio(
        "scrape of all three / 3 x one",
        "scrape, 3 projects at once, until the last answer",
        alone,
        "the time until the last of the three targets scraped at once has answered, over three times one "
        "project's scrape alone (about 1: a project costs the exporter what one alone does)",
        value=measures["scrape, 3 projects at once, until the last answer"]["median"] / (3 * measures[alone]["median"]),
    )
    res.fact("API calls per scrape, one project", scraped["calls"]["single"])
    for name in PROJECTS:
        res.fact(f"API calls per scrape, 3 projects: {name}", scraped["calls"][name])
        res.fact(f"bytes served, 3 projects: {name}", scraped["sizes"][name], "bytes")
    res.fact("bytes served, one project", scraped["sizes"]["single"], "bytes")
    res.fact("RSS after the scrapes, one project", round(rss["single"], 1), "MB")
    res.fact("RSS after the scrapes, 3 projects", round(rss["three"], 1), "MB")
    res.ratio(
        "RSS, 3 projects / one",
        "RSS after the scrapes, 3 projects",
        "RSS after the scrapes, one project",
        "the exporter's resident memory with three projects of --rooms rooms each over one project's",
        value=rss["three"] / rss["single"],
    )
    for load, (per_request, unit, _) in LOADS.items():
        for run, _ in RUNS:
            rounds = loads[load][run]
            res.measure(f"{load}, {run}", [per_request * x["per_s"] for x in rounds], unit)
            res.measure(f"{load}, {run}, p99", [x["p99_ms"] for x in rounds], "ms")
    res.ratios(
        (
            "webhooks, 3 projects / one",
            "webhooks, 3 projects",
            "webhooks, one project",
            "verified webhooks a second with three projects' keys in turn over one project's key, one exporter each",
        ),
        (
            "webhooks, 2 replicas / one",
            "webhooks, 2 replicas",
            "webhooks, one project",
            "verified webhooks a second of two replicas (the load split) over one, the same wrk load",
        ),
        (
            "events, 3 projects / one",
            "events, 3 projects",
            "events, one project",
            "events a second (batches of 100) with three projects' tokens in turn over one project's token",
        ),
        (
            "events, 2 replicas / one",
            "events, 2 replicas",
            "events, one project",
            "events a second of two replicas (the load split) over one, the same wrk load",
        ),
    )
    return res


def print_summary(res: Result) -> None:
    print()
    for name, x in res.data["ratios"].items():
        print(f"  {name:32s} {x['value']:6.2f}   ({x['of']} over {x['to']})")
    for name, f in res.data["facts"].items():
        print(f"  {name:45s} {f['value']} {f['unit']}")


def main() -> None:
    args = bench_options(
        __doc__.splitlines()[0],
        rooms=(1000, "rooms of each project's LiveKit"),
        per_room=10,
        scrape_rounds=40,
        rounds=(5, "rounds of the webhooks and events runs"),
        duration=(2, "seconds per wrk run"),
        connections=(32, "wrk connections in all"),
        threads=(2, "wrk threads (one per replica in the split run)"),
        requests=(200_000, "distinct signed webhooks of one project (half of them for the three projects)"),
    ).parse_args()
    require_wrk()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            started = time.monotonic()
            sims = start_simulators(args.rooms, args.per_room)
            procs += [proc for proc, _ in sims.values()]
            print(
                f"{len(sims)} simulators, {args.rooms} rooms x {args.per_room} participants each, "
                f"in {time.monotonic() - started:.1f} s",
                flush=True,
            )
            exporters = {}
            for kind, text in configs(sims).items():
                (tmp / f"{kind}.yml").write_text(text)
                exporters[kind] = start_exporter(tmp / f"{kind}.yml")
                procs.append(exporters[kind][0])
            ports = {kind: port for kind, (_, port) in exporters.items()}
            scraped = asyncio.run(scrapes(sims, ports, args.scrape_rounds))
            rss = {kind: rss_mb(exporters[kind][0].pid) for kind in ("single", "three")}
            for name, ms in scraped["times"].items():
                print(
                    f"scrape {name:12s} median {statistics.median(ms):7.1f} ms  max {max(ms):7.1f} ms  "
                    f"API calls {scraped['calls'].get(name, '')}  bytes {scraped['sizes'].get(name, '')}",
                    flush=True,
                )
            loads = load_rounds(ports, args, tmp)
        finally:
            for proc in procs:
                stop_process(proc)
    res = report(args, scraped, rss, loads)
    print_summary(res)
    res.write(args.json)


if __name__ == "__main__":
    main()
