"""Two exporter replicas behind one Service, as real `livekit-exporter serve` processes against the
simulator: webhooks and event batches spread across them, LiveKit state read by each.

A Service is modelled by Balancer, a forwarding proxy on loopback: `round_robin` sends each request to
the next replica (the worst case: an L7 proxy balancing per request; kube-proxy balances per
connection), `client_ip` keeps each client address on one replica (sessionAffinity: ClientIP).

What is proven: every counter summed over the replicas is what was sent; the bundle's queries of the
LiveKit-state gauges (max across replicas) read the simulator's truth in the real Prometheus, not twice
it; a LiveKit retry that lands on the other replica over-counts by exactly one (deduplication is per
process), and with ClientIP affinity a LiveKit node's retries land where its first attempt did; the
chart's Service has that affinity by default.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from common import fleet_series
from conftest import EVENTS_TOKEN, add_rooms, free_port, prometheus_query, require_binary, samples, start_bundle_prometheus, until_prometheus
from livekit.protocol import egress as proto_egress
from livekit.protocol import models as proto_models
from livekit.protocol.webhook import WebhookEvent
from test_signals import Serve, write_config

from livekit_exporter.client import EventsClient
from livekit_exporter.simulator import Delivery, WebhookSender
from livekit_exporter.simulator.voice_agents import VoiceAgentFleet
from livekit_exporter.simulator.webhooks import encode, request_headers, sign

WAIT = 60.0  # generous bound for anything below; nothing is timed
FAST = Delivery(retry_wait_min=0.01, retry_wait_max=0.05)
FORWARDED = ("Authorization", "Content-Type", "Content-Encoding", "Idempotency-Key", "User-Agent")


class Balancer:
    """A Service in front of the replicas: forwards /webhook and /v1/events, and records where each went."""

    def __init__(self, backends: list[str], mode: str):
        assert mode in ("round_robin", "client_ip")
        self.backends, self.mode = backends, mode
        self._next = itertools.cycle(range(len(backends)))
        self.sticky: dict[str, int] = {}  # client address -> replica (kube-proxy's affinity table)
        self.accepted: dict[str, set[int]] = defaultdict(set)  # webhook id -> replicas that counted it
        self.webhooks: Counter[int] = Counter()  # replica -> webhook requests it answered 2xx
        self.batches: Counter[int] = Counter()  # replica -> event batches it took
        self.call_events: dict[str, dict[str, int]] = defaultdict(dict)  # call_id -> {type: replica}
        self.queued: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)  # (agent, campaign) -> {replica: last}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def pick(self, remote: str) -> int:
        if self.mode == "client_ip":
            if remote not in self.sticky:  # the first connection picks; the client sticks to it
                self.sticky[remote] = next(self._next)
            return self.sticky[remote]
        return next(self._next)

    async def forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        i = self.pick(request.remote or "")
        headers = {k: request.headers[k] for k in FORWARDED if k in request.headers}
        async with self._session.post(self.backends[i] + request.path, data=body, headers=headers) as resp:
            answer = await resp.read()
            status, out_headers = resp.status, {k: v for k, v in resp.headers.items() if k in ("Retry-After",)}
        if 200 <= status < 300:
            if request.path == "/webhook":
                self.webhooks[i] += 1
                if json.loads(answer).get("result") == "accepted":
                    self.accepted[json.loads(answer)["id"]].add(i)
            else:
                self.batches[i] += 1
                for ev in json.loads(body)["events"]:
                    if ev["type"] in ("call_started", "call_ended"):
                        self.call_events[ev["call_id"]][ev["type"]] = i
                    elif ev["type"] == "calls_queued":
                        self.queued[ev["agent"], ev.get("campaign", "")][i] = ev["queued"]
        return web.Response(status=status, body=answer, headers=out_headers, content_type="application/json")

    async def __aenter__(self) -> Balancer:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT))
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/webhook", self.forward)
        app.router.add_post("/v1/events", self.forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # every loopback address, so that clients bound to 127.0.0.2, 127.0.0.3 are told apart
        await web.TCPSite(self._runner, "0.0.0.0", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
        await self._session.close()


class Replicas:
    """`count` real exporter processes on one configuration, each on its own port."""

    def __init__(self, tmp_path: Path, simulator, scenario, count: int = 2):
        self.config = tmp_path / "cfg.yml"
        write_config(self.config, simulator, scenario, [EVENTS_TOKEN])
        self.serves = [Serve(self.config) for _ in range(count)]

    @property
    def urls(self) -> list[str]:
        return [s.base for s in self.serves]

    async def __aenter__(self) -> Replicas:
        for s in self.serves:
            await s.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for s in self.serves:
            await s.__aexit__(*exc)

    async def scrapes(self) -> list[dict]:
        out = []
        for s in self.serves:
            async with s.session.get(s.base + "/metrics") as resp:
                out.append(samples(await resp.text()))
        return out

    async def summed(self) -> dict:
        """Every sample summed over the replicas."""
        total: dict = defaultdict(float)
        for one in await self.scrapes():
            for k, v in one.items():
                total[k] += v
        return total


def get(s: dict, name: str, **labels: str) -> float:
    return s.get((name, frozenset(labels.items())), 0.0)


def node_session(address: str) -> aiohttp.ClientSession:
    """An HTTP client that sends from `address`: one LiveKit node."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), force_close=True))


