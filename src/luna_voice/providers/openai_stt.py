"""OpenAI speech-to-text for mixed Chinese/English speech, through the official client.

Two transports behind one ``SpeechToText``:

* ``realtime`` (default, ``gpt-live-transcribe``): one realtime *transcription* session per utterance over
  WebSocket. Audio is streamed while the person speaks and a streaming model transcribes it as it arrives, so when
  our endpointing says "done" only the commit and the model's last step remain. Server VAD is switched off because
  our own endpointing decides when an utterance ends.
* ``http`` (``gpt-transcribe``): the utterance is uploaded as one WAV to ``/audio/transcriptions`` with
  ``stream=true`` — slower, but it needs nothing but HTTPS, which makes it the fallback when WebSockets are blocked.

Which optional fields a request carries (``languages``, ``keywords``, ``prompt``, ``delay``) follows the model's
row in ``stt_models``; fields of the response beyond the text are read defensively, since older models and SDK
releases lack them. Every wait is bounded so a stalled service fails the turn instead of hanging the bot.

Confidence: models that return token log-probabilities are asked for them, and the transcript's ``confidence`` is
their geometric mean probability, ``exp(mean logprob)`` (what offline Whisper's ``exp(avg_logprob)`` is too).
OpenAI gives no no-speech probability (``speech`` is None), so the words alone decide: the transcript filter drops
the utterance as ``no_speech`` below ``LUNA_STT_MIN_CONFIDENCE`` (default exp(-1) = 0.37, Whisper's own
"avg_logprob < -1" rule). No log-probabilities in the answer (another model, an older server) means no gate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import math
import time
import wave
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import openai
import soxr
import structlog
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import RealtimeTranscriptionSessionCreateRequestParam
from openai.types.websocket_connection_options import WebSocketConnectionOptions
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from luna_voice.conversation.domain import Confidence, Usage
from luna_voice.providers.base import PIPELINE_RATE, ProviderError, RateLimited, Transcript
from luna_voice.providers.stt_models import DEFAULT_LANGUAGES, Delay, SttModel, default_model, model_info

log = structlog.get_logger(__name__)

PROVIDER = "openai"
REALTIME_RATE = 24_000  # the only PCM rate realtime sessions accept
MIN_AUDIO_S = 0.1  # both endpoints reject shorter audio; such a blip is an empty transcript, not an error
REALTIME_LOGPROBS = "item.input_audio_transcription.logprobs"  # the session's ``include`` value
APPEND_BYTES = REALTIME_RATE * 2  # one second per append event (the API allows up to 15 MiB)
RECONNECTS = 1  # a dropped socket is retried once with the utterance resent, then the turn fails

# websockets logs every handshake header at DEBUG, the bearer key included: give it a logger that never does.
_ws_logger = logging.getLogger(f"{__name__}.websocket")
_ws_logger.setLevel(logging.INFO)

Mode = Literal["realtime", "http"]


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (numeric form only), if the service sent one."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            with contextlib.suppress(ValueError):
                return float(value) / scale
    return None


def _status_error(status: int, headers: Mapping[str, str]) -> ProviderError:
    if status in (401, 403):
        return ProviderError(PROVIDER, "auth refused")
    if status == 429:
        return RateLimited(PROVIDER, "rate limited", retry_after=_retry_after_s(headers))
    return ProviderError(PROVIDER, f"http {status}")


def _api_error(exc: openai.APIError) -> ProviderError:
    """Map a client exception to a ``ProviderError``; the service's message is dropped (it can echo the key)."""
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc.status_code, exc.response.headers)
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(PROVIDER, "timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(PROVIDER, "unreachable")
    return ProviderError(PROVIDER, f"api error: {type(exc).__name__}")


def _retrieve(task: asyncio.Task[Transcript]) -> None:
    """Mark a finished task's exception as seen, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _seconds(pcm16_bytes: int, rate: int) -> float:
    return pcm16_bytes / 2 / rate


def _request_fields(
    info: SttModel | None, language: str | None, languages: Sequence[str], prompt: str | None, keywords: Sequence[str]
) -> dict[str, Any]:
    """The optional transcription fields this model takes (see ``stt_models``); the rest are left out."""
    out: dict[str, Any] = {}
    if info is not None and info.languages and languages and not language:
        out["languages"] = list(languages)
    elif language:
        out["language"] = language
    if info is not None and info.prompt and prompt:
        out["prompt"] = prompt
    if info is not None and info.keywords and keywords:
        out["keywords"] = list(dict.fromkeys(k for k in keywords if k))
    return out


def _usage(reported: object, sent_s: float) -> Usage:
    """Usage of one transcription from what the service reported, read defensively; ``sent_s`` if it sent none."""
    kind = getattr(reported, "type", None)
    if kind == "tokens":
        details = getattr(reported, "input_token_details", None)
        audio = getattr(details, "audio_tokens", None)
        text = getattr(details, "text_tokens", None)
        total_in = getattr(reported, "input_tokens", None)
        if not isinstance(audio, int):  # no breakdown: all input was audio
            audio, text = (total_in if isinstance(total_in, int) else 0), 0
        output = getattr(reported, "output_tokens", None)
        return Usage(
            stt_seconds=sent_s,
            stt_token_seconds=sent_s,
            stt_audio_tokens=audio,
            stt_text_tokens=text if isinstance(text, int) else 0,
            stt_output_tokens=output if isinstance(output, int) else 0,
        )
    seconds = getattr(reported, "seconds", None)
    if kind == "duration" and isinstance(seconds, int | float) and seconds >= 0:
        return Usage(stt_seconds=float(seconds))
    return Usage(stt_seconds=sent_s)


def _confidence(logprobs: object) -> Confidence | None:
    """Geometric mean token probability of a ``logprobs`` list, read defensively; None when there is nothing usable."""
    values = [
        lp
        for lp in (getattr(item, "logprob", None) for item in (logprobs if isinstance(logprobs, list) else ()))
        if isinstance(lp, int | float) and math.isfinite(lp)
    ]
    if not values:
        return None
    p = math.exp(min(0.0, sum(values) / len(values)))
    return Confidence(speech=None, words=p)  # OpenAI reports no no-speech probability


def _detected(event: object, fallback: str | None) -> str | None:
    """The first detected language, if the event has any (only newer models report ``languages``)."""
    codes = [getattr(lang, "code", None) for lang in (getattr(event, "languages", None) or ())]
    return next((c for c in codes if isinstance(c, str) and c), fallback)


class OpenAISTT:
    """``SpeechToText`` named ``openai``; one stream per utterance, over ``mode`` (see the module docstring)."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str | None = None,
        mode: Mode = "realtime",
        language: str | None = None,
        languages: Sequence[str] = DEFAULT_LANGUAGES,
        delay: Delay | None = None,
        finish_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        """``model`` defaults to the current model for ``mode``; ``language`` (one code) wins over ``languages``
        (possible languages, for models that take a list). ``delay`` is sent only to models that take it."""
        # No SDK retries: its backoff would outlast a conversational turn; the pipeline fails the turn instead.
        self._client = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=finish_timeout_s)
        self._model = model or default_model(mode)
        self._info = model_info(self._model)
        if self._info is not None and not self._info.takes(mode):
            raise ValueError(f"{self._model} does not work over {mode}; it takes {sorted(self._info.transports)}")
        self._mode = mode
        self._language = language
        self._languages = tuple(languages)
        self._delay = delay if self._info is not None and self._info.delay else None
        self._finish_timeout_s = finish_timeout_s
        self._connect_timeout_s = connect_timeout_s

    def __repr__(self) -> str:
        return f"OpenAISTT(model={self._model!r}, mode={self._mode!r})"

    def open_stream(self, *, prompt: str | None = None, keywords: Sequence[str] = ()) -> RealtimeStream | HttpStream:
        optional = _request_fields(self._info, self._language, self._languages, prompt, keywords)
        logprobs = self._info is not None and self._info.logprobs
        if self._mode == "http":
            if logprobs:
                optional["include"] = ["logprobs"]
            return HttpStream(self._client, self._model, optional, self._language, self._finish_timeout_s)
        transcription: dict[str, Any] = {"model": self._model, **optional}
        if self._delay:
            transcription["delay"] = self._delay
        session: dict[str, Any] = {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": REALTIME_RATE},
                    "transcription": transcription,
                    "turn_detection": None,
                }
            },
        }
        if logprobs:
            session["include"] = [REALTIME_LOGPROBS]
        return RealtimeStream(
            self._client,
            cast(RealtimeTranscriptionSessionCreateRequestParam, session),
            language=self._language,
            finish_timeout_s=self._finish_timeout_s,
            connect_timeout_s=self._connect_timeout_s,
            bills_streamed_audio=self._info is None or self._info.streams_while_speaking,
        )

    async def warm(self) -> None:
        """Nothing to open ahead: each utterance opens its own session when speech starts."""

    async def aclose(self) -> None:
        await self._client.close()


