"""The series budget (labels.max_series_per_metric, labels.max_series) and a scrape that renders off
the event loop within its timeout, over real HTTP.

Values within labels.max_values still multiply: 50 agents x 50 providers x 50 models made 2.5 million
series, and one scrape of them blocked the loop for 21.7 s. These tests push combinations past the
budgets and check that every family stays within them, that __other__ holds the rest (the sums are
what was sent) and that livekit_exporter_label_overflow_total counts the folding; then that a long
rendering neither stops /-/healthy nor outlives the scrape's timeout.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

from conftest import AUTH, EVENTS_TOKEN, samples, value
from livekit.protocol import agent as proto_agent
from prometheus_client.core import GaugeMetricFamily

from livekit_exporter.config import EventsConfig, LabelsConfig, Secret, WebhooksConfig
from livekit_exporter.events.pipeline import REQUEST_BUCKETS
from livekit_exporter.server import EXPORTER, build_app
from livekit_exporter.simulator import Delivery, WebhookSender

OTHER = "__other__"
OVERFLOW = "livekit_exporter_label_overflow_total"
TOKENS = "voice_agent_llm_tokens_total"
DURATION = "voice_agent_llm_request_duration_seconds"
HISTOGRAM_CHILD = len(REQUEST_BUCKETS) + 3  # its buckets, +Inf, _sum and _count


def family(s: dict, name: str) -> dict[frozenset, float]:
    """The series of one family: {labels: value}, a histogram's _bucket/_sum/_count series included."""
    return {
        labels | {("__name__", sample)}: v
        for (sample, labels), v in s.items()
        if sample in (name, f"{name}_bucket", f"{name}_sum", f"{name}_count")
    }


def own(labels: frozenset) -> bool:
    return OTHER not in dict(labels).values()


async def budget_exporter(aiohttp_client, make_config, **labels):
    config = replace(
        make_config(),
        labels=LabelsConfig(**labels),
        events=EventsConfig(tokens=(Secret(EVENTS_TOKEN),), max_events=1000),
    )
    return await aiohttp_client(build_app(config))


async def push(client, events: list[dict]) -> None:
    for start in range(0, len(events), 1000):
        resp = await client.post("/v1/events", json={"events": events[start : start + 1000]}, headers=AUTH)
        assert resp.status == 200, await resp.text()


def llm(agent: str, provider: str, model: str, tokens: int = 1, duration: float | None = None) -> dict:
    event = {"type": "llm", "agent": agent, "provider": provider, "model": model, "input_tokens": tokens}
    if duration is not None:
        event["duration_seconds"] = duration
    return event


async def scrape(client) -> dict:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    return samples(await resp.text())


async def test_a_family_keeps_its_series_budget_and_other_holds_the_rest(aiohttp_client, make_config):
    """10 agents x 10 providers x 10 models, every value within labels.max_values: 1000 combinations
    of a counter and of a histogram, against 100 series per metric."""
    client = await budget_exporter(aiohttp_client, make_config, max_values=50, max_series_per_metric=100)
    combos = [(f"a{a}", f"p{p}", f"m{m}") for a in range(10) for p in range(10) for m in range(10)]
    await push(client, [llm(*c, tokens=3, duration=0.25) for c in combos])
    s = await scrape(client)

    tokens = family(s, TOKENS)
    assert len(tokens) <= 100
    assert sum(tokens.values()) == 3 * len(combos)  # nothing lost: __other__ holds the rest
    folded = {dict(labels)["model"] for labels in tokens if not own(labels)}
    assert folded == {OTHER}
    kept = sum(1 for labels in tokens if own(labels))
    assert 0 < kept < 100
    # Every event that is not in a series of its own had its model folded at least (the last
    # user-named label goes first), counted once per event.
    assert value(s, OVERFLOW, metric=TOKENS, label="model") == len(combos) - kept
    # The agent keeps its own sum while there is room: (agent, __other__, __other__) series exist.
    assert any(dict(labels)["agent"] != OTHER and not own(labels) for labels in tokens)

    durations = family(s, DURATION)
    assert len(durations) <= 100 and len(durations) % HISTOGRAM_CHILD == 0
    counts = {labels: v for labels, v in durations.items() if dict(labels)["__name__"] == f"{DURATION}_count"}
    assert sum(counts.values()) == len(combos)
    sums = [v for labels, v in durations.items() if dict(labels)["__name__"] == f"{DURATION}_sum"]
    assert sum(sums) == 0.25 * len(combos)
    catch_all = frozenset({("agent", OTHER), ("provider", OTHER), ("model", OTHER), ("__name__", f"{DURATION}_count")})
    assert counts[catch_all] > 0
    own_histograms = sum(1 for labels in counts if own(labels))
    assert value(s, OVERFLOW, metric=DURATION, label="model") == len(combos) - own_histograms

    # The budget holds for later pushes too: old combinations keep counting in their own series.
    first_own = next(labels for labels in tokens if own(labels))
    again = dict(first_own)
    await push(client, [llm(again["agent"], again["provider"], again["model"], tokens=5)] + [
        llm(f"b{i}", "p0", "m0") for i in range(40)
    ])
    s = await scrape(client)
    tokens = family(s, TOKENS)
    assert len(tokens) <= 100
    assert tokens[first_own] == 3 + 5
    assert sum(tokens.values()) == 3 * len(combos) + 5 + 40


