"""The conversation's own vocabulary: what a reply request carries and what a call consumed.

These types belong to the core; provider adapters implement the core's needs in these terms, never the other
way round. This module imports nothing of ours, so every layer can depend on it without cycles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import StrEnum


@dataclass
class Usage:
    """What one call consumed; summed per turn and per bot, priced by ``luna_voice.usage``.

    ``stt_seconds`` is all audio sent for transcription (a reconnect's resend included). Of it, the seconds whose
    transcription the service reported in tokens are ``stt_token_seconds``: those are priced by the ``stt_*_tokens``
    and the rest per minute. ``tts_characters`` are billable characters as the TTS service counts them.
    """

    stt_seconds: float = 0.0
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    tts_characters: int = 0
    stt_token_seconds: float = 0.0
    stt_audio_tokens: int = 0
    stt_text_tokens: int = 0
    stt_output_tokens: int = 0

    def __iadd__(self, other: Usage) -> Usage:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass(frozen=True)
class Confidence:
    """How sure an STT engine is of a transcript, in probabilities; the transcript filter gates on it."""

    speech: float | None = 1.0  # that the audio held speech at all (Whisper: 1 - no_speech_prob); None: no such score
    words: float = 1.0  # per token, geometric mean (exp of the mean token log-probability)


@dataclass(frozen=True)
class RoomLine:
    """One line of the room transcript given to the LLM as context."""

    speaker: str
    text: str
    at: float  # wall-clock seconds


@dataclass(frozen=True)
class ReplyRequest:
    """Everything a reply engine needs to answer one turn."""

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


class SpokenReason(StrEnum):
    """Why a turn that reached the reply engine ended: the ``reason`` of its one closing ``record_spoken``."""

    DONE = "done"  # the answer was played to the end (or was silence)
    INTERRUPTED = "interrupted"  # someone talked over her; only the played part was heard
    MERGED = "merged"  # the speaker went on talking; the turn was replaced by one with both parts
    FAILED = "failed"  # a provider failed; whatever was played before is the heard text
    STALE = "stale"  # the answer came too late to be spoken