def world(scenario) -> None:
    """A small LiveKit life: every webhook kind the exporter counts, more than once."""
    trunk = scenario.add_trunk("inbound", "in-0")
    for i in range(12):
        room = f"room-{i}"
        scenario.add_room(room)
        scenario.add_participant(room, "alice", tracks=[(proto_models.AUDIO, proto_models.MICROPHONE)])
        scenario.add_participant(room, "bob")
        sip = scenario.add_sip_call(room, trunk, "active")
        eg = scenario.add_egress(room, "room_composite")
        scenario.set_egress_status(eg.egress_id, proto_egress.EGRESS_COMPLETE if i % 3 else proto_egress.EGRESS_FAILED)
        scenario.remove_participant(room, sip.identity, proto_models.DisconnectReason.CLIENT_INITIATED)
        scenario.remove_participant(room, "bob")
        if i % 2:
            scenario.remove_room(room)


async def send_world(scenario, url: str, delivery: Delivery) -> WebhookSender:
    """world()'s webhooks, signed and sent to `url` until every one is delivered: the sender, for its
    truth and stats."""
    async with WebhookSender(scenario, url, delivery=delivery) as sender:
        world(scenario)
        await sender.flush()
    return sender


# -- counters: summed over the replicas, what was sent ---------------------------------------------


