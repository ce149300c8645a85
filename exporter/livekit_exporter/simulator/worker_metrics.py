"""A simulated livekit-agents worker's /metrics (its `prometheus_port`), for one agent name.

livekit-agents serves these from livekit/agents/telemetry/metrics.py with prometheus_client, every
series labelled only by `nodename` (the host): lk_agents_worker_load (0-1, the CPU load it compares
with load_threshold), lk_agents_active_job_count, lk_agents_child_process_count and the
lk_agents_proc_initialize_duration_seconds histogram. Here the jobs are the scenario's running
dispatches of that agent, each costing a share of the load.

    app = worker_app(scenario, "support-agent", nodename="worker-1")
"""

from __future__ import annotations

from aiohttp import web
from livekit.protocol import agent as proto_agent
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .scenario import Scenario

LOAD_PER_JOB = 0.15
IDLE_PROCESSES = 2  # livekit-agents keeps warm processes for the next jobs


class _Worker:
    def __init__(self, scenario: Scenario, agent: str, nodename: str):
        self.scenario, self.agent, self.nodename = scenario, agent, nodename
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.init = Histogram(
            "lk_agents_proc_initialize_duration_seconds",
            "Time taken to initialize a process",
            ["nodename"],
            buckets=(0.1, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.seen: set[str] = set()

    def jobs(self) -> int:
        running = 0
        for room in self.scenario.rooms.values():
            for d in room.dispatches.values():
                if d.agent_name != self.agent:
                    continue
                for j in d.state.jobs:
                    if j.id not in self.seen:
                        self.seen.add(j.id)
                        self.init.labels(self.nodename).observe(0.4)
                    running += j.state.status == proto_agent.JS_RUNNING
        return running

    def collect(self):
        jobs = self.jobs()
        for name, doc, value in (
            ("lk_agents_worker_load", "Worker load percentage", min(1.0, jobs * LOAD_PER_JOB)),
            ("lk_agents_active_job_count", "Active jobs", jobs),
            ("lk_agents_child_process_count", "Total number of child processes", jobs + IDLE_PROCESSES),
        ):
            g = GaugeMetricFamily(name, doc, labels=["nodename"])
            g.add_metric([self.nodename], value)
            yield g


def worker_app(scenario: Scenario, agent: str, nodename: str = "worker-1") -> web.Application:
    worker = _Worker(scenario, agent, nodename)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(worker.registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
