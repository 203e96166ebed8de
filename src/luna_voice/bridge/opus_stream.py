"""One remote person's received Opus stream, turned into the 20 ms 16 kHz frames the pipeline takes (sans I/O).

Luna's page no longer decodes what it hears: an ``RTCRtpScriptTransform`` on each person's receiver forwards the
encoded Opus packets as they come off the network (``protocol.KIND_CAPTURE_OPUS``), before the jitter buffer, so
this is where their order, their gaps and the stream's identity are dealt with:

- **Order**: packets are not buffered for reordering (that would delay every packet for the rare late one). A
  packet whose audio is behind what was already produced (late, a duplicate, or inside filled silence) is dropped.
- **Gaps**: loss and Opus DTX (a silent WebRTC sender sends one packet every 400 ms) leave holes in the RTP
  timestamps. A hole up to ``PAUSE_S`` is filled with silence when the next packet shows it. A person's timeline
  is the packets' own clock (RTP timestamps, and the page's receive stamps), never the time a packet reached
  Python: the page -> Python path has hiccups (a busy event loop, a GC, a loaded machine) that deliver a burst of
  packets late, all at once, and those must neither lengthen the timeline nor delay later audio.
- **A sender that stopped**: time must also pass while nothing arrives (a mute, or DTX longer than usual), or a
  speaker's utterance would end only by the endpointer's stall rule. ``tick`` fills silence up to "now" less
  ``SLACK_S``, measured from when the last packet reached the *page* (``PageClock`` maps the page's stamps onto
  our clock through the fastest packet, so a late-delivered packet does not move it). The slack is generous (more
  than a DTX interval), since a packet whose time was already filled is dropped: it is never played after its fill.
- **Pauses**: a sender whose silence was filled for ``PAUSE_S`` (two DTX intervals) has paused: muted, or gone.
  Filling stops there, so a muted person costs Python nothing either, and their next packet starts afresh. A
  sender's RTP clock may stand still while it pauses (Chromium's does across a mute): a packet behind the filled
  time that reached the page well after its timestamp's place resumes the stream (its gap measured by the page's
  stamps) instead of being dropped as late.
- **New stream**: a swapped track is a new RTP stream (new SSRC, random timestamps), which shows as a jump
  backwards or of more than ``PAUSE_S`` forwards, as does the end of a pause. A fresh decoder starts.
- **Junk**: a payload that is not an Opus packet by its table-of-contents byte (RFC 6716 §3), or holds more
  than 120 ms, raises ``OpusJunk``; the caller logs it once and drops it.

``CaptureStream`` turns packets and ticks into steps (decode this packet, insert this much silence, start a new
decoder) stamped on the page's clock; ``Reframer`` cuts the decoded 16 kHz PCM into 20 ms frames, each stamped
with when its last sample reached the page.
"""

from __future__ import annotations

from dataclasses import dataclass

from luna_voice.bridge.clock import PageClock
from luna_voice.bridge.protocol import CAPTURE_RATE, FRAME_MS

RTP_RATE = 48_000  # Opus's RTP clock is 48 kHz whatever the coded bandwidth (RFC 7587 §4.1)
OUT_RATE = CAPTURE_RATE  # the pipeline's rate: people are decoded to what STT consumes
OUT_FRAME_BYTES = OUT_RATE * FRAME_MS // 1000 * 2
MAX_PACKET_SAMPLES = RTP_RATE * 120 // 1000  # RFC 6716 §3.2.5: a packet holds at most 120 ms
MAX_PACKET_BYTES = 1500  # an RTP payload never exceeds an Ethernet MTU; 1275 bytes is one Opus frame's limit
PAUSE_S = 0.8  # no packet for this long (two DTX intervals): the sender paused (muted) or the stream is new
SLACK_S = 0.25  # page time with no packet before tick fills: a path hiccup shorter than this loses nothing
FILL_STEP_S = 0.04  # tick fills in steps of this much (two frames per wake-up, not one)
_STEP = round(FILL_STEP_S * RTP_RATE)
_MAX_FILL = int(PAUSE_S * RTP_RATE) // _STEP * _STEP
_SILK_HYBRID_CELT = ((480, 960, 1920, 2880), (480, 960), (120, 240, 480, 960))


class OpusJunk(ValueError):
    """A payload that cannot be an Opus packet."""


def packet_samples(payload: bytes) -> int:
    """48 kHz samples in one Opus packet, from its TOC byte (RFC 6716 §3.1); ``OpusJunk`` if it cannot be one."""
    if not payload:
        raise OpusJunk("empty Opus payload")
    if len(payload) > MAX_PACKET_BYTES:
        raise OpusJunk(f"Opus payload of {len(payload)} bytes (at most {MAX_PACKET_BYTES})")
    config, code = payload[0] >> 3, payload[0] & 3
    if config < 12:
        size = _SILK_HYBRID_CELT[0][config % 4]
    elif config < 16:
        size = _SILK_HYBRID_CELT[1][config % 2]
    else:
        size = _SILK_HYBRID_CELT[2][config % 4]
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    elif len(payload) < 2:
        raise OpusJunk("Opus packet of code 3 without its frame count")
    else:
        count = payload[1] & 0x3F
    if count == 0 or size * count > MAX_PACKET_SAMPLES:
        raise OpusJunk(f"Opus packet of {count} frames of {size / 48:g} ms (at most 120 ms)")
    return size * count


