"""The three provider seams: speech-to-text, reply (LLM) and text-to-speech.

Each is async and streaming-shaped so a cloud engine and an offline engine fit the same slot:

* STT is a *stream per utterance*: audio is pushed while the person speaks (a realtime engine transcribes as
  it goes) and ``finish()`` is called when our own endpointing decides the utterance is over.
* The core's types (``ReplyRequest``, ``Usage``) live in ``conversation.domain``: providers implement what the
  conversation needs, not the reverse.
* A reply is an async iterator of text deltas, ending with one ``Usage``.
* TTS turns one sentence into an async iterator of PCM chunks (int16 LE mono at ``sample_rate``), then ``Usage``.

Failures are ``ProviderError`` with a short machine-readable ``reason``; the pipeline marks the turn failed and
carries on (a provider error never kills a bot).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from luna_voice.bridge.protocol import CAPTURE_RATE
from luna_voice.conversation.domain import Confidence, ReplyRequest, SpokenReason, Usage

PIPELINE_RATE = CAPTURE_RATE  # Hz, what the bridge decodes people to and STT consumes


class ProviderError(Exception):
    """A provider call failed; ``reason`` is short and safe to show (no secrets)."""

    def __init__(
        self, provider: str, reason: str, *, retry_after: float | None = None, usage: Usage | None = None
    ) -> None:
        """``usage``: what the failed call was billed for all the same (e.g. audio a streaming model heard)."""
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason
        self.retry_after = retry_after
        self.usage = usage


class RateLimited(ProviderError):
    """The provider asked us to slow down (HTTP 429)."""


@dataclass
class Transcript:
    text: str
    language: str | None = None
    usage: Usage = field(default_factory=Usage)
    # Seconds from the end of the audio (commit or upload) to the final text; None when nothing was sent.
    final_after_s: float | None = None
    confidence: Confidence | None = None  # None: the engine gives no scores


class TranscriptionStream(Protocol):
    async def push(self, pcm: bytes) -> None:
        """Append int16 LE mono PCM at ``PIPELINE_RATE``."""

    async def finish(self) -> Transcript:
        """The utterance is over: return the final transcript."""

    async def cancel(self) -> Usage:
        """Drop the utterance (no result needed) and return what it was billed for up to now: audio a service
        already received (or a request already sent) is paid for whether or not anyone reads the transcript."""


class SpeechToText(Protocol):
    name: str

    def open_stream(self, *, prompt: str | None = None, keywords: Sequence[str] = ()) -> TranscriptionStream:
        """``keywords``: words to listen for (her names, participant names), for models that take them."""

    async def warm(self) -> None:
        """Load models or open connections before the first utterance."""

    async def aclose(self) -> None: ...


class ReplyEngine(Protocol):
    name: str

    def reply(self, request: ReplyRequest) -> AsyncIterator[str | Usage]: ...

    async def record_spoken(self, room_id: str, turn_id: str, spoken_text: str, reason: SpokenReason) -> None:
        """Close a turn: what the room heard of the answer (possibly empty) and why it ended. Called exactly once
        for every turn ``reply`` was called for, so the engine's history holds only what people heard."""

    async def aclose(self) -> None: ...


class TextToSpeech(Protocol):
    name: str
    sample_rate: int

    async def warm(self) -> None:
        """Open connections / load models before the first sentence is needed."""

    def synthesize(self, text: str) -> AsyncIterator[bytes | Usage]: ...

    async def aclose(self) -> None: ...
