"""Fan-out of bots' published events to the clients watching a room (the SSE streams), with bounded lifetimes.

A watch is bound to one bot and ends after that bot's final ``status`` event (published when it reaches a
terminal state), or it follows the room: then it carries on with the room's next bot. When the service stops,
every watch ends with a ``closed`` event that says why. A watcher that stops reading loses events, never the
bot, and never the end of its stream. Events are serialised once (``luna_voice.events.sse``), then shared.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from luna_voice.events import Closed, Event, StatusSnapshot, sse

_END = b""
QUEUE_EVENTS = 1000


class Watch:
    def __init__(self, room_id: str, bot_id: str, *, follow: bool, release: Callable[[Watch], None]) -> None:
        self.room_id = room_id
        self.bot_id = bot_id
        self.follow = follow
        self._q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_EVENTS)
        self._release = release
        self.ended = False

    def offer(self, frame: bytes) -> None:
        if not self.ended:
            with contextlib.suppress(asyncio.QueueFull):
                self._q.put_nowait(frame)

    def end(self, last: bytes | None = None) -> None:
        """No more events after ``last``; room is made for it and the end even if the watcher fell behind."""
        if self.ended:
            return
        for item in ([last] if last is not None else []) + [_END]:
            while self._q.full():
                self._q.get_nowait()
            self._q.put_nowait(item)
        self.ended = True

    async def next(self, wait_s: float) -> bytes | None:
        """The next SSE frame, or None after ``wait_s`` with nothing to send. EOFError once the stream is over."""
        try:
            async with asyncio.timeout(wait_s):
                frame = await self._q.get()
        except TimeoutError:
            return None
        if frame == _END:
            self._q.put_nowait(_END)  # stays over for any later call
            raise EOFError
        return frame

    def close(self) -> None:
        """The client went away."""
        self.ended = True
        self._release(self)


class RoomEvents:
    def __init__(self) -> None:
        self._watches: dict[str, set[Watch]] = {}
        self._closed: str | None = None

    def watch(self, room_id: str, bot_id: str, first: Event, *, follow: bool, over: bool) -> Watch:
        """A new watch whose stream starts with ``first``; ``over`` when that bot has already ended."""
        w = Watch(room_id, bot_id, follow=follow, release=self.unwatch)
        w.offer(sse(first, room_id=room_id, bot_id=bot_id))
        if self._closed is not None:
            w.end(sse(Closed(self._closed), room_id=room_id, bot_id=bot_id))
        elif over and not follow:
            w.end()
        else:
            self._watches.setdefault(room_id, set()).add(w)
        return w

    def unwatch(self, w: Watch) -> None:
        room = self._watches.get(w.room_id)
        if room is not None:
            room.discard(w)
            if not room:
                del self._watches[w.room_id]

    def publish(self, event: Event, *, room_id: str, bot_id: str) -> None:
        watches = self._watches.get(room_id)
        if not watches:
            return
        frame = sse(event, room_id=room_id, bot_id=bot_id)
        final = isinstance(event, StatusSnapshot) and event.final
        for w in list(watches):
            if w.follow:
                w.bot_id = bot_id
                w.offer(frame)
            elif w.bot_id == bot_id:
                if final:
                    w.end(frame)
                    self.unwatch(w)
                else:
                    w.offer(frame)

    def close(self, reason: str) -> None:
        """End every stream (service stopping), saying why."""
        self._closed = reason
        for room in list(self._watches.values()):
            for w in room:
                w.end(sse(Closed(reason), room_id=w.room_id, bot_id=w.bot_id))
        self._watches.clear()
