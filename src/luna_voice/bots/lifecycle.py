"""One bot's stay in one room: open a page, wait until it joined, supervise, rejoin after a crash, leave.

The stay runs as one task (``run``). Each page attempt is a ``PageSession`` with its own generation; a crash of
the current page is rejoined with a fresh page while the rejoin budget allows (N crashes within a window), and
signals from an older page are ignored. Every way out ends in ``ended`` or ``failed`` with a sub-code, the page
and pipeline are closed within bounds, and a final ``status`` event ends the bot's event streams. Timeouts run on
the monotonic clock; the wall clock only stamps times for display.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from luna_voice.bots import states as sc
from luna_voice.bots.host import PageHost, PageUrls
from luna_voice.bots.pipeline import Pipeline
from luna_voice.bots.session import LIVE_PAGE_STATES, PageSession, open_bridge
from luna_voice.bots.states import BotState
from luna_voice.bots.status import describe, display, wall_offset
from luna_voice.conversation.events import TurnChanged
from luna_voice.events import Event, StateChanged, StatusSnapshot

log = structlog.get_logger(__name__)

_FRAGMENT = re.compile(r"#\S*")
LEAVE_GRACE_S = 3.0
FALLBACK_LEAVE_S = 5.0
PIPELINE_CLOSE_S = 6.0
# Ends chosen on purpose outweigh a crash that happened just before (no rejoin after a dismissal).
_DELIBERATE = frozenset({sc.DISMISSED, sc.SHUTDOWN})


@dataclass
class BotTimings:
    join_timeout_s: float = 30.0
    alone_timeout_s: float = 60.0
    max_duration_s: float = 4 * 3600.0
    rejoin_max: int = 3  # crash rejoins allowed ...
    rejoin_window_s: float = 600.0  # ... within this window


class RejoinBudget:
    """At most ``limit`` rejoins within any ``window_s``: a page that keeps crashing is given up on."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self._used: deque[float] = deque()

    def take(self, now: float) -> bool:
        while self._used and now - self._used[0] >= self.window_s:
            self._used.popleft()
        if len(self._used) >= self.limit:
            return False
        self._used.append(now)
        return True


