"""Pacing of Luna's outgoing audio: release 20 ms frames a bounded lead ahead of real time.

The page's playback worklet plays at the audio clock, so Python may run ahead of it; a lead of a fraction of a
second absorbs event-loop hiccups (no underrun mid-word) while keeping little audio queued outside our control.
``clear`` on barge-in then only has to drop what is here plus that lead in the page.

The lead is topped up once it has fallen by ``refill_s`` (a few frames at once), not every 20 ms: each release
is a wake-up of the driver's event loop, and the page buffers the lead anyway. The lead then stays between
``lead_s - refill_s`` and ``lead_s``; what a ``clear`` can drop is still at most ``lead_s``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

Tag = TypeVar("Tag")
_EPSILON_S = 1e-9  # a poll at exactly ``next_due`` releases, whatever the float rounding


@dataclass(frozen=True)
class OutFrame(Generic[Tag]):
    seq: int
    pcm: bytes
    tag: Tag
    samples: int


class Pacer(Generic[Tag]):
    def __init__(self, *, rate: int, frame_ms: int = 20, lead_s: float = 0.6, refill_s: float = 0.1) -> None:
        if not 0 <= refill_s < lead_s:
            raise ValueError(f"refill_s {refill_s} must be at least 0 and under lead_s {lead_s}")
        self.rate = rate
        self.frame_bytes = rate * frame_ms // 1000 * 2
        self.lead_s = lead_s
        self.refill_s = refill_s
        self._pending: deque[tuple[bytes, Tag]] = deque()
        self._partial: tuple[bytearray, Tag] | None = None
        self._horizon = 0.0  # estimated time (caller's clock) at which everything released so far has played
        self._seq = 0

    @property
    def queued_s(self) -> float:
        frames = len(self._pending) * self.frame_bytes + (len(self._partial[0]) if self._partial else 0)
        return frames / 2 / self.rate

    def push(self, pcm: bytes, tag: Tag) -> None:
        """Queue PCM (int16 LE at ``rate``); cut into whole frames, a short tail waits for more of the same tag."""
        if self._partial is not None and self._partial[1] == tag:
            buf = self._partial[0]
            buf.extend(pcm)
        else:
            self.flush()
            buf = bytearray(pcm)
        n = len(buf) - len(buf) % self.frame_bytes
        for off in range(0, n, self.frame_bytes):
            self._pending.append((bytes(buf[off : off + self.frame_bytes]), tag))
        self._partial = (bytearray(buf[n:]), tag) if n < len(buf) else None

    def flush(self) -> None:
        """No more audio of the current tag is coming: release its short tail as a frame of its own."""
        if self._partial is not None and self._partial[0]:
            self._pending.append((bytes(self._partial[0]), self._partial[1]))
        self._partial = None

    def poll(self, now: float) -> list[OutFrame[Tag]]:
        """Top the lead up to ``lead_s`` once it has fallen to ``lead_s - refill_s`` (at once after a dry spell)."""
        out: list[OutFrame[Tag]] = []
        self._horizon = max(self._horizon, now)
        if self._horizon - now > self.lead_s - self.refill_s + _EPSILON_S:
            return out
        while self._pending and self._horizon - now < self.lead_s:
            pcm, tag = self._pending.popleft()
            samples = len(pcm) // 2
            self._horizon += samples / self.rate
            self._seq += 1
            out.append(OutFrame(self._seq, pcm, tag, samples))
        return out

    def next_due(self, now: float) -> float | None:
        """When the lead will have fallen by ``refill_s`` (``poll`` then tops it up), or None when nothing is
        queued. ``poll`` releases earlier when asked (new audio after a dry spell starts at once)."""
        if not self._pending:
            return None
        return max(now, self._horizon - self.lead_s + self.refill_s)

    def clear(self, now: float) -> None:
        self._pending.clear()
        self._partial = None
        self._horizon = now
