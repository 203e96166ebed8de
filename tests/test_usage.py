"""Usage and cost: the price formula, the STT model's list prices, and the startup lines about the STT model."""

from __future__ import annotations

from pathlib import Path

import pytest

from luna_voice.config import Prices, Settings
from luna_voice.conversation.domain import Usage
from luna_voice.conversation.events import LateUsage
from luna_voice.events import to_wire
from luna_voice.metrics import Metrics
from luna_voice.providers.azure_tts import billable_characters
from luna_voice.providers.select import select_providers
from luna_voice.providers.stt_models import MODELS
from luna_voice.usage import price


def settings(**kw) -> Settings:
    kw.setdefault("openai_api_key", "sk-test")
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def test_token_usage_is_priced_per_token_and_the_rest_per_minute():
    prices = Prices(
        stt_per_minute=0.006, stt_audio_input_per_mtok=6.0, stt_text_input_per_mtok=2.5, stt_output_per_mtok=10.0
    )
    # 10 s transcribed, 6 s of it reported in tokens (the other 4 s: a dropped session, no usage came back).
    usage = Usage(stt_seconds=10, stt_token_seconds=6, stt_audio_tokens=600, stt_text_tokens=40, stt_output_tokens=30)

    assert price(usage, prices) == pytest.approx(4 / 60 * 0.006 + 600 * 6e-6 + 40 * 2.5e-6 + 30 * 10e-6)


def test_usage_adds_every_field():
    total = Usage(stt_seconds=1, stt_audio_tokens=2, tts_characters=3)
    total += Usage(stt_seconds=1, stt_token_seconds=1, stt_output_tokens=4, llm_input_tokens=5, tts_characters=3)

    assert total == Usage(
        stt_seconds=2,
        stt_token_seconds=1,
        stt_audio_tokens=2,
        stt_output_tokens=4,
        llm_input_tokens=5,
        tts_characters=6,
    )


@pytest.mark.parametrize(
    ("mode", "model", "per_minute", "audio_per_mtok"),
    [
        ("realtime", None, 0.017, None),  # gpt-live-transcribe
        ("http", None, 0.0045, None),  # gpt-transcribe
        ("realtime", "gpt-4o-transcribe", 0.006, 6.0),
    ],
)
def test_unset_stt_prices_are_the_models_list_prices(mode, model, per_minute, audio_per_mtok):
    providers = select_providers(settings(stt_mode=mode, stt_model=model))
    prices = providers.prices(Prices())

    assert prices.stt_per_minute == per_minute
    assert prices.stt_audio_input_per_mtok == audio_per_mtok


def test_a_configured_stt_price_wins_over_the_list_price():
    providers = select_providers(settings())
    assert providers.prices(Prices(stt_per_minute=0.02)).stt_per_minute == 0.02


def test_offline_engines_cost_nothing():
    providers = select_providers(settings(openai_api_key=None))
    prices = providers.prices(Prices(stt_per_minute=1.0))
    assert prices.stt_per_minute == 0.0 and prices.tts_per_mchar == 0.0


def test_glm_flash_is_priced_as_zai_lists_it():
    """Z.ai lists glm-4.7-flash as free; $0.07/$0.40 is resellers' and GLM-4.7-FlashX's price."""
    assert (Prices().llm_input_per_mtok, Prices().llm_output_per_mtok) == (0.0, 0.0)


def test_startup_says_which_stt_model_is_used_and_warns_of_a_shutdown():
    defaulted = select_providers(settings()).notes
    assert any("gpt-live-transcribe" in n and "new default" in n for n in defaulted)

    chosen = select_providers(settings(stt_model="gpt-4o-transcribe")).notes
    assert any("2027-02-26" in n and "gpt-4o-transcribe" in n for n in chosen)


def test_a_model_on_the_wrong_transport_fails_at_startup():
    with pytest.raises(ValueError, match="LUNA_STT_MODE=http"):
        select_providers(settings(stt_model="gpt-live-transcribe", stt_mode="http"))


