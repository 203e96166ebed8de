"""One turn: an utterance someone said, what Luna decided, and what she answered — with its timings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from luna_voice.conversation.chunking import is_cjk
from luna_voice.conversation.domain import Usage

if TYPE_CHECKING:
    from luna_voice.conversation.requests import RequestRecord


class TurnState(StrEnum):
    """Where a turn is. The value is what the status document and events show."""

    TRANSCRIBING = "transcribing"
    QUEUED = "queued"  # answered, waiting for Luna to finish another turn
    THINKING = "thinking"  # reply requested, no audio yet
    SPEAKING = "speaking"
    SKIPPED = "skipped"  # heard, not answered (policy, backchannel, or no speech)
    SILENT = "silent"  # the ``llm`` policy's model chose not to answer
    DONE = "done"
    INTERRUPTED = "interrupted"  # barge-in, a say that cut in, or someone asking her to stop
    FAILED = "failed"
    MERGED = "merged"  # folded into the same speaker's follow-on
    STALE = "stale"  # queued too long to be worth answering
    HANDLED = "handled"  # a request to Luna herself ("Luna, stop"), acted on (``Turn.request``)
    CANCELLED = "cancelled"  # queued, then dropped because someone asked her to stop, hush or leave

    @property
    def terminal(self) -> bool:
        return not _NEXT[self]


_S = TurnState
_NEXT: dict[TurnState, frozenset[TurnState]] = {
    # merged: an unfinished transcript held for the speaker's next words, which came (``Hold.MERGED``)
    _S.TRANSCRIBING: frozenset({_S.QUEUED, _S.THINKING, _S.SKIPPED, _S.FAILED, _S.HANDLED, _S.MERGED}),
    # skipped: muted by a host; cancelled: someone asked her to stop, hush or leave
    _S.QUEUED: frozenset({_S.THINKING, _S.STALE, _S.FAILED, _S.SKIPPED, _S.CANCELLED}),
    # A reply whose sentences all come back without audio ends done/failed without ever speaking; a stop
    # request or a say that cuts in can interrupt a reply that has no audio yet.
    _S.THINKING: frozenset({_S.SPEAKING, _S.SILENT, _S.MERGED, _S.DONE, _S.FAILED, _S.INTERRUPTED}),
    # speaking -> merged: synthesized, held back while the asker went on, never sent (core ``_unsent``)
    _S.SPEAKING: frozenset({_S.DONE, _S.INTERRUPTED, _S.FAILED, _S.MERGED}),
    **{
        s: frozenset()
        for s in (_S.SKIPPED, _S.SILENT, _S.DONE, _S.INTERRUPTED, _S.FAILED, _S.MERGED, _S.STALE, _S.HANDLED)
    },
    _S.CANCELLED: frozenset(),
}
TERMINAL = frozenset(s for s in TurnState if s.terminal)


class InvalidTransition(RuntimeError):
    """The core tried a move the turn state machine forbids: a bug, never an input error."""


class Hold(StrEnum):
    """An unfinished transcript ("Could you tell me if") held for the same speaker's next words
    (``continuation.py``), and what came of it."""

    HELD = "held"  # waiting for the speaker to go on
    MERGED = "merged"  # they did: this fragment is the first part of their next turn
    JOINED = "joined"  # this turn's heard text begins with a held fragment of theirs
    EXPIRED = "expired"  # nobody went on within the wait: answered as it was


class TurnKind(StrEnum):
    """What started a turn: someone spoke (``utterance``), or Luna speaks a given text (the rest)."""

    UTTERANCE = "utterance"
    GREETING = "greeting"  # once after she joins (LUNA_GREETING)
    SAY = "say"  # POST /rooms/{id}/luna/say
    GOODBYE = "goodbye"  # before she leaves because someone asked her to

    @property
    def speech(self) -> bool:
        """Luna speaks a fixed text: no transcript, no reply engine."""
        return self is not TurnKind.UTTERANCE


def join_sentences(parts: Iterable[str]) -> str:
    """Re-join chunked sentences: a space between Latin-script sentences, none where Chinese meets."""
    out = ""
    for part in parts:
        if out and part and not (is_cjk(out[-1]) or is_cjk(part[0])):
            out += " "
        out += part
    return out


@dataclass
class Sentence:
    text: str
    samples: int = 0  # synthesized so far
    played: int = 0
    synthesized: bool = False

    def spoken_part(self) -> str:
        """The part of the text heard, assuming characters are spread evenly over the audio."""
        if self.synthesized and self.played >= self.samples:
            return self.text
        if not self.samples:
            return ""
        return self.text[: int(len(self.text) * min(1.0, self.played / self.samples))]


@dataclass
class Turn:
    id: str
    utterance_id: str
    speaker_id: str
    speaker_name: str
    playback_rate: int  # Hz, to report reply and played audio in seconds
    state: TurnState = TurnState.TRANSCRIBING
    heard_text: str = ""
    language: str | None = None
    decision: str | None = None
    reason: str | None = None
    reply_text: str = ""
    sentences: list[Sentence] = field(default_factory=list)
    reply_done: bool = False
    requested: bool = False  # a reply was asked for: the turn owes the reply engine one closing call
    interrupted: bool = False
    error: str | None = None
    end_reason: str | None = None  # how the utterance ended: semantic, silence, max_wait, max_length, ...
    end_probability: float | None = None  # the turn model's "complete" probability, when asked
    no_speech: str | None = None  # why it was dropped as not speech (reason "no_speech")
    timings: dict[str, float] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    # The STT service's own part of ``transcript_ready``: from the end of the audio sent to the final text. Near 0
    # for a model that transcribes while people speak; the rest of ``transcript_ready`` is our endpointing.
    stt_final_after_s: float | None = None
    kind: TurnKind = TurnKind.UTTERANCE
    request: RequestRecord | None = None  # a voice request this utterance made, with its outcome
    hold: Hold | None = None  # held as unfinished, joined to a held fragment, ...

    def move(self, to: TurnState) -> None:
        """The only way a turn changes state; a forbidden move raises instead of corrupting the history."""
        if to not in _NEXT[self.state]:
            raise InvalidTransition(f"turn {self.id}: {self.state} -> {to}")
        self.state = to

    @property
    def spoken_text(self) -> str:
        return join_sentences(s.spoken_part() for s in self.sentences)

    def mark(self, key: str, at: float) -> None:
        self.timings.setdefault(key, at)

    def latency_ms(self) -> dict[str, float]:
        """Durations from the end of speech (a speech turn: from its request), the numbers an operator tunes against."""
        base = self.timings.get("end_of_speech", self.timings.get("requested"))
        if base is None:
            return {}
        return {f"{k}_ms": round((v - base) * 1000, 1) for k, v in self.timings.items() if k != "speech_started"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "speaker": {"id": self.speaker_id, "name": self.speaker_name},
            "state": str(self.state),
            "heard_text": self.heard_text,
            "language": self.language,
            "decision": self.decision,
            "reason": self.reason,
            "request": self.request.to_dict() if self.request is not None else None,
            "reply_text": self.reply_text,
            "spoken_text": self.spoken_text,
            "interrupted": self.interrupted,
            "reply_audio_s": round(sum(s.samples for s in self.sentences) / self.playback_rate, 3),
            "played_audio_s": round(sum(s.played for s in self.sentences) / self.playback_rate, 3),
            "error": self.error,
            "end": {"reason": self.end_reason, "probability": self.end_probability},
            "no_speech": self.no_speech,
            "hold": None if self.hold is None else str(self.hold),
            "timings": dict(self.timings),
            "latency": self.latency_ms(),
            "stt_final_after_ms": None if self.stt_final_after_s is None else round(self.stt_final_after_s * 1000, 1),
            "usage": vars(self.usage).copy(),
            "cost_usd": round(self.cost_usd, 6),
        }
