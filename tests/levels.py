"""Level-based stand-ins for driver tests that inject their own VAD (``Pipeline(new_vad=...)``).

A harmonic buzz is loud but is not speech: Silero rightly ignores it, so ``VOICED`` only means "voiced" to
``LoudIsVoiced``. Anything that goes through the real service's hearing must send real speech (``speech.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from luna_voice.hearing.vad import Voice
from luna_voice.providers.base import PIPELINE_RATE

FRAME_SAMPLES = PIPELINE_RATE // 50  # 20 ms


class LoudIsVoiced:
    """A frame louder than -30 dBFS is voiced (and sure), at once."""

    def feed(self, pcm: bytes, heard: Callable[[Voice], None]) -> None:
        x = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768
        loud = bool(x.size) and float(np.sqrt(np.mean(x**2))) > 0.03
        heard(Voice(loud, float(loud)))

    def close(self) -> None:
        pass


_t = np.arange(FRAME_SAMPLES) / PIPELINE_RATE
_buzz = sum(np.sin(2 * np.pi * 150 * k * _t) / k for k in range(1, 12))
VOICED = (_buzz / np.abs(_buzz).max() * 8000).astype(np.int16).tobytes()  # one 20 ms frame, loud
SILENT = bytes(2 * FRAME_SAMPLES)