async def test_counters_summed_over_replicas_equal_what_was_sent(scenario, simulator, tmp_path):
    async with Replicas(tmp_path, simulator, scenario) as replicas, \
            Balancer(replicas.urls, "round_robin") as service:  # fmt: skip
        sender = await send_world(scenario, service.url + "/webhook", FAST)
        async with EventsClient(service.url + "/v1/events", EVENTS_TOKEN, batch_size=7, flush_interval=0.01) as client:
            fleet = VoiceAgentFleet(client, seed=7)
            for _ in range(6):  # flushes between the calls: many batches, spread over both replicas
                fleet.simulate(calls=5)
                assert await client.flush(WAIT)
        total, each = await replicas.summed(), await replicas.scrapes()

    assert sender.stats["failed"] == 0 and len(sender.accepted) == len(sender.events) > 50
    # both replicas took a share of each kind of traffic
    assert min(service.webhooks[i] for i in (0, 1)) >= len(sender.events) // 2
    assert min(service.batches[i] for i in (0, 1)) >= 5
    # every webhook counter, histogram count and sum: the sum over the replicas is what LiveKit sent
    truth = sender.truth()
    assert truth
    for (name, labels), expected in truth.items():
        assert total.get((name, labels), 0.0) == pytest.approx(expected), (name, dict(labels))
    assert get(total, "livekit_webhook_duplicates_total") == 0
    counted = [sum(v for (name, _), v in one.items() if name == "livekit_webhook_events_total") for one in each]
    assert sum(counted) == len(sender.events) and min(counted) > 0  # neither replica alone has the truth
    # every voice-agent counter: the sum over the replicas is what the agents sent
    t = fleet.truth
    for _, name, labels, sent in fleet_series(t, "calls_started", "calls_ended", "turns", "llm_tokens", "tts_characters",
                                              "events"):
        assert get(total, name, **labels) == sent, (name, labels)
    for agent, latencies in t.turn_latency.items():
        assert get(total, "voice_agent_turn_latency_seconds_count", agent=agent) == len(latencies)
    # The active-call gauge is per process: a call whose call_ended reached the other replica stays
    # active on the one that saw it start (until events.call_ttl). Summed, it reads exactly those calls.
    split = sum(1 for c in service.call_events.values() if c.get("call_ended", c["call_started"]) != c["call_started"])
    assert sum(t.active.values()) == 0 and split > 0
    assert sum(v for (name, _), v in total.items() if name == "voice_agent_calls_active") == split
    # A report gauge (queued calls) is the last report each replica received; `max` across replicas reads
    # the highest of those, the truth only when a reporter's reports reach one replica (ClientIP affinity).
    assert t.queued
    for (agent, campaign), last in t.queued.items():
        per_replica = service.queued[agent, campaign]
        assert [get(one, "voice_agent_calls_queued", agent=agent, campaign=campaign) for one in each] == [
            per_replica.get(i, 0) for i in (0, 1)]  # fmt: skip
        assert last in per_replica.values()


# -- state gauges: the bundle's queries read them once, not once per replica ------------------------


