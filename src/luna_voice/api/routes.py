"""HTTP routes of the control API, the bridge and local-room sockets, and the pages the service serves."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from aiohttp import web

from luna_voice.api import bodies
from luna_voice.api.errors import ApiError
from luna_voice.api.models import SummonRequest
from luna_voice.api.openapi import document
from luna_voice.api.port import SERVICE, LunaService
from luna_voice.metrics import CONTENT_TYPE
from luna_voice.rooms.tickets import TICKET_TTL_S

BOT_PAGE = Path(__file__).resolve().parents[3] / "bot_page"

KEEP_ALIVE_S = 15.0
T = TypeVar("T")

routes = web.RouteTableDef()


def _service(request: web.Request) -> LunaService:
    return request.app[SERVICE]


@routes.post("/rooms/{room_id}/luna")
async def summon(request: web.Request) -> web.Response:
    room_id = bodies.room_id(request)
    req = await bodies.read_json(request, SummonRequest)
    status, created = await _service(request).summon(room_id, req)
    return web.json_response(status, status=201 if created else 200)


@routes.get("/rooms/{room_id}/luna")
async def status(request: web.Request) -> web.Response:
    room_id = bodies.room_id(request)
    return web.json_response(_found(room_id, _service(request).status(room_id)))


@routes.delete("/rooms/{room_id}/luna")
async def dismiss(request: web.Request) -> web.Response:
    room_id = bodies.room_id(request)
    return web.json_response(_found(room_id, await _service(request).dismiss(room_id)))


@routes.get("/rooms/{room_id}/luna/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: state changes, participants, turns (captions) and Luna's speaking flag.

    The stream starts with Luna's status and ends after her final ``status`` event when she leaves; with
    ``?follow=room`` it carries on with the room's next Luna. When the service stops it ends with ``closed``.
    """
    room_id = bodies.room_id(request)
    stream = _found(room_id, _service(request).watch(room_id, follow=request.query.get("follow") == "room"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await resp.prepare(request)
        while True:
            try:
                frame = await stream.next(KEEP_ALIVE_S)
            except EOFError:
                break
            await resp.write(b": keep-alive\n\n" if frame is None else frame)
    except ConnectionResetError:
        pass
    finally:
        stream.close()
    return resp


def _found(room_id: str, value: T | None) -> T:
    if value is None:
        raise ApiError(404, "not_found", f"Luna has not been summoned to room '{room_id}'")
    return value


@routes.get("/rooms")
async def list_rooms(request: web.Request) -> web.Response:
    return web.json_response({"rooms": _service(request).rooms()})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    report = _service(request).readiness()
    return web.json_response(report, status=200 if report["ready"] else 503)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = _service(request).metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/bridge/{bot_id}")
async def bridge(request: web.Request) -> web.StreamResponse:
    return await _service(request).bridge(request.match_info["bot_id"], request)


def _local_rooms(request: web.Request) -> str:
    if not _service(request).local_rooms:
        raise ApiError(404, "local_rooms_disabled", "the local demo room is turned off (LUNA_LOCAL_ROOMS=false)")
    return bodies.room_id(request)


@routes.get("/local/rooms/{room_id}/signal")
async def local_signal(request: web.Request) -> web.StreamResponse:
    return await _service(request).local_signal(_local_rooms(request), request)


@routes.post("/local/rooms/{room_id}/tickets")
async def local_ticket(request: web.Request) -> web.Response:
    """A single-use pass into the room for one page (needed when LUNA_API_TOKEN is set; harmless otherwise)."""
    room_id = _local_rooms(request)
    ticket = _service(request).local_ticket(room_id)
    return web.json_response({"ticket": ticket, "expires_in_s": TICKET_TTL_S}, status=201)


@routes.get("/local/rooms/{room_id}/participants")
async def local_participants(request: web.Request) -> web.Response:
    return web.json_response({"participants": _service(request).local_participants(_local_rooms(request))})


@routes.get("/demo/rooms/{room_id}")
async def demo_page(request: web.Request) -> web.FileResponse:
    _local_rooms(request)
    return web.FileResponse(BOT_PAGE / "demo.html")


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/demo/rooms/demo")


routes.static("/bot", BOT_PAGE, append_version=False)
