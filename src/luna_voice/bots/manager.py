"""The bot manager: at most one live Luna per room, a capacity limit, bounded memory of ended bots, and the
recovery of a lost browser.

Summons of one room are serialised by the room's lock: a summon while Luna is leaving waits for the leave and
then starts a new stay, and whatever a new stay needs from outside (an RTK token) is fetched only after the
capacity check, under that lock. Ended bots stay visible for ``retention_s`` and at most ``retention_count`` of
them, then they are forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from luna_voice.bots import states as sc
from luna_voice.bots.events import RoomEvents, Watch
from luna_voice.bots.host import PageHost, PageUrls
from luna_voice.bots.lifecycle import Bot, BotTimings
from luna_voice.bots.pipeline import Pipeline
from luna_voice.events import Event, StatusSnapshot

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_S = 6.0  # bots leave within this, then are cancelled; with the closes below SIGTERM stays < 15 s
LEAVE_WAIT_S = 12.0  # a summon waits this long for the room's leaving bot
RELAUNCH_DELAYS_S = (0.0, 1.0, 2.0, 5.0)  # the last one repeats until the browser is back or the service stops


class CapacityReached(Exception):
    pass


class StillLeaving(Exception):
    pass


@dataclass(frozen=True)
class Retention:
    seconds: float = 3600.0
    count: int = 100


@dataclass
class RoomSetup:
    """What a new stay needs from the room's backend: the room config for each page attempt (a fresh one per
    page, since a local room ticket is single-use) and a page-less way out."""

    page_room: Callable[[], Awaitable[dict[str, Any]]] = field(repr=False)
    fallback_leave: Callable[[], Awaitable[None]] | None = None


class BotManager:
    def __init__(
        self,
        *,
        host: PageHost,
        max_bots: int,
        timings: BotTimings,
        urls: PageUrls,
        make_pipeline: Callable[[Bot], Pipeline],
        on_event: Callable[[Bot, Event], None] | None = None,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.max_bots = max_bots
        self.timings = timings
        self.urls = urls
        self.make_pipeline = make_pipeline
        self.on_event = on_event
        self.retention = retention or Retention()
        self.clock = clock
        self.events = RoomEvents()
        self._rooms: dict[str, Bot] = {}  # the latest bot of each room, live or ended (for its status)
        self._by_id: dict[str, Bot] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reserved = 0  # summons past the capacity check that are still fetching their room setup
        self._relaunch: asyncio.Task[None] | None = None
        self._stopping = False
        host.on_browser_lost = self._browser_lost

    # ------------------------------------------------------------------ lookups
    def live(self) -> list[Bot]:
        return [b for b in self._rooms.values() if b.state.live]

    def get(self, room_id: str) -> Bot | None:
        self._evict()
        return self._rooms.get(room_id)

    def by_id(self, bot_id: str) -> Bot | None:
        return self._by_id.get(bot_id)

    def all(self) -> list[Bot]:
        self._evict()
        return list(self._rooms.values())

    def _evict(self) -> None:
        now = self.clock()
        ended = sorted((b for b in self._rooms.values() if b.ended is not None), key=lambda b: b.ended or 0.0)
        excess = len(ended) - self.retention.count
        for i, bot in enumerate(ended):
            if i < excess or now - (bot.ended or now) >= self.retention.seconds:
                self._forget(bot)

    def _forget(self, bot: Bot) -> None:
        if self._rooms.get(bot.room_id) is bot:
            del self._rooms[bot.room_id]
            lock = self._locks.get(bot.room_id)
            if lock is not None and not lock.locked():
                del self._locks[bot.room_id]
        self._by_id.pop(bot.id, None)

    # ------------------------------------------------------------------ summon and dismiss
    async def summon(
        self,
        room_id: str,
        *,
        backend: str,
        options: dict[str, Any],
        setup: Callable[[], Awaitable[RoomSetup]],
    ) -> tuple[Bot, bool]:
        """Start Luna in ``room_id``; a room with a live bot gets that bot back (``created`` False).

        A bot on its way out is waited for, so the caller gets a new stay rather than one about to end.
        ``setup`` (which may mint a token) runs only once the summon is sure to go ahead.
        """
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            current = self._rooms.get(room_id)
            if current is not None and current.state.live:
                if not current.leaving:
                    return current, False
                if not await current.wait_ended(LEAVE_WAIT_S):
                    raise StillLeaving(f"Luna is still leaving room '{room_id}'; try again shortly")
            if self._stopping:
                raise CapacityReached("the service is stopping")
            self._evict()
            if len(self.live()) + self._reserved >= self.max_bots:
                raise CapacityReached(f"this service already runs its maximum of {self.max_bots} bots")
            self._reserved += 1
            try:
                room = await setup()
            finally:
                self._reserved -= 1
            bot = Bot(
                room_id=room_id,
                backend=backend,
                urls=self.urls,
                room_config=room.page_room,
                host=self.host,
                make_pipeline=self.make_pipeline,
                timings=self.timings,
                options=options,
                fallback_leave=room.fallback_leave,
                on_event=self._on_event,
                clock=self.clock,
            )
            if current is not None:
                self._by_id.pop(current.id, None)
            self._rooms[room_id] = bot
            self._by_id[bot.id] = bot
            bot.start()
            log.info("bot.summoned", bot=bot.id, room_id=room_id, backend=backend)
            return bot, True

    def dismiss(self, room_id: str) -> Bot | None:
        bot = self._rooms.get(room_id)
        if bot is not None and bot.state.live:
            bot.request_end(sc.DISMISSED, "dismissed through the API")
        return bot

    # ------------------------------------------------------------------ events
    def _on_event(self, bot: Bot, event: Event) -> None:
        try:
            self.events.publish(event, room_id=bot.room_id, bot_id=bot.id)
            if self.on_event is not None:
                self.on_event(bot, event)
        except Exception:  # a watcher or metric must never break the bot that published
            log.exception("bot.event_failed", event=type(event).__name__)

    def watch(self, room_id: str, *, follow: bool) -> Watch | None:
        """A stream of the room's events, starting with its bot's status; None when Luna was never summoned."""
        bot = self.get(room_id)
        if bot is None:
            return None
        first = StatusSnapshot(bot.status())
        return self.events.watch(room_id, bot.id, first, follow=follow, over=not bot.state.live)

    # ------------------------------------------------------------------ the browser
    def _browser_lost(self) -> None:
        for bot in self.live():
            bot.page_lost("the browser process exited")
        if not self._stopping and (self._relaunch is None or self._relaunch.done()):
            self._relaunch = asyncio.create_task(self._relaunch_browser(), name="relaunch-browser")

    async def _relaunch_browser(self) -> None:
        """Bring the browser back even with no bot live, so readiness recovers without waiting for a summon."""
        attempt = 0
        while not self._stopping and not self.host.ready:
            await asyncio.sleep(RELAUNCH_DELAYS_S[min(attempt, len(RELAUNCH_DELAYS_S) - 1)])
            attempt += 1
            try:
                await self.host.start()
                log.info("chromium.relaunched", attempt=attempt)
            except Exception as exc:
                log.error("chromium.relaunch_failed", attempt=attempt, error=str(exc)[:300])

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self, reason: str = "service stopping") -> None:
        """Every bot leaves its room (bounded), event streams end saying why, then Chromium exits."""
        self._stopping = True
        bots = self.live()
        for bot in bots:
            bot.request_end(sc.SHUTDOWN, reason)
        tasks = [b.task for b in bots if b.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 1.0)
        self.events.close(reason)
        if self._relaunch is not None:
            self._relaunch.cancel()
        await self.host.close()
        log.info("bots.shutdown", left=len(bots))
