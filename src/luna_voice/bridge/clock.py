"""Maps the page's frame timestamps onto our monotonic clock (sans I/O).

Endpointing compares a frame's capture time with "now", so both must be on one clock. The page stamps frames with
its own clock (``performance.timeOrigin + performance.now()``, steady within a page but with an arbitrary origin
relative to ours), and a wall-clock step on either machine must not stall or cut a speaker. The offset between
the clocks is estimated from the frame that arrived fastest (least transport delay), so mapped times never lie
in the future; it may creep upward by at most ``drift`` (1 ms per second by default) to follow a page clock that
runs slow, which a pure minimum would turn into a growing lag.
"""

from __future__ import annotations


class PageClock:
    def __init__(self, *, drift: float = 0.001) -> None:
        self.drift = drift
        self._offset: float | None = None  # our seconds minus page seconds
        self._updated = 0.0

    def to_local(self, page_ms: float, now: float) -> float:
        """The time on our clock at which the page took a frame stamped ``page_ms``; ``now`` is its arrival."""
        page_s = page_ms / 1000
        seen = now - page_s
        if self._offset is None or seen < self._offset:
            self._offset = seen
        else:
            self._offset = min(seen, self._offset + self.drift * max(0.0, now - self._updated))
        self._updated = now
        return page_s + self._offset
