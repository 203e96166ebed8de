"""The dispatcher's adapter: carries out the core's actions on the Machines API and talks to bot machines.

``Fleet`` owns the I/O the core (``scale/dispatch.py``) must not do: creating, starting and destroying machines,
a monitor that lists machines and ticks the clock, reaching a bot over Fly's private network
(``http://<machine_id>.vm.<app>.internal:8080``) with its stay's secret, and checking the secrets bots present
when they ask for their assignment or report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from luna_voice.bots.states import BotState
from luna_voice.scale.dispatch import (
    BOT_ROLE,
    ROLE,
    ROOM,
    STAY,
    Action,
    CreateMachine,
    DestroyMachine,
    Dispatcher,
    FetchStatus,
    Purpose,
    StartPooled,
    Stay,
    StayKeys,
    public_status,
)
from luna_voice.scale.machines import FlyApiError, MachinesApi

log = structlog.get_logger(__name__)

CONTROL_TIMEOUT_S = 15.0


class Unauthorized(Exception):
    pass


@dataclass(frozen=True)
class FleetConfig:
    app: str  # the Fly app that holds the bot machines
    dispatcher_url: str  # how a bot machine reaches the dispatcher (private network)
    local_room_url: str | None = None  # where bots find the local demo room's hub; default the dispatcher
    bot_cmd: tuple[str, ...] = ("luna-voice", "bot")
    bot_port: int = 8080
    size: str = "performance-1x"
    env: dict[str, str] = field(default_factory=dict)  # non-secret settings for bots; keys come from Fly secrets
    list_interval_s: float = 2.0
    tick_interval_s: float = 0.5


class Fleet:
    def __init__(
        self,
        api: MachinesApi,
        core: Dispatcher,
        keys: StayKeys,
        config: FleetConfig,
        *,
        address: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.core = core
        self.keys = keys
        self.cfg = config
        self.address = address or (lambda machine_id: f"http://{machine_id}.vm.{config.app}.internal:{config.bot_port}")
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._closed = False
        self._changed = asyncio.Event()  # set (and replaced) whenever the core may have changed: stream followers wait

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Rebuild the map from Fly's machine list, then watch it."""
        machines = await self.api.list(metadata={ROLE: BOT_ROLE})
        self.run(self.core.rebuild(machines, self.clock()))
        log.info("fleet.started", machines=len(machines), stays=len(self.core.live_stays()))
        self._monitor = asyncio.create_task(self._watch(), name="fleet-monitor")

    async def aclose(self) -> None:
        """Stop watching. Machines and their stays carry on; the next dispatcher picks them up. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        tasks = [t for t in (self._monitor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._http is not None:
            await self._http.close()
        await self.api.aclose()

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S))
        return self._http

    # ------------------------------------------------------------------ public API
    def summon(self, room_id: str, request: dict[str, Any], region: str | None) -> tuple[Stay, bool]:
        stay, created, actions = self.core.summon(room_id, request, region, self.clock())
        self.run(actions)
        if created:
            log.info("fleet.summoned", stay=stay.id, room_id=room_id, region=stay.region, actions=len(actions))
        return stay, created

    async def dismiss(self, stay: Stay) -> None:
        """Ask the bot to leave; a bot that cannot be reached loses its machine instead."""
        if not stay.live:
            return
        if stay.machine_id is not None and stay.last_seen is not None:
            try:
                body = await self._control("DELETE", stay)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("fleet.dismiss_unreachable", stay=stay.id, error=type(exc).__name__)
            else:
                if body.get("state") in (BotState.ENDED, BotState.FAILED):
                    body = await self._with_transcript(stay, body)
                self.run(self.core.report(stay.id, body, self.clock()))
        self.run(self.core.dismissed(stay.id, self.clock()))

    async def _with_transcript(self, stay: Stay, final: dict[str, Any]) -> dict[str, Any]:
        """The bot has left after a dismiss, and its machine goes as soon as the core hears so: fetch the
        transcript first (its own final report, which carries it too, would race the destroy)."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            status, doc = await self.relay("GET", stay, "/transcript", params={"format": "json"})
            if status == 200 and isinstance(doc, dict):
                return {**final, "transcript": doc}
        return final

    async def next_stay(self, previous: Stay) -> Stay | None:
        """The room's next stay after ``previous``, once its bot can be reached (it has reported) or it is over;
        None when the dispatcher stops. For ``?follow=room`` streams."""
        while not self._closed:
            changed = self._changed
            stay = self.core.stay_in(previous.room_id)
            if stay is not None and stay.id != previous.id and (stay.last_seen is not None or not stay.live):
                return stay
            await changed.wait()
        return None

    async def events(self, stay: Stay) -> AsyncIterator[bytes]:
        """The bot's event stream, relayed as it comes; a stay that is over gets its final status only."""
        if stay.live and stay.machine_id is not None:
            url = f"{self.address(stay.machine_id)}/rooms/{stay.room_id}/luna/events"
            headers = {"Authorization": f"Bearer {self.keys.stay_secret(stay.id)}"}
            timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http().get(url, headers=headers, timeout=timeout) as resp:
                    if resp.status == 200:
                        async for chunk in resp.content.iter_any():
                            yield chunk
                        return
        yield b"data: " + _json({"type": "status", "status": public_status(stay)}) + b"\n\n"

    # ------------------------------------------------------------------ what bot machines call
    def assignment(self, machine_id: str, boot_secret: str) -> dict[str, Any] | None:
        """A booted machine asks what to do. ``None``: not assigned (yet); ``Unauthorized``: wrong secret."""
        slot = self.core.slots.get(machine_id)
        if slot is None:  # booted before its create call returned here: the agent asks again
            return None
        if not self.keys.check(self.keys.boot_secret(slot.name), boot_secret):
            raise Unauthorized(machine_id)
        stay = self.core.stays.get(slot.stay_id) if slot.stay_id else None
        if stay is None or not stay.live:
            return None
        return {
            "stay_id": stay.id,
            "room_id": stay.room_id,
            "request": stay.request,
            "secret": self.keys.stay_secret(stay.id),
            "local_room_url": self.cfg.local_room_url or self.cfg.dispatcher_url,
        }

    def live_room(self, stay_id: str, secret: str) -> str | None:
        """The room of a live stay whose secret this is (``Unauthorized`` otherwise); None once it has ended."""
        if not self.keys.check(self.keys.stay_secret(stay_id), secret):
            raise Unauthorized(stay_id)
        stay = self.core.stays.get(stay_id)
        return stay.room_id if stay is not None and stay.live else None

    def report(self, stay_id: str, secret: str, status: dict[str, Any]) -> bool:
        """A bot's heartbeat or final status. Returns whether the stay is still live here."""
        if not self.keys.check(self.keys.stay_secret(stay_id), secret):
            raise Unauthorized(stay_id)
        self.run(self.core.report(stay_id, status, self.clock()))
        stay = self.core.stays.get(stay_id)
        return stay is not None and stay.live

    # ------------------------------------------------------------------ actions
    def run(self, actions: list[Action]) -> None:
        """Carry out the core's actions. Every core event passes here, so it also wakes ``next_stay``."""
        self._changed.set()
        self._changed = asyncio.Event()
        for action in actions:
            task = asyncio.create_task(self._do(action))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _do(self, action: Action) -> None:
        try:
            if isinstance(action, CreateMachine):
                await self._create(action)
            elif isinstance(action, StartPooled):
                await self._start(action)
            elif isinstance(action, DestroyMachine):
                await self._destroy(action)
            elif isinstance(action, FetchStatus):
                await self._fetch(action)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("fleet.action_failed", action=type(action).__name__)

    async def _create(self, action: CreateMachine) -> None:
        try:
            machine = await self.api.create(
                self.machine_config(action),
                region=action.region,
                name=action.name,
                skip_launch=action.purpose is Purpose.POOL,
            )
        except FlyApiError as exc:
            log.warning("fleet.create_failed", purpose=str(action.purpose), status=exc.status, error=exc.message)
            self.run(self.core.create_failed(action, exc.message, self.clock()))
            return
        log.info("fleet.created", machine=machine.id, purpose=str(action.purpose), stay=action.stay_id)
        self.run(self.core.created(action, machine))

    async def _start(self, action: StartPooled) -> None:
        try:
            await self.api.set_metadata(action.machine_id, ROOM, action.room_id)
            await self.api.set_metadata(action.machine_id, STAY, action.stay_id)
            await self.api.start(action.machine_id)
        except FlyApiError as exc:
            log.warning("fleet.start_failed", machine=action.machine_id, status=exc.status, error=exc.message)
            self.run(self.core.start_failed(action, f"{exc.status} {exc.message}", self.clock()))
            return
        log.info("fleet.started_warm", machine=action.machine_id, stay=action.stay_id)

    async def _destroy(self, action: DestroyMachine) -> None:
        try:
            await self.api.destroy(action.machine_id, force=True)
        except FlyApiError as exc:
            if not exc.not_found:
                log.error("fleet.destroy_failed", machine=action.machine_id, status=exc.status, error=exc.message)
                return
        log.info("fleet.destroyed", machine=action.machine_id, reason=action.reason)
        self.core.destroyed(action.machine_id)

    async def _fetch(self, action: FetchStatus) -> None:
        stay = self.core.stays.get(action.stay_id)
        if stay is None or stay.machine_id is None:
            return
        try:
            body = await self._control("GET", stay)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("fleet.status_unreachable", stay=stay.id, error=type(exc).__name__)
            return
        self.run(self.core.report(stay.id, body, self.clock()))

    async def _control(self, method: str, stay: Stay) -> dict[str, Any]:
        status, body = await self.relay(method, stay)
        if status >= 400 or not isinstance(body, dict):
            raise ValueError(f"bot answered {status}")
        return body

    async def relay(
        self, method: str, stay: Stay, path: str = "", *, json: Any = None, params: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """Call the bot's own ``/rooms/{room}/luna{path}`` with the stay's secret: (status, JSON or text body)."""
        if stay.machine_id is None:
            raise ValueError("the stay has no machine yet")
        url = f"{self.address(stay.machine_id)}/rooms/{stay.room_id}/luna{path}"
        headers = {"Authorization": f"Bearer {self.keys.stay_secret(stay.id)}"}
        async with self.http().request(method, url, headers=headers, json=json, params=params) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    def machine_config(self, action: CreateMachine) -> dict[str, Any]:
        """A bot machine: the dispatcher's image, our metadata, no restart (a crash moves to a fresh machine)."""
        metadata = {ROLE: BOT_ROLE}
        if action.stay_id is not None and action.room_id is not None:
            metadata |= {STAY: action.stay_id, ROOM: action.room_id}
        env = {
            **self.cfg.env,
            "LUNA_DISPATCHER_URL": self.cfg.dispatcher_url,
            "LUNA_BOT_BOOT_SECRET": self.keys.boot_secret(action.name),
            "LUNA_HOST": "::",  # the private network is IPv6
            "LUNA_PORT": str(self.cfg.bot_port),
            "LUNA_LOCAL_ROOMS": "false",  # the local demo room's hub lives on the dispatcher
        }
        return {
            "image": action.image,
            "init": {"cmd": list(self.cfg.bot_cmd)},
            "env": env,
            "metadata": metadata,
            "restart": {"policy": "no"},
            "size": self.cfg.size,
            "stop_config": {"signal": "SIGTERM", "timeout": 20_000_000_000},
        }

    # ------------------------------------------------------------------ monitor
    async def _watch(self) -> None:
        next_list = 0.0
        while True:
            now = self.clock()
            self.run(self.core.tick(now))
            if now >= next_list:
                next_list = now + self.cfg.list_interval_s
                try:
                    machines = await self.api.list(metadata={ROLE: BOT_ROLE})
                except FlyApiError as exc:
                    log.warning("fleet.list_failed", status=exc.status, error=exc.message)
                else:
                    self.run(self.core.machines_listed(machines, self.clock()))
            await asyncio.sleep(self.cfg.tick_interval_s)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
