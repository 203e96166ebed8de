"""The bridge protocol between Luna's page and Python, sans I/O (parse and build messages; no sockets).

This module is the one definition of the wire contract. The page's side (``bot_page/protocol.js``, imported by
``bot.js`` and the audio worklets) is generated from it by ``python -m luna_voice.bridge.protocol``, and
tests/test_wire_contract.py fails when the two differ.

One WebSocket per bot, opened by the page at ``/bridge/{bot_id}``. The page's first message must be a text
``hello`` carrying the bot's token and the rates it captures and plays at; a wrong token closes the socket with
4401, a malformed hello or rates other than ours with 4400 and a reason that names them.

Binary audio frames, both directions: a 16-byte little-endian header, then the payload::

    offset size  field
    0      1     version (1)
    1      1     kind: 3 = capture Opus (page → Python, one remote participant), 2 = playback (Python → page)
    2      2     participant index (capture: the index announced in ``participant_joined``; playback: 0)
    4      4     capture: the packet's RTP timestamp (48 kHz); playback: sequence number (wraps at 2**32)
    8      8     timestamp, float64 ms since the Unix epoch (page: ``performance.timeOrigin + performance.now()``);
                 capture: when the packet reached the page

Capture frames carry one encoded Opus packet as it came off the network (an ``RTCRtpScriptTransform`` on the
person's receiver, which never hands it back, so the page does not decode it): Python orders, fills and decodes
them (``opus_stream``, ``capture``) into the 20 ms 16 kHz frames the pipeline takes. A payload that is not Opus is
junk (logged once, dropped). Kind 1 (16 kHz PCM from a capture worklet) is retired. A playback message carries
one or more consecutive 48 kHz int16 frames: ``seq`` is the first one's, each is 20 ms (960 samples) but the
last, which may be shorter (a sentence's tail), and the page marks each frame's own seq as it is rendered, so a
message of five frames costs one message, not five, and the marks are as fine as before. A message is at most
64 KB; a larger one closes the socket (1009) and the bot logs why.

JSON text messages, page → Python: ``hello {token, backend, playback_rate}``,
``room_state {state, sub_code?, reason?}``, ``participant_joined {index, id, name}``,
``participant_left {index, id}``, ``played {seq, idle}`` (the highest playback seq fully rendered, -1 before the
first; ``idle`` when the buffer ran empty), ``cleared {dropped_ms}``, ``log {level, message}``, ``muted {muted,
reason?}`` (someone else turned Luna's audio in the room off, or she is audible again).
Python → page: ``clear`` (drop all queued playback now), ``duck {gain}`` (ramp Luna's voice to ``gain``, 1.0 =
full, over a few ms; nothing is dropped), ``leave`` (leave the room, then close), ``unmute`` (publish Luna's voice
again after someone else muted her), ``chat {text}`` (post a chat message in the room, for ``LUNA_CHAT_MIRROR``;
the page logs a warning if the room refuses it).
Every field is checked for type and range (pydantic); a message that fails is junk: the bot logs the reason
once per socket and drops it, so nothing malformed reaches the lifecycle.

Close codes: 4400 malformed hello, 4401 bad or missing token, 4404 unknown bot, 4409 a page is already
attached, 1000 normal.
"""

from __future__ import annotations

import json
import secrets
import struct
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic_core import from_json

VERSION = 1
KIND_PLAYBACK = 2
KIND_CAPTURE_OPUS = 3  # 1 was 16 kHz PCM captured on the page; retired with the page's decoding
# (field, struct code) in wire order; HEADER and the page's offsets both come from this one list.
HEADER_FIELDS: tuple[tuple[str, str], ...] = (
    ("version", "B"),
    ("kind", "B"),
    ("participant", "H"),
    ("seq", "I"),
    ("timestamp", "d"),
)
HEADER = struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS))
CAPTURE_RATE = 16_000  # Hz, what people's Opus is decoded to for the pipeline and STT (and the demo page records at)
PLAYBACK_RATE = 48_000  # Hz, what Luna's voice is sent and played at (her track generator's frames)
FRAME_MS = 20
CAPTURE_FRAME_SAMPLES = CAPTURE_RATE * FRAME_MS // 1000
PLAYBACK_FRAME_SAMPLES = PLAYBACK_RATE * FRAME_MS // 1000
MAX_FRAME_BYTES = 64 * 1024

