"""A bot's status document (``GET /rooms/{id}/luna`` and the streams' ``status`` events), built in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from luna_voice.bots.lifecycle import Bot


def describe(bot: Bot) -> dict[str, Any]:
    core = bot.pipeline.core
    minutes = bot.room_minutes()
    page = dict(bot.session.info) if bot.session is not None else {}
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
        "turns": [t.to_dict() for t in core.turns.values()],
        "usage": vars(core.usage).copy(),
        "cost_usd": round(core.cost_usd, 6),
        "room_minutes": round(minutes, 3),
        "room_cost_usd": round(minutes * bot.options.get("minute_price", 0.0), 6),
        "providers": {"stt": bot.pipeline.stt.name, "llm": bot.pipeline.llm.name, "tts": bot.pipeline.tts.name},
        "provider_problems": bot.pipeline.provider_problems(),
        "policy": core.cfg.policy,
        "stats": {**core.stats, **bot.stats},
        "page": page,
    }
