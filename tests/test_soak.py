"""The soak (bench/soak.py), short: half a minute of webhooks, events, scrapes and LiveKit faults
against a real `livekit-exporter serve` process; at the end every counter equals what was sent, no
scrape failed, and the exporter's file descriptors did not pile up. (Whether memory levels off
needs the 10-minute run: `.venv/bin/python bench/soak.py`, figures in bench/README.md.)"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soak


async def test_a_short_soak_counts_everything_it_was_sent():
    report = await soak.soak(soak.Options(minutes=0.5, sample_every=2.0, fault_every=5.0))
    print(soak.markdown(report))
    assert not report.scrape_failures, report.scrape_failures
    assert not report.mismatches, report.mismatches
    assert report.checked > 100  # webhook and events truths both compared
    sent = report.sent
    assert sent["webhooks accepted"] == sent["webhooks generated"] > 0
    assert sent["webhook lost_answers"] + sent["webhook replays"] > 0  # the dedup map was used
    assert sent["events sent"] > 0 and sent["events dropped"] == 0
    assert sent["fault switches"] >= 3 and sent["forged webhooks"] == sent["invalid batches"] == sent["fault switches"]
    assert len(report.samples) >= 5
    # Connections come and go; descriptors must not pile up (generous: a leak grows with every scrape).
    assert report.figures["max_fds"] <= report.figures["start_fds"] + 40, [s.fds for s in report.samples]
