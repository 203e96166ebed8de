"""Turn policy: does Luna answer this utterance? Every decision carries a reason an operator can read.

``auto`` (default) answers when she is addressed by name, when only one human is in the room, or when the
person she just answered follows up within the window; otherwise she listens. ``always`` answers everything,
``never`` only listens (captions and transcript), ``llm`` asks the model, which may stay silent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# The one definition of the policy names: settings (LUNA_TURN_POLICY) and the summon body both use it.
PolicyName = Literal["auto", "always", "never", "llm"]


@dataclass(frozen=True)
class Decision:
    answer: bool
    reason: str  # addressed_by_name | one_to_one | follow_up | always | llm_decides | not_addressed | listen_only
    may_stay_silent: bool = False


@dataclass
class TurnPolicy:
    name: PolicyName
    is_addressed: Callable[[str], bool]
    follow_up_window_s: float = 8.0
    _follow_up: tuple[str, float] | None = None  # (speaker id, Luna stopped speaking to them at)

    def decide(self, *, speaker_id: str, text: str, humans: int, end_of_speech: float) -> Decision:
        if self.name == "never":
            return Decision(False, "listen_only")
        if self.name == "always":
            return Decision(True, "always")
        if self.is_addressed(text):
            return Decision(True, "addressed_by_name")
        if self.name == "llm":
            return Decision(True, "llm_decides", may_stay_silent=True)
        if humans <= 1:
            return Decision(True, "one_to_one")
        if self._follow_up is not None:
            who, since = self._follow_up
            if who == speaker_id and end_of_speech - since <= self.follow_up_window_s:
                return Decision(True, "follow_up")
        return Decision(False, "not_addressed")

    def answered(self, speaker_id: str, finished_at: float) -> None:
        """Luna finished answering ``speaker_id``: their next words within the window need no name."""
        self._follow_up = (speaker_id, finished_at)
