"""A local stand-in for Azure's text-to-speech WebSocket, speaking the USP protocol the Speech SDK uses.

The real ``azure-cognitiveservices-speech`` client is pointed at it (``endpoint=fake.endpoint`` or
``host=fake.host``), so tests exercise the SDK's own wire handling. Frame shapes follow what SDK 1.53 sends and
what the service answers:

* client text frames: CRLF headers (``Path``, ``X-RequestId``, ...), a blank line, a body — ``speech.config``,
  then per sentence ``synthesis.context`` (JSON with ``outputFormat``) and ``ssml``; later ``telemetry``;
* service text frames: ``turn.start``, ``response``, ``audio.metadata`` (``SessionEnd``), ``turn.end``;
* service binary frames: 2-byte big-endian header length, CRLF headers ending in ``Path:audio``, then audio.

Audio is a deterministic tone, ``ms_per_char`` milliseconds per character of the spoken text, at the rate the
client asked for, so a test can compare exactly what arrived with ``expected_pcm``. Like the service, a voice
that is not in ``voices`` is refused after ``turn.start`` by closing the socket with 1007 ``Unsupported voice``.
Faults are attributes set before (or during) a call; they apply to the next sentence the fake serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

PATHS = ("/tts/cognitiveservices/websocket/v1", "/cognitiveservices/websocket/v1")  # endpoint=..., host=...
FORMAT_RATES = {
    "raw-16khz-16bit-mono-pcm": 16_000,
    "raw-24khz-16bit-mono-pcm": 24_000,
    "raw-48khz-16bit-mono-pcm": 48_000,
}
SSML_NS = "{http://www.w3.org/2001/10/synthesis}"
# A few of the service's prebuilt neural voices (the real list has hundreds; tests add what they need).
KNOWN_VOICES = frozenset(
    {"zh-CN-XiaoxiaoNeural", "zh-CN-YunxiNeural", "en-US-AvaMultilingualNeural", "en-US-JennyNeural"}
)


class Fault(StrEnum):
    NONE = "none"
    CLOSE_MID_STREAM = "close_mid_stream"  # first chunk, then the socket closes with 1011
    STALL = "stall"  # first chunk, then nothing (no more audio, no turn.end)


@dataclass
class UspConnection:
    path: str
    frames: list[str] = field(default_factory=list)  # Path of every client text frame, in order


@dataclass
class UspSynthesis:
    """One ``ssml`` request as the service saw it."""

    request_id: str
    ssml: str
    voice: str | None
    text: str
    output_format: str
    audio_bytes: int = 0  # PCM actually sent
    turn_ended: bool = False


def tone(duration_ms: int, rate: int) -> bytes:
    """A 440 Hz tone at a third of full scale: clearly not silence, identical on every run."""
    t = np.arange(duration_ms * rate // 1000) / rate
    return (np.sin(2 * np.pi * 440 * t) * 10_000).astype("<i2").tobytes()


def parse_text_frame(message: str) -> tuple[dict[str, str], str]:
    head, _, body = message.partition("\r\n\r\n")
    headers = {}
    for line in head.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, body


def spoken_text(ssml: str) -> tuple[str | None, str]:
    """The voice name and the plain text of an SSML document (entities decoded, as the service reads it)."""
    root = ET.fromstring(ssml)
    voice = root.find(f"{SSML_NS}voice")
    if voice is None:
        return None, "".join(root.itertext())
    return voice.get("name"), "".join(voice.itertext())


class FakeAzureTts:
    def __init__(self, *, key: str = "test-key", ms_per_char: int = 40, chunk_ms: int = 50) -> None:
        self.key = key
        self.voices = set(KNOWN_VOICES)
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        # Knobs a test flips: the next sentence served obeys them.
        self.fault = Fault.NONE
        self.reject_status: int | None = None  # answer the handshake with this HTTP status
        self.first_chunk_delay_s = 0.0
        self.gate: asyncio.Event | None = None  # when set to an Event, hold the stream after the first chunk
        self.lose_requests = 0  # this many next requests are read and never answered (lost on the way)
        # What the fake saw.
        self.connections: list[UspConnection] = []
        self.synthesises: list[UspSynthesis] = []
        self._server: Server | None = None
        self._port = 0

    @property
    def endpoint(self) -> str:
        return f"ws://127.0.0.1:{self._port}{PATHS[0]}"

    @property
    def host(self) -> str:
        return f"ws://127.0.0.1:{self._port}"

    def expected_pcm(self, text: str, rate: int) -> bytes:
        return tone(len(text) * self.ms_per_char, rate)

    async def __aenter__(self) -> FakeAzureTts:
        self._server = await serve(
            self._serve,
            "127.0.0.1",
            0,
            process_request=self._check_handshake,
            select_subprotocol=lambda _conn, offered: "USP" if "USP" in offered else None,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, _query = request.path.partition("?")
        if path not in PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not found\n")
        if self.reject_status is not None:
            return connection.respond(self.reject_status, f"{HTTPStatus(self.reject_status).phrase}\n")
        if request.headers.get("Ocp-Apim-Subscription-Key") != self.key:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Access denied due to invalid subscription key.\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        conn = UspConnection(path=ws.request.path.partition("?")[0])
        self.connections.append(conn)
        if ws.subprotocol != "USP":
            await ws.close(1002, "USP subprotocol required")
            return
        # Like the service, sentences on one connection are answered one after another while reading goes on.
        pending: asyncio.Queue[UspSynthesis] = asyncio.Queue()
        writer = asyncio.create_task(self._answer(ws, pending))
        output_format = ""
        try:
            async for message in ws:
                if not isinstance(message, str):
                    continue  # TTS clients send no audio
                headers, body = parse_text_frame(message)
                frame_path = headers.get("path", "")
                conn.frames.append(frame_path)
                if frame_path == "synthesis.context":
                    output_format = json.loads(body)["synthesis"]["audio"]["outputFormat"]
                elif frame_path == "ssml":
                    voice, text = spoken_text(body)
                    synthesis = UspSynthesis(headers["x-requestid"], body, voice, text, output_format)
                    self.synthesises.append(synthesis)
                    if self.lose_requests:
                        self.lose_requests -= 1
                    else:
                        pending.put_nowait(synthesis)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _answer(self, ws: ServerConnection, pending: asyncio.Queue[UspSynthesis]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self._answer_one(ws, await pending.get())

    async def _answer_one(self, ws: ServerConnection, synthesis: UspSynthesis) -> None:
        rid = synthesis.request_id
        rate = FORMAT_RATES.get(synthesis.output_format)
        if rate is None:
            await ws.close(1007, f"Unsupported output format: {synthesis.output_format}")
            return
        tag = uuid.uuid4().hex
        stream_id = uuid.uuid4().hex.upper()
        await ws.send(_text_frame(rid, "turn.start", {"context": {"serviceTag": tag}}))
        if synthesis.voice not in self.voices:
            await ws.close(1007, f"Unsupported voice {synthesis.voice}.")
            return
        audio_info = {"type": "inline", "streamId": stream_id}
        await ws.send(_text_frame(rid, "response", {"context": {"serviceTag": tag}, "audio": audio_info}))
        pcm = self.expected_pcm(synthesis.text, rate)
        step = self.chunk_ms * rate // 1000 * 2
        head = f"X-RequestId:{rid}\r\nContent-Type:audio/x-wav\r\nX-StreamId:{stream_id}\r\nPath:audio\r\n".encode()
        if self.first_chunk_delay_s:
            await asyncio.sleep(self.first_chunk_delay_s)
        for n, start in enumerate(range(0, len(pcm), step)):
            if n == 1:
                if self.fault is Fault.CLOSE_MID_STREAM:
                    await ws.close(1011, "Internal server error")
                    return
                if self.fault is Fault.STALL:
                    await asyncio.Future()  # until the client goes away
                if self.gate is not None:
                    await self.gate.wait()
            chunk = pcm[start : start + step]
            await ws.send(len(head).to_bytes(2, "big") + head + chunk)
            synthesis.audio_bytes += len(chunk)
            await asyncio.sleep(0)  # let the reader run between chunks, as a network would
        session_end = {"Type": "SessionEnd", "Data": {"Offset": len(pcm) // 2 * 10_000_000 // rate}}  # 100-ns ticks
        await ws.send(_text_frame(rid, "audio.metadata", {"Metadata": [session_end]}))
        await ws.send(_text_frame(rid, "turn.end", {}))
        synthesis.turn_ended = True


def _text_frame(request_id: str, path: str, body: dict[str, object]) -> str:
    headers = f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}"
    return f"{headers}\r\n\r\n{json.dumps(body)}" if body else f"{headers}\r\n\r\n"
