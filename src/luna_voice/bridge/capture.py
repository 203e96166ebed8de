"""One person's capture: their Opus packets, as the page forwarded them, into the pipeline's 20 ms frames.

``CaptureStream`` (the RTP bookkeeping) says what to do, the decoder does the decoding, ``Reframer`` cuts the
result to frames. The session keeps one ``Capture`` per participant and calls ``tick`` when ``due`` says, so
that a speaker's time passes while their sender is silent (DTX) and sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from luna_voice.bridge.opus_stream import CaptureStream, Decode, NewStream, Reframer, Silence, Step

Frame = tuple[float, bytes]  # (page time in ms of the frame's last sample, 20 ms of 16 kHz int16 PCM)


class Decoder(Protocol):
    def decode(self, payload: bytes) -> bytes: ...


class Capture:
    def __init__(self, new_decoder: Callable[[], Decoder]) -> None:
        self._new_decoder = new_decoder
        self._decoder: Decoder | None = None
        self._stream = CaptureStream()
        self._frames = Reframer()

    def packet(self, rtp: int, payload: bytes, page_ms: float, now: float) -> list[Frame]:
        """Frames completed by this packet; raises ``OpusJunk`` for a payload that is not Opus."""
        return self._run(self._stream.packet(rtp, payload, page_ms, now))

    def tick(self, now: float) -> list[Frame]:
        return self._run(self._stream.tick(now))

    def due(self) -> float | None:
        return self._stream.due()

    @property
    def dropped_late(self) -> int:
        return self._stream.dropped_late

    def _run(self, steps: list[Step]) -> list[Frame]:
        out: list[Frame] = []
        for step in steps:
            if isinstance(step, NewStream):
                self._decoder = self._new_decoder()
                self._frames = Reframer()
            elif isinstance(step, Silence):
                out += self._frames.silence(step.samples, step.end_ms)
            elif isinstance(step, Decode):
                assert self._decoder is not None  # the stream's first step is NewStream
                out += self._frames.push(self._decoder.decode(step.payload), step.end_ms)
        return out