CLOSE_MALFORMED = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_UNKNOWN_BOT = 4404
CLOSE_CONFLICT = 4409

# Free text the page relays from elsewhere (SDK errors, display names) is cut to size, not refused: a long SDK
# error must not turn a "failed" room state into junk, nor a long name make a person unheard.
_CUT_TO = {"message": 2000, "reason": 1000, "name": 256}


class ProtocolError(Exception):
    """A message broke the protocol: ``reason`` says how (a hello's error closes the socket with ``code``)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_STRICT = ConfigDict(extra="ignore", allow_inf_nan=False)
_Index = Annotated[StrictInt, Field(ge=1, le=0xFFFF)]
_Id = Annotated[StrictStr, Field(min_length=1, max_length=256)]
_Text = Annotated[StrictStr, Field(max_length=_CUT_TO["reason"])]


@dataclass(frozen=True)
class AudioFrame:
    kind: int
    participant: int
    seq: int  # playback: sequence number; capture: RTP timestamp
    timestamp_ms: float
    payload: bytes  # playback: int16 PCM; capture: one Opus packet


@dataclass(frozen=True, config=_STRICT)
class Hello:
    token: Annotated[StrictStr, Field(max_length=256)]
    backend: Annotated[StrictStr, Field(max_length=32)]
    playback_rate: StrictInt


@dataclass(frozen=True, config=_STRICT)
class RoomState:
    state: Literal["joining", "joined", "reconnecting", "left", "failed"]
    sub_code: Annotated[StrictStr, Field(max_length=64)] | None = None
    reason: _Text | None = None


@dataclass(frozen=True, config=_STRICT)
class ParticipantJoined:
    index: _Index
    id: _Id
    name: Annotated[StrictStr, Field(max_length=_CUT_TO["name"])] = ""


@dataclass(frozen=True, config=_STRICT)
class ParticipantLeft:
    index: _Index
    id: Annotated[StrictStr, Field(max_length=256)] = ""


@dataclass(frozen=True, config=_STRICT)
class Played:
    seq: Annotated[StrictInt, Field(ge=-1, le=0xFFFFFFFF)]
    idle: StrictBool = False


@dataclass(frozen=True, config=_STRICT)
class Cleared:
    dropped_ms: Annotated[StrictFloat, Field(ge=0)]


@dataclass(frozen=True, config=_STRICT)
class PageLog:
    level: Literal["debug", "info", "warn", "error"] = "info"
    message: Annotated[StrictStr, Field(max_length=_CUT_TO["message"])] = ""


@dataclass(frozen=True, config=_STRICT)
class Muted:
    """Luna's audio in the room was turned off by someone else (a host, a preset change), or is back on."""

    muted: StrictBool
    reason: _Text | None = None


_PageMessage = Hello | RoomState | ParticipantJoined | ParticipantLeft | Played | Cleared | PageLog | Muted
Message = AudioFrame | _PageMessage

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(model)
    for name, model in {
        "hello": Hello,
        "room_state": RoomState,
        "participant_joined": ParticipantJoined,
        "participant_left": ParticipantLeft,
        "played": Played,
        "cleared": Cleared,
        "log": PageLog,
        "muted": Muted,
    }.items()
}


def _json(text: str) -> Any:
    """Parse JSON with a nesting limit: ``json.loads`` of 64 KB of brackets overflows the stack instead."""
    return from_json(text)  # ValueError for bad JSON and for nesting over its recursion limit


def encode_audio(kind: int, participant: int, seq: int, timestamp_ms: float, payload: bytes) -> bytes:
    return HEADER.pack(VERSION, kind, participant, seq & 0xFFFFFFFF, timestamp_ms) + payload


def decode_audio(data: bytes) -> AudioFrame:
    if len(data) < HEADER.size:
        raise ProtocolError(CLOSE_MALFORMED, f"audio frame shorter than its {HEADER.size}-byte header")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(CLOSE_MALFORMED, f"audio frame larger than {MAX_FRAME_BYTES} bytes")
    version, kind, participant, seq, ts = HEADER.unpack_from(data)
    if version != VERSION:
        raise ProtocolError(CLOSE_MALFORMED, f"unsupported frame version {version}")
    if kind not in (KIND_CAPTURE_OPUS, KIND_PLAYBACK):
        raise ProtocolError(CLOSE_MALFORMED, f"unknown frame kind {kind}")
    payload = data[HEADER.size :]
    if kind == KIND_PLAYBACK and len(payload) % 2:
        raise ProtocolError(CLOSE_MALFORMED, "PCM payload is not a whole number of int16 samples")
    return AudioFrame(kind, participant, seq, ts, payload)