class _Timing:
    """Latency of one utterance, measured from the moment the audio was complete (commit or upload)."""

    def __init__(self) -> None:
        self.sent_at: float | None = None
        self.first_at: float | None = None

    def sent(self) -> None:
        self.sent_at = time.monotonic()

    def delta(self) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()

    def final(self, mode: Mode, transcript: Transcript) -> Transcript:
        """Stamp ``final_after_s`` (a first delta before the commit means the model streamed while listening)."""
        start = self.sent_at or time.monotonic()
        transcript.final_after_s = round(time.monotonic() - start, 3)
        log.info(
            "stt.final",
            provider=PROVIDER,
            mode=mode,
            audio_s=round(transcript.usage.stt_seconds, 3),
            ttfb_s=None if self.first_at is None else round(self.first_at - start, 3),
            final_after_s=transcript.final_after_s,
            chars=len(transcript.text),
        )
        return transcript


class RealtimeStream:
    """One utterance over one realtime transcription session.

    ``push`` only buffers (resampled to 24 kHz) and wakes a background task that owns the socket, so the audio
    path never waits on the network. The whole utterance is kept until the end: if the socket drops, a new
    session gets all of it again and nothing the person said is lost.
    """

    def __init__(
        self,
        client: AsyncOpenAI,
        session: RealtimeTranscriptionSessionCreateRequestParam,
        *,
        language: str | None,
        finish_timeout_s: float,
        connect_timeout_s: float,
        bills_streamed_audio: bool = True,
    ) -> None:
        """``bills_streamed_audio``: the model transcribes (and bills) audio as it arrives, so audio sent to a
        session that dropped or failed was paid for; a committed-turn model only bills what it transcribed."""
        self._client = client
        self._session = session
        self._bills_streamed = bills_streamed_audio
        self._language = language
        self._finish_timeout_s = finish_timeout_s
        # open_timeout/close_timeout/logger are passed through to websockets.connect.
        self._ws_options = cast(
            WebSocketConnectionOptions,
            {"open_timeout": connect_timeout_s, "close_timeout": 1.0, "logger": _ws_logger},
        )
        self._resampler = soxr.ResampleStream(PIPELINE_RATE, REALTIME_RATE, 1, dtype="int16")
        self._audio = bytearray()  # the utterance at 24 kHz
        self._resent_s = 0.0  # audio sent to sessions that dropped: billed too for streaming models, so counted
        self._finishing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[Transcript] | None = None
        self._timing = _Timing()
        self._sent = 0  # bytes of ``_audio`` sent to the current session

    async def push(self, pcm: bytes) -> None:
        if self._finishing:
            raise RuntimeError("push() after finish()")
        self._audio += self._resampler.resample_chunk(np.frombuffer(pcm, dtype="<i2")).tobytes()
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self._wake.set()

    async def finish(self) -> Transcript:
        self._audio += self._resampler.resample_chunk(np.zeros(0, dtype="<i2"), last=True).tobytes()
        self._finishing = True
        self._wake.set()
        if self._task is None or _seconds(len(self._audio), REALTIME_RATE) < MIN_AUDIO_S:
            return Transcript("", language=self._language, usage=await self.cancel())  # a blip heard is billed
        try:
            async with asyncio.timeout(self._finish_timeout_s):
                transcript = await self._task  # a timeout cancels the task, which closes its socket
        except TimeoutError:
            raise ProviderError(PROVIDER, "timeout", usage=self._heard()) from None
        except ProviderError as exc:
            exc.usage = self._heard()
            raise
        return self._timing.final("realtime", transcript)

    def _heard(self) -> Usage | None:
        """What a failed utterance was billed for: all audio a streaming model received (resends included)."""
        if not self._bills_streamed:
            return None
        return Usage(stt_seconds=self._resent_s + _seconds(self._sent, REALTIME_RATE))

    async def cancel(self) -> Usage:
        """A streaming model was billed for all it received; a committed-turn model only once the audio was
        committed (it then transcribes it whether or not we wait for the text)."""
        self._finishing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # its outcome no longer matters; our own cancellation still does
            _retrieve(self._task)
        if (heard := self._heard()) is not None:
            return heard
        committed = self._timing.sent_at is not None
        return Usage(stt_seconds=_seconds(self._sent, REALTIME_RATE)) if committed else Usage()

    async def _run(self) -> Transcript:
        drops = 0
        while True:
            try:
                return await self._session_once()
            except ConnectionClosed:
                drops += 1
                if drops > RECONNECTS:
                    raise ProviderError(PROVIDER, "connection lost") from None
                if self._bills_streamed:
                    self._resent_s += _seconds(self._sent, REALTIME_RATE)
                log.warning(
                    "stt.reconnecting", provider=PROVIDER, resend_s=round(_seconds(len(self._audio), REALTIME_RATE), 3)
                )

    async def _session_once(self) -> Transcript:
        manager = self._client.realtime.connect(
            extra_query={"intent": "transcription"}, websocket_connection_options=self._ws_options
        )
        try:
            conn = await manager.enter()
        except InvalidStatus as exc:
            raise _status_error(exc.response.status_code, exc.response.headers) from None
        except TimeoutError:
            raise ProviderError(PROVIDER, "timeout") from None
        except (OSError, InvalidHandshake):
            raise ProviderError(PROVIDER, "unreachable") from None
        try:
            await conn.session.update(session=self._session)
            reader = asyncio.create_task(self._read(conn))
            reader.add_done_callback(self._reader_done)
            try:
                await self._send_audio(conn, reader)
                return await reader
            finally:
                reader.cancel()
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    def _reader_done(self, reader: asyncio.Task[Transcript]) -> None:
        self._wake.set()  # the sender stops waiting for audio: the session is over one way or another
        _retrieve(reader)  # a drop both sides saw is raised once, by the sender, not reported again

    async def _send_audio(self, conn: AsyncRealtimeConnection, reader: asyncio.Task[Transcript]) -> None:
        """Append everything buffered (from the start: a new session has an empty buffer), then commit."""
        self._sent = 0
        while not reader.done():
            if self._sent < len(self._audio):
                chunk = bytes(self._audio[self._sent : self._sent + APPEND_BYTES])
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode("ascii"))
                self._sent += len(chunk)
            elif self._finishing:
                await conn.input_audio_buffer.commit()
                self._timing.sent()
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _read(self, conn: AsyncRealtimeConnection) -> Transcript:
        while True:
            event = await conn.recv()
            if event.type == "conversation.item.input_audio_transcription.delta":
                self._timing.delta()
            elif event.type == "conversation.item.input_audio_transcription.completed":
                usage = _usage(getattr(event, "usage", None), _seconds(len(self._audio), REALTIME_RATE))
                usage.stt_seconds += self._resent_s
                return Transcript(
                    getattr(event, "transcript", None) or "",
                    language=_detected(event, self._language),
                    usage=usage,
                    confidence=_confidence(getattr(event, "logprobs", None)),
                )
            elif event.type == "conversation.item.input_audio_transcription.failed":
                error = getattr(event, "error", None)
                raise ProviderError(
                    PROVIDER, f"transcription failed: {getattr(error, 'code', None) or getattr(error, 'type', None)}"
                )
            elif event.type == "error":
                error = getattr(event, "error", None)
                raise self._event_error(getattr(error, "code", None), str(getattr(error, "type", "unknown")))

    @staticmethod
    def _event_error(code: str | None, kind: str) -> ProviderError:
        # Only code and type: the message can quote the (masked) key.
        log.warning("stt.server_error", provider=PROVIDER, code=code, type=kind)
        if code == "invalid_api_key":
            return ProviderError(PROVIDER, "auth refused")
        if code and "rate_limit" in code:
            return RateLimited(PROVIDER, "rate limited")
        return ProviderError(PROVIDER, f"server error: {code or kind}")


