"""The dispatcher's private endpoints that bot machines call (see ``scale/agent.py`` for the other side).

All are authenticated by HMAC-derived secrets, never by the control API's token: a bot machine knows only its
boot secret and, once assigned, its stay's secret. With that secret a bot machine also gets the single-use tickets
its page needs to join a local demo room hosted here (``LUNA_API_TOKEN`` makes the hub ask for one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from luna_voice.api import bodies
from luna_voice.api.errors import ApiError
from luna_voice.rooms.tickets import TICKET_TTL_S, RoomTickets
from luna_voice.scale.agent import MAX_REPORT
from luna_voice.scale.fleet import Fleet, Unauthorized

FLEET: web.AppKey[Fleet] = web.AppKey("fleet")
LOCAL_TICKETS: web.AppKey[RoomTickets] = web.AppKey("local_tickets")  # set where the local rooms' hub is served

internal_routes = web.RouteTableDef()


def _bearer(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer' secret")
    return value.strip()


@contextlib.contextmanager
def _secret_checked(refusal: str) -> Iterator[None]:
    """The fleet's ``Unauthorized`` (a wrong boot or stay secret) as a 401 with ``refusal`` as its message."""
    try:
        yield
    except Unauthorized:
        raise ApiError(401, "unauthorized", refusal) from None


@internal_routes.post("/internal/machines/{machine_id}/assignment")
async def assignment(request: web.Request) -> web.Response:
    with _secret_checked("unknown machine or wrong boot secret"):
        body = request.app[FLEET].assignment(request.match_info["machine_id"], _bearer(request))
    if body is None:
        raise ApiError(404, "not_assigned", "this machine has no live stay")
    return web.json_response(body)


@internal_routes.post("/internal/stays/{stay_id}/report")
async def report(request: web.Request) -> web.Response:
    secret = _bearer(request)
    # The API's strict body reader: it reads to the end (content.read(n) may stop at whatever is buffered), counts
    # chunked bodies, and refuses deep nesting before json.loads can overflow the stack.
    status = await bodies.json_object(request, max_bytes=MAX_REPORT)
    with _secret_checked("wrong stay secret"):
        live = request.app[FLEET].report(request.match_info["stay_id"], secret, status)
    return web.json_response({"live": live})


@internal_routes.post("/internal/stays/{stay_id}/local-ticket")
async def local_ticket(request: web.Request) -> web.Response:
    """A ticket for Luna's page into her stay's local room, which only this dispatcher's hub can admit her to."""
    with _secret_checked("wrong stay secret"):
        room_id = request.app[FLEET].live_room(request.match_info["stay_id"], _bearer(request))
    if room_id is None:
        raise ApiError(404, "not_live", "this stay has ended")
    tickets = request.app.get(LOCAL_TICKETS)
    if tickets is None:
        raise ApiError(404, "local_rooms_disabled", "this dispatcher serves no local rooms")
    return web.json_response({"ticket": tickets.mint(room_id, "bot"), "expires_in_s": TICKET_TTL_S}, status=201)