def playback_seqs(seq: int, pcm: bytes) -> range:
    """The seqs of the frames one playback message carries: ``seq``, ``seq + 1``, … (20 ms each but the last)."""
    return range(seq, seq - (-len(pcm) // (2 * PLAYBACK_FRAME_SAMPLES)))


def decode_text(text: str) -> _PageMessage:
    """Parse and check one page → Python JSON message."""
    try:
        obj = _json(text)
    except ValueError:
        raise ProtocolError(CLOSE_MALFORMED, "text message is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(CLOSE_MALFORMED, "JSON message needs a string 'type'")
    kind = obj["type"]
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        raise ProtocolError(CLOSE_MALFORMED, f"unknown message type '{kind[:40]}'")
    for key, most in _CUT_TO.items():
        if isinstance(obj.get(key), str):
            obj[key] = obj[key][:most]
    try:
        message: _PageMessage = adapter.validate_python(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "message"
        raise ProtocolError(CLOSE_MALFORMED, f"'{kind}' {where}: {err['msg']}") from None
    return message


def decode_hello(text: str, token: str) -> Hello:
    """The page's first message: the bot's token (else 4401), then a well-formed hello at our rates (else 4400)."""
    try:
        obj = _json(text)
    except ValueError:
        obj = None
    given = obj.get("token") if isinstance(obj, dict) and obj.get("type") == "hello" else None
    if not isinstance(given, str) or not secrets.compare_digest(given.encode(), token.encode()):
        raise ProtocolError(CLOSE_UNAUTHORIZED, "first message must be a hello with the bot token")
    hello = decode_text(text)
    assert isinstance(hello, Hello)
    if hello.playback_rate != PLAYBACK_RATE:
        raise ProtocolError(
            CLOSE_MALFORMED, f"page plays Luna's voice at {hello.playback_rate} Hz; the bridge sends {PLAYBACK_RATE}"
        )
    return hello


def control(kind: Literal["clear", "leave", "unmute"]) -> str:
    return json.dumps({"type": kind})


def chat(text: str) -> str:
    return json.dumps({"type": "chat", "text": text}, ensure_ascii=False)


def duck(gain: float) -> str:
    if not 0.0 <= gain <= 1.0:
        raise ValueError(f"playback gain {gain} is outside 0..1")
    return json.dumps({"type": "duck", "gain": round(gain, 4)})


def javascript() -> str:
    """``bot_page/protocol.js``: the page's copy of the wire constants, generated from this module."""
    offsets: dict[str, int] = {}
    at = 0
    for name, code in HEADER_FIELDS:
        offsets[name] = at
        at += struct.calcsize("<" + code)
    values: dict[str, Any] = {
        "VERSION": VERSION,
        "KIND_PLAYBACK": KIND_PLAYBACK,
        "KIND_CAPTURE_OPUS": KIND_CAPTURE_OPUS,
        "HEADER_BYTES": HEADER.size,
        **{f"OFFSET_{name.upper()}": offset for name, offset in offsets.items()},
        "CAPTURE_RATE": CAPTURE_RATE,
        "PLAYBACK_RATE": PLAYBACK_RATE,
        "CAPTURE_FRAME_SAMPLES": CAPTURE_FRAME_SAMPLES,
        "PLAYBACK_FRAME_SAMPLES": PLAYBACK_FRAME_SAMPLES,
        "MAX_FRAME_BYTES": MAX_FRAME_BYTES,
    }
    lines = [
        "// GENERATED from src/luna_voice/bridge/protocol.py by `python -m luna_voice.bridge.protocol`; do not edit.",
        "// The bridge's wire contract as the page sees it (tests/test_wire_contract.py checks it is current).",
        *(f"export const {name} = {json.dumps(value)};" for name, value in values.items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(javascript(), end="")
