"""The bridge protocol between Luna's page and Python, sans I/O (parse and build messages; no sockets).

One WebSocket per bot, opened by the page at ``/bridge/{bot_id}``. The page's first message must be a text
``hello`` carrying the bot's token; anything else closes the socket with ``4401``.

Binary audio frames, both directions: a 16-byte little-endian header, then int16 LE mono PCM::

    offset size  field
    0      1     version (1)
    1      1     kind: 1 = capture (page → Python, one remote participant), 2 = playback (Python → page)
    2      2     participant index (capture: the index announced in ``participant_joined``; playback: 0)
    4      4     sequence number (per participant, wraps at 2**32)
    8      8     timestamp, float64 ms since the Unix epoch (page: ``performance.timeOrigin + performance.now()``)

Capture frames are 16 kHz, 20 ms (320 samples); playback frames are 48 kHz, any length (Python sends 20 ms).
20 ms matches Opus and webrtcvad; per-frame overhead stays small with several speakers.

JSON text messages, page → Python: ``hello {token, backend, audio_context, capture_rate, playback_rate}``,
``room_state {state, sub_code?, reason?}``, ``participant_joined {index, id, name}``,
``participant_left {index, id}``, ``played {seq, idle}`` (the highest playback seq fully rendered; ``idle`` when
the buffer ran empty), ``cleared {dropped_ms}``, ``log {level, message}``.
Python → page: ``clear`` (drop all queued playback now), ``leave`` (leave the room, then close).

Close codes: 4400 malformed message, 4401 bad or missing token, 4404 unknown bot, 4409 a page is already
attached, 1000 normal.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Literal

VERSION = 1
KIND_CAPTURE = 1
KIND_PLAYBACK = 2
HEADER = struct.Struct("<BBHId")
CAPTURE_RATE = 16_000
PLAYBACK_RATE = 48_000
MAX_FRAME_BYTES = 64 * 1024

CLOSE_MALFORMED = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_UNKNOWN_BOT = 4404
CLOSE_CONFLICT = 4409


class ProtocolError(Exception):
    """A message broke the protocol; the socket is closed with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class AudioFrame:
    kind: int
    participant: int
    seq: int
    timestamp_ms: float
    pcm: bytes


@dataclass(frozen=True)
class Hello:
    token: str
    backend: str
    audio_context: str


@dataclass(frozen=True)
class RoomState:
    state: Literal["joining", "joined", "reconnecting", "left", "failed"]
    sub_code: str | None
    reason: str | None


@dataclass(frozen=True)
class ParticipantJoined:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ParticipantLeft:
    index: int
    id: str


@dataclass(frozen=True)
class Played:
    seq: int
    idle: bool


@dataclass(frozen=True)
class Cleared:
    dropped_ms: float


@dataclass(frozen=True)
class PageLog:
    level: str
    message: str


Message = AudioFrame | Hello | RoomState | ParticipantJoined | ParticipantLeft | Played | Cleared | PageLog

_ROOM_STATES = {"joining", "joined", "reconnecting", "left", "failed"}


def encode_audio(kind: int, participant: int, seq: int, timestamp_ms: float, pcm: bytes) -> bytes:
    return HEADER.pack(VERSION, kind, participant, seq & 0xFFFFFFFF, timestamp_ms) + pcm


def decode_audio(data: bytes) -> AudioFrame:
    if len(data) < HEADER.size:
        raise ProtocolError(CLOSE_MALFORMED, f"audio frame shorter than its {HEADER.size}-byte header")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(CLOSE_MALFORMED, f"audio frame larger than {MAX_FRAME_BYTES} bytes")
    version, kind, participant, seq, ts = HEADER.unpack_from(data)
    if version != VERSION:
        raise ProtocolError(CLOSE_MALFORMED, f"unsupported frame version {version}")
    if kind not in (KIND_CAPTURE, KIND_PLAYBACK):
        raise ProtocolError(CLOSE_MALFORMED, f"unknown frame kind {kind}")
    pcm = data[HEADER.size :]
    if len(pcm) % 2:
        raise ProtocolError(CLOSE_MALFORMED, "PCM payload is not a whole number of int16 samples")
    return AudioFrame(kind, participant, seq, ts, pcm)


def _field(obj: dict[str, Any], name: str, typ: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise ProtocolError(CLOSE_MALFORMED, f"'{obj.get('type')}' needs field '{name}'")
    return value


def decode_text(text: str) -> Message:
    """Parse one page → Python JSON message."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise ProtocolError(CLOSE_MALFORMED, "text message is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(CLOSE_MALFORMED, "JSON message needs a string 'type'")
    kind = obj["type"]
    if kind == "hello":
        return Hello(_field(obj, "token", str), str(obj.get("backend", "")), str(obj.get("audio_context", "")))
    if kind == "room_state":
        state = _field(obj, "state", str)
        if state not in _ROOM_STATES:
            raise ProtocolError(CLOSE_MALFORMED, f"unknown room state '{state}'")
        return RoomState(state, obj.get("sub_code"), obj.get("reason"))
    if kind == "participant_joined":
        return ParticipantJoined(_field(obj, "index", int), _field(obj, "id", str), str(obj.get("name") or ""))
    if kind == "participant_left":
        return ParticipantLeft(_field(obj, "index", int), str(obj.get("id", "")))
    if kind == "played":
        return Played(_field(obj, "seq", int), bool(obj.get("idle", False)))
    if kind == "cleared":
        return Cleared(float(_field(obj, "dropped_ms", (int, float))))
    if kind == "log":
        return PageLog(str(obj.get("level", "info")), str(obj.get("message", ""))[:2000])
    raise ProtocolError(CLOSE_MALFORMED, f"unknown message type '{kind}'")


def control(kind: Literal["clear", "leave"]) -> str:
    return json.dumps({"type": kind})
