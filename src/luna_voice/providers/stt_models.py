"""What each OpenAI transcription model accepts, in one table, so a request never carries a field the model rejects.

Sources (read 2026-12-03): the ``AudioTranscriptionParam`` / ``TranscriptionCreateParams`` docstrings of openai
3.57 (which fields each model takes, which models are deprecated with an announced shutdown of 2027-02-26) and
OpenAI's model pages (developers.openai.com/api/docs/models/<model>) for endpoints and list prices.

* ``gpt-live-transcribe`` is realtime only and streams deltas while audio arrives; ``gpt-transcribe`` serves both
  ``/audio/transcriptions`` and committed realtime turns. Both take ``keywords`` and ``languages``.
* ``gpt-realtime-whisper`` is realtime only, streams while audio arrives, takes ``delay`` and no ``prompt``.
* The ``gpt-4o-*transcribe`` family and ``whisper-1`` take ``prompt`` and one ``language`` only, and are billed per
  token (their ``usage`` is ``{"type": "tokens"}``); the newer models are billed per minute of audio.
* Token log-probabilities (``include=["logprobs"]`` over HTTP, the session's
  ``include=["item.input_audio_transcription.logprobs"]`` over realtime) come only from the ``gpt-4o-*transcribe``
  models: ``TranscriptionCreateParams.include`` says "only with the models gpt-4o-transcribe,
  gpt-4o-mini-transcribe, and gpt-4o-mini-transcribe-2025-12-15"; no other model is documented to return them, so
  no other model is asked (the confidence gate is then simply off for it).

A model missing from the table is passed through with only ``model`` and ``language`` set (nothing the API could
reject for an unknown model), billed per minute at ``Prices.stt_per_minute``, and logged at startup.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

Transport = Literal["realtime", "http"]
Delay = Literal["minimal", "low", "medium", "high", "xhigh"]

REALTIME_DEFAULT = "gpt-live-transcribe"
HTTP_DEFAULT = "gpt-transcribe"
DEFAULT_LANGUAGES = ("zh", "en")  # the app's audience: Mandarin, English, and both in one sentence
SHUTDOWN_2027 = dt.date(2027, 2, 26)
PRICES_AS_OF = "2026-12-03"


@dataclass(frozen=True)
class TokenPrices:
    """USD per million tokens, for models whose ``usage`` is reported in tokens."""

    audio_input: float
    text_input: float
    output: float


@dataclass(frozen=True)
class SttModel:
    name: str
    transports: frozenset[Transport]
    prompt: bool = True
    keywords: bool = False
    languages: bool = False  # a list of possible languages (else at most one ``language``)
    delay: bool = False
    streams_while_speaking: bool = False  # text deltas before the commit, so the final text is ready sooner
    logprobs: bool = False  # returns token log-probabilities when asked (``include``)
    shutdown: dt.date | None = None
    per_minute: float | None = None  # USD list price, when billed by audio duration
    tokens: TokenPrices | None = None  # USD list prices, when billed by tokens

    def takes(self, transport: Transport) -> bool:
        return transport in self.transports


_BOTH: frozenset[Transport] = frozenset({"realtime", "http"})
_REALTIME: frozenset[Transport] = frozenset({"realtime"})
_4O = TokenPrices(audio_input=6.0, text_input=2.5, output=10.0)
_4O_MINI = TokenPrices(audio_input=3.0, text_input=1.25, output=5.0)

MODELS: dict[str, SttModel] = {
    m.name: m
    for m in (
        SttModel(
            "gpt-live-transcribe",
            _REALTIME,
            keywords=True,
            languages=True,
            streams_while_speaking=True,
            per_minute=0.017,
        ),
        SttModel("gpt-transcribe", _BOTH, keywords=True, languages=True, per_minute=0.0045),
        SttModel(
            "gpt-realtime-whisper", _REALTIME, prompt=False, delay=True, streams_while_speaking=True, per_minute=0.017
        ),
        SttModel("gpt-4o-transcribe", _BOTH, logprobs=True, shutdown=SHUTDOWN_2027, per_minute=0.006, tokens=_4O),
        SttModel(
            "gpt-4o-mini-transcribe", _BOTH, logprobs=True, shutdown=SHUTDOWN_2027, per_minute=0.003, tokens=_4O_MINI
        ),
        SttModel(
            "gpt-4o-mini-transcribe-2025-12-15",
            _BOTH,
            logprobs=True,
            shutdown=SHUTDOWN_2027,
            per_minute=0.003,
            tokens=_4O_MINI,
        ),
        SttModel("whisper-1", _BOTH, shutdown=SHUTDOWN_2027, per_minute=0.006),
    )
}


def model_info(name: str) -> SttModel | None:
    return MODELS.get(name)


def default_model(transport: Transport) -> str:
    return REALTIME_DEFAULT if transport == "realtime" else HTTP_DEFAULT


def startup_warnings(name: str, transport: Transport, today: dt.date | None = None) -> list[str]:
    """Lines to log once at startup about the configured model: an announced shutdown, or a model not in the table."""
    info = MODELS.get(name)
    if info is None:
        return [
            f"speech recognition: model {name!r} is not in Luna's table; sending only model and language, "
            "priced at LUNA_PRICE_STT_PER_MINUTE"
        ]
    out = []
    if info.shutdown is not None:
        today = today or dt.date.today()
        when = "was shut down" if today >= info.shutdown else "shuts down"
        out.append(
            f"speech recognition: {name} {when} on {info.shutdown.isoformat()} (OpenAI deprecation); "
            f"switch to {default_model(transport)} (LUNA_STT_MODEL)"
        )
    return out