@dataclass
class Bot:
    room_id: str
    backend: str
    urls: PageUrls
    # per page (a ticket may come from the dispatcher); may hold the RTK participant token
    room_config: Callable[[], Awaitable[dict[str, Any]]] = field(repr=False)
    host: PageHost
    make_pipeline: Callable[[Bot], Pipeline]
    timings: BotTimings = field(default_factory=BotTimings)
    options: dict[str, Any] = field(default_factory=dict)
    # Removes Luna from the room without the page (RTK: the REST kick), for a page that does not answer.
    fallback_leave: Callable[[], Awaitable[None]] | None = None
    on_event: Callable[[Bot, Event], None] | None = None  # every published event (streams, metrics)
    clock: Callable[[], float] = time.monotonic
    id: str = field(default_factory=lambda: "bot_" + secrets.token_hex(6))

    def __post_init__(self) -> None:
        self.state = BotState.STARTING
        self.sub_code: str | None = None
        self.reason: str | None = None
        self.created_at = time.time()  # wall clock, for display
        self.joined_at: float | None = None
        self.ended_at: float | None = None
        self.started = self.clock()  # monotonic from here on: deadlines, room minutes, retention
        self.in_room_since: float | None = None
        self.ended: float | None = None
        self.rejoins: list[dict[str, Any]] = []
        self.stats = {"frames_in": 0, "bytes_out": 0, "malformed": 0, "frames_filled": 0, "packets_late": 0}
        self.pipeline = self.make_pipeline(self)
        self.session: PageSession | None = None
        self._generation = 0
        self._budget = RejoinBudget(self.timings.rejoin_max, self.timings.rejoin_window_s)
        self._end = asyncio.Event()
        self._end_request: tuple[str, str | None] | None = None  # (sub_code, reason) that ends the stay
        self._done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the stay
    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"bot-{self.id}")

    async def run(self) -> None:
        try:
            self._set_state(BotState.JOINING)
            while True:
                session = self._new_session()
                await self._stay(session)
                if not self._may_rejoin():
                    break
                await session.close()
                self.pipeline.page_changed()
                if self._end_request is not None:  # dismissed while the old page was closing
                    break
        except asyncio.CancelledError:
            self.request_end(sc.SHUTDOWN, "service stopping")
            raise
        except Exception as exc:
            log.exception("bot.crashed", bot=self.id)
            self.request_end(sc.CRASHED, f"{type(exc).__name__}: {exc}")
        finally:
            await self._shutdown()

    def _new_session(self) -> PageSession:
        self._generation += 1
        self.session = PageSession(
            self._generation,
            bot_id=self.id,
            owner=self,
            pipeline=self.pipeline,
            stats=self.stats,
            clock=self.clock,
        )
        return self.session

    async def _stay(self, session: PageSession) -> None:
        """Open the page, wait until it is in the room, then supervise until something ends the stay."""
        try:
            room = await self.room_config()
            url = self.urls.page({"botId": self.id, "token": session.token, "backend": self.backend, "room": room})
            session.page = await self.host.open(url, on_crash=session.on_crash)
        except Exception as exc:  # the browser may be relaunching, the ticket's source down: failed like a crash
            # Playwright's message quotes the URL, whose fragment holds the bridge and RTK tokens.
            error = _FRAGMENT.sub("#…", f"{type(exc).__name__}: {exc}")[:300]
            log.warning("bot.page_open_failed", bot=self.id, error=error)
            self.request_end(sc.CRASHED, f"the page did not open: {error}")
            return
        try:
            await asyncio.wait_for(self._first(session.joined, self._end), self.timings.join_timeout_s)
        except TimeoutError:
            self.request_end(sc.JOIN_TIMEOUT, f"not joined after {self.timings.join_timeout_s:.0f} s")
        if self._end_request is None:
            if not self.pipeline.started:
                self.pipeline.start()
            await self._supervise(session)

    @staticmethod
    async def _first(*events: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _supervise(self, session: PageSession) -> None:
        t = self.timings
        deadline = self.started + t.max_duration_s
        while not self._end.is_set():
            now = self.clock()
            alone_since = session.alone_since
            if alone_since is not None and now - alone_since >= t.alone_timeout_s:
                self.request_end(sc.ALONE_TIMEOUT, f"nobody else in the room for {t.alone_timeout_s:.0f} s")
            elif now >= deadline:
                self.request_end(sc.MAX_DURATION, f"stayed the maximum of {t.max_duration_s:.0f} s")
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._end.wait(), min(1.0, deadline - now))

    def _may_rejoin(self) -> bool:
        """After a crash of a page that had joined, go again with a fresh page while the budget allows."""
        request = self._end_request
        if request is None or request[0] != sc.CRASHED or self.joined_at is None:
            return False
        cause = request[1] or "page crashed"
        if not self._budget.take(self.clock()):
            t = self.timings
            self._end_request = (
                sc.CRASHED,
                f"{cause}; gave up after {t.rejoin_max} rejoins in {t.rejoin_window_s:.0f} s",
            )
            return False
        self.rejoins.append({"at": time.time(), "cause": cause})
        log.warning("bot.rejoining", bot=self.id, cause=cause, attempt=len(self.rejoins))
        self._set_state(BotState.RECONNECTING, sc.CRASHED, cause)
        self._end_request = None
        self._end.clear()
        return True

    def request_end(self, sub_code: str, reason: str | None = None) -> None:
        """Ask the bot to leave; the first reason wins, except that a dismissal outweighs a crash."""
        sub_code, reason = str(sub_code), (None if reason is None else str(reason)[:500])
        current = self._end_request
        if current is None or (current[0] == sc.CRASHED and sub_code in _DELIBERATE):
            self._end_request = (sub_code, reason)
            log.info("bot.ending", bot=self.id, room_id=self.room_id, sub_code=sub_code, reason=reason)
        self._end.set()

    @property
    def leaving(self) -> bool:
        """Luna is on her way out for good (a crash being rejoined does not count)."""
        request = self._end_request
        return self.state is BotState.LEAVING or (request is not None and request[0] != sc.CRASHED)

    def page_lost(self, reason: str) -> None:
        """The browser is gone: the current page with it (rejoined like a crash)."""
        if self.session is not None:
            self.session.lost(reason)

    async def wait_ended(self, wait_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), wait_s)
        return self._done.is_set()

    async def _shutdown(self) -> None:
        sub_code, reason = self._end_request or (sc.CRASHED, "bot stopped unexpectedly")
        session = self.session
        try:
            self._set_state(BotState.LEAVING, sub_code, reason)
            # Before the page leaves: she stops talking now, and the turn in progress is closed with what was heard.
            self.pipeline.stay_ended()
            if session is not None and not session.retired and session.room_state in LIVE_PAGE_STATES:
                await self._leave_room(session)
            await asyncio.wait_for(self.pipeline.aclose(), PIPELINE_CLOSE_S)
            if session is not None:
                await session.close()
        except Exception:  # whatever went wrong, the bot still reaches its final state below
            log.exception("bot.shutdown_failed", bot=self.id)
        finally:
            self.ended_at, self.ended = time.time(), self.clock()
            self._set_state(BotState.FAILED if sub_code in sc.FAILURES else BotState.ENDED, sub_code, reason)
            self._done.set()
            self.publish(StatusSnapshot(self.status(), final=True))

    async def _leave_room(self, session: PageSession) -> None:
        if session.leave():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.left.wait(), LEAVE_GRACE_S)
        if not session.left.is_set() and self.fallback_leave is not None:
            try:
                await asyncio.wait_for(self.fallback_leave(), FALLBACK_LEAVE_S)
                log.info("bot.removed_without_page", bot=self.id)
            except Exception as exc:
                log.warning("bot.fallback_leave_failed", bot=self.id, error=str(exc) or type(exc).__name__)

    def _set_state(self, state: BotState, sub_code: str | None = None, reason: str | None = None) -> None:
        self.state, self.sub_code, self.reason = state, sub_code, reason
        log.info("bot.state", bot=self.id, room_id=self.room_id, state=str(state), sub_code=sub_code, reason=reason)
        self.publish(StateChanged(str(state), sub_code, reason))

    # ------------------------------------------------------------------ signals from the current page
    def _current(self, session: PageSession, signal: str) -> bool:
        if session is self.session and not session.retired:
            return True
        log.info("bot.stale_signal", bot=self.id, generation=session.generation, signal=signal)
        return False

    def session_joined(self, session: PageSession) -> None:
        if not self._current(session, "joined"):
            return
        if self.state in (BotState.JOINING, BotState.RECONNECTING):
            if self.joined_at is None:
                self.joined_at, self.in_room_since = time.time(), self.clock()
            self._set_state(BotState.JOINED)  # a rejoin that worked clears the crash from the status

    def session_reconnecting(self, session: PageSession, sub_code: str | None, reason: str | None) -> None:
        if self._current(session, "reconnecting") and self.state is BotState.JOINED:
            self._set_state(BotState.RECONNECTING, sub_code, reason)

    def session_ended(self, session: PageSession, sub_code: str, reason: str | None) -> None:
        if self._current(session, sub_code) and self.state is not BotState.LEAVING:
            self.request_end(sub_code, reason)

    # ------------------------------------------------------------------ bridge and playback
    async def attach(self, request: web.Request) -> web.WebSocketResponse:
        """Serve the page's bridge WebSocket (``/bridge/{bot_id}``) for the current page session."""
        session = self.session
        ws, hello = await open_bridge(request, session.token if session is not None else None)
        if hello is not None and session is not None:
            await session.attach(ws, hello)
        return ws

    def send_audio(self, seq: int, pcm: bytes) -> None:
        if self.session is not None:
            self.session.send_audio(seq, pcm)

    def clear_playback(self) -> None:
        if self.session is not None:
            self.session.clear_playback()

    def set_playback_gain(self, gain: float) -> None:
        if self.session is not None:
            self.session.set_playback_gain(gain)

    def unmute(self) -> None:
        """Ask the page to publish Luna's voice again after someone else muted her."""
        if self.session is not None:
            self.session.unmute()

    def send_chat(self, text: str) -> None:
        """A chat message in the room from Luna (the chat mirror)."""
        if self.session is not None:
            self.session.send_chat(text)

    # ------------------------------------------------------------------ events and status
    def publish(self, event: Event) -> None:
        if isinstance(event, TurnChanged) and event.state.terminal:
            t = event.turn
            log.info(
                "turn.ended",
                bot=self.id,
                turn=t["id"],
                speaker=t["speaker"]["name"],
                state=t["state"],
                reason=t["reason"],
                error=t["error"],
                reply_ms=t["latency"].get("first_audio_played_ms"),
                cost_usd=t["cost_usd"],
            )
        if self.on_event is not None:
            self.on_event(self, display(event, wall_offset(self.clock)))

    def room_minutes(self) -> float:
        """Minutes Luna has been in the room (RTK bills these per participant)."""
        if self.in_room_since is None:
            return 0.0
        return ((self.ended or self.clock()) - self.in_room_since) / 60

    def status(self) -> dict[str, Any]:
        return describe(self)
