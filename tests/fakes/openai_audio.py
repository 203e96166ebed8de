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
server VAD until the client turns it off, and a PCM rate other than 24 kHz is refused.

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

_ERROR_TYPES = {401: "invalid_request_error", 429: "requests", 500: "server_error"}


def _event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


def _pieces(text: str) -> list[str]:
    return [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)] or [""]


def _token_usage(req: TranscriptionRequest, text: str) -> dict[str, Any]:
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
        self.script: Script = script or (lambda _req: "")
        self.api_key = api_key
        self.requests: list[TranscriptionRequest] = []
        self.connections: list[Connection] = []
        self.sessions: list[dict[str, Any]] = []  # every session.update payload received, in order
        self.faults: deque[Fault] = deque()
        self._release = asyncio.Event()  # wakes hung handlers at shutdown
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def fail_next(self, fault: Fault) -> None:
        self.faults.append(fault)

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
                fields[part.name] = await part.text()  # type: ignore[union-attr]
        if fault is not None and fault.hang:
            await self._release.wait()
            raise web.HTTPServiceUnavailable()
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
            )
        if req.duration_s < MIN_AUDIO_S:
            return self._invalid("Audio file is too short. Minimum audio length is 0.1 seconds.", "audio_too_short")
        self.requests.append(req)
        text = self.script(req)
        if not req.stream:
            return web.json_response({"text": text, "usage": _token_usage(req, text)})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events: list[dict[str, Any]] = [
            {"type": "transcript.text.delta", "delta": piece, "logprobs": None} for piece in _pieces(text)
        ]
        events.append({"type": "transcript.text.done", "text": text, "usage": _token_usage(req, text)})
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
            await _RealtimeSession(self, request, ws, fault).run()
        finally:
            self._sockets.discard(ws)
        return ws


class _RealtimeSession:
    """One realtime transcription connection: its effective config and input buffer."""

    def __init__(self, fake: FakeOpenAIAudio, request: web.Request, ws: web.WebSocketResponse, fault: Fault | None):
        self.fake, self.request, self.ws, self.fault = fake, request, ws, fault
        self.buffer = bytearray()
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
                self.buffer += base64.b64decode(event["audio"])
                self.appends += 1
                if self.fault is not None and self.fault.drop_after_appends == self.appends:
                    # A network drop: no close frame, the TCP connection just ends.
                    self.request.transport.close()  # type: ignore[union-attr]
                    return
            elif kind == "input_audio_buffer.clear":
                self.buffer.clear()
                await self.send({"type": "input_audio_buffer.cleared"})
            elif kind == "input_audio_buffer.commit":
                await self.commit(event)
            else:
                await self.error("unknown_event", f"Unknown event type '{kind}'.", event)

    async def update(self, event: dict[str, Any]) -> None:
        new = event.get("session") or {}
        if new.get("type") != "transcription":
            await self.error("invalid_value", "This is a transcription session: session.type must be 'transcription'.")
            return
        fmt = new.get("audio", {}).get("input", {}).get("format") or {}
        if fmt.get("type", "audio/pcm") == "audio/pcm" and fmt.get("rate", REALTIME_RATE) != REALTIME_RATE:
            await self.error("invalid_value", "Only a 24kHz sample rate is supported for audio/pcm.", event)
            return
        self.fake.sessions.append(new)
        self.session = _merge(self.session, new)
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
        transcription = self.session["audio"]["input"].get("transcription") or {}
        req = TranscriptionRequest(
            transport="realtime",
            model=transcription.get("model"),
            language=transcription.get("language"),
            prompt=transcription.get("prompt"),
            sample_rate=REALTIME_RATE,
            audio=bytes(self.buffer),
            session=self.session,
        )
        self.buffer.clear()
        self.fake.requests.append(req)
        if self.fault is not None and self.fault.hang:
            return
        if self.fault is not None and self.fault.error_code:
            await self.error(self.fault.error_code, "The server had an error while processing your request.", event)
            return
        text = self.fake.script(req)
        base = {"item_id": item_id, "content_index": 0}
        for piece in _pieces(text):
            await self.send({"type": "conversation.item.input_audio_transcription.delta", **base, "delta": piece})
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                **base,
                "transcript": text,
                "usage": _token_usage(req, text),
            }
        )
