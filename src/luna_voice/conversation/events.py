"""What the core publishes for captions and status watchers: typed events, not dicts.

They become JSON in exactly one place, ``luna_voice.events.to_wire``, for the event stream, the demo's captions
and anything else that watches a bot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from luna_voice.conversation.turns import TurnState


@dataclass(frozen=True)
class Participant:
    id: str
    name: str


@dataclass(frozen=True)
class ParticipantsChanged:
    """Someone joined or left; the full list after the change."""

    participants: tuple[Participant, ...]


@dataclass(frozen=True)
class SpeakingChanged:
    """Luna's voice started or stopped reaching the room."""

    speaking: bool
    at: float


@dataclass(frozen=True)
class TurnChanged:
    """A turn changed; ``turn`` is its status-document form at that moment (a copy, safe to keep)."""

    turn: Mapping[str, Any]

    @property
    def state(self) -> TurnState:
        return TurnState(self.turn["state"])


@dataclass(frozen=True)
class LateUsage:
    """Usage of a call cut off after its turn had ended (a barge-in cancels the reply and the speech): billed all
    the same, and reported apart because the turn's final ``TurnChanged`` went out without it. ``turn_id`` is None
    for a call that belonged to no turn (a transcription cut off mid-utterance when the bot left)."""

    turn_id: str | None
    usage: Mapping[str, float]
    cost_usd: float


@dataclass(frozen=True)
class MutedChanged:
    """Someone else (a host, a preset change) turned Luna's audio in the room off, or it is back on."""

    muted: bool
    reason: str | None
    at: float


class SpeakPhase(StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"  # cut off (barge-in, a say that cut in, "Luna, stop"), or dropped from the queue
    FAILED = "failed"  # speech synthesis failed


@dataclass(frozen=True)
class SpeakChanged:
    """Luna began or stopped speaking a given text (greeting, say, goodbye); ``speak.<phase>`` on the wire.

    The ended phases say what the room heard: ``spoken_text`` and ``played_audio_s``."""

    phase: SpeakPhase
    say_id: str
    kind: str
    text: str
    at: float
    spoken_text: str | None = None
    played_audio_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class ListenOnlyChanged:
    """Someone asked Luna to be quiet (True), or addressed her again afterwards (False)."""

    listen_only: bool
    at: float


CoreEvent = (
    ParticipantsChanged | SpeakingChanged | TurnChanged | LateUsage | MutedChanged | SpeakChanged | ListenOnlyChanged
)