class HttpStream:
    """One utterance buffered and uploaded as a WAV when it ends; the SSE reply is read as it streams."""

    def __init__(
        self,
        client: AsyncOpenAI,
        model: str,
        optional: dict[str, Any],
        language: str | None,
        finish_timeout_s: float,
    ) -> None:
        self._client = client
        self._model = model
        self._optional = optional  # language(s), prompt, keywords, include: only what the model takes
        self._language = language
        self._finish_timeout_s = finish_timeout_s
        self._pcm = bytearray()
        self._uploaded_s = 0.0  # audio of a request already sent: billed even if the answer is never read
        self._timing = _Timing()

    async def push(self, pcm: bytes) -> None:
        self._pcm += pcm

    async def finish(self) -> Transcript:
        seconds = _seconds(len(self._pcm), PIPELINE_RATE)
        if seconds < MIN_AUDIO_S:
            return Transcript("", language=self._language)
        try:
            async with asyncio.timeout(self._finish_timeout_s):
                transcript = await self._transcribe(seconds)
        except TimeoutError:
            raise ProviderError(PROVIDER, "timeout") from None
        except openai.APIError as exc:
            raise _api_error(exc) from None
        return self._timing.final("http", transcript)

    async def cancel(self) -> Usage:
        """A request already sent is billed, answered or not; audio never uploaded costs nothing."""
        self._pcm.clear()
        return Usage(stt_seconds=self._uploaded_s)

    async def _transcribe(self, seconds: float) -> Transcript:
        self._timing.sent()
        self._uploaded_s = seconds
        stream = await self._client.audio.transcriptions.create(
            model=self._model, file=("utterance.wav", self._wav(), "audio/wav"), stream=True, **self._optional
        )
        async with stream:
            async for event in stream:
                if event.type == "transcript.text.delta":
                    self._timing.delta()
                elif event.type == "transcript.text.done":
                    return Transcript(
                        getattr(event, "text", None) or "",
                        language=_detected(event, self._language),
                        usage=_usage(getattr(event, "usage", None), seconds),
                        confidence=_confidence(getattr(event, "logprobs", None)),
                    )
        raise ProviderError(PROVIDER, "stream ended without a transcript")

    def _wav(self) -> bytes:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(PIPELINE_RATE)
            w.writeframes(bytes(self._pcm))
        return buf.getvalue()
