"""Providers that take no time, so a turn measures the service itself: STT returns a fixed text when the
utterance ends (a backchannel when it held under 0.6 s of sound), the reply engine answers at once, and TTS
returns whatever audio the current scenario set."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from luna_voice.conversation.domain import ReplyRequest, SpokenReason, Usage
from luna_voice.providers.base import Transcript
from luna_voice.providers.select import ProviderSet

HEARD = "Luna, are you there?"
BACKCHANNEL = "Okay."
_LOUD_S = 0.6  # less sound than this is a backchannel
REPLY = "Yes, I am here."


@dataclass
class ReplyAudio:
    """What Luna's voice sounds like in the running scenario (int16 LE mono at 48 kHz); scenarios swap it."""

    pcm: bytes = b""


class _Stream:
    def __init__(self) -> None:
        self._loud = 0  # 20 ms frames above -40 dBFS

    async def push(self, pcm: bytes) -> None:
        x = np.frombuffer(pcm[: len(pcm) // 640 * 640], "<i2").astype(np.float32).reshape(-1, 320) / 32768
        self._loud += int((np.sqrt((x**2).mean(axis=1)) > 0.01).sum())

    async def finish(self) -> Transcript:
        return Transcript(HEARD if self._loud * 0.02 >= _LOUD_S else BACKCHANNEL, "en")

    async def cancel(self) -> Usage:
        return Usage()


class InstantSTT:
    name = "instant"

    def open_stream(self, *, prompt: str | None = None, keywords: Sequence[str] = ()) -> _Stream:
        return _Stream()

    async def warm(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class InstantReply:
    name = "instant"

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str | Usage]:
        yield REPLY
        yield Usage()

    async def record_spoken(self, room_id: str, turn_id: str, spoken_text: str, reason: SpokenReason) -> None:
        pass

    async def aclose(self) -> None:
        pass


class InstantTTS:
    name = "instant"
    sample_rate = 48_000

    def __init__(self, audio: ReplyAudio) -> None:
        self.audio = audio

    async def warm(self) -> None:
        pass

    async def synthesize(self, text: str) -> AsyncIterator[bytes | Usage]:
        yield self.audio.pcm
        yield Usage(tts_characters=len(text))

    async def aclose(self) -> None:
        pass


def instant_providers(audio: ReplyAudio) -> ProviderSet:
    return ProviderSet(
        make_stt=InstantSTT,
        make_llm=InstantReply,
        make_tts=lambda: InstantTTS(audio),
        names={"stt": "instant", "llm": "instant", "tts": "instant"},
    )