async def test_state_gauges_do_not_double_in_the_bundles_queries(scenario, simulator, tmp_path):
    require_binary("prometheus")  # before the world is built: a missing binary skips (fails in CI) at once
    add_rooms(scenario, 4)  # occupied
    scenario.add_room("empty-0")
    scenario.add_room("empty-1")
    scenario.add_room("full", max_participants=1)
    scenario.add_participant("full", "carol")
    for room in ("r0", "r1", "r2"):
        scenario.add_egress(room, "room_composite")
    trunk = scenario.add_trunk("inbound", "in-0")
    scenario.add_sip_call("r3", trunk, "active")
    # the truth, from the simulator's world: 5 occupied rooms (r0..r3, full), 2 empty, 3 egress running
    rooms = scenario.rooms.values()
    occupied = sum(1 for r in rooms if r.info.num_participants > 0)
    empty, participants, egress = len(rooms) - occupied, sum(r.info.num_participants for r in rooms), 3
    assert (occupied, empty) == (5, 2)

    prom_port = free_port()
    async with Replicas(tmp_path, simulator, scenario) as replicas:
        targets = [u.removeprefix("http://") for u in replicas.urls]
        files, prom = start_bundle_prometheus(tmp_path, prom_port, {"prometheus.targets.exporter": targets})
        try:
            async with aiohttp.ClientSession() as http:
                query = functools.partial(prometheus_query, http, prom_port)

                async def scalar(expr: str) -> float | None:
                    result = await query(expr)
                    assert len(result) <= 1, (expr, result)
                    return float(result[0]["value"][1]) if result else None

                # both replicas scraped, and the recording rules evaluated on what they scraped
                async def ready() -> bool:
                    return (await scalar('count(up{job="livekit-exporter"} == 1)') == 2
                            and await scalar('count(count by (instance) (livekit_rooms))') == 2
                            and await scalar('sum(occupancy:livekit_rooms:max)') is not None
                            and await scalar('count(service:livekit_api_up:max)') is not None)  # fmt: skip

                await until_prometheus(prom, ready, "scraped both replicas", WAIT)

                # the naive sum doubles: why every rule and panel takes max across replicas
                assert await scalar('sum(livekit_rooms{job="livekit-exporter"})') == 2 * len(scenario.rooms)
                # the recording rules
                assert await scalar('occupancy:livekit_rooms:max{occupancy="occupied"}') == occupied
                assert await scalar('occupancy:livekit_rooms:max{occupancy="empty"}') == empty
                assert readings(await query("service:livekit_api_up:max")) == readings(await query(
                    f'max by (cluster, namespace, job, service) (livekit_api_up{{instance="{targets[0]}"}})'))
                assert await scalar("min(service:livekit_api_up:max)") == 1 == await scalar("max(service:livekit_api_up:max)")
                # the dashboards' state() queries: max without (instance, pod), then summed
                state = "sum(max without (instance, pod) ({}))"
                assert await scalar(state.format('livekit_rooms{job="livekit-exporter"}')) == len(scenario.rooms)
                assert await scalar(state.format('livekit_room_participants{job="livekit-exporter"}')) == participants
                assert await scalar(state.format('livekit_rooms_full{job="livekit-exporter"}')) == 1
                assert await scalar(state.format('livekit_egress_active{job="livekit-exporter"}')) == egress
                # every state query of every generated dashboard (one without a rate of a counter)
                # reads what one replica alone reads
                one = f'livekit-exporter",instance="{targets[0]}'
                checked = 0
                for name, text in files.items():
                    if not name.startswith("grafana/dashboards/"):
                        continue
                    for expr in dashboard_exprs(json.loads(text)):
                        if "max without (instance, pod)" not in expr or "rate(" in expr or "increase(" in expr:
                            continue
                        both = await query(substituted(expr, "livekit-exporter"))
                        alone = await query(substituted(expr, one))
                        assert readings(both) == readings(alone), expr
                        checked += 1
                assert checked >= 5
        finally:
            prom.terminate()
            prom.wait(10)


SUBSTITUTE = {"$__rate_interval": "8s", "$__range": "40s", "$__interval": "2s", "$project": ".*", "$agent": ".*", "$campaign": ".*",
              "$instance": ".*", "$node": ".*", "$provider": ".*", "$model": ".*"}


def substituted(expr: str, job: str) -> str:
    for k, v in {**SUBSTITUTE, "$job": job}.items():
        expr = expr.replace(k, v)
    return expr


def dashboard_exprs(dash: dict) -> list[str]:
    out = []
    stack = list(dash.get("panels", []))
    while stack:
        p = stack.pop()
        stack.extend(p.get("panels", []))
        out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
    return out


def readings(result: list) -> dict:
    """A query's result without the replica labels: {labels: value}."""
    out = {}
    for r in result:
        labels = frozenset((k, v) for k, v in r["metric"].items() if k not in ("instance", "pod", "__name__"))
        v = float(r["value"][1])
        out[labels] = None if math.isnan(v) else v
    return out


# -- a retry that lands on the other replica -------------------------------------------------------


def webhook(event_id: str) -> bytes:
    now = int(time.time())
    return encode(WebhookEvent(event="room_started", id=event_id, created_at=now,
                               room=proto_models.Room(sid="RM_" + event_id, name=event_id, creation_time=now)))  # fmt: skip


async def deliver_twice(scenario, url: str, nodes: dict[str, str], n: int) -> None:
    """Each LiveKit node sends n webhooks, each once more as LiveKit does when the answer was lost."""
    for node, address in nodes.items():
        async with node_session(address) as http:
            for i in range(n):
                body = webhook(f"EV_{node}_{i}")
                headers = request_headers(sign(body, scenario.api_key, scenario.api_secret))
                for _ in range(2):  # the first attempt and its retry, the same request
                    async with http.post(url, data=body, headers=headers) as resp:
                        assert resp.status == 200


