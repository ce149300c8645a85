"""The cardinality guard: values per label, and series per metric and in total.

Two bounds, both counted in ``livekit_exporter_label_overflow_total{metric,label}`` (one per label
value folded into ``__other__``):

* values: every user-named label keeps at most `labels.max_values` distinct values; the rest become
  ``__other__``. By default each (metric, label) admits its own values. A `scope` makes several
  metrics share one admitted set per label: the voice_agent_* metrics use the scope "voice_agent",
  so an agent is either itself in every one of them or ``__other__`` in every one.
* series: values within their cap still multiply (50 agents x 50 providers x 50 models is 125,000
  label combinations, two million series for one histogram). A `Family` keeps at most
  `labels.max_series_per_metric` series, and all the families of one guard at most
  `labels.max_series` together. Series are counted as Prometheus counts them (a histogram's child
  is one series per bucket, +Inf, _sum and _count). Combinations that keep their values may use
  nine tenths of a budget; the last tenth is for folded ones. A new combination past that is folded:
  first its last user-named label becomes ``__other__``, then the one before, ... (so that
  ``(agent, __other__, __other__)`` keeps the agent's own sum while the folded tenth has room), and
  when even that has no room, into the family's catch-all, every label ``__other__``, whose room is
  reserved from the start. Nothing is lost (a sum over every series is what was sent) and neither
  budget is ever passed.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

OTHER = "__other__"

M = TypeVar("M", bound=Counter | Gauge | Histogram)

# Of each budget, the part that combinations keeping every value may use; the rest holds folded ones.
OWN_SHARE = 0.9


def series_per_child(metric: Counter | Gauge | Histogram) -> int:
    """Series one child of `metric` adds to the output (`_created` series are disabled)."""
    if isinstance(metric, Histogram):
        return len(metric._upper_bounds) + 2  # every bucket (+Inf included), _sum, _count
    return 1


class LabelGuard:
    """Admits the first `max_values` distinct values of each (metric or scope, label); folds the
    rest. Holds the total series budget of its families."""

    def __init__(
        self, max_values: int, overflow: Counter, max_series_per_metric: int = 10_000, max_series: int = 100_000
    ):
        self.max_values = max_values
        self.max_series_per_metric = max_series_per_metric
        self.max_series = max_series
        self.series = 0  # held by the families' children, __other__ included
        self.reserved = 0  # kept for the catch-alls not created yet
        self._overflow = overflow
        self._seen: dict[tuple[str, str], set[str]] = {}

    def __call__(self, metric: str, label: str, value: str, scope: str | None = None) -> str:
        if value == OTHER:
            return value  # already folded (a value taken from a guarded series); not a value to admit
        seen = self._seen.setdefault((scope or metric, label), set())
        if value in seen:
            return value
        if len(seen) < self.max_values:
            seen.add(value)
            return value
        self.overflowed(metric, label)
        return OTHER

    def overflowed(self, metric: str, label: str) -> None:
        self._overflow.labels(metric, label).inc()

    def forget(self, metric: str, label: str, value: str) -> None:
        """Frees a slot, for labels whose series are removed (a gauge whose subject went away).

        `metric` is the scope when the value was admitted under one."""
        self._seen.get((metric, label), set()).discard(value)

    def room(self, cost: int, folded: bool) -> bool:
        """Whether the total budget has room for `cost` more series besides the reserved ones: a
        series of its own values in the first nine tenths, a `folded` one in all of it."""
        limit = self.max_series if folded else int(self.max_series * OWN_SHARE)
        return self.series + self.reserved + cost <= limit


class Family(Generic[M]):
    """A labelled metric whose children are looked up by the raw label values, under both bounds.

    The guard runs once per new combination: a combination that kept every value is cached (the
    guard would keep it again, and count nothing). One that was folded into __other__ is never
    cached, so every later occurrence is counted as an overflow again.
    """

    def __init__(
        self,
        metric: M,
        name: str,
        labelnames: tuple[str, ...],
        guard: LabelGuard,
        guarded: frozenset[str],
        scope: str | None = None,
    ):
        self.metric: M = metric
        self.name, self.labelnames, self._guard, self._scope = name, labelnames, guard, scope
        self._labels = tuple((label, label in guarded) for label in labelnames)
        self._folds = [i for i, (_, g) in enumerate(self._labels) if g]
        self.cost = series_per_child(metric)
        self.series_held = 0  # series held by this family's children
        self._held: set[tuple[str, ...]] = set()  # the label values of its children
        self._catch_all = (OTHER,) * len(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        guard.reserved += self.cost  # the catch-all's room

    def guarded(self, values: tuple[str, ...]) -> tuple[str, ...]:
        """The values past the values-per-label cap (the series budget not applied)."""
        return tuple(
            self._guard(self.name, label, v, self._scope) if guarded else v
            for (label, guarded), v in zip(self._labels, values, strict=True)
        )

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            labels = self.resolve(values)
            child = self.metric.labels(*labels)
            if OTHER not in labels:
                self._children[values] = child
        return child

    def resolve(self, values: tuple[str, ...]) -> tuple[str, ...]:
        """The label values of the series `values` go to, under both bounds; holds that series."""
        capped = self.guarded(values)
        labels = self._fit(capped)
        for (label, _), before, after in zip(self._labels, capped, labels, strict=True):
            if after == OTHER and before != OTHER:
                self._guard.overflowed(self.name, label)
        return labels

    def report(self, *values: str) -> tuple[str, ...] | None:
        """The label values of a gauge report, or None when one overflowed or the series has no room:
        the report is dropped (and counted), since setting __other__ would let one report hide the
        others."""
        labels = self.guarded(values)
        if OTHER in labels:
            return None
        if labels in self._held or self._has_room(folded=False):
            self._hold(labels)
            return labels
        for label, guarded in self._labels:
            if guarded:
                self._guard.overflowed(self.name, label)
        return None

    def remove(self, labels: tuple[str, ...]) -> None:
        """Removes a child (a report gone stale) and gives its series back to the budgets."""
        self.metric.remove(*labels)
        if labels in self._held:
            self._held.discard(labels)
            self.series_held -= self.cost
            self._guard.series -= self.cost
            if labels == self._catch_all:
                self._guard.reserved += self.cost

    def _has_room(self, folded: bool) -> bool:
        budget = self._guard.max_series_per_metric
        limit = budget if folded else int(budget * OWN_SHARE)
        reserve = 0 if self._catch_all in self._held else self.cost
        return self.series_held + reserve + self.cost <= limit and self._guard.room(self.cost, folded)

    def _hold(self, labels: tuple[str, ...]) -> None:
        if labels in self._held:
            return
        self._held.add(labels)
        self.series_held += self.cost
        self._guard.series += self.cost
        if labels == self._catch_all:
            self._guard.reserved -= self.cost

    def _fit(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        """`labels` if its series exists or has room; else it with its last user-named labels folded,
        one more at a time, as long as one of those exists or has room; else the catch-all."""
        folded = list(labels)
        for i in (None, *reversed(self._folds)):
            if i is not None:
                if folded[i] == OTHER:
                    continue
                folded[i] = OTHER
            candidate = tuple(folded)
            if candidate in self._held:
                return candidate
            if self._has_room(folded=OTHER in candidate):
                self._hold(candidate)
                return candidate
        self._hold(self._catch_all)  # its room was reserved
        return self._catch_all
