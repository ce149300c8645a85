"""The exporter's long-lived metrics: one registry per running exporter.

Event-driven numbers (webhooks, pushed agent events) and the exporter's own instrumentation live
here as ordinary Counters and Histograms. Numbers read from LiveKit on a scrape never do: they are
built fresh on every scrape by livekit_state.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import platform
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.registry import Collector

from . import __version__
from .config import LabelsConfig
from .guard import LabelGuard
from .logsetup import RateLimitedLog

log = logging.getLogger(__name__)

# `_created` series double the output and no query here uses them.
disable_created_metrics()

API_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Renderings running at once in worker threads. A rendering past its scrape's deadline is not
# waited for but runs to its end (a thread cannot be stopped): this bounds how many can pile up.
MAX_RENDERS = 2
RENDER_LOG_WINDOW = 60.0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


class Telemetry:
    """One registry and its cardinality guard. `process`: the exporter's own registry, with the
    process, platform, GC and build-info collectors; a project of several (projects.py) has a registry
    without them, so that they are served once, on the exporter's own target."""

    def __init__(self, labels: LabelsConfig | None = None, *, process: bool = True):
        labels = labels or LabelsConfig()
        # The cardinality guard's bounds, for every source.
        self.label_max_values = labels.max_values
        self.label_max_series_per_metric = labels.max_series_per_metric
        self.registry = CollectorRegistry(auto_describe=True)
        self._render_slots = asyncio.Semaphore(MAX_RENDERS)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
            build = self.gauge(
                "livekit_exporter_build_info",
                "A metric with a constant 1, labelled by the exporter's version and the versions it runs with.",
                ["version", "python_version", "livekit_api_version", "livekit_protocol_version"],
            )
            build.labels(
                __version__, platform.python_version(), _version("livekit-api"), _version("livekit-protocol")
            ).set(1)
        self.label_overflow = self.counter(
            "livekit_exporter_label_overflow_total",
            "Label values folded into __other__ by the cardinality guard (over labels.max_values, or a new "
            "label combination over labels.max_series_per_metric or labels.max_series).",
            ["metric", "label"],
        )
        self.guard = LabelGuard(labels.max_values, self.label_overflow, labels.max_series_per_metric, labels.max_series)
        self.api_request_duration = self.histogram(
            "livekit_api_request_duration_seconds",
            "Duration of the exporter's calls to the LiveKit server API, failed calls included.",
            ["service", "method"],
            API_LATENCY_BUCKETS,
        )
        self.api_errors = self.counter(
            "livekit_api_errors_total",
            "Failed LiveKit server API calls, by Twirp error code (or timeout, connection, unknown).",
            ["service", "method", "code"],
        )
        self.render_timeouts = self.counter(
            "livekit_exporter_scrape_render_timeouts_total",
            "Scrapes answered 503 because their metrics were not rendered within the scrape budget.",
        )
        self._render_log = RateLimitedLog(log, "scrape render timeouts not logged", 1, RENDER_LOG_WINDOW)
        self.scrapes = self.counter(
            "livekit_exporter_scrapes_total",
            "Scrapes of the metrics endpoint, by whether they joined a collection already in flight.",
            ["collection"],
        )

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        """A counter on the exporter's registry (its name written with _total, as it is exposed)."""
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
        """A gauge on the exporter's registry."""
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: Iterable[str], buckets: Sequence[float]) -> Histogram:
        """A histogram on the exporter's registry."""
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    async def render(
        self, view: Collector, encoder: Callable[[Collector], bytes], compress: bool, timeout: float
    ) -> bytes | None:
        """The exposition of `view` (gzip-compressed when `compress`), built in a worker thread so
        the event loop serves other requests meanwhile; None when it is not done within `timeout`
        seconds (nor started: at most MAX_RENDERS run at once).

        prometheus-client is thread-safe for this: every metric value and each metric's children
        map are read under their locks, and the registry copies its collectors under its own.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._render_slots.acquire(), timeout)
        except TimeoutError:
            self._timed_out(timeout, "waiting for an earlier rendering to end")
            return None
        rendering = loop.run_in_executor(None, _render, view, encoder, compress)
        rendering.add_done_callback(self._rendered)
        try:
            return await asyncio.wait_for(asyncio.shield(rendering), max(0.0, deadline - loop.time()))
        except TimeoutError:
            self._timed_out(timeout, "rendering")
            return None

    def _timed_out(self, timeout: float, doing: str) -> None:
        self.render_timeouts.inc()
        self._render_log.warning(
            "render",
            f"a scrape was answered 503: still {doing} after {timeout:.3g} s (its budget: the scrape timeout minus "
            "collect.timeout_margin); lower labels.max_series or raise the scrape timeout",
        )

    def _rendered(self, rendering: asyncio.Future[bytes]) -> None:
        self._render_slots.release()
        if not rendering.cancelled():
            rendering.exception()  # retrieved: a late failure is the waiting scrape's, or nobody's


def _render(view: Collector, encoder: Callable[[Collector], bytes], compress: bool) -> bytes:
    body = encoder(view)
    return gzip.compress(body, compresslevel=1) if compress else body