async def test_the_families_together_keep_the_total_budget(aiohttp_client, make_config):
    """Every family has room (max_series_per_metric), but together they may hold labels.max_series."""
    client = await budget_exporter(
        aiohttp_client, make_config, max_values=1000, max_series_per_metric=100_000, max_series=1000
    )
    events = []
    for i in range(600):
        agent, provider, model = f"a{i % 30}", f"p{i % 7}", f"m{i}"
        events += [
            llm(agent, provider, model, tokens=2, duration=0.5),
            {"type": "stt", "agent": agent, "provider": provider, "model": model, "audio_seconds": 1},
            {"type": "tts", "agent": agent, "provider": provider, "model": model, "characters": 10},
        ]
    await push(client, events)
    s = await scrape(client)
    guarded = {k: v for k, v in s.items() if k[0].startswith("voice_agent_")}
    unpriced = {k: v for k, v in s.items() if k[0] == "livekit_exporter_unpriced_usage_events_total"}
    assert len(guarded) + len(unpriced) <= 1000
    assert sum(family(s, TOKENS).values()) == 2 * 600
    assert sum(family(s, "voice_agent_stt_audio_seconds_total").values()) == 600
    assert sum(family(s, "voice_agent_tts_characters_total").values()) == 10 * 600
    assert sum(v for (name, _), v in s.items() if name == f"{DURATION}_count") == 600
    assert sum(unpriced.values()) == 3 * 600  # no price table: every usage event is unpriced
    assert value(s, OVERFLOW, metric=TOKENS, label="model") > 0


async def test_report_gauges_over_the_budget_are_dropped_not_folded(aiohttp_client, make_config):
    """A dependency report whose series has no room is dropped and counted: an __other__ "up" would
    hide another dependency's outage."""
    client = await budget_exporter(aiohttp_client, make_config, max_values=1000, max_series_per_metric=100)
    reports = [{"type": "dependency_status", "agent": "a", "dependency": f"d{i}", "up": True} for i in range(150)]
    await push(client, reports)
    s = await scrape(client)
    up = family(s, "voice_agent_dependency_up")
    assert 0 < len(up) <= 100 and all(own(labels) for labels in up)
    dropped = 150 - len(up)
    assert value(s, OVERFLOW, metric="voice_agent_dependency_up", label="dependency") == dropped


