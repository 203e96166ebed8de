"""``LUNA_BOT_HOST=fly``: the service as a dispatcher. Same public API and local demo room, no Chromium here.

It implements the API's ``LunaService`` with a ``Fleet``: every summon becomes a stay on its own Fly Machine,
status and dismiss go to that machine over the private network, event streams are relayed from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr

from luna_voice.api.errors import ApiError, json_errors, require_token
from luna_voice.api.models import SummonRequest
from luna_voice.api.participant import participant_routes
from luna_voice.api.port import SERVICE, TranscriptDoc
from luna_voice.api.routes import routes
from luna_voice.bridge import protocol as bp
from luna_voice.config import Settings, secret
from luna_voice.conversation.transcript import MeetingTranscript
from luna_voice.metrics import Metrics
from luna_voice.rooms.local_rooms import LocalRooms
from luna_voice.scale.dispatch import CapacityReached, DispatchConfig, Dispatcher, Stay, StayKeys, public_status
from luna_voice.scale.fleet import Fleet, FleetConfig
from luna_voice.scale.internal import FLEET, LOCAL_TICKETS, internal_routes
from luna_voice.scale.machines import MachinesApi
from luna_voice.scale.settings import FlySettings

log = structlog.get_logger(__name__)

REQUEST_REGION: ContextVar[str | None] = ContextVar("request_region", default=None)
DISMISS_WAIT_S = 15.0


@web.middleware
async def fly_region(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Fly's proxy says where the request came in (``Fly-Region``); a summon places its bot there."""
    token = REQUEST_REGION.set(request.headers.get("Fly-Region") or None)
    try:
        return await handler(request)
    finally:
        REQUEST_REGION.reset(token)


class RelayStream:
    """Bots' SSE streams read through the dispatcher, as the API's ``EventStream``: one stay's, or with
    ``?follow=room`` each of the room's stays in turn."""

    def __init__(self, source: AsyncIterator[tuple[Stay, bytes]]) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1000)
        self._over = False
        self._task = asyncio.create_task(self._pump(source))

    async def _pump(self, source: AsyncIterator[tuple[Stay, bytes]]) -> None:
        buffer, current = b"", None
        try:
            async for stay, chunk in source:
                if stay is not current:  # the next stay's stream: a partial event of the last one is dropped
                    buffer, current = b"", stay
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    for line in block.split(b"\n"):
                        event = _event(line)
                        if event is not None:
                            data = json.dumps(_ours(stay, event), ensure_ascii=False)
                            await self._queue.put(f"data: {data}\n\n".encode())
        finally:
            await self._queue.put(None)

    async def next(self, wait_s: float) -> bytes | None:
        if self._over:
            raise EOFError
        try:
            item = await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return None
        if item is None:
            self._over = True
            raise EOFError
        return item

    def close(self) -> None:
        self._task.cancel()


def _ours(stay: Stay, event: dict[str, Any]) -> dict[str, Any]:
    event = {**event, "bot_id": stay.id, "room_id": stay.room_id}
    if event.get("type") == "status" and isinstance(event.get("status"), dict):
        event["status"] = public_status(stay, event["status"])
    return event


