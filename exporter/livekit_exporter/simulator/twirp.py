"""The Twirp face of the simulator: LiveKit's server API as LiveKit serves it.

POST /twirp/livekit.<Service>/<Method> with an application/protobuf body of the real request
message; `Authorization: Bearer <JWT>` (HS256, issuer = API key) carrying the grants the method
needs; success is 200 with the serialized response; errors are Twirp JSON
{"code", "msg", "meta"} with the matching HTTP status. Faults are injected per service.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError, Message
from livekit.api import TokenVerifier
from livekit.protocol import agent_dispatch as proto_dispatch
from livekit.protocol import egress as proto_egress
from livekit.protocol import ingress as proto_ingress
from livekit.protocol import room as proto_room
from livekit.protocol import sip as proto_sip
from livekit.protocol.models import TokenPagination

from .scenario import Fault, Scenario

log = logging.getLogger(__name__)

TWIRP_STATUS = {
    "canceled": 408,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unknown": 500,
    "unavailable": 503,
    "dataloss": 500,
}


class TwirpFailure(Exception):
    def __init__(self, code: str, msg: str, meta: dict[str, str] | None = None):
        super().__init__(msg)
        self.code, self.msg, self.meta = code, msg, meta or {}


def twirp_error(code: str, msg: str, meta: dict[str, str] | None = None) -> web.Response:
    body: dict[str, object] = {"code": code, "msg": msg}
    if meta:
        body["meta"] = meta
    return web.Response(status=TWIRP_STATUS[code], text=json.dumps(body), content_type="application/json")


@dataclass(frozen=True)
class Method:
    service: str  # our service name: room, egress, ingress, sip, agent_dispatch
    request: type[Message]
    handler: Callable[[Scenario, Any], Message]
    grant: Callable[[Any, Any, Any], bool]  # (video grants, sip grants, request) -> allowed


def _page(items: list, token: Any, size: int) -> tuple[list, Any]:
    """Token pagination as LiveKit Cloud pages: an opaque token in, the next one out."""
    start = int(token.token) if token.token else 0
    if size <= 0:
        return items[start:], None
    end = start + size
    return items[start:end], (TokenPagination(token=str(end)) if end < len(items) else None)


def _matches(item: Any, req: Any, *fields: str) -> bool:
    """Whether `item` has the value of each of the request's filter `fields` (an empty one: any)."""
    return all(not getattr(req, name) or getattr(item, name) == getattr(req, name) for name in fields)


def _list_rooms(s: Scenario, req: proto_room.ListRoomsRequest) -> Message:
    names = set(req.names)
    listed = [r.info for r in s.rooms.values()] + list(s.closing_rooms.values())
    return proto_room.ListRoomsResponse(rooms=[r for r in listed if not names or r.name in names])


def _list_participants(s: Scenario, req: proto_room.ListParticipantsRequest) -> Message:
    room = s.rooms.get(req.room)
    # Open-source LiveKit answers a room that does not exist (or no longer does) with an empty list.
    return proto_room.ListParticipantsResponse(participants=list(room.participants.values()) if room else [])


def _list_egress(s: Scenario, req: proto_egress.ListEgressRequest) -> Message:
    items = [
        e
        for e in s.egress.values()
        if _matches(e, req, "room_name", "egress_id") and (not req.active or e.status in (0, 1, 2))
    ]
    page, nxt = _page(items, req.page_token, s.page_size)
    return proto_egress.ListEgressResponse(items=page, next_page_token=nxt)


def _list_ingress(s: Scenario, req: proto_ingress.ListIngressRequest) -> Message:
    items = [i for i in s.ingress.values() if _matches(i, req, "room_name", "ingress_id")]
    page, nxt = _page(items, req.page_token, s.page_size)
    return proto_ingress.ListIngressResponse(items=page, next_page_token=nxt)


def _sip_page(items: dict[str, Any], req: Any) -> list:
    """LiveKit's SIP pagination: items sorted by id, after `page.after_id`, at most `page.limit`."""
    ordered = [items[k] for k in sorted(items) if not req.page.after_id or k > req.page.after_id]
    return ordered[: req.page.limit] if req.page.limit else ordered


def _list_inbound(s: Scenario, req: proto_sip.ListSIPInboundTrunkRequest) -> Message:
    return proto_sip.ListSIPInboundTrunkResponse(items=_sip_page(s.inbound_trunks, req))


def _list_outbound(s: Scenario, req: proto_sip.ListSIPOutboundTrunkRequest) -> Message:
    return proto_sip.ListSIPOutboundTrunkResponse(items=_sip_page(s.outbound_trunks, req))


def _list_rules(s: Scenario, req: proto_sip.ListSIPDispatchRuleRequest) -> Message:
    return proto_sip.ListSIPDispatchRuleResponse(items=_sip_page(s.dispatch_rules, req))


