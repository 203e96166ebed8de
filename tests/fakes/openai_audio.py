"""A local stand-in for OpenAI's speech-to-text API, for the real ``openai`` client pointed at ``fake.base_url``.

Two endpoints, shaped as openai 3.x parses them (``openai/types/audio`` and ``openai/types/realtime``):

* ``POST /v1/audio/transcriptions`` — multipart fields ``model``, ``file`` (a WAV), optional ``stream``,
  ``language``, ``prompt``. Answers JSON ``{"text": ...}``, or with ``stream=true`` an SSE body of
  ``data: {"type":"transcript.text.delta",...}`` events ending in ``transcript.text.done``.
* ``GET /v1/realtime?intent=transcription`` — a WebSocket speaking the GA realtime transcription protocol:
  ``session.created`` on connect; ``session.update`` (``session.type == "transcription"``) → ``session.updated``
  with the effective config; ``input_audio_buffer.append`` (base64 PCM16 at the session's 24 kHz);
  ``input_audio_buffer.commit`` → ``input_audio_buffer.committed``, ``conversation.item.added``, a few
  ``conversation.item.input_audio_transcription.delta`` and one ``...completed``; problems → ``error``.

Like the real service, a commit or upload of under 100 ms of audio is rejected, a realtime session defaults to
server VAD until the client turns it off, and a PCM rate other than 24 kHz is refused. Models follow the fake's own
table (``FAKE_MODELS``, written from the SDK docstrings and OpenAI's model pages, deliberately not Luna's table): an
unknown model, a model on a transport it does not serve, or a field the model does not take is refused; a
``transcription`` session.update is refused on a connection opened without ``intent=transcription``; a commit in a
session with no transcription configured is committed but never transcribed. Streaming models
(``gpt-live-transcribe``, ``gpt-realtime-whisper``) send deltas while audio is still being appended; the others only
after the commit. Usage is in tokens for the ``gpt-4o-*`` models and in seconds for the others.

Token log-probabilities come back only when asked (HTTP ``include[]=logprobs``; realtime session
``include: ["item.input_audio_transcription.logprobs"]``) and only from models documented to return them (the
``gpt-4o-*transcribe`` family, per the SDK's ``include`` docstring); asking any other model is refused as an
unsupported parameter. Every token of a transcript gets ``logprob`` (a test sets it: low on noise, near 0 on speech).

What text comes back is decided by ``script`` (a callable from the recorded request to text). Every
transcription the fake performed is in ``requests`` (model, language, prompt, rate, the PCM itself). Faults are
queued with ``fail_next`` and each one is consumed by the next HTTP request or WebSocket connection.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

REALTIME_RATE = 24_000
MIN_AUDIO_S = 0.1
DELTA_CHARS = 4  # characters per streamed delta, so every transcript arrives in several pieces


@dataclass
class TranscriptionRequest:
    """One transcription the fake performed (an HTTP upload or a realtime commit)."""

    transport: Literal["http", "realtime"]
    model: str | None
    language: str | None
    prompt: str | None
    sample_rate: int
    audio: bytes  # int16 LE mono
    stream: bool = False  # http: the client asked for SSE
    languages: list[str] | None = None
    keywords: list[str] | None = None
    delay: str | None = None
    include: list[str] | None = None  # what the client asked to be included (logprobs)
    session: dict[str, Any] = field(default_factory=dict)  # realtime: the effective session config at commit

    @property
    def duration_s(self) -> float:
        return len(self.audio) / 2 / self.sample_rate


@dataclass
class Connection:
    """One HTTP request or WebSocket handshake: what a test may check about how the client called."""

    path: str
    query: dict[str, str]
    authorization: str | None


@dataclass
class Fault:
    """What goes wrong with the next request or connection (exactly one field set)."""

    status: int | None = None  # answer with this HTTP status (a WebSocket upgrade is refused with it)
    retry_after: str | None = None  # Retry-After header sent with ``status``
    hang: bool = False  # accept, then never answer (http: no response; realtime: no transcript after commit)
    drop_after_appends: int | None = None  # realtime: cut the TCP connection after this many appends
    error_code: str | None = None  # realtime: answer the commit with an ``error`` event of this code


Script = Callable[[TranscriptionRequest], str]


@dataclass(frozen=True)
class FakeModel:
    transports: frozenset[str]
    fields: frozenset[str]  # optional transcription fields the model takes
    streams: bool = False  # deltas while audio arrives
    tokens: bool = False  # usage reported in tokens (else in seconds)
    logprobs: bool = False  # answers ``include`` with token log-probabilities


_BOTH = frozenset({"http", "realtime"})
_RT = frozenset({"realtime"})
_NEW = frozenset({"language", "languages", "keywords", "prompt"})
_OLD = frozenset({"language", "prompt"})
FAKE_MODELS = {
    "gpt-live-transcribe": FakeModel(_RT, _NEW, streams=True),
    "gpt-transcribe": FakeModel(_BOTH, _NEW),
    "gpt-realtime-whisper": FakeModel(_RT, frozenset({"language", "delay"}), streams=True),
    "gpt-4o-transcribe": FakeModel(_BOTH, _OLD, tokens=True, logprobs=True),
    "gpt-4o-mini-transcribe": FakeModel(_BOTH, _OLD, tokens=True, logprobs=True),
    "gpt-4o-mini-transcribe-2025-12-15": FakeModel(_BOTH, _OLD, tokens=True, logprobs=True),
    "whisper-1": FakeModel(_BOTH, _OLD),
}
STREAM_STEP_S = 0.3  # a streaming model sends a delta about every this much appended audio


HTTP_LOGPROBS = "logprobs"
REALTIME_LOGPROBS = "item.input_audio_transcription.logprobs"


def model_problem(
    model: str | None, transport: str, fields: set[str], include: list[str] | None = None
) -> tuple[str, str] | None:
    """(code, message) the real API would refuse this model/transport/field/include combination with, or None."""
    spec = FAKE_MODELS.get(model or "")
    if spec is None:
        return "model_not_found", f"The model '{model}' does not exist or you do not have access to it."
    if transport not in spec.transports:
        return "unsupported_model", f"The model '{model}' is not supported on this endpoint."
    if extra := sorted(fields - spec.fields):
        return "unsupported_parameter", f"Unsupported parameter(s) for '{model}': {', '.join(extra)}."
    known = HTTP_LOGPROBS if transport == "http" else REALTIME_LOGPROBS
    if bad := [i for i in include or () if i != known]:
        return "invalid_value", f"Invalid value for 'include': {bad[0]!r}."
    if include and not spec.logprobs:
        return "unsupported_parameter", f"'include' ({known}) is not supported with the model '{model}'."
    return None


_ERROR_TYPES = {401: "invalid_request_error", 429: "requests", 500: "server_error"}


def _event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


def _pieces(text: str) -> list[str]:
    return [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)] or [""]


def _token_usage(req: TranscriptionRequest, text: str) -> dict[str, Any]:
    spec = FAKE_MODELS.get(req.model or "")
    if spec is not None and not spec.tokens:
        return {"type": "duration", "seconds": round(req.duration_s, 3)}
    audio_tokens = max(1, round(req.duration_s * 10))
    return {
        "type": "tokens",
        "input_tokens": audio_tokens,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
        "output_tokens": len(text),
        "total_tokens": audio_tokens + len(text),
    }


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Apply a partial ``session.update``: present keys replace (``null`` included), nested objects merge."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class FakeOpenAIAudio:
    def __init__(self, *, script: Script | None = None, api_key: str = "sk-test-key") -> None:
        self.early_deltas: list[str] = []  # deltas a streaming model sent before the commit
        self.refused_updates: list[dict[str, Any]] = []  # session.update payloads answered with an error
        self.detected: list[str] | None = None  # languages to report as detected (newer models do)
        self.bare_events = False  # final events without the optional ``usage`` and ``languages``
        self.logprob = -0.05  # log-probability of every token, when logprobs were asked for and are supported
        self.script: Script = script or (lambda _req: "")
        self.api_key = api_key
        self.requests: list[TranscriptionRequest] = []
        self.connections: list[Connection] = []
        self.sessions: list[dict[str, Any]] = []  # every session.update payload received, in order
        self.faults: deque[Fault] = deque()
        self.appended = 0  # bytes of realtime audio received, over every session (what a streaming model bills)
        self.hung = 0  # requests held by a ``hang`` fault with their whole upload read (billed, never answered)
        self.received = asyncio.Event()  # set on each append, realtime commit and hung upload: tests wait on it
        self._release = asyncio.Event()  # wakes hung handlers at shutdown
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def fail_next(self, fault: Fault) -> None:
        self.faults.append(fault)

    async def until(self, enough: Callable[[], bool]) -> None:
        """Wait until what the fake received satisfies ``enough`` (re-checked on each append, commit, held upload)."""
        async with asyncio.timeout(5):
            while not enough():
                self.received.clear()
                await self.received.wait()

    async def __aenter__(self) -> FakeOpenAIAudio:
        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_get("/v1/realtime", self._realtime)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ shared
    def _begin(self, request: web.Request) -> Fault | None:
        self.connections.append(Connection(request.path, dict(request.query), request.headers.get("Authorization")))
        return self.faults.popleft() if self.faults else None

    def _refusal(self, request: web.Request, fault: Fault | None) -> web.Response | None:
        """The HTTP error the real API would give before doing any work, if any."""
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            fault = Fault(status=401)
        if fault is None or fault.status is None:
            return None
        status = fault.status
        sent_key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        messages = {
            # The real service echoes a masked key; the client must not pass even that on.
            401: f"Incorrect API key provided: {sent_key[:4]}***{sent_key[-4:]}.",
            429: "Rate limit reached for requests.",
        }
        body = {
            "error": {
                "message": messages.get(status, "The server had an error while processing your request."),
                "type": _ERROR_TYPES.get(status, "server_error"),
                "param": None,
                "code": "invalid_api_key" if status == 401 else None,
            }
        }
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        return web.json_response(body, status=status, headers=headers)

    @staticmethod
    def _invalid(message: str, code: str) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        return web.json_response(body, status=400)

    def logprobs(self, req: TranscriptionRequest, text: str) -> list[dict[str, Any]] | None:
        """Token log-probabilities for ``text`` (one token per streamed piece), only if the request asked for them."""
        if not req.include:
            return None
        return [
            {"token": piece, "bytes": list(piece.encode()), "logprob": self.logprob} for piece in _pieces(text) if piece
        ]

    def _final(self, event: dict[str, Any], req: TranscriptionRequest, text: str) -> dict[str, Any]:
        """The final event with its optional fields, as the configured behaviour says."""
        if (logprobs := self.logprobs(req, text)) is not None:
            event["logprobs"] = logprobs
        if self.bare_events:
            return event
        event["usage"] = _token_usage(req, text)
        if self.detected is not None:
            event["languages"] = [{"code": code} for code in self.detected]
        return event

    # ------------------------------------------------------------------ HTTP
    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        fault = self._begin(request)
        if (refusal := self._refusal(request, fault)) is not None:
            return refusal
        fields: dict[str, str] = {}
        wav_bytes = b""
        async for part in await request.multipart():
            if part.name == "file":
                wav_bytes = await part.read()  # type: ignore[union-attr]
            elif part.name:
                # The client sends a list field as repeated ``name[]`` parts.
                value = await part.text()  # type: ignore[union-attr]
                name = part.name.removesuffix("[]")
                fields[name] = f"{fields[name]},{value}" if name in fields else value
        if fault is not None and fault.hang:
            self.hung += 1
            self.received.set()
            await self._release.wait()
            raise web.HTTPServiceUnavailable()
        optional = {k for k in fields if k in {"language", "languages", "keywords", "prompt", "delay"}}
        include = fields["include"].split(",") if "include" in fields else None
        if problem := model_problem(fields.get("model"), "http", optional, include):
            return self._invalid(problem[1], problem[0])
        with wave.open(io.BytesIO(wav_bytes)) as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                return self._invalid("Expected 16-bit mono audio in this fake.", "invalid_value")
            req = TranscriptionRequest(
                transport="http",
                model=fields.get("model"),
                language=fields.get("language"),
                prompt=fields.get("prompt"),
                sample_rate=w.getframerate(),
                audio=w.readframes(w.getnframes()),
                stream=fields.get("stream") == "true",
                languages=fields["languages"].split(",") if "languages" in fields else None,
                keywords=fields["keywords"].split(",") if "keywords" in fields else None,
                include=include,
            )
        if req.duration_s < MIN_AUDIO_S:
            return self._invalid("Audio file is too short. Minimum audio length is 0.1 seconds.", "audio_too_short")
        self.requests.append(req)
        text = self.script(req)
        if not req.stream:
            return web.json_response(self._final({"text": text}, req, text))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events: list[dict[str, Any]] = [
            {"type": "transcript.text.delta", "delta": piece, "logprobs": self.logprobs(req, piece)}
            for piece in _pieces(text)
        ]
        events.append(self._final({"type": "transcript.text.done", "text": text}, req, text))
        for event in events:
            await resp.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ realtime
    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        fault = self._begin(request)
        if (refusal := self._refusal(request, fault)) is not None:
            return refusal
        if request.query.get("intent") != "transcription" and "model" not in request.query:
            return self._invalid("Missing required parameter: 'model'.", "missing_required_parameter")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            intent = request.query.get("intent") == "transcription"
            await _RealtimeSession(self, request, ws, fault, intent).run()
        finally:
            self._sockets.discard(ws)
        return ws


class _RealtimeSession:
    """One realtime transcription connection: its effective config and input buffer."""

    def __init__(
        self,
        fake: FakeOpenAIAudio,
        request: web.Request,
        ws: web.WebSocketResponse,
        fault: Fault | None,
        transcription_intent: bool,
    ):
        self.fake, self.request, self.ws, self.fault = fake, request, ws, fault
        self.transcription_intent = transcription_intent
        self.buffer = bytearray()
        self.streamed = ""  # text a streaming model already sent for the current buffer
        self.streamed_bytes = 0
        self.appends = 0
        self.previous_item: str | None = None
        self.session: dict[str, Any] = {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": f"sess_{uuid.uuid4().hex[:16]}",
            "expires_at": 0,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": REALTIME_RATE},
                    "noise_reduction": None,
                    "transcription": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                    },
                }
            },
            "include": None,
        }

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps({"event_id": _event_id(), **event}, ensure_ascii=False))

    async def error(self, code: str, message: str, client_event: dict[str, Any] | None = None) -> None:
        await self.send(
            {
                "type": "error",
                "error": {
                    "type": "server_error" if code == "server_error" else "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": (client_event or {}).get("event_id"),
                },
            }
        )

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.session})
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            kind = event.get("type")
            if kind == "session.update":
                await self.update(event)
            elif kind == "input_audio_buffer.append":
                audio = base64.b64decode(event["audio"])
                self.buffer += audio
                self.appends += 1
                self.fake.appended += len(audio)
                self.fake.received.set()
                if self.fault is not None and self.fault.drop_after_appends == self.appends:
                    # A network drop: no close frame, the TCP connection just ends.
                    self.request.transport.close()  # type: ignore[union-attr]
                    return
                await self.stream_partial()
            elif kind == "input_audio_buffer.clear":
                self.buffer.clear()
                await self.send({"type": "input_audio_buffer.cleared"})
            elif kind == "input_audio_buffer.commit":
                await self.commit(event)
            else:
                await self.error("unknown_event", f"Unknown event type '{kind}'.", event)

    def transcription(self) -> dict[str, Any]:
        return self.session["audio"]["input"].get("transcription") or {}

    def request_for(self, audio: bytes) -> TranscriptionRequest:
        transcription = self.transcription()
        return TranscriptionRequest(
            transport="realtime",
            model=transcription.get("model"),
            language=transcription.get("language"),
            prompt=transcription.get("prompt"),
            sample_rate=REALTIME_RATE,
            audio=audio,
            session=self.session,
            languages=transcription.get("languages"),
            keywords=transcription.get("keywords"),
            delay=transcription.get("delay"),
            include=self.session.get("include"),
        )

    async def stream_partial(self) -> None:
        """A streaming model transcribes while audio arrives: a delta for each ``STREAM_STEP_S`` of new audio."""
        spec = FAKE_MODELS.get(self.transcription().get("model") or "")
        if spec is None or not spec.streams or (self.fault is not None and self.fault.hang):
            return
        if len(self.buffer) - self.streamed_bytes < STREAM_STEP_S * REALTIME_RATE * 2:
            return
        self.streamed_bytes = len(self.buffer)
        text = self.fake.script(self.request_for(bytes(self.buffer)))
        if text.startswith(self.streamed) and len(text) > len(self.streamed):
            piece, self.streamed = text[len(self.streamed) :], text
            self.fake.early_deltas.append(piece)
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.delta",
                    "item_id": "item_streaming",
                    "content_index": 0,
                    "delta": piece,
                }
            )

    async def update(self, event: dict[str, Any]) -> None:
        new = event.get("session") or {}
        if new.get("type") != "transcription" or not self.transcription_intent:
            self.fake.refused_updates.append(new)
            await self.error(
                "invalid_value",
                "A transcription session needs a connection opened with intent=transcription "
                "and session.type 'transcription'.",
                event,
            )
            return
        transcription = new.get("audio", {}).get("input", {}).get("transcription")
        effective = _merge(self.session, new)
        if transcription or effective.get("include"):
            # ``include`` is session-wide, so it is checked against the model the session will transcribe with.
            model = (effective["audio"]["input"].get("transcription") or {}).get("model")
            optional = set(transcription or {}) - {"model"}
            if problem := model_problem(model, "realtime", optional, effective.get("include")):
                self.fake.refused_updates.append(new)
                await self.error(problem[0], problem[1], event)
                return
        fmt = new.get("audio", {}).get("input", {}).get("format") or {}
        if fmt.get("type", "audio/pcm") == "audio/pcm" and fmt.get("rate", REALTIME_RATE) != REALTIME_RATE:
            await self.error("invalid_value", "Only a 24kHz sample rate is supported for audio/pcm.", event)
            return
        self.fake.sessions.append(new)
        self.session = effective
        await self.send({"type": "session.updated", "session": self.session})

    async def commit(self, event: dict[str, Any]) -> None:
        if len(self.buffer) / 2 / REALTIME_RATE < MIN_AUDIO_S:
            await self.error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio.",
                event,
            )
            return
        item_id = f"item_{uuid.uuid4().hex[:20]}"
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": self.previous_item}
        )
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.send({"type": "conversation.item.added", "item": item, "previous_item_id": self.previous_item})
        self.previous_item = item_id
        if not self.transcription():  # nothing configured: the audio is committed, never transcribed
            self.buffer.clear()
            return
        req = self.request_for(bytes(self.buffer))
        already, self.streamed, self.streamed_bytes = self.streamed, "", 0
        self.buffer.clear()
        self.fake.requests.append(req)
        self.fake.received.set()
        if self.fault is not None and self.fault.hang:
            return
        if self.fault is not None and self.fault.error_code:
            await self.error(self.fault.error_code, "The server had an error while processing your request.", event)
            return
        text = self.fake.script(req)
        base = {"item_id": item_id, "content_index": 0}
        rest = text[len(already) :] if text.startswith(already) else text
        for piece in _pieces(rest) if rest else ():
            delta = {"type": "conversation.item.input_audio_transcription.delta", **base, "delta": piece}
            if (logprobs := self.fake.logprobs(req, piece)) is not None:
                delta["logprobs"] = logprobs
            await self.send(delta)
        completed = {"type": "conversation.item.input_audio_transcription.completed", **base, "transcript": text}
        await self.send(self.fake._final(completed, req, text))