@dataclass(frozen=True)
class Decode:
    """Decode this packet; its audio ends at ``end_ms`` on the page's clock."""

    payload: bytes
    samples: int  # 48 kHz
    end_ms: float


@dataclass(frozen=True)
class Silence:
    """Insert ``samples`` (48 kHz) of silence ending at ``end_ms``."""

    samples: int
    end_ms: float


@dataclass(frozen=True)
class NewStream:
    """What follows is another RTP stream (or follows a long pause): start a fresh decoder."""


Step = Decode | Silence | NewStream


def _signed(delta: int) -> int:
    delta &= 0xFFFFFFFF
    return delta - (1 << 32) if delta >= 1 << 31 else delta


class CaptureStream:
    """The RTP bookkeeping of one person's Opus stream. ``now`` is the caller's monotonic clock (seconds)."""

    def __init__(self) -> None:
        self._next: int | None = None  # RTP timestamp of the next sample to produce
        self._last_end = 0  # RTP timestamp at which the last packet's audio ends (before tick's fill)
        self._page = PageClock()
        self._page_at = 0.0  # our time at which the last packet reached the page
        self._end_ms = 0.0  # page time at which the last packet's audio ends
        self._behind = 0  # samples filled by tick since the last packet
        self.dropped_late = 0

    def packet(self, rtp: int, payload: bytes, page_ms: float, now: float) -> list[Step]:
        """A packet with RTP timestamp ``rtp`` that reached the page at ``page_ms``; raises ``OpusJunk``. An empty
        payload (Chromium hands some over between a sender's packets) carries no audio and is skipped."""
        if not payload:
            return []
        samples = packet_samples(payload)
        page_at = self._page.to_local(page_ms, now)
        steps: list[Step] = []
        delta = 0 if self._next is None else _signed(rtp - self._next)
        if self._next is None or abs(delta) > PAUSE_S * RTP_RATE:
            steps.append(NewStream())
        elif delta < 0:  # behind audio already produced: late, a duplicate, or its time was filled ...
            due_ms = self._end_ms + (_signed(rtp - self._last_end) + samples) / RTP_RATE * 1000
            if page_ms - due_ms <= SLACK_S * 1000:  # ... and it reached the page when its timestamp says
                self.dropped_late += 1
                return []
            # It reached the page long after its timestamp's place: the sender's RTP clock stood still while it
            # paused (Chromium's, after a mute), so the page's stamps measure the gap instead.
            gap = round((page_ms - self._end_ms) / 1000 * RTP_RATE) - samples - self._behind
            if gap > 0:
                steps.append(Silence(gap, page_ms - samples / RTP_RATE * 1000))
        elif delta > 0:
            steps.append(Silence(delta, page_ms - samples / RTP_RATE * 1000))
        steps.append(Decode(payload, samples, page_ms))
        self._next = self._last_end = (rtp + samples) & 0xFFFFFFFF
        self._page_at, self._end_ms, self._behind = page_at, page_ms, 0
        return steps

    def due(self) -> float | None:
        """Our time at which ``tick`` next has silence to fill, or None (no stream, or it paused for good)."""
        if self._next is None or self._behind >= _MAX_FILL:
            return None
        return self._page_at + SLACK_S + (self._behind + _STEP) / RTP_RATE

    def tick(self, now: float) -> list[Step]:
        """Silence for the page time since the last packet, less ``SLACK_S``, in whole steps, up to ``PAUSE_S``."""
        if self._next is None:
            return []
        n = min(int((now - self._page_at - SLACK_S) * RTP_RATE) // _STEP * _STEP, _MAX_FILL) - self._behind
        if n <= 0:
            return []
        self._behind += n
        self._next = (self._next + n) & 0xFFFFFFFF
        return [Silence(n, self._end_ms + self._behind / RTP_RATE * 1000)]


class Reframer:
    """Cuts 16 kHz int16 PCM into 20 ms frames, each stamped with the page time of its last sample."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def push(self, pcm: bytes, end_ms: float) -> list[tuple[float, bytes]]:
        """``pcm`` ends at ``end_ms``; returns the frames completed, as (end_ms, frame)."""
        self._buf += pcm
        frames = []
        whole = len(self._buf) // OUT_FRAME_BYTES * OUT_FRAME_BYTES
        for at in range(0, whole, OUT_FRAME_BYTES):
            after = (len(self._buf) - at - OUT_FRAME_BYTES) // 2  # samples of this push after the frame's end
            frames.append((end_ms - after * 1000 / OUT_RATE, bytes(self._buf[at : at + OUT_FRAME_BYTES])))
        del self._buf[:whole]
        return frames

    def silence(self, samples_48k: int, end_ms: float) -> list[tuple[float, bytes]]:
        return self.push(bytes(samples_48k // (RTP_RATE // OUT_RATE) * 2), end_ms)
