"""``luna-voice bot``: one stay on one machine that a dispatcher started.

It asks the dispatcher for its assignment, runs the ordinary service with one bot (its control API behind the
stay's secret, no local room of its own: the dispatcher hosts it), summons Luna into the room, reports her status
every second, and when the stay ends sends the final status with the meeting transcript and exits. SIGTERM (Fly
stopping the machine) makes her leave the room first.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr, ValidationError

from luna_voice import logs
from luna_voice.api.errors import ApiError
from luna_voice.api.models import SummonRequest
from luna_voice.bots import states as sc
from luna_voice.config import Settings
from luna_voice.scale.agent import MAX_REPORT, Agent, Assignment, NoAssignment
from luna_voice.service import Service

log = structlog.get_logger(__name__)

STAY_FOREVER_S = 365 * 24 * 3600.0


async def run(settings: Settings, env: Mapping[str, str] = os.environ) -> int:
    agent = Agent.from_env(env)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        assignment = await agent.assignment(http)
        log.info("bot.assigned", stay=assignment.stay_id, room_id=assignment.room_id)
        hub = assignment.local_room_url or agent.dispatcher_url
        settings = settings.model_copy(
            update={
                "api_token": SecretStr(assignment.secret),  # only the dispatcher can call this bot's API
                "local_rooms": False,
                "local_room_url": hub,
                "max_bots": 1,
            }
        )

        async def ticket(_room_id: str) -> str:  # the stay's room: the dispatcher knows which
            return await agent.local_ticket(http, assignment)

        # Only the dispatcher's own hub takes its tickets; a hub elsewhere is reached without one.
        service = Service(settings, bot_tickets=ticket if hub.rstrip("/") == agent.dispatcher_url else None)
        runner = web.AppRunner(service.app(), handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        try:
            return await _stay(service, agent, http, assignment)
        finally:
            await service.stop()
            await runner.cleanup()


async def _stay(service: Service, agent: Agent, http: aiohttp.ClientSession, assignment: Assignment) -> int:
    room_id = assignment.room_id
    try:
        await service.summon(room_id, SummonRequest.model_validate(assignment.request))
    except (ApiError, ValidationError) as exc:
        code, message = (exc.code, exc.message) if isinstance(exc, ApiError) else ("invalid_body", str(exc))
        log.error("bot.summon_failed", code=code, reason=message)
        await agent.final(http, assignment, {"state": "failed", "sub_code": code, "reason": message})
        return 1
    bot = service.manager.get(room_id)
    assert bot is not None
    ended = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop_config asks for SIGTERM; Fly's own default is SIGINT
        loop.add_signal_handler(sig, lambda: bot.request_end(sc.SHUTDOWN, "the bot machine is stopping"))
    watcher = asyncio.create_task(_when_done(bot.wait_ended(STAY_FOREVER_S), ended))
    try:
        await agent.heartbeat(
            http, assignment, lambda: service.status(room_id) or {}, ended, final=lambda: _final(service, room_id)
        )
    finally:
        watcher.cancel()
    return 0


async def _final(service: Service, room_id: str) -> dict[str, Any]:
    """The last status with the meeting transcript, for the dispatcher to serve once this machine is gone.
    Without it when it is turned off or would not fit in a report (the status is worth more)."""
    status = service.status(room_id) or {}
    try:
        doc = await service.transcript(room_id)
    except ApiError:  # transcript_disabled
        return status
    if doc is None:
        return status
    final = {**status, "transcript": doc.json}
    size = len(json.dumps(final, ensure_ascii=False).encode())
    if size > MAX_REPORT:
        log.warning("bot.transcript_too_large", bytes=size, limit=MAX_REPORT)
        return status
    return final


async def _when_done(waiting: Awaitable[bool], ended: asyncio.Event) -> None:
    await waiting
    ended.set()


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level, json=settings.log_json)
    try:
        code = asyncio.run(run(settings))
    except NoAssignment as exc:
        log.error("bot.no_assignment", reason=str(exc))
        code = 2
    raise SystemExit(code)
