"""What the conversation core asks its driver to do. Plain data; the driver performs the I/O."""

from __future__ import annotations

from dataclasses import dataclass

from luna_voice.conversation.domain import ReplyRequest, SpokenReason
from luna_voice.conversation.events import CoreEvent


@dataclass(frozen=True)
class StartTranscription:
    utterance_id: str
    speaker_id: str
    prompt: str
    pcm: bytes  # pre-roll and first voiced frames
    keywords: tuple[str, ...] = ()  # her names and the participants' names, for models that take keywords


@dataclass(frozen=True)
class TranscriptionAudio:
    utterance_id: str
    pcm: bytes


@dataclass(frozen=True)
class FinishTranscription:
    utterance_id: str


@dataclass(frozen=True)
class CancelTranscription:
    """Drop the utterance without a transcript: it was noise, or its transcript is overdue (the turn failed)."""

    utterance_id: str


@dataclass(frozen=True)
class PredictEndOfTurn:
    """Ask the turn model whether ``speaker_id`` finished; answer with ``Conversation.end_of_turn``."""

    speaker_id: str
    request: int
    pcm: bytes


@dataclass(frozen=True)
class RequestReply:
    turn_id: str
    request: ReplyRequest


@dataclass(frozen=True)
class CancelReply:
    turn_id: str


@dataclass(frozen=True)
class Synthesize:
    turn_id: str
    index: int
    text: str


@dataclass(frozen=True)
class CancelSynthesis:
    turn_id: str


@dataclass(frozen=True)
class SendAudio:
    seq: int
    pcm: bytes


@dataclass(frozen=True)
class ClearPlayback:
    pass


@dataclass(frozen=True)
class Unmute:
    """Publish Luna's voice in the room again after someone else muted her."""


@dataclass(frozen=True)
class SetPlaybackGain:
    """Ramp Luna's voice in the page to ``gain`` (1.0 = full): ducked under a possible interruption."""

    gain: float


@dataclass(frozen=True)
class RecordSpoken:
    """The one closing call of a turn that reached the reply engine."""

    turn_id: str
    text: str
    reason: SpokenReason


@dataclass(frozen=True)
class Leave:
    """Someone asked Luna to leave and her goodbye is over: end the stay (sub-code ``asked_to_leave``)."""

    reason: str


@dataclass(frozen=True)
class Publish:
    """An event for captions and status watchers (``GET /rooms/{id}/luna/events``)."""

    event: CoreEvent


Action = (
    StartTranscription
    | TranscriptionAudio
    | FinishTranscription
    | CancelTranscription
    | PredictEndOfTurn
    | RequestReply
    | CancelReply
    | Synthesize
    | CancelSynthesis
    | SendAudio
    | ClearPlayback
    | Unmute
    | SetPlaybackGain
    | RecordSpoken
    | Leave
    | Publish
)
