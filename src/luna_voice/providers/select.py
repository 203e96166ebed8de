"""Choosing providers from the settings: cloud engines when their keys are set, offline engines otherwise.

``auto`` picks the cloud engine whose credentials are configured and falls back to the offline one, saying so
in ``notes`` (logged once at startup and shown by ``/readyz``). Each bot gets its own provider instances (an
Azure synthesizer is kept warm per bot); heavy offline models are loaded once per process by their modules.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from yarl import URL

from luna_voice.bridge.protocol import PLAYBACK_RATE
from luna_voice.config import Prices, Settings, secret
from luna_voice.providers.base import ReplyEngine, SpeechToText, TextToSpeech
from luna_voice.providers.stt_models import model_info


@dataclass
class ProviderSet:
    make_stt: Callable[[], SpeechToText]
    make_llm: Callable[[], ReplyEngine]
    make_tts: Callable[[], TextToSpeech]
    names: dict[str, str]
    notes: list[str] = field(default_factory=list)
    stt_model: str | None = None  # the cloud STT model, whose list prices fill unset ``stt_*`` prices

    def prices(self, list_prices: Prices) -> Prices:
        """Unit prices for this set: offline engines cost nothing, unset STT prices are the model's list prices."""
        update: dict[str, float | None] = {}
        if self.names["stt"] == "whisper":
            update.update(
                stt_per_minute=0.0, stt_audio_input_per_mtok=0.0, stt_text_input_per_mtok=0.0, stt_output_per_mtok=0.0
            )
        elif self.stt_model is not None and (info := model_info(self.stt_model)) is not None:
            listed = {"stt_per_minute": info.per_minute}
            if info.tokens is not None:
                listed.update(
                    stt_audio_input_per_mtok=info.tokens.audio_input,
                    stt_text_input_per_mtok=info.tokens.text_input,
                    stt_output_per_mtok=info.tokens.output,
                )
            update.update({k: v for k, v in listed.items() if getattr(list_prices, k) is None})
        if self.names["llm"] == "demo":
            update.update(llm_input_per_mtok=0.0, llm_output_per_mtok=0.0)
        if self.names["tts"] == "offline":
            update["tts_per_mchar"] = 0.0
        return list_prices.model_copy(update=update)

    @property
    def offline(self) -> bool:
        return self.names["stt"] == "whisper" and self.names["llm"] == "demo" and self.names["tts"] == "offline"


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def botsession_warnings(url: str, token: bool, secret: bool) -> list[str]:
    """What makes a BotSession setup unsafe: no credentials at all, or plain HTTP beyond this machine."""
    out = []
    if not (token or secret):
        out.append("replies: no LUNA_BOTSESSION_TOKEN or LUNA_BOTSESSION_HMAC_SECRET; the app cannot tell Luna's calls")
    parsed = URL(url)
    if parsed.scheme != "https" and not _loopback(parsed.host):
        out.append(f"replies: LUNA_BOTSESSION_URL is {parsed.scheme}:// to {parsed.host}; use https outside loopback")
    return out


def _stt(s: Settings, notes: list[str]) -> tuple[str, Callable[[], SpeechToText], str | None]:
    choice = s.stt_provider
    if choice == "auto":
        choice = "openai" if s.openai_api_key else "whisper"
        if choice == "whisper":
            notes.append("speech recognition: OPENAI_API_KEY is not set, using offline Whisper tiny.en (English only)")
    if choice == "openai":
        from luna_voice.providers.openai_stt import OpenAISTT
        from luna_voice.providers.stt_models import default_model, startup_warnings

        key = secret(s.openai_api_key) or ""
        model = s.stt_model or default_model(s.stt_mode)
        if (info := model_info(model)) is not None and not info.takes(s.stt_mode):
            raise ValueError(f"LUNA_STT_MODEL={model} does not work with LUNA_STT_MODE={s.stt_mode}")
        if not s.stt_model:
            notes.append(
                f"speech recognition: using {model}, the new default (was gpt-4o-transcribe, shutting down "
                "2027-02-26); set LUNA_STT_MODEL to choose"
            )
        notes.extend(startup_warnings(model, s.stt_mode))
        make = lambda: OpenAISTT(  # noqa: E731
            api_key=key,
            base_url=s.openai_base_url,
            model=model,
            mode=s.stt_mode,
            language=s.stt_language,
            languages=s.stt_languages,
            delay=s.stt_delay,
        )
        return "openai", make, model
    from luna_voice.providers.offline import WhisperSTT

    return "whisper", WhisperSTT, None


