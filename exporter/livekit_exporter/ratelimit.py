"""The per-client rate limit of the ingest endpoints (events tokens, webhook API keys)."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket per client (an events token, a webhook API key, by index): `rate` requests a
    second each, up to `burst` at once."""

    def __init__(self, rate: float, burst: int, clients: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        now = clock()
        self._buckets = [[float(burst), now] for _ in range(clients)]  # [requests in hand, when]

    def wait(self, client: int) -> float:
        """0 when a request of `client` may go now (and takes its place), else the seconds until it may."""
        bucket = self._buckets[client]
        now = self._clock()
        level = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if level >= 1:
            bucket[0] = level - 1
            return 0.0
        bucket[0] = level
        return (1 - level) / self.rate