def test_languages_default_and_comma_separated_env(monkeypatch):
    assert settings().stt_languages == ["zh", "en"]
    monkeypatch.setenv("LUNA_STT_LANGUAGES", "zh, en,ja")
    assert settings().stt_languages == ["zh", "en", "ja"]


@pytest.mark.parametrize(
    ("url", "token", "warned"),
    [
        ("https://chat.example.com/luna", True, []),
        ("http://127.0.0.1:9000/luna", True, []),
        ("http://[::1]:9000/luna", True, []),
        ("http://localhost/luna", True, []),
        ("http://chat.example.com/luna", True, ["use https outside loopback"]),
        ("https://chat.example.com/luna", False, ["no LUNA_BOTSESSION_TOKEN"]),
    ],
)
def test_botsession_startup_warnings(url, token, warned):
    notes = select_providers(settings(botsession_url=url, botsession_token="t" if token else None)).notes
    about_it = [n for n in notes if "LUNA_BOTSESSION" in n]
    assert len(about_it) == len(warned) and all(w in n for w, n in zip(warned, about_it, strict=True))


def test_late_usage_of_an_ended_turn_reaches_the_metrics():
    """A barge-in ends the turn first; the cancelled calls' usage arrives after it and is still exported."""
    metrics = Metrics(lambda: [])
    metrics.observe(LateUsage("t1", {"tts_characters": 8.0}, 0.00012))
    text = metrics.render().decode()
    assert 'luna_usage_total{unit="tts_characters"} 8.0' in text
    assert "luna_cost_usd_total 0.00012" in text


def test_late_usage_has_a_wire_form():
    wire = to_wire(LateUsage("t1", {"llm_output_tokens": 4.0}, 0.0), room_id="r", bot_id="b")
    assert wire == {
        "type": "late_usage",
        "turn_id": "t1",
        "usage": {"llm_output_tokens": 4.0},
        "cost_usd": 0.0,
        "room_id": "r",
        "bot_id": "b",
    }


ZH_ANSWER = "好的，明天北京晴天，最高气温二十度，最低十度，早晚有点凉，出门记得带件外套。"
EN_ANSWER = "Sure, tomorrow will be sunny in Beijing, around twenty degrees."


def test_readme_cost_figures_are_what_the_code_computes():
    """The README's cost section is recomputed from the price formula, the model table and Azure's rule."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## What a turn costs") :]
    live, http = MODELS["gpt-live-transcribe"].per_minute, MODELS["gpt-transcribe"].per_minute
    assert (billable_characters(ZH_ANSWER), len(ZH_ANSWER), billable_characters(EN_ANSWER)) == (70, 38, 63)

    def turn(per_minute: float | None, answer: str) -> float:
        usage = Usage(
            stt_seconds=4, llm_input_tokens=600, llm_output_tokens=60, tts_characters=billable_characters(answer)
        )
        return price(usage, Prices(stt_per_minute=per_minute))

    assert f"**≈ ${turn(live, ZH_ANSWER):.4f}** (http: ≈ ${turn(http, ZH_ANSWER):.4f})" in section
    answers, rtk = 20 * price(Usage(tts_characters=70), Prices()), 60 * Prices().rtk_per_minute
    for share in (0.25, 0.5, 1.0):
        for per_minute, mode in ((live, "realtime"), (http, "http")):
            assert per_minute is not None
            stt = share * 60 * per_minute + 1e-9  # half-cents round up, as written by hand
            assert f"${stt:.2f}" in section, (mode, share)
            assert f"**≈ ${stt + answers + rtk:.2f}**" in section, (mode, share)


def test_startup_names_the_changed_reply_defaults():
    notes = select_providers(settings(llm_base_url="http://127.0.0.1:9/v1", llm_api_key="k")).notes
    assert any('{"thinking": {"type": "disabled"}}' in n for n in notes)
    assert any("glm-4.7-flash (free" in n for n in notes)
    plain = select_providers(settings(llm_base_url="http://127.0.0.1:9/v1", llm_api_key="k", llm_extra_body={})).notes
    assert not any("LUNA_LLM_EXTRA_BODY" in n for n in plain)
