"""The exporter's long-lived metrics: one registry per running exporter.

Event-driven numbers (webhooks, pushed agent events) and the exporter's own instrumentation live
here as ordinary Counters and Histograms. Numbers read from LiveKit on a scrape never do: they are
built fresh on every scrape by livekit_state.
"""

from __future__ import annotations

import platform

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

from . import __version__
from .config import LabelsConfig
from .guard import LabelGuard

# `_created` series double the output and no query here uses them.
disable_created_metrics()

API_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


class Telemetry:
    def __init__(self, label_max_values: int = LabelsConfig.max_values):
        self.label_max_values = label_max_values  # the cardinality guard's bound, for every source
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        build = Gauge(
            "livekit_exporter_build_info",
            "A metric with a constant 1, labelled by the exporter's version and the versions it runs with.",
            ["version", "python_version", "livekit_api_version", "livekit_protocol_version"],
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version(), _version("livekit-api"), _version("livekit-protocol")).set(
            1
        )
        self.label_overflow = Counter(
            "livekit_exporter_label_overflow_total",
            "Label values folded into __other__ by the cardinality guard.",
            ["metric", "label"],
            registry=self.registry,
        )
        self.guard = LabelGuard(label_max_values, self.label_overflow)
        self.api_request_duration = Histogram(
            "livekit_api_request_duration_seconds",
            "Duration of the exporter's calls to the LiveKit server API, failed calls included.",
            ["service", "method"],
            buckets=API_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.api_errors = Counter(
            "livekit_api_errors_total",
            "Failed LiveKit server API calls, by Twirp error code (or timeout, connection, unknown).",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.scrapes = Counter(
            "livekit_exporter_scrapes_total",
            "Scrapes of the metrics endpoint, by whether they joined a collection already in flight.",
            ["collection"],
            registry=self.registry,
        )