async def test_scrape_time_gauges_keep_the_series_budget(scenario, simulator, exporter_client, make_config):
    """livekit_sip_calls{status,trunk}, rebuilt on every scrape: 50 trunks x 3 statuses (each within
    max_values) against 100 series; the busiest keep their labels, the rest are summed."""
    scenario.add_room("r")
    for i in range(150):
        scenario.add_sip_call("r", f"trunk-{i % 50}", status=("active", "ringing", "dialing")[i // 50])
    for _ in range(20):  # trunk-0 "active" is the busiest series
        scenario.add_sip_call("r", "trunk-0", status="active")
    cfg = replace(make_config(detail=True), labels=LabelsConfig(max_values=200, max_series_per_metric=100))
    client = await exporter_client(cfg)
    s = await scrape(client)
    calls = family(s, "livekit_sip_calls")
    assert len(calls) <= 100
    assert sum(calls.values()) == 170
    assert calls[frozenset({("status", "active"), ("trunk", "trunk-0"), ("__name__", "livekit_sip_calls")})] == 21
    assert any(dict(labels)["trunk"] == OTHER for labels in calls)
    assert value(s, OVERFLOW, metric="livekit_sip_calls", label="trunk") > 0


async def test_scrape_time_gauges_keep_the_budget_whatever_the_other_label(scenario, simulator, exporter_client,
                                                                        make_config):
    """sip.callStatus is an attribute, not an enum: 150 statuses x 2 trunks, so that even with the
    trunk folded 150 series would remain; the busiest but one keep their labels, one series with
    every label __other__ holds the rest."""
    scenario.add_room("r")
    for i in range(150):
        for trunk in ("trunk-a", "trunk-b"):
            scenario.add_sip_call("r", trunk, status=f"status-{i}")
    cfg = replace(make_config(detail=True), labels=LabelsConfig(max_values=1000, max_series_per_metric=100))
    s = await scrape(await exporter_client(cfg))
    calls = family(s, "livekit_sip_calls")
    assert len(calls) == 100
    assert sum(calls.values()) == 300
    catch_all = frozenset({("status", OTHER), ("trunk", OTHER), ("__name__", "livekit_sip_calls")})
    assert calls[catch_all] == 300 - 99
    assert value(s, OVERFLOW, metric="livekit_sip_calls", label="status") > 0


async def test_webhook_agent_and_trunk_counters_keep_the_series_budget(scenario, aiohttp_client, make_config):
    """150 agent names (within max_values) start and end jobs, against 100 series per metric."""
    config = replace(make_config(), labels=LabelsConfig(max_values=1000, max_series_per_metric=100),
                     webhooks=WebhooksConfig())
    client = await aiohttp_client(build_app(config))
    async with WebhookSender(scenario, str(client.make_url("/webhook")), delivery=Delivery(retry_wait_min=0.001,
                                                                                           retry_wait_max=0.01)) as sender:
        scenario.add_room("r")
        for i in range(150):
            dispatch = scenario.add_dispatch("r", f"agent-{i}", [proto_agent.JS_PENDING])
            scenario.set_job_status("r", dispatch.id, 0, proto_agent.JS_RUNNING)
            scenario.set_job_status("r", dispatch.id, 0, proto_agent.JS_SUCCESS)
        await sender.flush()
    assert len(sender.accepted) == len(sender.events)
    s = await scrape(client)
    for name in ("livekit_agent_jobs_started_total", "livekit_agent_jobs_ended_total"):
        jobs = family(s, name)
        assert len(jobs) <= 100
        assert sum(jobs.values()) == 150
        kept = sum(1 for labels in jobs if own(labels))
        assert value(s, OVERFLOW, metric=name, label="agent_name") == 150 - kept


# -- rendering off the loop, within the scrape's timeout --------------------------------------------


class BlockingCollector:
    """A collector of the exporter's registry whose collect() waits until the test releases it: a
    registry so large that its rendering takes as long as the test wants."""

    def __init__(self, longest: float):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.longest = longest

    def describe(self):
        return []  # (without it, the registry would collect once when the collector is registered)

    def collect(self):
        self.entered.set()
        self.release.wait(self.longest)
        yield GaugeMetricFamily("test_blocking_collector", "Rendered once released.", value=1)


async def blocked_exporter(aiohttp_client, make_config, longest: float):
    client = await aiohttp_client(build_app(make_config()))
    await scrape(client)  # the startup collection is over; the next scrapes block in the rendering
    blocker = BlockingCollector(longest)
    client.server.app[EXPORTER].telemetry.registry.register(blocker)
    return client, blocker


async def test_healthy_answers_while_a_scrape_renders(aiohttp_client, make_config):
    client, blocker = await blocked_exporter(aiohttp_client, make_config, longest=5)
    try:
        scrape_task = asyncio.ensure_future(client.get("/metrics"))
        assert await asyncio.to_thread(blocker.entered.wait, 10)
        healthy = await asyncio.wait_for(client.get("/-/healthy"), 2)
        assert healthy.status == 200
        # It answered while the rendering was still held (a blocked loop would answer only after it).
        assert not scrape_task.done()
    finally:
        blocker.release.set()
    resp = await asyncio.wait_for(scrape_task, 10)
    assert resp.status == 200
    assert value(await resp.text(), "test_blocking_collector") == 1


async def test_a_scrape_gets_503_when_its_rendering_outlives_the_timeout(aiohttp_client, make_config):
    client, blocker = await blocked_exporter(aiohttp_client, make_config, longest=20)
    try:
        timeout = {"X-Prometheus-Scrape-Timeout-Seconds": "1.5"}
        resp = await asyncio.wait_for(client.get("/metrics", headers=timeout), 10)
        assert resp.status == 503
        assert "labels.max_series" in await resp.text()
        assert blocker.entered.is_set() and not blocker.release.is_set()  # answered, the rendering still held
        # A second one waits for a rendering slot, or renders (held too): 503 either way.
        assert (await asyncio.wait_for(client.get("/metrics", headers=timeout), 10)).status == 503
    finally:
        blocker.release.set()
    client.server.app[EXPORTER].telemetry.registry.unregister(blocker)
    s = await scrape(client)
    assert value(s, "livekit_exporter_scrape_render_timeouts_total") == 2


# -- the budget's arithmetic, on the guard itself ---------------------------------------------------


def test_no_mix_of_families_and_combinations_passes_a_budget():
    """Random combinations into a counter, two histograms and a report gauge sharing one guard:
    after every step each family is within max_series_per_metric and all within max_series (as
    counted in the exposition), and each family's sum is what was added."""
    import random

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from livekit_exporter.guard import Family, LabelGuard

    rng = random.Random(11)
    registry = CollectorRegistry()
    overflow = Counter("overflow_total", "", ["metric", "label"], registry=registry)
    guard = LabelGuard(1000, overflow, max_series_per_metric=200, max_series=500)
    users = frozenset({"agent", "model"})
    counter = Family(Counter("c_total", "", ["agent", "kind", "model"], registry=registry), "c_total",
                     ("agent", "kind", "model"), guard, users)
    small = Family(Histogram("h1", "", ["agent"], buckets=(1, 2), registry=registry), "h1", ("agent",), guard, users)
    large = Family(Histogram("h2", "", ["agent", "model"], buckets=tuple(range(1, 21)), registry=registry), "h2",
                   ("agent", "model"), guard, users)
    gauge = Family(Gauge("g", "", ["agent"], registry=registry), "g", ("agent",), guard, users)
    sent = {"c_total": 0.0, "h1": 0, "h2": 0}
    held: set[tuple[str, ...]] = set()  # the gauge's series, some removed again (a report gone stale)
    for step in range(3000):
        agent, model, kind = f"a{rng.randrange(60)}", f"m{rng.randrange(60)}", rng.choice(("x", "y"))
        labels = gauge.report(agent)
        if labels is not None:
            gauge.metric.labels(*labels).set(1)
            held.add(labels)
        if held and rng.random() < 0.1:
            stale = rng.choice(sorted(held))
            gauge.remove(stale)
            held.discard(stale)
        counter(agent, kind, model).inc(2)
        sent["c_total"] += 2
        small(agent).observe(1.5)
        sent["h1"] += 1
        large(agent, model).observe(3)
        sent["h2"] += 1
        if step % 300 == 0 or step == 2999:
            s = samples(generate_latest(registry).decode())
            per = {name: len(family(s, name)) for name in ("c_total", "h1", "h2", "g")}
            assert all(n <= 200 for n in per.values()), per
            assert sum(per.values()) <= 500, per
            assert sum(family(s, "c_total").values()) == sent["c_total"]
            assert sum(v for (n, _), v in s.items() if n == "h1_count") == sent["h1"]
            assert sum(v for (n, _), v in s.items() if n == "h2_count") == sent["h2"]
            assert guard.series == sum(f.series_held for f in (counter, small, large, gauge))
            assert per["g"] == len(held)
    assert sum(per.values()) > 450  # the total budget was filled, not just respected
    assert sum(v for (n, _), v in s.items() if n == "overflow_total") > 0
