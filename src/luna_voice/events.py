"""Every event a bot publishes, and their one JSON form (event stream, captions, metrics see the same events).

The conversation core's events live in ``conversation.events``; the bot adds its lifecycle state and the
status snapshot an event stream starts with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from luna_voice.conversation.events import (
    CoreEvent,
    LateUsage,
    ListenOnlyChanged,
    MutedChanged,
    ParticipantsChanged,
    SpeakChanged,
    SpeakingChanged,
    SpeakPhase,
    TurnChanged,
)


@dataclass(frozen=True)
class StateChanged:
    """The bot's lifecycle state (``bots.states.BotState``) changed."""

    state: str
    sub_code: str | None
    reason: str | None


@dataclass(frozen=True)
class StatusSnapshot:
    """The whole status document; the first event of every stream, and its last (``final``) when the bot ends."""

    status: Mapping[str, Any]
    final: bool = False


@dataclass(frozen=True)
class Closed:
    """The stream ends without a final status of its bot (the service is stopping)."""

    reason: str


Event = CoreEvent | StateChanged | StatusSnapshot | Closed


def to_wire(event: Event, *, room_id: str, bot_id: str) -> dict[str, Any]:
    """The JSON object clients see for ``event``: a ``type``, its fields, and which bot and room it is about."""
    body: dict[str, Any]
    match event:
        case TurnChanged(turn=turn):
            body = {"type": "turn", "turn": dict(turn)}
        case ParticipantsChanged(participants=people):
            body = {"type": "participants", "participants": [{"id": p.id, "name": p.name} for p in people]}
        case SpeakingChanged(speaking=speaking, at=at):
            body = {"type": "speaking", "speaking": speaking, "at": at}
        case LateUsage(turn_id=turn_id, usage=usage, cost_usd=cost_usd):
            body = {"type": "late_usage", "turn_id": turn_id, "usage": dict(usage), "cost_usd": cost_usd}
        case MutedChanged(muted=muted, reason=reason, at=at):
            body = {"type": "muted", "muted": muted, "reason": reason, "at": at}
        case SpeakChanged(phase=phase, say_id=say_id, kind=kind, text=text, at=at):
            body = {"type": f"speak.{phase}", "say_id": say_id, "kind": kind, "text": text, "at": at}
            if phase is not SpeakPhase.STARTED:
                body |= {"spoken_text": event.spoken_text, "played_audio_s": event.played_audio_s}
                if event.error:
                    body["error"] = event.error
        case ListenOnlyChanged(listen_only=listen_only, at=at):
            body = {"type": "listen_only", "listen_only": listen_only, "at": at}
        case StateChanged(state=state, sub_code=sub_code, reason=reason):
            body = {"type": "state", "state": str(state), "sub_code": sub_code, "reason": reason}
        case StatusSnapshot(status=status, final=final):
            body = {"type": "status", "status": dict(status), **({"final": True} if final else {})}
        case Closed(reason=reason):
            body = {"type": "closed", "reason": reason}
    return {**body, "room_id": room_id, "bot_id": bot_id}


def sse(event: Event, *, room_id: str, bot_id: str) -> bytes:
    """One server-sent event frame."""
    data = json.dumps(to_wire(event, room_id=room_id, bot_id=bot_id), ensure_ascii=False)
    return f"data: {data}\n\n".encode()
