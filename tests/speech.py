"""Test speech: spoken WAV files from espeak-ng (resampled by sox) and a forgiving comparison of words.

espeak-ng's voice is robotic and Whisper tiny.en is small, so transcripts are compared loosely. Two settings make
them agree reliably: the ``en-gb-x-rp`` voice, and a short pause between words (``-g``): without it tiny.en
turns "the weather is nice today" into "but when the results are today".
"""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np

from luna_voice.providers.offline import WhisperSTT


def make_speech_wav(text: str, path: Path, voice: str = "en-gb-x-rp", rate: int = 16_000, *, word_gap: int = 5) -> Path:
    """Write ``text`` spoken by espeak-ng as 16-bit mono at ``rate`` to ``path``.

    ``word_gap`` is espeak-ng's ``-g`` (units of 10 ms at normal speed). The speech is framed by 0.2 s of silence
    before and 0.3 s after, as an utterance cut by a VAD with pre-roll would be.
    """
    espeak = ["espeak-ng", "-v", voice, "-g", str(word_gap), "--stdout"]
    spoken = subprocess.run(espeak, input=text.encode(), capture_output=True, check=True).stdout
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", str(rate), "-c", "1", "-b", "16", str(path), "pad", "0.2", "0.3"],
        input=spoken,
        capture_output=True,
        check=True,
    )
    return path


def read_wav_int16(path: Path) -> tuple[np.ndarray, int]:
    """Samples (int16, mono) and sample rate of a 16-bit mono WAV file."""
    with wave.open(str(path)) as reader:
        assert reader.getnchannels() == 1 and reader.getsampwidth() == 2, f"{path} is not 16-bit mono"
        return np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2"), reader.getframerate()


def speech_frames(text: str, path: Path, frame_samples: int = 320) -> list[bytes]:
    """``text`` spoken at 16 kHz (``make_speech_wav``) as 20 ms frames of 16-bit PCM, the last one padded with
    silence: what a page's capture sends for one utterance."""
    samples, rate = read_wav_int16(make_speech_wav(text, path))
    assert rate == 16_000, rate
    padded = np.concatenate([samples, np.zeros(-len(samples) % frame_samples, np.int16)])
    return [frame.tobytes() for frame in padded.reshape(-1, frame_samples)]


async def transcribe(pcm: np.ndarray) -> str:
    """What offline Whisper hears in 16 kHz ``pcm``: how a test checks that audio says what it should."""
    stream = WhisperSTT().open_stream()
    await stream.push(pcm.astype(np.int16).tobytes())
    return (await stream.finish()).text


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def words_match(expected: str, heard: str, min_ratio: float = 0.6) -> bool:
    """True if at least ``min_ratio`` of the expected words occur in ``heard`` (case and punctuation ignored)."""
    wanted = _words(expected)
    got = set(_words(heard))
    return bool(wanted) and sum(word in got for word in wanted) / len(wanted) >= min_ratio
