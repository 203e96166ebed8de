"""One bot: Luna in one room. Owns the page in the browser, the bridge socket to it, and the pipeline.

The lifecycle runs as one task (``run``): open the page, wait for the page to join, then supervise (alone
timeout, max duration, page crash) until something ends the stay. Every way out ends in ``ended`` or
``failed`` with a sub-code, and the browser context is always closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from luna_voice.bots import states as sc
from luna_voice.bots.host import BotPage, ChromiumHost
from luna_voice.bots.pipeline import Pipeline
from luna_voice.bots.states import BotState
from luna_voice.bridge import protocol as bp
from luna_voice.conversation.events import TurnChanged
from luna_voice.events import Event, StateChanged

log = structlog.get_logger(__name__)

HELLO_TIMEOUT_S = 10.0
MAX_REJOINS = 1  # a page that crashes again right after rejoining is not retried forever
LEAVE_GRACE_S = 3.0
# roomLeft states reported by the page → our sub-codes
_LEFT_SUB_CODES = {"ended": sc.ROOM_ENDED, "kicked": sc.KICKED, "rejected": sc.REJECTED, "waitlisted": sc.WAITLISTED}


@dataclass
class BotTimings:
    join_timeout_s: float = 30.0
    alone_timeout_s: float = 60.0
    max_duration_s: float = 4 * 3600.0


@dataclass
class Bot:
    room_id: str
    backend: str
    page_url: Callable[[dict[str, Any]], str]  # config -> URL of Luna's page
    room_config: dict[str, Any] = field(repr=False)  # may hold the RTK participant token
    host: ChromiumHost
    make_pipeline: Callable[[Bot], Pipeline]
    timings: BotTimings = field(default_factory=BotTimings)
    options: dict[str, Any] = field(default_factory=dict)
    # Removes Luna from the room without the page (RTK: the REST kick), for a page that does not answer.
    fallback_leave: Callable[[], Awaitable[None]] | None = None
    on_event: Callable[[Event], None] | None = None  # every published event (metrics)
    id: str = field(default_factory=lambda: "bot_" + secrets.token_hex(6))
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    def __post_init__(self) -> None:
        self.state = BotState.STARTING
        self.sub_code: str | None = None
        self.reason: str | None = None
        self.created_at = time.time()
        self.joined_at: float | None = None
        self.ended_at: float | None = None
        self.pipeline = self.make_pipeline(self)
        self.page_info: dict[str, Any] = {}
        self._page: BotPage | None = None
        self._ws: web.WebSocketResponse | None = None
        self._outbox: asyncio.Queue[bytes | str] = asyncio.Queue()
        self._joined = asyncio.Event()
        self._page_left = asyncio.Event()  # the page reported leaving the room, or its bridge closed
        self._end = asyncio.Event()
        self._end_request: tuple[str, str | None] | None = None  # (sub_code, reason) that ends the stay
        self._alone_since: float | None = time.time()
        self._pids: dict[int, str] = {}
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self.task: asyncio.Task[None] | None = None
        self._rejoins = 0
        self.bridge_stats = {"frames_in": 0, "bytes_out": 0, "malformed": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"bot-{self.id}")

    async def run(self) -> None:
        try:
            self._set_state(BotState.JOINING)
            while True:
                await self._stay()
                if not await self._may_rejoin():
                    break
        except asyncio.CancelledError:
            self.request_end(sc.SHUTDOWN, "service stopping")
            raise
        except Exception as exc:
            log.exception("bot.crashed", bot=self.id)
            self.request_end(sc.CRASHED, f"{type(exc).__name__}: {exc}")
        finally:
            await self._shutdown()

    async def _stay(self) -> None:
        """Open the page, wait until it is in the room, then supervise until something ends the stay."""
        self._page = await self.host.open(self._url(), on_crash=lambda: self.request_end(sc.CRASHED, "page crashed"))
        try:
            await asyncio.wait_for(self._wait_joined(), self.timings.join_timeout_s)
        except TimeoutError:
            if self._end_request is None:
                self.request_end(sc.JOIN_TIMEOUT, f"not joined after {self.timings.join_timeout_s:.0f} s")
        if self._end_request is None:
            if self.pipeline.started is False:
                self.pipeline.start()
            await self._supervise()

    async def _may_rejoin(self) -> bool:
        """After a crash of a page that had joined, open a fresh page and join again (at most MAX_REJOINS times)."""
        if self._end_request is None or self._end_request[0] != sc.CRASHED or self.joined_at is None:
            return False
        if self._rejoins >= MAX_REJOINS:
            return False
        self._rejoins += 1
        log.warning("bot.rejoining", bot=self.id, reason=self._end_request[1], attempt=self._rejoins)
        self._set_state(BotState.RECONNECTING, sc.CRASHED, self._end_request[1])
        self._end_request = None
        self._end.clear()
        self._joined.clear()
        self._page_left.clear()
        for pid in list(self._pids.values()):  # the new page announces who is there again
            self.pipeline.participant_left(pid)
        self._pids.clear()
        old, self._page = self._page, None
        if old is not None:
            await old.close()
        return True

    async def _wait_joined(self) -> None:
        joined = asyncio.ensure_future(self._joined.wait())
        ended = asyncio.ensure_future(self._end.wait())
        try:
            await asyncio.wait({joined, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()
            ended.cancel()

    async def _supervise(self) -> None:
        deadline = time.time() + self.timings.max_duration_s
        while not self._end.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._end.wait(), 1.0)
            now = time.time()
            if self._alone_since is not None and now - self._alone_since >= self.timings.alone_timeout_s:
                self.request_end(sc.ALONE_TIMEOUT, f"nobody else in the room for {self.timings.alone_timeout_s:.0f} s")
            elif now >= deadline:
                self.request_end(sc.MAX_DURATION, f"stayed the maximum of {self.timings.max_duration_s:.0f} s")

    def request_end(self, sub_code: str, reason: str | None = None) -> None:
        """Ask the bot to leave; the first reason wins."""
        if self._end_request is None:
            self._end_request = (sub_code, reason)
            log.info("bot.ending", bot=self.id, room_id=self.room_id, sub_code=sub_code, reason=reason)
        self._end.set()

    async def _shutdown(self) -> None:
        sub_code, reason = self._end_request or (sc.CRASHED, "bot stopped unexpectedly")
        failed = sub_code in sc.FAILURES
        if self.state is not BotState.FAILED:
            self._set_state(BotState.LEAVING)
        if self.page_info.get("state") in ("joined", "joining", "reconnecting"):
            if self._ws is not None and not self._ws.closed:
                self._enqueue(bp.control("leave"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._page_left.wait(), LEAVE_GRACE_S)
            if not self._page_left.is_set() and self.fallback_leave is not None:
                try:
                    await self.fallback_leave()
                    log.info("bot.removed_without_page", bot=self.id)
                except Exception as exc:
                    log.warning("bot.fallback_leave_failed", bot=self.id, error=str(exc))
        log.debug("bot.shutdown_step", bot=self.id, step="left room")
        await self.pipeline.aclose()
        log.debug("bot.shutdown_step", bot=self.id, step="pipeline closed")
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        log.debug("bot.shutdown_step", bot=self.id, step="bridge closed")
        if self._page is not None:
            await self._page.close()
        self.ended_at = time.time()
        self._set_state(BotState.FAILED if failed else BotState.ENDED, sub_code, reason)

    def _set_state(self, state: BotState, sub_code: str | None = None, reason: str | None = None) -> None:
        self.state = state
        if sub_code is not None:
            self.sub_code, self.reason = sub_code, reason
        log.info("bot.state", bot=self.id, room_id=self.room_id, state=str(state), sub_code=sub_code, reason=reason)
        self.publish(StateChanged(str(state), self.sub_code, self.reason))

    def _url(self) -> str:
        config = {"botId": self.id, "token": self.token, "backend": self.backend, "room": self.room_config}
        return self.page_url(config)

    @staticmethod
    def encode_config(config: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(config).encode()).decode().rstrip("=")

    # ------------------------------------------------------------------ bridge
    async def attach(self, request: web.Request) -> web.WebSocketResponse:
        """Serve the page's bridge WebSocket (``/bridge/{bot_id}``)."""
        ws = web.WebSocketResponse(max_msg_size=bp.MAX_FRAME_BYTES, heartbeat=10, timeout=2.0)
        await ws.prepare(request)
        try:
            hello = await self._hello(ws)
        except bp.ProtocolError as exc:
            log.warning("bridge.refused", bot=self.id, code=exc.code, reason=exc.reason)
            await ws.close(code=exc.code, message=exc.reason.encode()[:120])
            return ws
        self._ws = ws
        self.page_info.update(backend=hello.backend, audio_context=hello.audio_context)
        log.info("bridge.attached", bot=self.id, audio_context=hello.audio_context)
        sender = asyncio.create_task(self._send_loop(ws))
        junk: set[str] = set()  # reasons already logged for this socket
        try:
            async for msg in ws:
                try:
                    if msg.type == WSMsgType.BINARY:
                        self._on_audio(bp.decode_audio(msg.data))
                    elif msg.type == WSMsgType.TEXT:
                        self._on_control(bp.decode_text(msg.data))
                except bp.ProtocolError as exc:  # junk is dropped: it never reaches the lifecycle
                    self.bridge_stats["malformed"] += 1
                    if exc.reason not in junk and len(junk) < 20:
                        junk.add(exc.reason)
                        log.warning("bridge.malformed", bot=self.id, reason=exc.reason, dropped=True)
        finally:
            # Say why the socket went: aiohttp closes it itself (1009) for a frame over MAX_FRAME_BYTES.
            error = ws.exception()
            log.info(
                "bridge.closed",
                bot=self.id,
                code=ws.close_code,
                error=f"{type(error).__name__}: {error}" if error is not None else None,
            )
            sender.cancel()
            self._page_left.set()
            if self._ws is ws:
                self._ws = None
            if self.state.live and self.state is not BotState.LEAVING:
                self.request_end(sc.CRASHED, "the page's bridge connection closed")
        return ws

    async def _hello(self, ws: web.WebSocketResponse) -> bp.Hello:
        if self._ws is not None and not self._ws.closed:
            raise bp.ProtocolError(bp.CLOSE_CONFLICT, "a page is already attached to this bot")
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            raise bp.ProtocolError(bp.CLOSE_UNAUTHORIZED, "no hello") from None
        if msg.type != WSMsgType.TEXT:
            raise bp.ProtocolError(bp.CLOSE_UNAUTHORIZED, "first message must be a text hello with the bot token")
        return bp.decode_hello(msg.data, self.token)

    async def _send_loop(self, ws: web.WebSocketResponse) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, bytes):
                self.bridge_stats["bytes_out"] += len(item)
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)

    def _enqueue(self, item: bytes | str) -> None:
        self._outbox.put_nowait(item)

    def clear_playback(self) -> None:
        self._enqueue(bp.control("clear"))

    def send_audio(self, seq: int, pcm: bytes) -> None:
        self._enqueue(bp.encode_audio(bp.KIND_PLAYBACK, 0, seq, time.time() * 1000, pcm))

    def _on_audio(self, frame: bp.AudioFrame) -> None:
        pid = self._pids.get(frame.participant)
        if frame.kind != bp.KIND_CAPTURE or pid is None:
            return
        self.bridge_stats["frames_in"] += 1
        self.pipeline.frame(pid, frame.timestamp_ms, frame.pcm)

    def _on_control(self, msg: bp.Message) -> None:
        if isinstance(msg, bp.ParticipantJoined):
            self._pids[msg.index] = msg.id
            self._alone_since = None
            self.pipeline.participant_joined(msg.id, msg.name)
        elif isinstance(msg, bp.ParticipantLeft):
            pid = self._pids.pop(msg.index, msg.id)
            self.pipeline.participant_left(pid)
            if not self._pids:
                self._alone_since = time.time()
        elif isinstance(msg, bp.Played):
            self.pipeline.played(msg.seq, msg.idle)
        elif isinstance(msg, bp.RoomState):
            self._on_room_state(msg)
        elif isinstance(msg, bp.PageLog):
            log.info("page.log", bot=self.id, level=msg.level, message=msg.message)
        elif isinstance(msg, bp.Cleared):
            log.info("playback.cleared", bot=self.id, dropped_ms=round(msg.dropped_ms))

    def _on_room_state(self, msg: bp.RoomState) -> None:
        self.page_info["state"] = msg.state
        if msg.state in ("left", "failed"):
            self._page_left.set()
        if msg.state == "joined":
            if self.state in (BotState.JOINING, BotState.RECONNECTING):
                self.joined_at = self.joined_at or time.time()
                self._set_state(BotState.JOINED)
            self._joined.set()
        elif msg.state == "reconnecting":
            self._set_state(BotState.RECONNECTING, msg.sub_code, msg.reason)
        elif msg.state == "failed":
            self.request_end(msg.sub_code or sc.JOIN_FAILED, msg.reason)
        elif msg.state == "left" and self.state.live and self.state is not BotState.LEAVING:
            self.request_end(_LEFT_SUB_CODES.get(msg.sub_code or "", msg.sub_code or sc.ROOM_ENDED), msg.reason)

    # ------------------------------------------------------------------ events and status
    def subscribe(self) -> asyncio.Queue[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(q)

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
            self.on_event(event)
        for q in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled watcher loses events, never the bot
                q.put_nowait(event)

    def room_minutes(self) -> float:
        """Minutes Luna has been in the room (RTK bills these per participant)."""
        if self.joined_at is None:
            return 0.0
        return ((self.ended_at or time.time()) - self.joined_at) / 60

    def status(self) -> dict[str, Any]:
        core = self.pipeline.core
        minutes = self.room_minutes()
        return {
            "room_id": self.room_id,
            "bot_id": self.id,
            "backend": self.backend,
            "state": str(self.state),
            "sub_code": self.sub_code,
            "reason": self.reason,
            "created_at": self.created_at,
            "joined_at": self.joined_at,
            "ended_at": self.ended_at,
            "participants": core.participant_list(),
            "turns": [t.to_dict() for t in core.turns.values()],
            "usage": vars(core.usage).copy(),
            "cost_usd": round(core.cost_usd, 6),
            "room_minutes": round(minutes, 3),
            "room_cost_usd": round(minutes * self.options.get("minute_price", 0.0), 6),
            "providers": {"stt": self.pipeline.stt.name, "llm": self.pipeline.llm.name, "tts": self.pipeline.tts.name},
            "policy": core.cfg.policy,
            "stats": {**core.stats, **self.bridge_stats},
            "page": dict(self.page_info),
        }
