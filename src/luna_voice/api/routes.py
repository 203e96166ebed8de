"""HTTP routes of the control API, the bridge and local-room sockets, and the pages the service serves."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from luna_voice.api import bodies
from luna_voice.api.errors import ApiError
from luna_voice.api.models import SummonRequest
from luna_voice.api.openapi import document
from luna_voice.bots.manager import CapacityReached
from luna_voice.bridge import protocol as bp
from luna_voice.events import StatusSnapshot, sse
from luna_voice.metrics import CONTENT_TYPE
from luna_voice.rooms.tickets import TICKET_TTL_S

if TYPE_CHECKING:
    from luna_voice.service import Service

BOT_PAGE = Path(__file__).resolve().parents[3] / "bot_page"

routes = web.RouteTableDef()
SERVICE: web.AppKey[Service] = web.AppKey("service")


def _service(request: web.Request) -> Service:
    return request.app[SERVICE]


@routes.post("/rooms/{room_id}/luna")
async def summon(request: web.Request) -> web.Response:
    room_id = bodies.room_id(request)
    req = await bodies.read_json(request, SummonRequest)
    service = _service(request)
    try:
        bot, created = await service.summon(room_id, req)
    except CapacityReached as exc:
        raise ApiError(503, "capacity_reached", str(exc), retry_after=30) from None
    return web.json_response(bot.status(), status=201 if created else 200)


@routes.get("/rooms/{room_id}/luna")
async def status(request: web.Request) -> web.Response:
    return web.json_response(_bot(request).status())


@routes.delete("/rooms/{room_id}/luna")
async def dismiss(request: web.Request) -> web.Response:
    bot = _bot(request)
    _service(request).manager.dismiss(bot.room_id)
    if bot.task is not None and bot.state.live:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(bot.task), 10)
    return web.json_response(bot.status())


@routes.get("/rooms/{room_id}/luna/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: state changes, participants, turns (captions) and Luna's speaking flag."""
    bot = _bot(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    q = bot.subscribe()
    try:
        await resp.write(sse(StatusSnapshot(bot.status()), room_id=bot.room_id, bot_id=bot.id))
        while True:
            try:
                event = await asyncio.wait_for(q.get(), 15)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            await resp.write(sse(event, room_id=bot.room_id, bot_id=bot.id))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        bot.unsubscribe(q)
    return resp


def _bot(request: web.Request):  # type: ignore[no-untyped-def]
    room_id = bodies.room_id(request)
    bot = _service(request).manager.rooms.get(room_id)
    if bot is None:
        raise ApiError(404, "not_found", f"Luna has not been summoned to room '{room_id}'")
    return bot


@routes.get("/rooms")
async def list_rooms(request: web.Request) -> web.Response:
    bots = _service(request).manager.rooms.values()
    return web.json_response(
        {
            "rooms": [
                {
                    "room_id": b.room_id,
                    "bot_id": b.id,
                    "backend": b.backend,
                    "state": str(b.state),
                    "sub_code": b.sub_code,
                }
                for b in bots
            ]
        }
    )


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
    body = _service(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/bridge/{bot_id}")
async def bridge(request: web.Request) -> web.StreamResponse:
    bot = _service(request).manager.by_id.get(request.match_info["bot_id"])
    if bot is None:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=bp.CLOSE_UNKNOWN_BOT, message=b"unknown bot")
        return ws
    return await bot.attach(request)


def _local_rooms(request: web.Request) -> str:
    if not _service(request).settings.local_rooms:
        raise ApiError(404, "local_rooms_disabled", "the local demo room is turned off (LUNA_LOCAL_ROOMS=false)")
    return bodies.room_id(request)


@routes.get("/local/rooms/{room_id}/signal")
async def local_signal(request: web.Request) -> web.StreamResponse:
    room_id = _local_rooms(request)
    return await _service(request).hub.handle(request, room_id)


@routes.post("/local/rooms/{room_id}/tickets")
async def local_ticket(request: web.Request) -> web.Response:
    """A single-use pass into the room for one page (needed when LUNA_API_TOKEN is set; harmless otherwise)."""
    room_id = _local_rooms(request)
    ticket = _service(request).tickets.mint(room_id, "human")
    return web.json_response({"ticket": ticket, "expires_in_s": TICKET_TTL_S}, status=201)


@routes.get("/local/rooms/{room_id}/participants")
async def local_participants(request: web.Request) -> web.Response:
    return web.json_response({"participants": _service(request).hub.participants(_local_rooms(request))})


@routes.get("/demo/rooms/{room_id}")
async def demo_page(request: web.Request) -> web.FileResponse:
    _local_rooms(request)
    return web.FileResponse(BOT_PAGE / "demo.html")


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/demo/rooms/demo")


routes.static("/bot", BOT_PAGE, append_version=False)
