"""A sender's Opus packets for tests: real libopus (through PyAV) encoding 16 kHz int16 PCM, with the RTP
timestamps a WebRTC sender gives them (48 kHz clock, random start)."""

from __future__ import annotations

import av
import numpy as np

RTP_RATE = 48_000


class OpusSender:
    def __init__(self, rtp0: int = 123_456_789, frame_ms: int = 20, dtx: bool = False) -> None:
        self.frame_ms = frame_ms
        self.rtp = rtp0
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = 16_000
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._codec.bit_rate = 32_000
        self._codec.options = {"frame_duration": str(frame_ms), "application": "voip", **({"dtx": "1"} if dtx else {})}
        self._codec.open()
        self._pts = 0

    def packets(self, pcm: bytes) -> list[tuple[int, bytes]]:
        """(RTP timestamp, payload) for each whole packet of ``pcm`` (16 kHz int16; a multiple of the frame)."""
        x = np.frombuffer(pcm, np.int16)
        n = 16 * self.frame_ms
        out = []
        for at in range(0, len(x) - n + 1, n):
            frame = av.AudioFrame.from_ndarray(x[None, at : at + n].copy(), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 16_000, self._pts
            self._pts += n
            for packet in self._codec.encode(frame):
                out.append((self.rtp & 0xFFFFFFFF, bytes(packet)))
                self.rtp += RTP_RATE * self.frame_ms // 1000
        return out


def tone(seconds: float, hz: float = 440.0, level: float = 0.3) -> bytes:
    t = np.arange(round(seconds * 16_000)) / 16_000
    return (level * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes()
