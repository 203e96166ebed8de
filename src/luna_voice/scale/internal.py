"""The dispatcher's private endpoints that bot machines call (see ``scale/agent.py`` for the other side).

Both are authenticated by HMAC-derived secrets, never by the control API's token: a bot machine knows only its
boot secret and, once assigned, its stay's secret.
"""

from __future__ import annotations

import json

from aiohttp import web

from luna_voice.api.errors import ApiError
from luna_voice.scale.fleet import Fleet, Unauthorized

FLEET: web.AppKey[Fleet] = web.AppKey("fleet")
MAX_REPORT = 4 * 1024 * 1024  # a long stay's status carries every turn

internal_routes = web.RouteTableDef()


def _bearer(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer' secret")
    return value.strip()


@internal_routes.post("/internal/machines/{machine_id}/assignment")
async def assignment(request: web.Request) -> web.Response:
    try:
        body = request.app[FLEET].assignment(request.match_info["machine_id"], _bearer(request))
    except Unauthorized:
        raise ApiError(401, "unauthorized", "unknown machine or wrong boot secret") from None
    if body is None:
        raise ApiError(404, "not_assigned", "this machine has no live stay")
    return web.json_response(body)


@internal_routes.post("/internal/stays/{stay_id}/report")
async def report(request: web.Request) -> web.Response:
    secret = _bearer(request)
    if request.content_length is not None and request.content_length > MAX_REPORT:
        raise ApiError(413, "body_too_large", f"report over {MAX_REPORT} bytes")
    raw = await request.content.read(MAX_REPORT + 1)
    if len(raw) > MAX_REPORT:
        raise ApiError(413, "body_too_large", f"report over {MAX_REPORT} bytes")
    try:
        status = json.loads(raw)
    except ValueError:
        raise ApiError(400, "invalid_json", "report is not valid JSON") from None
    if not isinstance(status, dict):
        raise ApiError(400, "invalid_body", "report must be a JSON object")
    try:
        live = request.app[FLEET].report(request.match_info["stay_id"], secret, status)
    except Unauthorized:
        raise ApiError(401, "unauthorized", "wrong stay secret") from None
    return web.json_response({"live": live})
