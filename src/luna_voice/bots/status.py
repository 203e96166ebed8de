"""A bot's status document (``GET /rooms/{id}/luna`` and the streams' ``status`` events), built in one place.

The core keeps every time on the monotonic clock; what clients see is on the wall clock (``display``), which is
the only thing the wall clock is used for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from luna_voice.conversation.events import SpeakingChanged, TurnChanged
from luna_voice.events import Event

if TYPE_CHECKING:
    from luna_voice.bots.lifecycle import Bot


def wall_offset(clock: Callable[[], float]) -> float:
    """Add to a time on ``clock`` to get the wall-clock time, as of now."""
    return time.time() - clock()


def display_turn(turn: Mapping[str, Any], offset: float) -> dict[str, Any]:
    return {**turn, "timings": {k: v + offset for k, v in turn["timings"].items()}}


def display(event: Event, offset: float) -> Event:
    """An event as clients see it: its times on the wall clock."""
    if isinstance(event, TurnChanged):
        return TurnChanged(display_turn(event.turn, offset))
    if isinstance(event, SpeakingChanged):
        return SpeakingChanged(event.speaking, event.at + offset)
    return event


def describe(bot: Bot) -> dict[str, Any]:
    core = bot.pipeline.core
    minutes = bot.room_minutes()
    page = dict(bot.session.info) if bot.session is not None else {}
    offset = wall_offset(bot.clock)
    return {
        "room_id": bot.room_id,
        "bot_id": bot.id,
        "backend": bot.backend,
        "state": str(bot.state),
        "sub_code": bot.sub_code,
        "reason": bot.reason,
        "created_at": bot.created_at,
        "joined_at": bot.joined_at,
        "ended_at": bot.ended_at,
        "rejoins": [dict(r) for r in bot.rejoins],
        "participants": core.participant_list(),
        "turns": [display_turn(t.to_dict(), offset) for t in core.turns.values()],
        "usage": vars(core.usage).copy(),
        "cost_usd": round(core.cost_usd, 6),
        "room_minutes": round(minutes, 3),
        "room_cost_usd": round(minutes * bot.options.get("minute_price", 0.0), 6),
        "providers": {"stt": bot.pipeline.stt.name, "llm": bot.pipeline.llm.name, "tts": bot.pipeline.tts.name},
        "provider_problems": bot.pipeline.provider_problems(),
        "policy": core.cfg.policy,
        "muted_by_host": core.muted,
        "listen_only": core.listen_only,
        "stats": {**core.stats, **bot.stats},
        "page": page,
    }
