"""Azure neural text-to-speech through the official Speech SDK, streamed sentence by sentence.

One ``SpeechSynthesizer`` is kept per instance with its WebSocket opened ahead of time, so a sentence only pays
for synthesis. The SDK reports audio on its own threads (``synthesizing`` events); each event is tagged there with
the sentence current at that moment and handed to the loop with ``call_soon_threadsafe``. A sentence starts only
once the previous request is over (an interrupted one is stopped first), so audio or errors of one sentence can
never surface in the next. The SDK's blocking calls (``open``, ``get``, ``close``) wait on the service, so they run
on daemon threads, never on the loop. The SDK does not raise on failures: it ends the request ``Canceled`` with
``CancellationDetails``, mapped to ``ProviderError`` reasons here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import azure.cognitiveservices.speech as speechsdk
import structlog

from luna_voice.conversation.domain import Usage
from luna_voice.providers.base import ProviderError, RateLimited

log = structlog.get_logger(__name__)

_FORMATS = {
    48_000: speechsdk.SpeechSynthesisOutputFormat.Raw48Khz16BitMonoPcm,
    24_000: speechsdk.SpeechSynthesisOutputFormat.Raw24Khz16BitMonoPcm,
    16_000: speechsdk.SpeechSynthesisOutputFormat.Raw16Khz16BitMonoPcm,
}
_Code = speechsdk.CancellationErrorCode
_REASONS = {
    _Code.AuthenticationFailure: "auth refused",
    _Code.Forbidden: "auth refused",
    _Code.ConnectionFailure: "unreachable",
    _Code.ServiceTimeout: "timeout",
    _Code.BadRequest: "bad request",
    _Code.ServiceError: "service error",
    _Code.ServiceUnavailable: "service unavailable",
}


def build_ssml(text: str, voice: str) -> str:
    """SSML for one sentence; the text is escaped so ``<``, ``&`` and quotes are read, not parsed."""
    lang = "-".join(voice.split("-")[:2])  # "zh-CN-XiaoxiaoNeural" -> "zh-CN"
    body = escape(text, {'"': "&quot;", "'": "&apos;"})
    return (
        f'<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang={quoteattr(lang)}>'
        f"<voice name={quoteattr(voice)}>{body}</voice></speak>"
    )


# Azure bills each Chinese character (hanzi, and kanji and hanja, the same ideographs in Japanese and Korean) as two
# characters and every other code point as one (learn.microsoft.com, text-to-speech "billable characters"; kana and
# hangul are not ideographs and count once). CJK Unified Ideographs, extensions A to I, compatibility ideographs.
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff]")


def billable_characters(text: str) -> int:
    """Characters Azure bills for ``text`` spoken through plain SSML (``speak`` and ``voice`` are not billed)."""
    return len(text) + len(_HAN.findall(text))


def mostly_latin(text: str) -> bool:
    """More than half of the letters are Latin script (so an English voice reads it better)."""
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c < "\u0250" for c in letters) * 2 > len(letters)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    """From an SDK thread onto the loop; once the loop is closed nobody is listening."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _off_loop(call: Callable[[], object]) -> asyncio.Future[None]:
    """Run a blocking SDK call on a daemon thread; the future resolves when it returns.

    Not an executor: a call the SDK never lets go of must not hold up interpreter exit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            with contextlib.suppress(RuntimeError):  # the SDK's way of failing; the outcome arrives as an event
                call()
        finally:
            _post(loop, lambda: done.done() or done.set_result(None))

    threading.Thread(target=run, name="azure-tts-sdk", daemon=True).start()
    return done


@dataclass
class _Event:
    kind: str  # "audio" | "completed" | "canceled"
    audio: bytes = b""
    details: speechsdk.CancellationDetails | None = None


@dataclass
class _Call:
    """One sentence: the events the SDK fired while it was current."""

    events: asyncio.Queue[_Event] = field(default_factory=asyncio.Queue)
    ended: bool = False  # the SDK reported the request's end


class AzureTextToSpeech:
    """``TextToSpeech`` on Azure neural voices; PCM int16 LE mono at ``sample_rate``."""

    name = "azure"

    def __init__(
        self,
        *,
        key: str,
        region: str | None = None,
        endpoint: str | None = None,
        voice: str = "zh-CN-XiaoxiaoNeural",
        voice_en: str | None = None,
        sample_rate: int = 48_000,
        timeout_s: float = 10.0,
        dial_timeout_s: float = 1.0,
    ) -> None:
        """``timeout_s`` bounds each wait for audio; ``dial_timeout_s`` how long a sentence (or ``warm``) waits for
        the socket to open before going ahead: the SDK reports no failed dial, but a request fails at once."""
        if sample_rate not in _FORMATS:
            raise ValueError(f"unsupported sample rate {sample_rate}; use one of {sorted(_FORMATS)}")
        if not (endpoint or region):
            raise ValueError("Azure TTS needs a region or an endpoint")
        self.sample_rate = sample_rate
        self.voice = voice
        self.voice_en = voice_en
        self.timeout_s = timeout_s
        self.dial_timeout_s = dial_timeout_s
        self.last_ttfb_s: float | None = None  # time to first audio byte of the latest sentence
        # Why the service cannot be used ("auth refused", "unreachable"), or None while it works (or is untried).
        self.problem: str | None = None
        self._key = key
        self._config = (
            speechsdk.SpeechConfig(subscription=key, endpoint=endpoint)  # endpoint wins over region
            if endpoint
            else speechsdk.SpeechConfig(subscription=key, region=region)
        )
        self._config.set_speech_synthesis_output_format(_FORMATS[sample_rate])
        self._synth: speechsdk.SpeechSynthesizer | None = None
        self._connection: speechsdk.Connection | None = None
        self._connected = asyncio.Event()
        self._dialling = False  # an open() no sentence has waited for yet
        self._call: _Call | None = None  # the sentence SDK events are attributed to
        self._settling: asyncio.Future[None] | None = None  # resolves when a stopped request is really over
        self._lock = asyncio.Lock()  # one sentence at a time; warm() does not overlap one either

    def __repr__(self) -> str:
        return f"AzureTextToSpeech(voice={self.voice!r}, sample_rate={self.sample_rate})"

    async def warm(self) -> None:
        """Create the synthesizer and open its socket, waiting up to ``dial_timeout_s`` for it.

        If it does not open in time, a probe request with no text (nothing billable) finds out why within about a
        second: a refused key or an unreachable service sets ``problem`` (shown in the bot's status), where the SDK
        itself would report nothing at all.
        """
        async with self._lock:
            synth = await self._settle()
            if not self._connected.is_set():
                self._open()
            if not await self._dialled():
                await self._probe(synth)

    async def synthesize(self, text: str) -> AsyncIterator[bytes | Usage]:
        if not text.strip():
            yield Usage()
            return
        async with self._lock:
            synth = await self._settle()
            await self._dialled()
            call = self._call = _Call()
            voice = self.voice_en if self.voice_en and mostly_latin(text) else self.voice
            ssml = build_ssml(text, voice)
            started = time.monotonic()
            self.last_ttfb_s = None
            _off_loop(lambda: synth.speak_ssml_async(ssml).get())  # get() frees the request's native handle
            try:
                # Billed once sent, even if stopped after the first chunk: reported before any audio.
                yield Usage(tts_characters=billable_characters(text))
                async for chunk in self._chunks(call):
                    if self.last_ttfb_s is None:
                        self.last_ttfb_s = time.monotonic() - started
                        log.info(
                            "tts.first_audio", provider=self.name, voice=voice, ttfb_ms=round(self.last_ttfb_s * 1e3)
                        )
                    yield chunk
            finally:
                if not call.ended:  # interrupted, or timed out
                    self._stop(synth)

    async def aclose(self) -> None:
        async with self._lock:
            if self._synth is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drop_synth(), self.timeout_s)

    # --- internals -----------------------------------------------------------------------------------------

    async def _chunks(self, call: _Call) -> AsyncIterator[bytes]:
        """Audio of one request until it ends; every wait is bounded by ``timeout_s``."""
        while True:
            try:
                event = await asyncio.wait_for(call.events.get(), self.timeout_s)
            except TimeoutError:
                log.warning("tts.timeout", provider=self.name, timeout_s=self.timeout_s)
                raise ProviderError(self.name, "timeout") from None
            if event.kind == "audio":
                yield event.audio
                continue
            call.ended = True
            if event.details is not None:
                error = self._error(event.details)
                if error.reason in ("auth refused", "unreachable"):
                    self.problem = error.reason
                raise error
            self.problem = None
            return

    def _stop(self, synth: speechsdk.SpeechSynthesizer) -> None:
        """Cancel the request without waiting for it: the next sentence does, so an interruption is instant.

        The SDK drops the socket on stop, so nothing of the request can arrive after it; once it has settled the
        socket is dialled again, so the sentence after an interruption starts warm too.
        """
        log.info("tts.stop", provider=self.name)
        self._settling = _off_loop(lambda: synth.stop_speaking_async().get())
        self._settling.add_done_callback(lambda _: self._reopen(synth))

    def _reopen(self, synth: speechsdk.SpeechSynthesizer) -> None:
        if synth is self._synth:  # not replaced meanwhile
            self._open()

    async def _settle(self) -> speechsdk.SpeechSynthesizer:
        """The synthesizer, once a stopped request is over; if it will not end, start afresh."""
        if self._settling is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._settling), self.timeout_s)
            except TimeoutError:
                log.warning("tts.stop_stuck", provider=self.name)
                self._drop_synth()  # closes in the background
            self._settling = None
        if self._synth is None:
            self._synth = speechsdk.SpeechSynthesizer(speech_config=self._config, audio_config=None)  # no speaker
            self._connection = speechsdk.Connection.from_speech_synthesizer(self._synth)
            self._wire(self._synth, self._connection)
        return self._synth

    def _open(self) -> None:
        connection = self._connection
        assert connection is not None
        self._connected.clear()
        self._dialling = True
        _off_loop(lambda: connection.open(True))

    async def _dialled(self) -> bool:
        """Let a dial in flight finish: speaking meanwhile makes the SDK abandon it and dial a second socket.

        A failed dial raises no event at all, hence the short bound; the sentence then dials (and reports) itself.
        False if the socket did not open in time.
        """
        if not self._dialling:
            return True
        try:
            await asyncio.wait_for(self._connected.wait(), self.dial_timeout_s)
            return True
        except TimeoutError:
            log.warning("tts.not_connected", provider=self.name, waited_s=self.dial_timeout_s)
            return False
        finally:
            self._dialling = False

    async def _probe(self, synth: speechsdk.SpeechSynthesizer) -> None:
        """Speak nothing, to learn whether the service takes our requests at all (auth, network).

        A probe that gets no answer is asked once more before the service is called timed out: a request made while
        the SDK's first dial is still in flight can be lost with no event (seen once in CI under load), and a healthy
        service must not show a problem for it.
        """
        ssml = build_ssml("", self.voice)
        for attempt in (1, 2):
            if attempt == 2:  # once the lost one is stopped and the socket dialled again (bounded): not mid-dial
                synth = await self._settle()
                if self._dialling:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._connected.wait(), self.timeout_s)
                    self._dialling = False
            call = self._call = _Call()
            _off_loop(lambda s=synth: s.speak_ssml_async(ssml).get())
            try:
                async for _ in self._chunks(call):
                    pass
                self.problem = None
                return
            except ProviderError as exc:
                if exc.reason == "timeout" and attempt == 1:
                    log.info("tts.probe_retry", provider=self.name)
                    continue
                if exc.reason in ("auth refused", "unreachable", "timeout"):
                    self.problem = exc.reason
                log.warning("tts.probe_failed", provider=self.name, reason=exc.reason)
                return
            finally:
                if not call.ended:
                    self._stop(synth)

    def _wire(self, synth: speechsdk.SpeechSynthesizer, connection: speechsdk.Connection) -> None:
        """Hand SDK-thread callbacks to the loop, each tagged (on the SDK thread) with the call current then."""
        loop = asyncio.get_running_loop()

        def on(kind: str) -> Callable[[Any], None]:
            def handler(evt: Any) -> None:
                if (call := self._call) is None:
                    return
                result = evt.result
                details = result.cancellation_details if kind == "canceled" else None
                audio = result.audio_data if kind == "audio" else b""  # copied now: the SDK frees it after the call
                _post(loop, call.events.put_nowait, _Event(kind, audio, details))

            return handler

        synth.synthesizing.connect(on("audio"))
        synth.synthesis_completed.connect(on("completed"))
        synth.synthesis_canceled.connect(on("canceled"))
        connection.connected.connect(lambda _evt: _post(loop, self._connected.set))
        connection.disconnected.connect(lambda _evt: _post(loop, self._connected.clear))

    def _drop_synth(self) -> asyncio.Future[None]:
        """Forget the synthesizer; closing its socket waits for the service, so it happens off the loop."""
        synth, connection = self._synth, self._connection
        assert synth is not None and connection is not None
        for signal in (
            synth.synthesizing,
            synth.synthesis_completed,
            synth.synthesis_canceled,
            connection.connected,
            connection.disconnected,
        ):
            signal.disconnect_all()
        self._synth = self._connection = self._call = self._settling = None
        self._connected.clear()
        self._dialling = False
        # The lambda holds ``synth`` too, so its native release also happens on that thread.
        return _off_loop(lambda: (connection.close(), synth))

    def _error(self, details: speechsdk.CancellationDetails) -> ProviderError:
        text = details.error_details or ""
        if self._key:
            text = text.replace(self._key, "***")
        code = details.error_code
        log.warning("tts.failed", provider=self.name, code=code.name, details=text[:300])
        if code == _Code.TooManyRequests:
            return RateLimited(self.name, "rate limited")
        if code == _Code.AuthenticationFailure or "(401)" in text or "(403)" in text:
            return ProviderError(self.name, "auth refused")
        if "Unsupported voice" in text:  # the service closes with 1007, which the SDK reports as a connection failure
            return ProviderError(self.name, "unsupported voice")
        return ProviderError(self.name, _REASONS.get(code, f"synthesis failed ({code.name})"))
