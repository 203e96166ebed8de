"""Service settings, read once from the environment (``LUNA_*`` plus the providers' usual variables).

Every knob lives here so the README's configuration table has one source. Secrets are ``SecretStr`` so they
never print in logs or ``repr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from luna_voice.conversation.policy import PolicyName
from luna_voice.conversation.transcript_filter import WORDS_FLOOR


def secret(value: SecretStr | None) -> str | None:
    """The plain value of an optional secret, for handing to a client (never for logging)."""
    return value.get_secret_value() if value is not None else None


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Prices(BaseSettings):
    """Unit prices in USD for per-turn cost: every default is a public list price, read on 2026-12-03.

    Sources: transcription — the model's row in ``providers/stt_models.py`` (OpenAI's model pages), used for every
    ``stt_*`` left unset; glm-4.7-flash — Z.ai's own price list (docs.z.ai/guides/overview/pricing), where it is
    free (resellers such as OpenRouter, Vercel and Bedrock charge $0.06-0.07 in / $0.40 out, which is also Z.ai's
    price for GLM-4.7-FlashX: set ``LUNA_PRICE_LLM_*`` if that is what you use); Azure neural TTS — the Speech
    pricing page, $15 per million billable characters; RealtimeKit — Cloudflare's audio-only participant minute.
    """

    model_config = SettingsConfigDict(env_prefix="LUNA_PRICE_", extra="ignore")

    stt_per_minute: float | None = None  # per-minute models, and the fallback when no token usage came back
    stt_audio_input_per_mtok: float | None = None  # token-billed models (gpt-4o-*transcribe)
    stt_text_input_per_mtok: float | None = None
    stt_output_per_mtok: float | None = None
    llm_input_per_mtok: float = 0.0  # glm-4.7-flash on Z.ai
    llm_output_per_mtok: float = 0.0
    tts_per_mchar: float = 15.0  # Azure neural TTS, per million billable characters
    rtk_per_minute: float = 0.0005  # RealtimeKit audio-only participant minute


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LUNA_", env_file=".env", extra="ignore")

    # --- service -------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = Field(
        default=None, description="Base URL people use to reach the demo page; printed at startup."
    )
    api_token: SecretStr | None = Field(
        default=None, description="If set, /rooms endpoints require 'Authorization: Bearer <token>'."
    )
    log_level: str = "info"
    log_json: bool = False

    # --- bots and browser ----------------------------------------------------------------------------
    chromium_path: Path = Path("/usr/bin/chromium")
    max_bots: int = Field(default=4, ge=1, description="Bots one process holds at once (each is a Chromium context).")
    bot_name: str = "Luna"
    bot_picture: str | None = None
    join_timeout_s: float = 30.0
    alone_timeout_s: float = Field(default=60.0, description="Leave after this long with no human in the room.")
    max_duration_s: float = Field(default=4 * 3600.0, description="Hard cap on one bot's stay.")
    rejoin_max: int = Field(default=3, ge=0, description="Crash rejoins allowed within LUNA_REJOIN_WINDOW_S.")
    rejoin_window_s: float = Field(default=600.0, gt=0, description="Window of the crash rejoin budget.")
    ended_retention_s: float = Field(
        default=3600.0, ge=0, description="How long an ended bot's status stays visible before it is forgotten."
    )
    ended_retention_count: int = Field(default=100, ge=0, description="Most ended bots kept (oldest go first).")
    bot_base_url: str | None = Field(
        default=None,
        description="Base URL Luna's browser reaches this service at (bridge, page, local room); "
        "default http://127.0.0.1:<port>.",
    )
    local_room_url: str | None = Field(
        default=None,
        description="Base URL of the local demo room's hub when it runs elsewhere (a bot machine uses its "
        "dispatcher's); default this service.",
    )
    local_ice: Literal["any", "loopback"] = Field(
        default="any", description="Local room: 'loopback' keeps only 127.0.0.1 ICE candidates (tests)."
    )
    default_backend: Literal["auto", "local", "rtk"] = "auto"
    local_rooms: bool = Field(
        default=True, description="Serve the local demo room (hub + page); turn off in production with RTK only."
    )

    # --- conversation -------------------------------------------------------------------------------
    turn_policy: PolicyName = "auto"
    follow_up_window_s: float = 8.0
    end_of_speech_ms: int = Field(default=500, description="Silence that ends a turn when no turn model answers.")
    max_utterance_s: float = 30.0
    preroll_ms: int = 300
    barge_in_min_ms: int = Field(
        default=500, description="Voiced overlap that stops Luna; she is ducked from its first frame meanwhile."
    )
    barge_in_duck_db: float = Field(
        default=-15.0, le=0.0, description="Luna's level while someone starts talking over her (dB)."
    )
    barge_in_duck_threshold: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Silero probability of one window that ducks Luna at once."
    )
    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="Silero speech probability for 'voiced'.")
    min_speech_ms: int = Field(default=200, ge=0, description="Less voiced audio than this is noise, never a turn.")
    stt_min_confidence: float = Field(
        default=WORDS_FLOOR,
        gt=0.0,
        lt=1.0,
        description="STT confidence gate: mean token probability below which a transcript is noise (exp(-1)).",
    )
    turn_model: bool = Field(default=True, description="Semantic end of turn (Smart Turn v3.2); off = silence rule.")
    turn_candidate_ms: int = Field(default=40, ge=20, description="Silence before the turn model's first question.")
    turn_reask_ms: int = Field(default=100, ge=20, description="Ask the turn model again as the silence grows by this.")
    turn_reask_until_ms: int = Field(default=300, ge=0, description="No more questions after this much silence.")
    turn_confident_asks: int = Field(default=1, ge=1, description="Answers to this many first questions may commit.")
    turn_complete_threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="Below: the speaker is mid-thought."
    )
    turn_confident_threshold: float = Field(
        default=0.7, gt=0.0, le=1.0, description="An early answer at or above: commit at once."
    )
    turn_likely_wait_ms: int = Field(default=1000, description="Silence that ends a turn the model called likely done.")
    turn_max_wait_ms: int = Field(default=2500, description="Silence that ends a turn the model called unfinished.")
    continuation_wait_s: float = Field(
        default=1.5,
        ge=0.0,
        description="A plainly unfinished transcript ('Could you tell me if') waits this long after its end of speech "
        "for the same speaker's next words and is joined to them; 0 = answer it at once.",
    )
    host_mute: Literal["unmute_when_addressed", "stay_muted"] = Field(
        default="unmute_when_addressed",
        description="After someone else mutes Luna she keeps listening; she unmutes herself when next addressed by "
        "name ('unmute_when_addressed') or stays muted for the rest of the stay ('stay_muted').",
    )

    # --- Luna as a participant ----------------------------------------------------------------------
    greeting: str = Field(
        default="Hi, I'm Luna, an AI assistant. Say my name when you want to talk to me.",
        description="Said once after Luna joins, when someone is there; empty = no greeting.",
    )
    goodbye: str = Field(default="Okay, goodbye everyone!", description="Said before leaving when asked to.")
    goodbye_zh: str = Field(default="好的，大家再见！", description="The goodbye when she was asked in Chinese.")
    transcript: bool = Field(default=True, description="Keep the meeting transcript (GET .../luna/transcript).")
    transcript_max_lines: int = Field(default=5000, ge=1, description="Lines kept per stay; the oldest go first.")
    webhook_url: str | None = Field(default=None, description="Where signed webhook events are POSTed; unset = none.")
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for webhook signatures.")
    webhook_queue: int = Field(default=1000, ge=1, description="Webhook events waiting at most; overflow is counted.")
    webhook_retry_for_s: float = Field(
        default=3600.0, gt=0, description="How long a webhook event is retried (with backoff) before it is dropped."
    )
    chat_mirror: bool = Field(default=False, description="Also post each spoken reply as a chat message (RTK).")

    # --- providers ----------------------------------------------------------------------------------
    stt_provider: Literal["auto", "openai", "whisper"] = "auto"
    llm_provider: Literal["auto", "botsession", "openai_chat", "demo"] = "auto"
    tts_provider: Literal["auto", "azure", "offline"] = "auto"

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("OPENAI_API_KEY", "LUNA_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(default=None, validation_alias=_env("OPENAI_BASE_URL", "LUNA_OPENAI_BASE_URL"))
    stt_model: str | None = Field(
        default=None, description="Unset = gpt-live-transcribe (realtime) or gpt-transcribe (http)."
    )
    stt_mode: Literal["realtime", "http"] = "realtime"
    stt_language: str | None = Field(
        default=None, description="One ISO-639-1 code to force; wins over stt_languages. Unset = detect."
    )
    stt_languages: Annotated[list[str], NoDecode] = Field(
        default=["zh", "en"], description="Possible languages (comma-separated), for models that take a list."
    )
    stt_delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = Field(
        default=None, description="Realtime latency/accuracy trade-off, for models that take it (gpt-realtime-whisper)."
    )

    stt_timeout_s: float = Field(
        default=30.0, gt=0, description="Fail a turn whose transcript has not come this long after its speech ended."
    )

    @field_validator("stt_languages", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return [code.strip() for code in value.split(",") if code.strip()] if isinstance(value, str) else value

    botsession_url: str | None = None
    botsession_token: SecretStr | None = None
    botsession_hmac_secret: SecretStr | None = None
    botsession_timeout_s: float = 20.0
    rate_limited_line: str = Field(default="", description="Said once when BotSession answers 429; empty = silence.")

    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = "glm-4.7-flash"
    llm_extra_body: dict[str, Any] = Field(
        default={"thinking": {"type": "disabled"}},
        description="JSON merged into every chat request; the default turns GLM thinking off. '{}' for strict servers.",
    )
    llm_system_prompt: str = (
        "You are Luna, a friendly assistant taking part in a voice call with several people. "
        "Answer briefly, in the language you were spoken to, in plain spoken sentences without markdown."
    )

    azure_speech_key: SecretStr | None = Field(
        default=None, validation_alias=_env("AZURE_SPEECH_KEY", "LUNA_AZURE_SPEECH_KEY")
    )
    azure_speech_region: str | None = Field(
        default=None, validation_alias=_env("AZURE_SPEECH_REGION", "LUNA_AZURE_SPEECH_REGION")
    )
    azure_speech_endpoint: str | None = Field(
        default=None, validation_alias=_env("AZURE_SPEECH_ENDPOINT", "LUNA_AZURE_SPEECH_ENDPOINT")
    )
    tts_voice: str = "zh-CN-XiaoxiaoNeural"
    tts_voice_en: str | None = None

    # --- RealtimeKit --------------------------------------------------------------------------------
    rtk_account_id: str | None = None
    rtk_app_id: str | None = None
    rtk_api_token: SecretStr | None = None
    rtk_preset: str = "group_call_participant"
    rtk_api_base: str = "https://api.cloudflare.com/client/v4"

    prices: Prices = Field(default_factory=Prices)

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        if self.webhook_url and not (self.webhook_secret and self.webhook_secret.get_secret_value()):
            raise ValueError("LUNA_WEBHOOK_URL needs LUNA_WEBHOOK_SECRET: webhook events are always signed")
        return self

    @property
    def rtk_configured(self) -> bool:
        return bool(self.rtk_account_id and self.rtk_app_id and self.rtk_api_token)
