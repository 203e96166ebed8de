"""Silero VAD, one recurrent state per speaker, one ONNX session per process.

The model and its runner come from the ``pipecat-ai`` wheel (``SileroOnnxModel`` on the bundled
``silero_vad.onnx``): one inference thread, 512-sample windows at 16 kHz. pipecat's ``SileroVADAnalyzer`` follows
one stream and loads its own session; a room has many speakers, so each ``SpeakerVad`` is a shallow copy of one
loaded model: the session (the weights) is shared, the recurrent state and context are its own, so one person's
noise floor never leaks into another's decisions.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Protocol

import numpy as np

from luna_voice.hearing import _pipecat  # noqa: F401  (quiet pipecat before importing it)
from luna_voice.providers.offline._shared import load_once

RATE = 16_000
WINDOW = 512  # samples per model call at 16 kHz (32 ms)
# Like pipecat's analyzer: reset the recurrent state now and then during clear non-speech, because long noise or
# music shifts it so the model under-reports the speech that follows.
_RESET_AFTER_WINDOWS = round(2.0 * RATE / WINDOW)
_RESET_MAX_P = 0.1
_RESET_QUIET_WINDOWS = 5


class VoiceDetector(Protocol):
    def is_speech(self, pcm: bytes) -> bool:
        """One 20 ms frame of one speaker; True if it is voiced."""
        ...


def _load():  # type: ignore[no-untyped-def]
    from pipecat.audio.vad.silero import SileroOnnxModel

    path = resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx")
    return SileroOnnxModel(str(path), force_onnx_cpu=True)


shared_model = load_once(_load)


class SpeakerVad:
    """Speech decisions for one speaker's 16 kHz int16 frames (any length; windows are cut internally)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.probability = 0.0  # the latest window's speech probability
        self._model = copy.copy(shared_model())
        self._model.reset_states()
        self._pending = np.zeros(0, np.float32)
        self._since_reset = 0
        self._quiet = 0

    def is_speech(self, pcm: bytes) -> bool:
        """Feed one frame; True if the most recent complete window is speech."""
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        self._pending = np.concatenate((self._pending, audio))
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            self.probability = float(self._model(window, RATE)[0][0])
            self._maybe_reset()
        return self.probability >= self.threshold

    def _maybe_reset(self) -> None:
        self._since_reset += 1
        self._quiet = self._quiet + 1 if self.probability < _RESET_MAX_P else 0
        if self._since_reset >= _RESET_AFTER_WINDOWS and self._quiet >= _RESET_QUIET_WINDOWS:
            self._model.reset_states()
            self._since_reset = 0
