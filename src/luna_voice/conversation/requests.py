"""Luna as a participant: requests people make by voice, and what the app asks her to say.

Voice requests ("Luna, stop", "露娜，安静", "Luna, you can leave") are recognised from the transcript only when
she is addressed by name and the rest of the utterance is one of ``addressing.REQUEST_PHRASES``; a transcript
that merely mentions her ("I told Luna to stop") is an ordinary turn. The conversation core acts on them and
records each on its turn with the outcome (``RequestRecord``).

Speech turns (``TurnKind`` greeting, say, goodbye) are texts Luna speaks without asking the reply engine: the
core queues them behind what she is saying, or cuts her current reply first as a barge-in does when a say asks
to interrupt. They are refused (``SayRefused``) while she only listens or is on her way out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from luna_voice.conversation.addressing import REQUEST_FILLERS, REQUEST_PHRASES
from luna_voice.conversation.chunking import is_cjk


class VoiceRequest(StrEnum):
    STOP = "stop"  # cut her reply now (and what was queued behind it)
    QUIET = "quiet"  # as stop, then listen only until someone addresses her by name again
    LEAVE = "leave"  # say a short goodbye and leave the room (sub-code asked_to_leave)


class RequestOutcome(StrEnum):
    STOPPED = "stopped"  # something she was saying or preparing was cut
    NOTHING_TO_STOP = "nothing_to_stop"
    LISTEN_ONLY = "listen_only"
    LEAVING = "leaving"


@dataclass(frozen=True)
class RequestRecord:
    """A voice request on its turn: what was asked and what Luna did."""

    kind: VoiceRequest
    outcome: RequestOutcome

    def to_dict(self) -> dict[str, str]:
        return {"kind": str(self.kind), "outcome": str(self.outcome)}


class SayRefused(Exception):
    """Luna cannot speak now; ``code`` says why (``listen_only`` or ``leaving``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_NOT_WORD: Final = re.compile(r"[\W_]+")


def _normalise(text: str) -> str:
    """Lower case, punctuation gone, one space between Latin words and none next to Chinese characters."""
    words = _NOT_WORD.sub(" ", text.lower().replace("’", "'").replace("'", "")).split()
    out = ""
    for word in words:
        if out and not (is_cjk(out[-1]) or is_cjk(word[0])):
            out += " "
        out += word
    return out


def _filler_pattern() -> re.Pattern[str]:
    parts = []
    for filler in sorted((_normalise(f) for f in REQUEST_FILLERS), key=len, reverse=True):
        parts.append(re.escape(filler) if is_cjk(filler[0]) else rf"\b{re.escape(filler)}\b")
    return re.compile("|".join(parts))


_FILLERS: Final = _filler_pattern()


def _core(text: str) -> str:
    """What is left to match: normalised, politeness and articles gone."""
    return _normalise(_FILLERS.sub(" ", _normalise(text)))


_PHRASES: Final[dict[str, VoiceRequest]] = {
    _core(phrase): VoiceRequest(kind) for kind, phrases in REQUEST_PHRASES.items() for phrase in phrases
}


class RequestDetector:
    """Finds a voice request in an utterance addressed to Luna (``without_names`` blanks her names out)."""

    def __init__(self, is_addressed: Callable[[str], bool], without_names: Callable[[str], str]) -> None:
        self._is_addressed = is_addressed
        self._without_names = without_names

    def __call__(self, text: str) -> VoiceRequest | None:
        if not self._is_addressed(text):
            return None
        return _PHRASES.get(_core(self._without_names(text)))
