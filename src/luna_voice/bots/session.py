"""A page session: one attempt at Luna's page, from opening it to closing it.

Each attempt has a generation number and its own bridge token, and owns everything that belongs to that page:
the browser page, the bridge socket, the playback outbox, the participant map (the page's indexes) and the
alone timer. When a page crashes and a fresh one takes over, the old session is retired: from then on its crash
callback, its late bridge messages and its socket closing are ignored, its queued playback is dropped with it,
and the new page starts from a clean slate. Signals reach the bot only through ``SessionOwner`` and carry the
session, so the bot can tell the current page from an older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiohttp import WSMsgType, web

from luna_voice.bots import states as sc
from luna_voice.bots.host import PageHandle
from luna_voice.bots.pipeline import Pipeline
from luna_voice.bridge import protocol as bp
from luna_voice.bridge.capture import Capture
from luna_voice.bridge.opus_av import OpusDecoder
from luna_voice.bridge.opus_stream import OpusJunk

log = structlog.get_logger(__name__)

HELLO_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 3.0
# roomLeft states reported by the page → our sub-codes
LEFT_SUB_CODES = {"ended": sc.ROOM_ENDED, "kicked": sc.KICKED, "rejected": sc.REJECTED, "waitlisted": sc.WAITLISTED}
LIVE_PAGE_STATES = ("joined", "joining", "reconnecting")
# permessage-deflate off: Chromium offers it and aiohttp accepted it, so every 20 ms frame was deflated on one side
# and inflated on the other (Chromium's network service, this event loop) to save a few percent of PCM's bytes on a
# loopback socket. The bench's older rungs turn it back on.
BRIDGE_DEFLATE = False


class SessionOwner(Protocol):
    """What a page session reports to (the bot's lifecycle)."""

    def session_joined(self, session: PageSession) -> None: ...

    def session_reconnecting(self, session: PageSession, sub_code: str | None, reason: str | None) -> None: ...

    def session_ended(self, session: PageSession, sub_code: str, reason: str | None) -> None: ...


class PageSession:
    def __init__(
        self,
        generation: int,
        *,
        bot_id: str,
        owner: SessionOwner,
        pipeline: Pipeline,
        stats: dict[str, int],
        clock: Callable[[], float],
    ) -> None:
        self.generation = generation
        self.bot_id = bot_id
        self.token = secrets.token_urlsafe(24)
        self.page: PageHandle | None = None
        self.info: dict[str, Any] = {"generation": generation}  # backend, audio context, room state (status)
        self.joined = asyncio.Event()
        self.left = asyncio.Event()  # the page reported leaving the room, or its bridge closed
        self.alone_since: float | None = clock()  # alone until the page announces someone
        self.retired = False
        self._owner = owner
        self._pipeline = pipeline
        self._stats = stats
        self._clock = clock
        self._ws: web.WebSocketResponse | None = None
        self._outbox: asyncio.Queue[bytes | str] = asyncio.Queue()
        self._pids: dict[int, str] = {}
        self._captures: dict[int, Capture] = {}  # participant index -> their Opus stream's decoding
        self._fill: asyncio.Handle | None = None  # when a capture next has silence to fill (DTX, loss)
        self._junk: set[str] = set()  # reasons already logged

    def __repr__(self) -> str:
        return f"PageSession(bot={self.bot_id}, generation={self.generation}, retired={self.retired})"

    @property
    def room_state(self) -> str | None:
        return self.info.get("state")

    # ------------------------------------------------------------------ signals from the page
    def on_crash(self) -> None:
        """The browser reports this page's renderer crashed (or the browser itself is gone)."""
        if self._stale("crash"):
            return
        self._owner.session_ended(self, sc.CRASHED, "page crashed")

    def lost(self, reason: str) -> None:
        """The page is gone without a crash event of its own (the browser process exited)."""
        if not self._stale("lost"):
            self._owner.session_ended(self, sc.CRASHED, reason)

    def _stale(self, what: str) -> bool:
        if self.retired:
            log.debug("session.stale_signal", bot=self.bot_id, generation=self.generation, signal=what)
        return self.retired

    # ------------------------------------------------------------------ bridge
    async def attach(self, ws: web.WebSocketResponse, hello: bp.Hello) -> None:
        """Serve the page's bridge socket (already past a valid hello for this session) until it closes."""
        if self.retired:
            await ws.close(code=bp.CLOSE_CONFLICT, message=b"this page was replaced by a newer one")
            return
        if self._ws is not None and not self._ws.closed:
            await ws.close(code=bp.CLOSE_CONFLICT, message=b"a page is already attached to this bot")
            return
        self._ws = ws
        self.info.update(backend=hello.backend)
        log.info("bridge.attached", bot=self.bot_id, generation=self.generation)
        sender = asyncio.create_task(self._send_loop(ws))
        try:
            async for msg in ws:
                if self.retired:
                    break
                if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                    self._on_message(msg.data)
        finally:
            # Say why the socket went: aiohttp closes it itself (1009) for a frame over MAX_FRAME_BYTES.
            error = ws.exception()
            log.info(
                "bridge.closed",
                bot=self.bot_id,
                generation=self.generation,
                code=ws.close_code,
                error=f"{type(error).__name__}: {error}" if error is not None else None,
            )
            sender.cancel()
            self.left.set()
            if self._ws is ws:
                self._ws = None
            if not self._stale("bridge closed"):
                self._owner.session_ended(self, sc.CRASHED, "the page's bridge connection closed")

    def _on_message(self, data: bytes | str) -> None:
        """One frame or message; junk is logged once per reason and dropped, and never reaches the lifecycle."""
        try:
            if isinstance(data, bytes):
                self._on_audio(bp.decode_audio(data))
            else:
                self._on_control(bp.decode_text(data))
        except bp.ProtocolError as exc:
            self._drop(exc.reason)
        except OpusJunk as exc:
            self._drop(str(exc))
        except Exception as exc:  # a bug in handling one message must not take the page down with it
            log.exception("bridge.message_failed", bot=self.bot_id, generation=self.generation)
            self._drop(f"{type(exc).__name__}: {exc}")

    def _drop(self, reason: str) -> None:
        self._stats["malformed"] += 1
        if reason not in self._junk and len(self._junk) < 20:
            self._junk.add(reason)
            log.warning("bridge.malformed", bot=self.bot_id, generation=self.generation, reason=reason, dropped=True)

    async def _send_loop(self, ws: web.WebSocketResponse) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, bytes):
                self._stats["bytes_out"] += len(item)
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)

    def send_audio(self, seq: int, pcm: bytes) -> None:
        """Playback frames ``seq``, ``seq + 1``, … in one message (``bridge.protocol``: 20 ms each but the last).
        The header's timestamp is for the page's logs only (wall clock, the page's own frame of reference)."""
        self._outbox.put_nowait(bp.encode_audio(bp.KIND_PLAYBACK, 0, seq, time.time() * 1000, pcm))

    def clear_playback(self) -> None:
        self._outbox.put_nowait(bp.control("clear"))

    def set_playback_gain(self, gain: float) -> None:
        self._outbox.put_nowait(bp.duck(gain))

    def unmute(self) -> None:
        self._outbox.put_nowait(bp.control("unmute"))

    def send_chat(self, text: str) -> None:
        self._outbox.put_nowait(bp.chat(text))

    def leave(self) -> bool:
        """Ask the page to leave the room; False when it cannot hear us (no bridge)."""
        if self._ws is None or self._ws.closed:
            return False
        self._outbox.put_nowait(bp.control("leave"))
        return True

    def _on_audio(self, frame: bp.AudioFrame) -> None:
        pid = self._pids.get(frame.participant)
        if frame.kind != bp.KIND_CAPTURE_OPUS or pid is None:
            return
        capture = self._captures.get(frame.participant)
        if capture is None:
            capture = self._captures[frame.participant] = Capture(OpusDecoder)
        late = capture.dropped_late
        self._feed(pid, capture.packet(frame.seq, frame.payload, frame.timestamp_ms, self._clock()))
        self._stats["packets_late"] += capture.dropped_late - late
        if self._fill is None:
            self._schedule_fill()

    def _feed(self, pid: str, frames: list[tuple[float, bytes]]) -> None:
        for page_ms, pcm in frames:
            self._stats["frames_in"] += 1
            self._pipeline.frame(pid, page_ms, pcm)

    def _schedule_fill(self) -> None:
        """Wake when the earliest capture has silence to fill. Not rescheduled per packet (50 a second per
        speaker): a wake-up that finds nothing due yet sleeps again until the new earliest."""
        dues = [due for capture in self._captures.values() if (due := capture.due()) is not None]
        if dues and not self.retired:
            delay = max(0.0, min(dues) - self._clock())
            self._fill = asyncio.get_running_loop().call_later(delay, self._fill_after_reads)

    def _fill_after_reads(self) -> None:
        """Fill one loop pass later. After the loop was busy, a due timer runs in the same pass as the socket's
        read, before the reader task has taken the packets that waited meanwhile: filling first would drop them
        as late (their time filled)."""
        self._fill = asyncio.get_running_loop().call_soon(self._fill_silence)

    def _fill_silence(self) -> None:
        self._fill = None
        now = self._clock()
        for index, capture in list(self._captures.items()):
            if (pid := self._pids.get(index)) is not None:
                frames = capture.tick(now)
                self._stats["frames_filled"] += len(frames)
                self._feed(pid, frames)
        self._schedule_fill()

    def _on_control(self, msg: bp.Message) -> None:
        if isinstance(msg, bp.ParticipantJoined):
            self._pids[msg.index] = msg.id
            self.alone_since = None
            self._pipeline.participant_joined(msg.id, msg.name)
        elif isinstance(msg, bp.ParticipantLeft):
            pid = self._pids.pop(msg.index, msg.id)
            self._captures.pop(msg.index, None)
            self._pipeline.participant_left(pid)
            if not self._pids:
                self.alone_since = self._clock()
        elif isinstance(msg, bp.Played):
            self._pipeline.played(msg.seq, msg.idle)
        elif isinstance(msg, bp.RoomState):
            self._on_room_state(msg)
        elif isinstance(msg, bp.PageLog):
            log.info("page.log", bot=self.bot_id, level=msg.level, message=msg.message)
        elif isinstance(msg, bp.Cleared):
            log.info("playback.cleared", bot=self.bot_id, dropped_ms=round(msg.dropped_ms))
        elif isinstance(msg, bp.Muted):
            log.warning("bot.muted_by_host", bot=self.bot_id, muted=msg.muted, reason=msg.reason)
            self._pipeline.muted(msg.muted, msg.reason)

    def _on_room_state(self, msg: bp.RoomState) -> None:
        self.info["state"] = msg.state
        if msg.state in ("left", "failed"):
            self.left.set()
        if msg.state == "joined":
            self.joined.set()
            self._owner.session_joined(self)
        elif msg.state == "reconnecting":
            self._owner.session_reconnecting(self, msg.sub_code, msg.reason)
        elif msg.state == "failed":
            self._owner.session_ended(self, msg.sub_code or sc.JOIN_FAILED, msg.reason)
        elif msg.state == "left":
            sub_code = LEFT_SUB_CODES.get(msg.sub_code or "", msg.sub_code or sc.ROOM_ENDED)
            self._owner.session_ended(self, sub_code, msg.reason)

    # ------------------------------------------------------------------ end of the attempt
    def retire(self) -> None:
        """A newer page takes over (or the bot ends): nothing from this page counts any more."""
        if self.retired:
            return
        self.retired = True
        for pid in list(self._pids.values()):  # the next page announces who is there again
            self._pipeline.participant_left(pid)
        self._pids.clear()
        self._captures.clear()
        if self._fill is not None:
            self._fill.cancel()
            self._fill = None

    async def close(self) -> None:
        """Retire, then close the bridge and the page, each bounded."""
        self.retire()
        ws, page = self._ws, self.page
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT_S)
        if page is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(page.close(), CLOSE_TIMEOUT_S + 2)


async def open_bridge(request: web.Request, token: str | None) -> tuple[web.WebSocketResponse, bp.Hello | None]:
    """Accept a page's bridge socket and check its hello against the current session's ``token``; on a protocol
    error the socket is closed with its code and the hello is None."""
    ws = web.WebSocketResponse(max_msg_size=bp.MAX_FRAME_BYTES, heartbeat=10, timeout=2.0, compress=BRIDGE_DEFLATE)
    await ws.prepare(request)
    try:
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            raise bp.ProtocolError(bp.CLOSE_UNAUTHORIZED, "no hello") from None
        if msg.type != WSMsgType.TEXT or token is None:
            raise bp.ProtocolError(bp.CLOSE_UNAUTHORIZED, "first message must be a text hello with the bot token")
        hello = bp.decode_hello(msg.data, token)
    except bp.ProtocolError as exc:
        log.warning("bridge.refused", code=exc.code, reason=exc.reason)
        await ws.close(code=exc.code, message=exc.reason.encode()[:120])
        return ws, None
    return ws, hello
