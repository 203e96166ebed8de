"""Routes for Luna as a meeting participant: make her say something, and read the meeting transcript."""

from __future__ import annotations

from aiohttp import web

from luna_voice.api import bodies
from luna_voice.api.errors import ApiError
from luna_voice.api.models import SayRequest
from luna_voice.api.routes import _service

VTT = "text/vtt"

participant_routes = web.RouteTableDef()


@participant_routes.post("/rooms/{room_id}/luna/say")
async def say(request: web.Request) -> web.Response:
    """Queue a text for Luna to say (``202`` with its ``say_id``); follow it on the events stream (``speak.*``)."""
    room_id = bodies.room_id(request)
    req = await bodies.read_json(request, SayRequest)
    accepted = await _service(request).say(room_id, req.text, interrupt=req.interrupt)
    return web.json_response(accepted, status=202)


@participant_routes.get("/rooms/{room_id}/luna/transcript")
async def transcript(request: web.Request) -> web.Response:
    """Everything Luna heard and said in her latest stay in the room, as JSON or WebVTT."""
    room_id = bodies.room_id(request)
    fmt = request.query.get("format")
    if fmt not in (None, "json", "vtt"):
        raise ApiError(400, "invalid_format", "format must be 'json' or 'vtt'")
    doc = await _service(request).transcript(room_id)
    if doc is None:
        raise ApiError(404, "not_found", f"Luna has not been summoned to room '{room_id}'")
    if fmt == "vtt" or (fmt is None and VTT in request.headers.get("Accept", "")):
        return web.Response(text=doc.vtt, content_type=VTT, charset="utf-8")
    return web.json_response(doc.json)
