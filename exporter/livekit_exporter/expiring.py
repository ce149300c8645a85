"""The one map bounded by time and size: cachetools' TTLCache, telling its owner what it drops.

Every remembered thing of the exporter lives in one: webhook event ids (deduplication), the
answers to Idempotency-Keys, active calls, and the series of report gauges. Each has one
time-to-live for every key (so insertion order is expiry order) and a bound: entries, or bytes
with `getsizeof`. Entries it drops by itself, expired or evicted to make room, are passed to
`on_drop(key, value)`, so that the owner can undo what the entry stood for (a gauge's count, a
series); entries the owner deletes itself are not. Expired entries are dropped on every insert,
on len(), and on expire() (a sweep); a lookup never sees one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import cachetools

K = TypeVar("K")
V = TypeVar("V")


class ExpiringMap(cachetools.TTLCache[K, V]):
    """key -> value for `ttl` seconds, at most `maxsize` (entries, or bytes with `getsizeof`)."""

    def __init__(
        self,
        maxsize: float,
        ttl: float,
        *,
        timer: Callable[[], float] = time.monotonic,
        getsizeof: Callable[[V], float] | None = None,
        on_drop: Callable[[K, V], None] | None = None,
    ):
        super().__init__(maxsize, ttl, timer=timer, getsizeof=getsizeof)
        self._on_drop = on_drop

    def expire(self, time: float | None = None) -> list[tuple[K, V]]:
        """Drops the expired entries (telling on_drop) and returns them."""
        dropped = list(super().expire(time))
        if self._on_drop is not None:
            for key, value in dropped:
                self._on_drop(key, value)
        return dropped

    def popitem(self) -> tuple[K, V]:
        """Drops the least recently used entry to make room (telling on_drop)."""
        key, value = super().popitem()
        if self._on_drop is not None:
            self._on_drop(key, value)
        return key, value
