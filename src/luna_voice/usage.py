"""Turning usage into money: one formula, fed by the unit prices in ``Settings.prices`` (see ``config.Prices``).

Transcription reported in tokens is priced per token; the rest of the audio (per-minute models, and calls whose
usage never came back) per minute. Unset STT prices count as 0 here: ``ProviderSet.prices`` fills them from the
configured model's list price before they reach this function.
"""

from __future__ import annotations

from luna_voice.config import Prices
from luna_voice.conversation.domain import Usage


def price(usage: Usage, prices: Prices) -> float:
    per_minute_s = max(usage.stt_seconds - usage.stt_token_seconds, 0.0)
    return (
        per_minute_s / 60 * (prices.stt_per_minute or 0.0)
        + usage.stt_audio_tokens / 1e6 * (prices.stt_audio_input_per_mtok or 0.0)
        + usage.stt_text_tokens / 1e6 * (prices.stt_text_input_per_mtok or 0.0)
        + usage.stt_output_tokens / 1e6 * (prices.stt_output_per_mtok or 0.0)
        + usage.llm_input_tokens / 1e6 * prices.llm_input_per_mtok
        + usage.llm_output_tokens / 1e6 * prices.llm_output_per_mtok
        + usage.tts_characters / 1e6 * prices.tts_per_mchar
    )