async def test_a_retry_on_the_other_replica_counts_twice_and_client_ip_affinity_keeps_it_on_one(
    scenario, simulator, tmp_path
):
    n = 20
    nodes = {"node-a": "127.0.0.2", "node-b": "127.0.0.3"}  # two LiveKit nodes, two source addresses
    async with Replicas(tmp_path, simulator, scenario) as replicas:
        before = await replicas.summed()
        # sessionAffinity: None, balanced per request: every retry reaches the other replica
        async with Balancer(replicas.urls, "round_robin") as service:
            await deliver_twice(scenario, service.url + "/webhook", nodes, n)
        after = await replicas.summed()
        crossed = sum(len(replicas_) - 1 for replicas_ in service.accepted.values())
        assert crossed == 2 * n  # each retry went to the replica the first attempt did not
        over = get(after, "livekit_webhook_events_total", event="room_started") - get(
            before, "livekit_webhook_events_total", event="room_started")  # fmt: skip
        assert over == 2 * n + crossed  # 2n webhooks sent, counted 4n times: over-counted by the crossed retries
        assert get(after, "livekit_room_sessions_started_total") - get(before, "livekit_room_sessions_started_total") == 4 * n
        assert get(after, "livekit_webhook_duplicates_total") == get(before, "livekit_webhook_duplicates_total")

        # sessionAffinity: ClientIP: each node's retries reach the replica its first attempt did
        before = after
        async with Balancer(replicas.urls, "client_ip") as service:
            await deliver_twice(scenario, service.url + "/webhook", {k + "-2": v for k, v in nodes.items()}, n)
        after = await replicas.summed()
        assert sorted(service.sticky.values()) == [0, 1]  # the nodes spread over both replicas
        assert all(len(r) == 1 for r in service.accepted.values())
        assert get(after, "livekit_webhook_events_total", event="room_started") - get(
            before, "livekit_webhook_events_total", event="room_started") == 2 * n  # fmt: skip
        assert get(after, "livekit_webhook_duplicates_total") - get(before, "livekit_webhook_duplicates_total") == 2 * n


async def test_webhook_retries_spread_per_request_over_count_by_the_cross_replica_ones(scenario, simulator, tmp_path):
    """LiveKit's own retries (answers lost, replays) through a per-request balancer: the sum over the
    replicas counts each event once per replica that accepted it, which the balancer measured."""
    delivery = Delivery(retry_wait_min=0.01, retry_wait_max=0.05, lost_answer_rate=0.3, replay_rate=0.2, seed=5)
    async with Replicas(tmp_path, simulator, scenario) as replicas, \
            Balancer(replicas.urls, "round_robin") as service:  # fmt: skip
        sender = await send_world(scenario, service.url + "/webhook", delivery)
        total = await replicas.summed()
    assert sender.stats["lost_answers"] > 0 and sender.stats["replays"] > 0
    counted = sum(v for (name, _), v in total.items() if name == "livekit_webhook_events_total")
    crossed = sum(len(r) - 1 for r in service.accepted.values())
    assert crossed > 0
    assert counted == len(service.accepted) + crossed
    # every other 2xx answer was a retry or replay that reached the replica that had counted it: its dedup took it
    assert get(total, "livekit_webhook_duplicates_total") == sum(service.webhooks.values()) - counted


# -- the chart: the ingest Service keeps a client on one replica by default -------------------------


def test_the_charts_service_has_client_ip_affinity_by_default():
    """Rendered with the real Helm SDK: one LiveKit node (one source address) stays on one replica."""
    from test_chart import objects, one

    assert one(objects(), "Service")["spec"]["sessionAffinity"] == "ClientIP"
    assert one(objects({"service": {"sessionAffinity": "None"}}), "Service")["spec"]["sessionAffinity"] == "None"
