"""The one map bounded by time and size (expiring.py) that dedup ids, Idempotency-Keys, active calls
and report series live in: it tells its owner about every entry it drops by itself, and only those."""

from __future__ import annotations

from livekit_exporter.expiring import ExpiringMap


def test_it_tells_what_it_drops_expired_or_evicted_and_not_what_the_owner_deletes():
    now = [0.0]
    dropped = []
    table = ExpiringMap(3, 10, timer=lambda: now[0], on_drop=lambda k, v: dropped.append((k, v)))
    for k in "abc":
        table[k] = k.upper()
    table["d"] = "D"  # full: the least recently used goes
    assert dropped == [("a", "A")] and set(table) == {"b", "c", "d"}
    del table["b"]  # the owner's own delete is not reported
    assert dropped == [("a", "A")]
    now[0] = 9.9
    table["c"] = "C2"  # a new value: its ttl starts again
    now[0] = 10.0
    assert table.expire() == [("d", "D")] and dropped[-1] == ("d", "D")
    assert "c" in table and table.get("c") == "C2"
    now[0] = 19.9
    assert len(table) == 0 and dropped[-1] == ("c", "C2")  # len() sweeps too
    assert table.get("c") is None


def test_a_byte_budget_bounds_what_it_holds_whatever_the_entry_count():
    table = ExpiringMap(1000, 60, getsizeof=len)
    for i in range(100):
        table[i] = b"x" * 300
    assert table.currsize <= 1000 and len(table) == 3
