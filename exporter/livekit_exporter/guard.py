"""The cardinality guard: every user-named label keeps at most N distinct values.

Values beyond the cap become ``__other__`` and are counted in
``livekit_exporter_label_overflow_total{metric,label}``, so a flood of agent names, trunks or models
can never blow up the series count.

By default each (metric, label) admits its own values. A `scope` makes several metrics share one
admitted set per label: the voice_agent_* metrics use the scope "voice_agent", so an agent is
either itself in every one of them or ``__other__`` in every one, never itself in one and folded in
another. Overflows are still counted per metric.
"""

from __future__ import annotations

from prometheus_client import Counter

OTHER = "__other__"


class LabelGuard:
    """Admits the first `max_values` distinct values of each (metric or scope, label); folds the rest."""

    def __init__(self, max_values: int, overflow: Counter):
        self.max_values = max_values
        self._overflow = overflow
        self._seen: dict[tuple[str, str], set[str]] = {}

    def __call__(self, metric: str, label: str, value: str, scope: str | None = None) -> str:
        seen = self._seen.setdefault((scope or metric, label), set())
        if value in seen:
            return value
        if len(seen) < self.max_values:
            seen.add(value)
            return value
        self._overflow.labels(metric, label).inc()
        return OTHER

    def forget(self, metric: str, label: str, value: str) -> None:
        """Frees a slot, for labels whose series are removed (a gauge whose subject went away).

        `metric` is the scope when the value was admitted under one."""
        self._seen.get((metric, label), set()).discard(value)
