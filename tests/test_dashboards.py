"""The Grafana dashboards: generated and current, linted (the rules of grafana/dashboard-linter, which
cannot be installed here), and every panel query proven against data in the real Prometheus.

The data: the exporter on the simulator, its webhooks delivered as LiveKit delivers them, simulated
voice agents pushing through the real client, and a world driven hard for half a minute (rooms,
participants, SIP calls, egress and ingress that start and end, agent jobs) with the faults the
fault panels exist for (a LiveKit service failing, forged webhooks, refused event batches, the
cardinality guard folding). Prometheus scrapes it and evaluates the bundle's rules; each panel
query, its variables substituted as Grafana would, must parse and return data.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import re
from dataclasses import replace
from pathlib import Path

import aiohttp
import promql_parser
import pytest
import yaml
from aiohttp import web
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress

from common import add_busy_room, end_busy_room_call  # bench/common.py: the busy rooms bench/soak.py builds too
from conftest import EVENTS_TOKEN, free_port, prometheus_api, require_binary, start_prometheus
from livekit_exporter.client import EventsClient
from livekit_exporter.config import EventsConfig, LabelsConfig, Price, Secret
from livekit_exporter.mixin import DEFAULT_CONFIG, Mixin, generate, load, write
from livekit_exporter.mixin.dashboards import boards
from livekit_exporter.server import build_app
from livekit_exporter.simulator import Delivery, Fault, WebhookSender
from livekit_exporter.simulator.scenario import EGRESS_TYPES
from livekit_exporter.simulator.voice_agents import PRICES, VoiceAgentFleet
from livekit_exporter.simulator.webhooks import request_headers, sign
from livekit_exporter.simulator.sip_metrics import sip_app
from livekit_exporter.simulator.worker_metrics import worker_app

ROOT = Path(__file__).parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
# Grafana's substitutions for the data test: "All" is the variables' allValue; $__rate_interval is
# at least four scrape intervals (1 s here).
SUBSTITUTE = {"$__rate_interval": "8s", "$__range": "40s", "$__interval": "2s",
              "$job": "livekit-exporter", "$project": ".*", "$agent": ".*", "$campaign": ".*", "$instance": ".*", "$node": ".*",
              "$provider": ".*", "$model": ".*"}
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
# Counters without a counter's suffix: livekit/sip's (pkg/stats/monitor.go) and LiveKit's packet bytes
UNSUFFIXED_COUNTERS = {"livekit_sip_invite_requests", "livekit_sip_invite_requests_raw", "livekit_sip_invite_accepted",
                       "livekit_sip_invite_error", "livekit_sip_calls_terminated", "livekit_packet_bytes"}
GAUGE_HISTOGRAMS = {"livekit_room_size_bucket"}  # buckets that are gauges (OpenMetrics gaugehistogram)
# Gauges despite a counter's suffix: LiveKit server's (pkg/telemetry/prometheus/rooms.go) and
# livekit-agents workers' (livekit/agents/telemetry/metrics.py); ../shared/LIVEKIT.md
SUFFIXED_GAUGES = {"livekit_room_total", "livekit_participant_total", "livekit_track_published_total",
                   "livekit_track_subscribed_total", "lk_agents_active_job_count", "lk_agents_child_process_count"}
SUMMED_GAUGES = {"voice_agent_calls_active"}  # per-replica counts: summed (docs/alerts.md, high availability)


@pytest.fixture(scope="module")
def mixin() -> Mixin:
    return Mixin(load(ROOT / DEFAULT_CONFIG))


def panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in DASHBOARDS]


def substituted(expr: str) -> str:
    for var, value in SUBSTITUTE.items():
        expr = expr.replace(var, value)
    return expr


def walk(node, parents=()):
    """(node, its ancestors) for every node of a parsed expression."""
    yield node, parents
    children = []
    for attr in ("lhs", "rhs", "expr", "vector_selector"):
        if hasattr(node, attr) and getattr(node, attr) is not None:
            children.append(getattr(node, attr))
    children += list(getattr(node, "args", None) or [])
    for child in children:
        yield from walk(child, (*parents, node))


# -- generated and linted ------------------------------------------------------------------------------

def test_the_dashboards_and_provisioning_are_generated_and_current(mixin):
    files = generate(load(ROOT / DEFAULT_CONFIG))
    generated = {k for k in files if k.startswith("grafana/")}
    assert {f"grafana/dashboards/{p.name}" for p in DASHBOARDS} <= generated
    for rel in generated:
        assert (ROOT / rel).read_text() == files[rel], f"{rel} is stale: run `make rules`"
    assert {d["uid"] for d in dashboards()} == {mixin.dashboards[b.key] for b in boards(mixin)}
    # Grafana expands $VAR and ${VAR} in provisioning files: every $ of a link template is doubled
    ds = (ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "$${__value.raw}" in ds and not re.search(r"(?<!\$)\$\{", ds)


def test_lint_every_dashboard():
    for dash in dashboards():
        where = dash["uid"]
        variables = dash["templating"]["list"]
        sources = [v for v in variables if v["type"] == "datasource"]
        assert len(sources) == 1 and sources[0]["name"] == "datasource" and sources[0]["query"] == "prometheus", where
        assert "${DS_" not in json.dumps(dash) and "__inputs" not in dash, where
        for v in variables:
            if v["type"] == "query":
                assert v["datasource"]["uid"] == "${datasource}" and v["multi"] and v["includeAll"], (where, v["name"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)) and 0 not in ids, f"{where}: panel ids must be unique and set"
        for p in panels(dash):
            what = f"{where} / {p.get('title')}"
            assert p.get("title") and p.get("description", "").endswith("?"), f"{what}: a title and the question it answers"
            assert p["fieldConfig"]["defaults"].get("unit"), f"{what}: no unit"
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, what
            assert p["targets"], what
            for t in p["targets"]:
                assert t["datasource"] == p["datasource"], what
                for rng in re.findall(r"\[([^\]]+)\]", t["expr"]):
                    allowed = ("$__rate_interval", "$__range") if p["type"] == "stat" else ("$__rate_interval",)
                    assert rng in allowed, f"{what}: range [{rng}]; a {p['type']} panel uses [$__rate_interval]"
                lint_query(t["expr"], what)


def lint_query(expr: str, what: str) -> None:
    tree = promql_parser.parse(substituted(expr))
    for node, parents in walk(tree):
        if isinstance(node, promql_parser.Call) and node.func.name in ("rate", "increase", "irate"):
            rng = node.args[0].range.total_seconds()
            assert rng in (8, 40), f"{what}: {node.func.name}() over a fixed range; use $__rate_interval (or $__range)"
        if isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile":
            agg = node.args[1]
            assert isinstance(agg, promql_parser.AggregateExpr) and "le" in agg.modifier.labels \
                and agg.modifier.type == promql_parser.AggModifierType.By, \
                f"{what}: histogram_quantile must aggregate by (le, ...)"
        if isinstance(node, promql_parser.VectorSelector) and node.name and ":" not in node.name:
            name = node.name
            in_rate = any(isinstance(a, promql_parser.Call) and a.func.name in ("rate", "increase", "irate")
                          for a in parents)
            if (name.endswith(COUNTER_SUFFIXES) and name not in GAUGE_HISTOGRAMS | SUFFIXED_GAUGES) \
                    or name in UNSUFFIXED_COUNTERS:
                assert in_rate, f"{what}: counter {name} outside rate()/increase()"
            elif name not in SUMMED_GAUGES and from_exporter(node) and not in_rate:
                aggs = [a for a in parents if isinstance(a, promql_parser.AggregateExpr)]
                assert aggs and str(aggs[-1].op) == "max", \
                    f"{what}: gauge {name} must be taken with max across replicas first (it is read by each)"


def from_exporter(selector) -> bool:
    """Selected through the exporter's job variable (LiveKit's own per-node metrics are not replicated reads)."""
    return any(m.name == "job" and m.value == SUBSTITUTE["$job"] for m in selector.matchers.matchers)


def test_every_alert_links_to_a_generated_dashboard_and_the_panel_that_shows_it(mixin):
    from livekit_exporter.mixin.rules import ALERT_PANELS

    by_uid = {d["uid"]: d for d in dashboards()}
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "livekit.alerts.yml").read_text())
    linked = 0
    for g in rules["groups"]:
        for r in g["rules"]:
            url = r["annotations"]["dashboard_url"]
            m = re.fullmatch(r"http://localhost:3000/d/([\w-]+)(?:\?viewPanel=(\d+))?", url)
            assert m and m.group(1) in by_uid, (r["alert"], url)
            if m.group(2):
                (panel,) = [p for p in by_uid[m.group(1)]["panels"] if p["id"] == int(m.group(2))]
                assert panel["type"] != "row", (r["alert"], url)
                linked += 1
    assert set(ALERT_PANELS) <= {a.name for a in mixin.alerts}
    assert linked >= len(ALERT_PANELS)


# -- proven against data -------------------------------------------------------------------------------------

async def drive(scenario, exporter_url: str, stop: asyncio.Event, settle) -> None:
    """Half a minute of a busy LiveKit, with the faults the fault panels show."""
    rng = random.Random(3)
    trunks = [scenario.add_trunk("inbound", "in-0"), scenario.add_trunk("outbound", "out-0")]
    scenario.add_dispatch_rule(trunks[:1])
    scenario.add_ingress(proto_ingress.RTMP_INPUT, proto_ingress.IngressState.ENDPOINT_PUBLISHING,
                         audio_bitrate=128_000, video_bitrate=2_000_000)
    scenario.add_room("lobby")  # a call that stays, so the in-progress gauges have a value at the end
    scenario.add_sip_call("lobby", trunks[0], "active")
    n = itertools.count()
    async with aiohttp.ClientSession() as http, \
            EventsClient(f"{exporter_url}/v1/events", EVENTS_TOKEN, flush_interval=0.2) as events:
        fleet = VoiceAgentFleet(events, seed=4)

        async def faults(service_down: bool) -> None:
            """The faults: a failing service, a forged webhook, a refused batch."""
            scenario.set_fault("ingress", Fault("error", "unavailable") if service_down else None)
            body = b'{"event": "room_started", "id": "EV_forged", "room": {}}'
            await http.post(f"{exporter_url}/webhook", data=body,
                            headers=request_headers(sign(body, scenario.api_key, "not-the-secret-" + "x" * 32)))
            await http.post(f"{exporter_url}/v1/events", data=b'{"events": [{"type": "nope"}]}',
                            headers={"Authorization": f"Bearer {EVENTS_TOKEN}", "Content-Type": "application/json"})

        async def iteration(i: int, service_down: bool) -> None:
            room = f"room-{i}"
            dispatch, sip = add_busy_room(scenario, room, rng, trunks[i % 2], max_participants=rng.choice((0, 3)))
            eg = scenario.add_egress(room, EGRESS_TYPES[i % len(EGRESS_TYPES)])
            ing = scenario.add_ingress(proto_ingress.WHIP_INPUT, proto_ingress.IngressState.ENDPOINT_PUBLISHING,
                                       room=room, audio_bitrate=64_000)
            fleet.simulate(calls=3)
            await asyncio.sleep(0.4)
            scenario.set_egress_status(eg.egress_id, proto_egress.EGRESS_COMPLETE if i % 3 else proto_egress.EGRESS_FAILED,
                                       output_bytes=rng.randrange(10**5, 10**7))
            scenario.set_ingress_status(ing.ingress_id, proto_ingress.IngressState.ENDPOINT_COMPLETE if i % 2
                                        else proto_ingress.IngressState.ENDPOINT_ERROR)
            end_busy_room_call(scenario, room, dispatch, sip, user_unavailable=bool(i % 2))
            if i % 4 == 3:
                scenario.remove_room(f"room-{i - 3}")
            await faults(service_down)
            await asyncio.sleep(0.4)

        while not stop.is_set():
            i = next(n)
            await iteration(i, i % 3 == 0)
        # The end is deterministic, whichever iteration the stop came in: the queued webhooks are delivered,
        # one last busy iteration with a failing service (inside every rate window of the query), then a heal,
        # so that every state gauge's last scrapes are healthy when the test queries them.
        scenario.set_fault("ingress", None)
        await settle()
        await iteration(next(n), True)
        await asyncio.sleep(1.5)
        scenario.set_fault("ingress", None)
        await asyncio.sleep(2.5)


async def test_every_panel_query_returns_data_from_the_real_prometheus(scenario, simulator, make_config, tmp_path):
    prometheus_bin = require_binary("prometheus")
    config = replace(make_config(detail=True), labels=LabelsConfig(max_values=2),
                     events=EventsConfig(tokens=(Secret(EVENTS_TOKEN),), prices=tuple(Price(**p) for p in PRICES)))
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    port, prom_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    worker_runner = web.AppRunner(worker_app(scenario, "support-agent"), access_log=None)
    await worker_runner.setup()
    worker_port = free_port()
    await web.TCPSite(worker_runner, "127.0.0.1", worker_port).start()
    sip_runner = web.AppRunner(sip_app(scenario), access_log=None)
    await sip_runner.setup()
    sip_port = free_port()
    await web.TCPSite(sip_runner, "127.0.0.1", sip_port).start()
    files = generate(load(ROOT / DEFAULT_CONFIG, {
        "prometheus.targets.agent_workers": {"support-agent": [f"127.0.0.1:{worker_port}"]},
        "prometheus.targets.livekit_sip": [f"127.0.0.1:{sip_port}"],
        "prometheus.scrape_interval": "1s", "prometheus.scrape_timeout": "1s", "prometheus.evaluation_interval": "1s",
        "prometheus.targets.exporter": [f"127.0.0.1:{port}"],
        "prometheus.targets.livekit_server": [f"127.0.0.1:{simulator.port}"],  # its LiveKit-server /metrics face
        "prometheus.alertmanagers": [], "slos.budget_interval": "1s", "long_term.interval": "1s",
    }))
    write({k: v for k, v in files.items() if k.startswith("prometheus/")}, tmp_path)
    prom = start_prometheus(prometheus_bin, tmp_path / "prometheus" / "prometheus.yml", tmp_path / "data", prom_port,
                            "--enable-feature=exemplar-storage")
    stop = asyncio.Event()
    url = f"http://127.0.0.1:{port}"
    try:
        async with WebhookSender(scenario, f"{url}/webhook", delivery=Delivery(replay_rate=0.2, retry_wait_min=0.1)) as sender:
            world = asyncio.create_task(drive(scenario, url, stop, sender.flush))
            await asyncio.sleep(40)
            stop.set()
            await world
        empty, broken = [], []
        async with aiohttp.ClientSession() as http:
            async def query(expr: str) -> list:
                data = await prometheus_api(http, prom_port, "query", query=expr)
                if data["status"] != "success":
                    raise ValueError(data.get("error"))
                return data["data"]["result"]

            async def label_values(selector: str, label: str) -> list:
                return (await prometheus_api(http, prom_port, f"label/{label}/values", **{"match[]": selector}))["data"]

            for dash in dashboards():
                for v in dash["templating"]["list"]:
                    # project has values only with several projects (no project label otherwise): test_projects.py
                    # runs its query against an exporter with three
                    if v["type"] == "query" and v["name"] != "project":
                        selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"]["query"]).groups()
                        if not await label_values(substituted(selector), label):
                            empty.append(f"{dash['uid']} / variable {v['name']}: {v['query']['query']}")

            m = Mixin(load(ROOT / DEFAULT_CONFIG))
            faults = {(m.dashboards[b.key], p.title) for b in boards(m) for _, ps in b.rows for p in ps if p.fault}
            for dash in dashboards():
                for p in panels(dash):
                    for t in p["targets"]:
                        try:
                            result = await query(substituted(t["expr"]))
                        except ValueError as e:
                            broken.append(f"{dash['uid']} / {p['title']}: {e}")
                            continue
                        finite = [r for r in result if math.isfinite(float(r["value"][1]))]
                        if not finite:
                            empty.append(f"{dash['uid']} / {p['title']}{' (fault)' if (dash['uid'], p['title']) in faults else ''}: {t['expr']}")
                        if "$job" in t["expr"]:  # the job variable scopes the query to the exporter's job
                            jobs = {r["metric"].get("job") for r in result} - {None}
                            assert jobs <= {SUBSTITUTE["$job"]}, f"{dash['uid']} / {p['title']}: {jobs}"
                        if t.get("exemplar"):
                            exemplars = await prometheus_api(http, prom_port, "query_exemplars", query=substituted(t["expr"]),
                                                             start="0", end="9999999999")
                            if not exemplars["data"]:
                                empty.append(f"{dash['uid']} / {p['title']}: no exemplar for {t['expr']}")
        assert broken == [], broken
        assert empty == [], "\n".join(empty)
    finally:
        stop.set()
        prom.terminate()
        prom.wait(10)
        await runner.cleanup()
        await worker_runner.cleanup()
        await sip_runner.cleanup()
