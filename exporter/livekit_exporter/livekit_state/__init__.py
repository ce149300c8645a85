"""LiveKit server state, read on each scrape through the official livekit-api client.

read.py talks to LiveKit (StateCollector: every enabled service under one deadline, into a
Snapshot); render.py turns a Snapshot into fresh metric families, with no I/O. The web layer makes
one call, `await StateCollector.families(budget)`, and renders the result with ScrapeView.
"""

from .read import Snapshot, StateCollector, _CallFailed, _RoomRead, judge_detail
from .render import ScrapeFolder, ScrapeView, families

__all__ = [
    "ScrapeFolder",
    "ScrapeView",
    "Snapshot",
    "StateCollector",
    "_CallFailed",
    "_RoomRead",
    "families",
    "judge_detail",
]
