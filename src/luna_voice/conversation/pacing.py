"""Pacing of Luna's outgoing audio: release 20 ms frames a bounded lead ahead of real time.

The page's playback worklet plays at the audio clock, so Python may run ahead of it; a lead of a fraction of a
second absorbs event-loop hiccups (no underrun mid-word) while keeping little audio queued outside our control.
``clear`` on barge-in then only has to drop what is here plus that lead in the page.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

Tag = TypeVar("Tag")


@dataclass(frozen=True)
class OutFrame(Generic[Tag]):
    seq: int
    pcm: bytes
    tag: Tag
    samples: int


class Pacer(Generic[Tag]):
    def __init__(self, *, rate: int, frame_ms: int = 20, lead_s: float = 0.6) -> None:
        self.rate = rate
        self.frame_bytes = rate * frame_ms // 1000 * 2
        self.lead_s = lead_s
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
        out: list[OutFrame[Tag]] = []
        self._horizon = max(self._horizon, now)
        while self._pending and self._horizon - now < self.lead_s:
            pcm, tag = self._pending.popleft()
            samples = len(pcm) // 2
            self._horizon += samples / self.rate
            self._seq += 1
            out.append(OutFrame(self._seq, pcm, tag, samples))
        return out

    def next_due(self, now: float) -> float | None:
        """When ``poll`` will next release something, or None when nothing is queued."""
        if not self._pending:
            return None
        return max(now, self._horizon - self.lead_s)

    def clear(self, now: float) -> None:
        self._pending.clear()
        self._partial = None
        self._horizon = now
