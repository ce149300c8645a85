"""A simulated LiveKit SIP service's /metrics (livekit/sip's `prometheus_port`), from the scenario's SIP calls.

Names and labels are livekit/sip's pkg/stats/monitor.go (namespace livekit, subsystem sip, constant
label node_id; `dir` is in or out; counters carry no _total suffix there): each SIP participant the
scenario adds is one INVITE received and accepted, an active one is in livekit_sip_calls_active,
and one that leaves is livekit_sip_calls_terminated (result success, reason hangup; client_error,
no-answer for a callee who did not answer). `to` is the host of the To URI.
"""

from __future__ import annotations

from collections import defaultdict

from aiohttp import web
from livekit.protocol import models as proto_models

from .scenario import Kind, Scenario, State
from .server_metrics import Counters

TO = "sip.livekit.example"


class _SipService:
    def __init__(self, scenario: Scenario, node_id: str = "NE_simulated"):
        self.scenario, self.const = scenario, f'node_id="{node_id}"'
        self.counters = Counters()
        self.live: dict[str, str] = {}  # participant sid -> dir, while in a room

    def text(self) -> str:
        now: dict[str, tuple[str, proto_models.ParticipantInfo]] = {}
        for room in self.scenario.rooms.values():
            for p in room.participants.values():
                if p.kind == Kind.SIP:
                    trunk = p.attributes.get("sip.trunkID", "")
                    now[p.sid] = ("in" if trunk in self.scenario.inbound_trunks else "out", p)
        for sid, (d, p) in now.items():
            if sid not in self.live and p.state != State.DISCONNECTED:
                self.live[sid] = d
                self.counters.add("livekit_sip_invite_requests_raw")
                self.counters.add("livekit_sip_invite_requests", dir=d)
                self.counters.add("livekit_sip_invite_accepted", dir=d, to=TO)
        for sid, d in list(self.live.items()):
            current = now.get(sid)
            gone = current[1] if current is not None else None
            if gone is None or gone.state == State.DISCONNECTED:
                unanswered = (
                    gone is not None and gone.disconnect_reason == proto_models.DisconnectReason.USER_UNAVAILABLE
                )
                self.counters.add(
                    "livekit_sip_calls_terminated",
                    dir=d,
                    to=TO,
                    result="client_error" if unanswered else "success",
                    reason="no-answer" if unanswered else "hangup",
                )
                del self.live[sid]
        active: dict[str, int] = defaultdict(int)
        for d in self.live.values():
            active[d] += 1
        c = self.const
        lines = [
            "# TYPE livekit_sip_calls_active gauge",
            *(f'livekit_sip_calls_active{{{c},dir="{d}",to="{TO}"}} {active.get(d, 0)}' for d in ("in", "out")),
            "# TYPE livekit_sip_available gauge",
            f"livekit_sip_available{{{c}}} 1",
        ]
        lines += self.counters.lines(c)
        return "\n".join(lines) + "\n"


def sip_app(scenario: Scenario) -> web.Application:
    service = _SipService(scenario)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=service.text(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
