"""The three provider seams: speech-to-text, reply (LLM) and text-to-speech.

Each is async and streaming-shaped so a cloud engine and an offline engine fit the same slot:

* STT is a *stream per utterance*: audio is pushed while the person speaks (a realtime engine transcribes as
  it goes) and ``finish()`` is called when our own endpointing decides the utterance is over.
* A reply is an async iterator of text deltas, ending with one ``Usage``.
* TTS turns one sentence into an async iterator of PCM chunks (int16 LE mono at ``sample_rate``), then ``Usage``.

Failures are ``ProviderError`` with a short machine-readable ``reason``; the pipeline marks the turn failed and
carries on (a provider error never kills a bot).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

PIPELINE_RATE = 16_000  # Hz, what the page sends and STT consumes


class ProviderError(Exception):
    """A provider call failed; ``reason`` is short and safe to show (no secrets)."""

    def __init__(self, provider: str, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason
        self.retry_after = retry_after


class RateLimited(ProviderError):
    """The provider asked us to slow down (HTTP 429)."""


@dataclass
class Usage:
    """What one call consumed; summed per turn and per bot, priced by ``luna_voice.usage``."""

    stt_seconds: float = 0.0
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    tts_characters: int = 0

    def __iadd__(self, other: Usage) -> Usage:
        self.stt_seconds += other.stt_seconds
        self.llm_input_tokens += other.llm_input_tokens
        self.llm_output_tokens += other.llm_output_tokens
        self.tts_characters += other.tts_characters
        return self


@dataclass
class Transcript:
    text: str
    language: str | None = None
    usage: Usage = field(default_factory=Usage)


class TranscriptionStream(Protocol):
    async def push(self, pcm: bytes) -> None:
        """Append int16 LE mono PCM at ``PIPELINE_RATE``."""

    async def finish(self) -> Transcript:
        """The utterance is over: return the final transcript."""

    async def cancel(self) -> None:
        """Drop the utterance (no result needed)."""


class SpeechToText(Protocol):
    name: str

    def open_stream(self, *, prompt: str | None = None) -> TranscriptionStream: ...

    async def warm(self) -> None:
        """Load models or open connections before the first utterance."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RoomLine:
    """One line of the room transcript given to the LLM as context."""

    speaker: str
    text: str
    at: float  # wall-clock seconds


@dataclass(frozen=True)
class ReplyRequest:
    room_id: str
    turn_id: str
    speaker_id: str
    speaker_name: str
    text: str
    language: str | None = None
    addressed: bool = True
    # The recent room transcript (oldest first), bounded by the core; includes Luna's own spoken lines.
    context: Sequence[RoomLine] = ()
    # ``llm`` turn policy: the model may stay silent by answering with an empty reply.
    may_stay_silent: bool = False


class ReplyEngine(Protocol):
    name: str

    def reply(self, request: ReplyRequest) -> AsyncIterator[str | Usage]: ...

    async def record_spoken(self, room_id: str, turn_id: str, spoken_text: str, interrupted: bool) -> None:
        """Tell the engine what Luna actually said (after barge-in, only the played part)."""

    async def aclose(self) -> None: ...


class TextToSpeech(Protocol):
    name: str
    sample_rate: int

    async def warm(self) -> None:
        """Open connections / load models before the first sentence is needed."""

    def synthesize(self, text: str) -> AsyncIterator[bytes | Usage]: ...

    async def aclose(self) -> None: ...
