"""Several LiveKit projects in one exporter (projects.py): three simulators, each its own LiveKit project
with its own key pair, watched by one exporter.

What is proven: each project's target (/metrics?project=<name>) reads its own LiveKit's truth and nobody
else's; webhooks are counted under the project whose key signed them, and the rejections that name no
project on the exporter's own target; voice-agent events under their token's project or the one
?project= names, with the refusals of every wrong combination; a single-project exporter keeps its one
target; the configuration refuses what would attribute a request to two projects. With the real
Prometheus on the bundle's generated prometheus.yml (prometheus.projects): four targets, every series
labelled with its project by relabelling, the recording rules and a dashboard query per project, an
alert that fires for the one project whose LiveKit is down, and the process metrics once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from common import fleet_series
from conftest import (
    add_rooms,
    free_port,
    prometheus_api,
    prometheus_query,
    require_binary,
    samples,
    start_bundle_prometheus,
    until_prometheus,
)
from livekit.protocol import models as proto_models
from livekit.protocol.webhook import WebhookEvent
from test_signals import Serve

from livekit_exporter import config as config_mod
from livekit_exporter.client import EventsClient
from livekit_exporter.server import build_app
from livekit_exporter.simulator import Delivery, Scenario, Simulator, WebhookSender
from livekit_exporter.simulator.voice_agents import VoiceAgentFleet
from livekit_exporter.simulator.webhooks import encode, request_headers, sign

WAIT = 60.0  # a bound, not a timing
FAST = Delivery(retry_wait_min=0.01, retry_wait_max=0.05)
PROJECTS = ("production", "staging", "eu")
ROOMS = {"production": 5, "staging": 2, "eu": 3}  # occupied rooms of each project's LiveKit
PROJECT_TOKEN = "production-events-token-0123456789"  # production's own token
ANY_TOKEN = "any-project-events-token-0123456789"  # events.tokens: names its project with ?project=


@pytest.fixture
async def lands():
    """Three LiveKit projects: a scenario (its truth and key pair) and a simulator (its API) each."""
    out = {}
    for name in PROJECTS:
        scenario = Scenario(api_key=f"API{name}", api_secret=f"{name}-secret-" + "s" * 32)
        add_rooms(scenario, ROOMS[name], prefix=f"{name}-")
        simulator = Simulator(scenario)
        await simulator.start()
        out[name] = (scenario, simulator)
    yield out
    for _, simulator in out.values():
        await simulator.stop()


@pytest.fixture
async def client(aiohttp_client, lands, tmp_path):
    """A test client of one exporter (in this process) watching the three projects."""
    return await aiohttp_client(build_app(load_config(tmp_path, projects_yaml(lands))))


def projects_yaml(lands: dict, extra: str = "") -> str:
    entries = []
    for name, (scenario, simulator) in lands.items():
        tokens = f"\n    events_tokens: [{PROJECT_TOKEN}]" if name == "production" else ""
        entries.append(
            f"  - name: {name}\n"
            f"    livekit: {{url: '{simulator.url}', api_key: {scenario.api_key}, api_secret: '{scenario.api_secret}'}}"
            + tokens
        )
    return "projects:\n" + "\n".join(entries) + f"\nevents:\n  tokens: [{ANY_TOKEN}]\n" + extra


def load_config(tmp_path: Path, text: str) -> config_mod.Config:
    path = tmp_path / "cfg.yml"
    path.write_text(text)
    return config_mod.load(str(path), {})


async def scrape(client, project: str | None = None) -> dict:
    resp = await client.get("/metrics", params={"project": project} if project is not None else None)
    assert resp.status == 200, await resp.text()
    return samples(await resp.text())


def get(s: dict, name: str, **labels: str) -> float:
    return s.get((name, frozenset(labels.items())), 0.0)


def names(s: dict) -> set[str]:
    return {name for name, _ in s}


# -- each project's target reads its own LiveKit ------------------------------------------------------


async def test_each_projects_target_reads_its_own_livekit(client, lands):
    for name, (scenario, _) in lands.items():
        scraped = await scrape(client, name)
        assert get(scraped, "livekit_rooms", occupancy="occupied") == ROOMS[name] == len(scenario.rooms)
        assert get(scraped, "livekit_room_participants") == ROOMS[name]
        assert get(scraped, "livekit_up") == 1
        assert get(scraped, "livekit_api_up", service="room") == 1
        # the project's own API calls, and none of the process metrics (served once, on the own target)
        assert get(scraped, "livekit_api_request_duration_seconds_count", service="room", method="ListRooms") >= 1
        assert not {n for n in names(scraped) if n.startswith(("process_", "python_", "livekit_exporter_build"))}
        assert not any("project" in dict(labels) for _, labels in scraped)  # the label is Prometheus's to add
    own = await scrape(client)
    assert get(own, "process_resident_memory_bytes") > 0 and "livekit_exporter_build_info" in names(own)
    assert not {n for n in names(own) if n.startswith(("livekit_room", "livekit_api_", "voice_agent_"))}
    # an unknown project: 404, naming what may be asked
    resp = await client.get("/metrics", params={"project": "nope"})
    text = await resp.text()
    assert resp.status == 404 and "'nope'" in text and "eu, production, staging" in text
    ready = await client.get("/-/ready")
    assert ready.status == 200
    page = await (await client.get("/")).text()
    assert all(f"/metrics?project={name}" in page for name in PROJECTS)


async def test_one_projects_livekit_down_leaves_the_others_up(client, lands):
    await lands["eu"][1].stop()
    assert get(await scrape(client, "eu"), "livekit_up") == 0
    for name in ("production", "staging"):
        assert get(await scrape(client, name), "livekit_rooms", occupancy="occupied") == ROOMS[name]
    assert (await client.get("/-/ready")).status == 200  # one project down keeps ingest for the others


# -- webhooks: the signing key names the project ------------------------------------------------------


async def test_webhooks_are_counted_under_the_project_whose_key_signed_them(client, lands):
    url = str(client.make_url("/webhook"))
    senders = {}
    for name, (scenario, _) in lands.items():
        async with WebhookSender(scenario, url, delivery=FAST) as sender:
            for i in range(1 + PROJECTS.index(name)):  # 1, 2 and 3 lives: every project counts differently
                room = f"{name}-life-{i}"
                scenario.add_room(room)
                scenario.add_participant(room, "alice", tracks=[(proto_models.AUDIO, proto_models.MICROPHONE)])
                scenario.remove_participant(room, "alice")
                scenario.remove_room(room)
            await sender.flush()
        assert sender.stats["failed"] == 0 and sender.accepted
        senders[name] = sender
    for name, sender in senders.items():
        scraped = await scrape(client, name)
        truth = sender.truth()
        assert truth
        for key, expected in truth.items():
            assert scraped.get(key, 0.0) == pytest.approx(expected), (name, key)
        counted = sum(v for (n, _), v in scraped.items() if n == "livekit_webhook_events_total")
        assert counted == len(sender.accepted)  # and nothing of another project's
    own = await scrape(client)
    assert not {n for n in names(own) if n.startswith("livekit_webhook_events")}

    # a key no project has: counted on the exporter's own target; a known key with a bad signature: its project's
    scenario = lands["staging"][0]
    body = encode(WebhookEvent(event="room_started", id="EV_stray", created_at=int(time.time()),
                               room=proto_models.Room(name="x", sid="RM_x")))  # fmt: skip
    stranger = sign(body, "APIstranger", "stranger-secret-" + "s" * 32)
    resp = await client.post("/webhook", data=body, headers=request_headers(stranger))
    assert resp.status == 401 and "unknown_key" in await resp.text()
    forged = sign(body, scenario.api_key, "not-the-secret-" + "s" * 32)
    resp = await client.post("/webhook", data=body, headers=request_headers(forged))
    assert resp.status == 401 and "bad_signature" in await resp.text()
    assert get(await scrape(client), "livekit_webhook_rejected_total", reason="unknown_key") == 1
    assert get(await scrape(client, "staging"), "livekit_webhook_rejected_total", reason="bad_signature") == 1
    assert get(await scrape(client, "production"), "livekit_webhook_rejected_total", reason="bad_signature") == 0


# -- voice-agent events: the token's project, or the one ?project= names ------------------------------


async def test_events_are_counted_under_their_tokens_or_their_named_project(client, lands):
    base = str(client.make_url("/v1/events"))
    fleets = {}
    for project, url, token in (("production", base, PROJECT_TOKEN), ("eu", base + "?project=eu", ANY_TOKEN)):
        async with EventsClient(url, token, batch_size=20, flush_interval=0.01) as push:
            fleet = VoiceAgentFleet(push, seed=PROJECTS.index(project))
            fleet.simulate(calls=4 + PROJECTS.index(project))
            assert await push.flush(WAIT)
            assert push.stats.sent > 0 and push.stats.dropped_rejected == push.stats.dropped_failed == 0
        fleets[project] = fleet
    for project, fleet in fleets.items():
        scraped = await scrape(client, project)
        checked = 0
        for _, name, labels, sent in fleet_series(fleet.truth, "calls_started", "calls_ended", "turns", "events"):
            assert get(scraped, name, **labels) == sent, (project, name, labels)
            checked += 1
        assert checked > 5
    staging = await scrape(client, "staging")  # no events of its own
    assert sum(v for (n, _), v in staging.items() if n == "voice_agent_calls_started_total") == 0

    batch = json.dumps({"events": [{"type": "call_started", "agent": "a", "call_id": "c1", "direction": "inbound"}]})
    cases = [  # (token, query, status, reason, the target that counts the refusal)
        (PROJECT_TOKEN, "?project=staging", 403, "forbidden_project", "production"),
        (ANY_TOKEN, "", 400, "unknown_project", None),
        (ANY_TOKEN, "?project=mars", 400, "unknown_project", None),
        (PROJECT_TOKEN, "?project=mars", 403, "forbidden_project", "production"),
        ("unknown-token-0123456789abcdef", "?project=eu", 401, "unauthorized", None),
    ]
    for token, query, status, reason, counted_by in cases:
        before = await scrape(client, counted_by)
        resp = await client.post("/v1/events" + query, data=batch, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
        answer = await resp.json()
        assert resp.status == status, (query, answer)
        assert "project" in answer["error"] or status == 401, answer
        after = await scrape(client, counted_by)
        metric = "livekit_exporter_event_requests_rejected_total"
        assert get(after, metric, reason=reason) == get(before, metric, reason=reason) + 1, (token, query)
    # nothing of the refused batches was applied anywhere
    for project in PROJECTS:
        assert get(await scrape(client, project), "voice_agent_calls_started_total", agent="a", direction="inbound",
                   campaign="") == 0  # fmt: skip


async def test_a_single_project_exporter_keeps_its_one_target(aiohttp_client, lands, tmp_path):
    scenario, simulator = lands["staging"]
    text = (f"livekit: {{url: '{simulator.url}', api_key: {scenario.api_key}, api_secret: '{scenario.api_secret}'}}\n"
            f"events:\n  tokens: [{ANY_TOKEN}]\n")  # fmt: skip
    client = await aiohttp_client(build_app(load_config(tmp_path, text)))
    scraped = await scrape(client)
    assert get(scraped, "livekit_rooms", occupancy="occupied") == ROOMS["staging"]
    assert get(scraped, "process_resident_memory_bytes") > 0
    resp = await client.get("/metrics", params={"project": "staging"})
    assert resp.status == 404 and "monitors one LiveKit project" in await resp.text()
    resp = await client.post("/v1/events?project=staging", data='{"events": []}', headers={
        "Authorization": f"Bearer {ANY_TOKEN}", "Content-Type": "application/json"})  # fmt: skip
    assert resp.status == 400 and "monitors one LiveKit project" in (await resp.json())["error"]


# -- the configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "expected"), [
    ("duplicate name", "projects[1].name: 'production' is already the name of projects[0]"),
    ("shared key", "also signs the webhooks of project 'production'"),
    ("shared token", "is also one of events.tokens"),
    ("livekit too", "give either the livekit section"),
    ("webhooks.keys too", "webhooks.keys: with projects, give each project's key pairs"),
    ("bad name", "projects[0].name"),
])  # fmt: skip
def test_the_configuration_refuses_what_would_attribute_a_request_to_two_projects(lands, tmp_path, change, expected):
    text = projects_yaml(lands)
    edits = {
        "duplicate name": lambda t: t.replace("name: staging", "name: production"),
        "shared key": lambda t: t.replace("api_key: APIstaging", "api_key: APIproduction"),
        "shared token": lambda t: t.replace(f"tokens: [{ANY_TOKEN}]", f"tokens: [{PROJECT_TOKEN}]"),
        "livekit too": lambda t: "livekit: {url: 'http://127.0.0.1:1', api_key: k, api_secret: s}\n" + t,
        "webhooks.keys too": lambda t: t + "webhooks:\n  keys: [{api_key: k, api_secret: s}]\n",
        "bad name": lambda t: t.replace("name: production", "name: 'prod uction'"),
    }
    with pytest.raises(config_mod.ConfigError) as refused:
        load_config(tmp_path, edits[change](text))
    shown = "\n".join(refused.value.problems)
    assert expected in shown, shown
    assert "secret-ssss" not in shown  # no secret is ever quoted


# -- the real Prometheus on the bundle's prometheus.yml -----------------------------------------------


async def test_prometheus_labels_each_project_and_the_bundle_reads_them_apart(lands, tmp_path):
    require_binary("prometheus")
    config = tmp_path / "exporter.yml"
    config.write_text(projects_yaml(lands))
    prom_port = free_port()
    async with Serve(config) as exporter:
        overrides = {"prometheus.targets.exporter": [exporter.base.removeprefix("http://")],
                     "prometheus.projects": list(PROJECTS)}  # fmt: skip
        files, prom = start_bundle_prometheus(tmp_path, prom_port, overrides)
        try:
            async with aiohttp.ClientSession() as http:
                query = functools.partial(prometheus_query, http, prom_port)

                async def by_project(expr: str) -> dict[str, float]:
                    return {r["metric"].get("project", ""): float(r["value"][1]) for r in await query(expr)}

                async def ready() -> bool:
                    return (await by_project('up{job="livekit-exporter"} == 1')).keys() == {"", *PROJECTS} and (
                        len(await by_project("occupancy:livekit_rooms:max")) >= 3)  # fmt: skip

                await until_prometheus(prom, ready, "scraped the four targets", WAIT)

                # every project's series carry its label; the exporter's own process metrics come once, unlabelled
                assert await by_project('occupancy:livekit_rooms:max{occupancy="occupied"}') == {
                    name: float(n) for name, n in ROOMS.items()}  # fmt: skip
                assert (await by_project('process_resident_memory_bytes{job="livekit-exporter"} > 0')).keys() == {""}
                # every dashboard's project variable lists the projects, and a panel's query reads one of them
                for name, text in files.items():
                    if name.startswith("grafana/dashboards/"):
                        for variable in json.loads(text)["templating"]["list"]:
                            if variable["name"] == "project":
                                selector, label = re.fullmatch(
                                    r"label_values\((.*), (\w+)\)", variable["query"]["query"]
                                ).groups()
                                listed = await prometheus_api(http, prom_port, f"label/{label}/values",
                                                              **{"match[]": selector.replace("$job", "livekit-exporter")})  # fmt: skip
                                assert listed["data"] == sorted(PROJECTS), (name, listed)
                overview = json.loads(files["grafana/dashboards/livekit-overview.json"])
                (participants,) = [t["expr"] for p in overview["panels"] if p["title"] == "Participants"
                                   for t in p.get("targets", []) if "livekit_room_participants" in t["expr"]]  # fmt: skip
                for name, rooms in ROOMS.items():
                    expr = participants.replace("$job", "livekit-exporter").replace("$project", name)
                    (result,) = await query(expr)
                    assert float(result["value"][1]) == rooms, (name, expr)
                all_projects = participants.replace("$job", "livekit-exporter").replace("$project", ".*")
                assert float((await query(all_projects))[0]["value"][1]) == sum(ROOMS.values())

                # one project's LiveKit goes down: its alert, and only its, fires
                alerts = {a["alert"]: a for g in yaml.safe_load(files["prometheus/rules/livekit.alerts.yml"])["groups"]
                          for a in g["rules"] if "alert" in a}  # fmt: skip
                unreachable = alerts["LiveKitApiUnreachable"]["expr"]
                assert await query(unreachable) == []
                await lands["eu"][1].stop()
                deadline = time.monotonic() + WAIT
                while (firing := await by_project(unreachable)).keys() != {"eu"}:
                    assert not firing.keys() - {"eu"}, firing
                    assert time.monotonic() < deadline, "the eu project's alert never fired"
                    await asyncio.sleep(0.5)
        finally:
            prom.terminate()
            prom.wait(10)


# -- the chart: one ServiceMonitor endpoint per project -----------------------------------------------


def test_the_charts_servicemonitor_scrapes_each_project_as_its_own_target():
    from test_chart import CHART_DIR, objects, one  # helm-python-sdk: the chart test's extra

    values = yaml.safe_load((CHART_DIR / "ci" / "several-projects-values.yaml").read_text())
    names = [p["name"] for p in values["config"]["projects"]]
    assert names == ["production", "staging"]
    endpoints = one(objects(values), "ServiceMonitor")["spec"]["endpoints"]
    own, *per_project = endpoints
    assert "params" not in own and own["path"] == "/metrics"  # the exporter's own metrics, once
    assert [e["params"] for e in per_project] == [{"project": [n]} for n in names]
    assert [e["relabelings"] for e in per_project] == [
        [{"targetLabel": "project", "replacement": n, "action": "replace"}] for n in names]  # fmt: skip
    assert all(e["port"] == own["port"] and e["interval"] == own["interval"] for e in per_project)
    # the config the chart writes holds the projects and no livekit section
    (config_map,) = [o for o in objects(values) if o["kind"] == "ConfigMap" and "config.yml" in o["data"]]
    config = yaml.safe_load(config_map["data"]["config.yml"])
    assert [p["name"] for p in config["projects"]] == names and "livekit" not in config
    # a single-project install: one endpoint, as before
    assert len(one(objects({"livekit": {"url": "https://lk.example.com", "apiKey": "k", "apiSecret": "s" * 32}}),
                   "ServiceMonitor")["spec"]["endpoints"]) == 1  # fmt: skip


def test_the_log_scrubber_knows_every_projects_secrets(lands, tmp_path):
    from livekit_exporter.cli import _secrets

    config = load_config(tmp_path, projects_yaml(lands))
    scrubbed = set(_secrets(config))
    for scenario, _ in lands.values():
        assert scenario.api_secret in scrubbed  # each project's API secret (it also signs its webhooks)
    assert {PROJECT_TOKEN, ANY_TOKEN} <= scrubbed  # a project's events token, and one of events.tokens
