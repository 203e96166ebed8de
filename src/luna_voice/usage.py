"""Turning usage into money: one formula, fed by the configurable unit prices in ``Settings.prices``."""

from __future__ import annotations

from luna_voice.config import Prices
from luna_voice.conversation.domain import Usage


def price(usage: Usage, prices: Prices) -> float:
    return (
        usage.stt_seconds / 60 * prices.stt_per_minute
        + usage.llm_input_tokens / 1e6 * prices.llm_input_per_mtok
        + usage.llm_output_tokens / 1e6 * prices.llm_output_per_mtok
        + usage.tts_characters / 1e6 * prices.tts_per_mchar
    )