def _list_dispatch(s: Scenario, req: proto_dispatch.ListAgentDispatchRequest) -> Message:
    room = s.rooms.get(req.room)
    if room is None:
        # LiveKit sends ListDispatch as an RPC to the node hosting the room; with no such node,
        # psrpc gives up with ErrNoResponse, which reaches the client as Twirp "unavailable".
        raise TwirpFailure("unavailable", "no response from servers")
    items = [d for d in room.dispatches.values() if not req.dispatch_id or d.id == req.dispatch_id]
    return proto_dispatch.ListAgentDispatchResponse(agent_dispatches=items)


def _room_admin(video: Any, sip: Any, req: Any) -> bool:
    return bool(video.room_admin) and video.room == req.room


def _sip_admin(video: Any, sip: Any, req: Any) -> bool:
    return bool(sip.admin)


def _video_grant(name: str) -> Callable[[Any, Any, Any], bool]:
    """The grant check of a method that needs one video grant (room_list, room_record, ...)."""
    return lambda video, sip, req: bool(getattr(video, name))


METHODS: dict[tuple[str, str], Method] = {
    ("RoomService", "ListRooms"): Method("room", proto_room.ListRoomsRequest, _list_rooms, _video_grant("room_list")),
    ("RoomService", "ListParticipants"): Method(
        "room", proto_room.ListParticipantsRequest, _list_participants, _room_admin
    ),
    ("Egress", "ListEgress"): Method(
        "egress", proto_egress.ListEgressRequest, _list_egress, _video_grant("room_record")
    ),
    ("Ingress", "ListIngress"): Method(
        "ingress", proto_ingress.ListIngressRequest, _list_ingress, _video_grant("ingress_admin")
    ),
    ("SIP", "ListSIPInboundTrunk"): Method("sip", proto_sip.ListSIPInboundTrunkRequest, _list_inbound, _sip_admin),
    ("SIP", "ListSIPOutboundTrunk"): Method("sip", proto_sip.ListSIPOutboundTrunkRequest, _list_outbound, _sip_admin),
    ("SIP", "ListSIPDispatchRule"): Method("sip", proto_sip.ListSIPDispatchRuleRequest, _list_rules, _sip_admin),
    ("AgentDispatchService", "ListDispatch"): Method(
        "agent_dispatch", proto_dispatch.ListAgentDispatchRequest, _list_dispatch, _room_admin
    ),
}


async def _apply_fault(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    if fault.latency:
        await asyncio.sleep(fault.latency)
    if fault.kind is None:
        return None
    if fault.kind == "error":
        return twirp_error(fault.code, f"injected fault: {fault.code}")
    if fault.kind == "unauthorized":
        return twirp_error("unauthenticated", "invalid token")
    if fault.kind == "hang":
        await asyncio.Event().wait()  # until the client gives up and the handler is cancelled
    if fault.kind == "reset":
        request.transport.abort() if request.transport else None
        raise asyncio.CancelledError
    raise ValueError(f"unknown fault kind {fault.kind!r}")


def build_twirp_app(scenario: Scenario) -> web.Application:
    verifier = TokenVerifier(scenario.api_key, scenario.api_secret)

    async def handle(request: web.Request) -> web.StreamResponse:
        pkg_service, method_name = request.match_info["service"], request.match_info["method"]
        if not pkg_service.startswith("livekit."):
            return twirp_error("bad_route", f"no handler for path {request.path}")
        method = METHODS.get((pkg_service.removeprefix("livekit."), method_name))
        if method is None:
            return twirp_error("bad_route", f"no handler for path {request.path}")
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype != "application/protobuf":
            return twirp_error("bad_route", f"unexpected Content-Type: {ctype!r}")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return twirp_error("unauthenticated", "no authorization header")
        try:
            claims = verifier.verify(auth.removeprefix("Bearer "))
        except Exception:
            return twirp_error("unauthenticated", "invalid token")
        try:
            req = method.request.FromString(await request.read())
        except DecodeError:
            return twirp_error("malformed", "could not decode the request body")
        if not method.grant(claims.video, claims.sip, req):
            # LiveKit's twirpAuthError: a missing grant is "unauthenticated", like a bad token.
            return twirp_error("unauthenticated", "permissions denied")
        key = (method.service, method_name)
        scenario.api_calls[key] += 1
        scenario.in_flight[key] += 1
        scenario.peak_in_flight[key] = max(scenario.peak_in_flight[key], scenario.in_flight[key])
        try:
            fault = scenario.faults.get(method.service)
            if fault is not None:
                response = await _apply_fault(request, fault)
                if response is not None:
                    return response
            try:
                msg = method.handler(scenario, req)
            except TwirpFailure as f:
                return twirp_error(f.code, f.msg, f.meta)
            return web.Response(body=msg.SerializeToString(), content_type="application/protobuf")
        finally:
            scenario.in_flight[key] -= 1

    async def stats(request: web.Request) -> web.Response:
        calls = [{"service": s, "method": m, "calls": n} for (s, m), n in sorted(scenario.api_calls.items())]
        return web.json_response({"api_calls": calls})

    app = web.Application()
    app.router.add_post("/twirp/{service}/{method}", handle)
    app.router.add_get("/_simulator/stats", stats)
    return app