def _llm(s: Settings, notes: list[str]) -> tuple[str, Callable[[], ReplyEngine]]:
    choice = s.llm_provider
    if choice == "auto":
        if s.botsession_url:
            choice = "botsession"
        elif s.llm_base_url and s.llm_api_key:
            choice = "openai_chat"
        else:
            choice = "demo"
            notes.append("replies: no LUNA_BOTSESSION_URL or LUNA_LLM_BASE_URL, using the demo responder (not an AI)")
    if choice in ("botsession", "openai_chat") and s.prices.llm_input_per_mtok == s.prices.llm_output_per_mtok == 0:
        notes.append(
            "cost: replies are priced as Z.ai lists glm-4.7-flash (free, a changed default); set LUNA_PRICE_LLM_* "
            "for a reseller or a paid model"
        )
    if choice == "botsession":
        from luna_voice.providers.botsession import BotSessionEngine

        if not s.botsession_url:
            raise ValueError("LUNA_LLM_PROVIDER=botsession needs LUNA_BOTSESSION_URL")
        url = s.botsession_url
        notes.extend(botsession_warnings(url, bool(s.botsession_token), bool(s.botsession_hmac_secret)))
        return "botsession", lambda: BotSessionEngine(
            url=url,
            token=secret(s.botsession_token),
            hmac_secret=secret(s.botsession_hmac_secret),
            timeout_s=s.botsession_timeout_s,
        )
    if choice == "openai_chat":
        from luna_voice.providers.openai_chat import OpenAIChatEngine

        if "thinking" in s.llm_extra_body:
            extra = json.dumps(s.llm_extra_body)
            notes.append(f"replies: every request carries {extra} (LUNA_LLM_EXTRA_BODY; set {{}} to send nothing)")
        return "openai_chat", lambda: OpenAIChatEngine(
            base_url=s.llm_base_url,
            api_key=secret(s.llm_api_key) or "",
            model=s.llm_model,
            system_prompt=s.llm_system_prompt,
            extra_body=s.llm_extra_body,
        )
    from luna_voice.providers.offline import DemoReply

    return "demo", DemoReply


def _tts(s: Settings, notes: list[str]) -> tuple[str, Callable[[], TextToSpeech]]:
    choice = s.tts_provider
    if choice == "auto":
        choice = "azure" if s.azure_speech_key and (s.azure_speech_region or s.azure_speech_endpoint) else "offline"
        if choice == "offline":
            notes.append("speech: AZURE_SPEECH_KEY/REGION are not set, using offline Piper (English) and espeak-ng")
    if choice == "azure":
        from luna_voice.providers.azure_tts import AzureTextToSpeech

        key = secret(s.azure_speech_key) or ""
        return "azure", lambda: AzureTextToSpeech(
            key=key,
            region=s.azure_speech_region,
            endpoint=s.azure_speech_endpoint,
            voice=s.tts_voice,
            voice_en=s.tts_voice_en,
            sample_rate=PLAYBACK_RATE,  # the page plays at this rate: no resampling
        )
    from luna_voice.providers.offline import OfflineTTS

    return "offline", lambda: OfflineTTS(sample_rate=PLAYBACK_RATE)


def select_providers(settings: Settings) -> ProviderSet:
    notes: list[str] = []
    stt_name, make_stt, stt_model = _stt(settings, notes)
    llm_name, make_llm = _llm(settings, notes)
    tts_name, make_tts = _tts(settings, notes)
    names = {"stt": stt_name, "llm": llm_name, "tts": tts_name}
    return ProviderSet(make_stt, make_llm, make_tts, names, notes, stt_model)