def _event(line: bytes) -> dict[str, Any] | None:
    if not line.startswith(b"data:"):
        return None
    try:
        event = json.loads(line[5:])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class DispatcherService(LocalRooms):
    """Implements ``LunaService`` by placing each stay on its own Fly Machine."""

    def __init__(
        self,
        settings: Settings,
        fly: FlySettings,
        *,
        address: Callable[[str], str] | None = None,
        bot_cmd: tuple[str, ...] | None = None,
    ) -> None:
        missing = fly.problems()
        if missing:
            raise SystemExit("LUNA_BOT_HOST=fly needs " + "; ".join(missing))
        self.settings = settings
        self.fly = fly
        token = secret(fly.api_token) or ""
        self._open_local_rooms(settings)
        core = Dispatcher(
            DispatchConfig(
                image=fly.image or "",
                region=fly.region or fly.own_region,
                pool_size=fly.pool_size,
                max_machines=fly.max_machines,
                heartbeat_timeout_s=fly.heartbeat_timeout_s,
                boot_timeout_s=fly.boot_timeout_s,
                retention_s=settings.ended_retention_s,
                retention_count=settings.ended_retention_count,
            )
        )
        config = FleetConfig(
            app=fly.app or "",
            dispatcher_url=fly.dispatcher_url or f"http://{fly.own_app}.internal:{settings.port}",
            local_room_url=fly.local_room_url,
            bot_cmd=bot_cmd or FleetConfig.bot_cmd,
            bot_port=fly.bot_port,
            size=fly.size,
            env={"LUNA_LOG_JSON": str(settings.log_json).lower(), "LUNA_LOG_LEVEL": settings.log_level},
        )
        api = MachinesApi(app=config.app, token=token, base_url=fly.api_base)
        self.fleet = Fleet(api, core, StayKeys.from_token(token), config, address=address)
        self._metrics = Metrics(lambda: (str(s.state) for s in self.fleet.core.stays.values()))
        self.started = False

    # ------------------------------------------------------------------ LunaService
    async def summon(self, room_id: str, req: SummonRequest) -> tuple[dict[str, Any], bool]:
        backend = req.backend or self._default_backend()
        if backend == "local" and not self.settings.local_rooms:
            raise ApiError(400, "local_rooms_disabled", "backend 'local' is turned off (LUNA_LOCAL_ROOMS=false)")
        body = {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in req.model_dump().items()}
        body = {k: v for k, v in body.items() if v is not None} | {"backend": backend}
        region = self.fly.region or REQUEST_REGION.get() or None
        try:
            stay, created = self.fleet.summon(room_id, body, region)
        except CapacityReached as exc:
            raise ApiError(503, "capacity_reached", str(exc), retry_after=exc.retry_after) from None
        return public_status(stay), created

    def status(self, room_id: str) -> dict[str, Any] | None:
        stay = self.fleet.core.stay_in(room_id)
        return public_status(stay) if stay is not None else None

    async def dismiss(self, room_id: str) -> dict[str, Any] | None:
        stay = self.fleet.core.stay_in(room_id)
        if stay is None:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.fleet.dismiss(stay), DISMISS_WAIT_S)
        return public_status(stay)

    def watch(self, room_id: str, *, follow: bool) -> RelayStream | None:
        stay = self.fleet.core.stay_in(room_id)
        return RelayStream(self._relayed(stay, follow=follow)) if stay is not None else None

    async def _relayed(self, stay: Stay | None, *, follow: bool) -> AsyncIterator[tuple[Stay, bytes]]:
        """The stay's events; following the room, then those of each next stay there (as the all-in-one does)."""
        while stay is not None:
            async for chunk in self.fleet.events(stay):
                yield stay, chunk
            stay = await self.fleet.next_stay(stay) if follow else None

    async def say(self, room_id: str, text: str, *, interrupt: bool) -> dict[str, Any]:
        stay = self._live(room_id)
        return dict(await self._relay("POST", stay, "/say", json={"text": text, "interrupt": interrupt}))

    async def transcript(self, room_id: str) -> TranscriptDoc | None:
        stay = self.fleet.core.stay_in(room_id)
        if stay is None:
            return None
        if stay.live:
            doc = await self._relay("GET", stay, "/transcript", params={"format": "json"})
        elif stay.transcript is not None:
            doc = stay.transcript  # handed over with the bot's final status
        else:
            raise ApiError(
                410,
                "transcript_gone",
                "the bot's machine is gone without handing over a transcript (it crashed, or it was turned off)",
            )
        try:
            record, origin = MeetingTranscript.from_json(doc)
        except ValueError as exc:
            raise ApiError(502, "bad_transcript", f"the bot machine's transcript is malformed: {exc}") from None
        head = {"room_id": stay.room_id, "bot_id": stay.id, "state": str(stay.state)}
        return TranscriptDoc({**doc, **head}, record.to_vtt(origin))

    def _live(self, room_id: str) -> Stay:
        stay = self.fleet.core.stay_in(room_id)
        if stay is None or not stay.live:
            raise ApiError(404, "not_found", f"Luna is not in room '{room_id}'")
        return stay

    async def _relay(self, method: str, stay: Stay, path: str, **kw: Any) -> Any:
        """The bot's answer as ours; its errors keep their status, code and message."""
        try:
            status, body = await self.fleet.relay(method, stay, path, **kw)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ApiError(502, "bot_unreachable", f"the bot machine did not answer ({type(exc).__name__})") from None
        if status >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise ApiError(status, str(error.get("code", "bot_error")), str(error.get("message", body)))
        return body

    def rooms(self) -> list[dict[str, Any]]:
        return [
            {
                "room_id": s.room_id,
                "bot_id": s.id,
                "backend": s.request.get("backend"),
                "state": str(s.state),
                "sub_code": s.sub_code,
            }
            for s in self.fleet.core.stays.values()
        ]

    def readiness(self) -> dict[str, Any]:
        core = self.fleet.core
        return {
            "ready": self.started,
            "role": "dispatcher",
            "bots": {"live": len(core.live_stays()), "max": core.cfg.max_machines},
            "pool": {"warm": len(core.warm()), "size": core.cfg.pool_size, "image": core.cfg.image},
            "machines": core.machine_count(),
        }

    def metrics(self) -> bytes:
        return self._metrics.render()

    async def bridge(self, bot_id: str, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=bp.CLOSE_UNKNOWN_BOT, message=b"bots run on their own machines")
        return ws

    # ------------------------------------------------------------------ assembly
    async def _on_startup(self, _app: web.Application) -> None:
        await self.fleet.start()
        self.started = True
        log.info("dispatcher.started", app=self.fleet.cfg.app, image=self.fleet.core.cfg.image)

    async def stop(self) -> None:
        """The dispatcher goes; bot machines and their stays carry on (the next dispatcher picks them up)."""
        self.started = False
        await self.fleet.aclose()
        await self.hub.close_all("dispatcher stopping")

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.stop()

    def app(self) -> web.Application:
        token = secret(self.settings.api_token)
        app = web.Application(
            middlewares=[json_errors, require_token(token), fly_region], client_max_size=4 * 1024 * 1024
        )
        app[SERVICE] = self
        app[FLEET] = self.fleet
        if self.settings.local_rooms:
            app[LOCAL_TICKETS] = self.tickets
        app.add_routes(routes)
        app.add_routes(participant_routes)
        app.add_routes(internal_routes)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app
