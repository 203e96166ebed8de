"""The bot manager: at most one live Luna per room, a capacity limit, and a clean leave on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from luna_voice.bots import states as sc
from luna_voice.bots.bot import Bot, BotTimings
from luna_voice.bots.host import ChromiumHost
from luna_voice.bots.pipeline import Pipeline
from luna_voice.events import Event

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_S = 10.0


class CapacityReached(Exception):
    pass


class BotManager:
    def __init__(
        self,
        *,
        host: ChromiumHost,
        max_bots: int,
        timings: BotTimings,
        page_url: Callable[[dict[str, Any]], str],
        make_pipeline: Callable[[Bot], Pipeline],
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.host = host
        self.max_bots = max_bots
        self.timings = timings
        self.page_url = page_url
        self.make_pipeline = make_pipeline
        self.on_event = on_event
        self.rooms: dict[str, Bot] = {}  # the latest bot of each room, live or ended (for its status)
        self.by_id: dict[str, Bot] = {}
        self._lock = asyncio.Lock()
        host.on_browser_lost = self._browser_lost

    def live(self) -> list[Bot]:
        return [b for b in self.rooms.values() if b.state.live]

    def live_in(self, room_id: str) -> Bot | None:
        bot = self.rooms.get(room_id)
        return bot if bot is not None and bot.state.live else None

    async def summon(
        self,
        room_id: str,
        *,
        backend: str,
        room_config: dict[str, Any],
        options: dict[str, Any],
        fallback_leave: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[Bot, bool]:
        """Start Luna in ``room_id``; a room with a live bot gets that bot back (``created`` False)."""
        async with self._lock:
            current = self.rooms.get(room_id)
            if current is not None and current.state.live:
                return current, False
            if len(self.live()) >= self.max_bots:
                raise CapacityReached(f"this service already runs its maximum of {self.max_bots} bots")
            bot = Bot(
                room_id=room_id,
                backend=backend,
                page_url=self.page_url,
                room_config=room_config,
                host=self.host,
                make_pipeline=self.make_pipeline,
                timings=self.timings,
                options=options,
                fallback_leave=fallback_leave,
                on_event=self.on_event,
            )
            if current is not None:
                self.by_id.pop(current.id, None)
            self.rooms[room_id] = bot
            self.by_id[bot.id] = bot
            bot.start()
            log.info("bot.summoned", bot=bot.id, room_id=room_id, backend=backend)
            return bot, True

    def dismiss(self, room_id: str) -> Bot | None:
        bot = self.rooms.get(room_id)
        if bot is not None and bot.state.live:
            bot.request_end(sc.DISMISSED, "dismissed through the API")
        return bot

    def _browser_lost(self) -> None:
        for bot in self.live():
            bot.request_end(sc.CRASHED, "the browser process exited")

    async def shutdown(self) -> None:
        """Every bot leaves its room (bounded), then Chromium exits."""
        bots = self.live()
        for bot in bots:
            bot.request_end(sc.SHUTDOWN, "service stopping")
        tasks = [b.task for b in bots if b.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        await self.host.close()
        log.info("bots.shutdown", left=len(bots))
