"""Signaling hub for the local room: a WebRTC mesh on loopback between Luna's page and human pages.

It relays SDP and ICE between peers of one room and tells everyone who joined and left; media never passes
through here. The message shapes are documented in ``bot_page/lib/local-room.js`` and checked by the pydantic
models below: a message that does not fit closes the socket with 4400 and a reason, never a traceback.

With room tickets (``LUNA_API_TOKEN`` set), the first message must carry a ticket for this room
(``rooms/tickets.py``); the ticket, not the message, says whether the peer is a person or Luna.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import structlog
from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel, StrictBool, ValidationError

from luna_voice.rooms.tickets import PeerKind, RoomTickets

log = structlog.get_logger(__name__)

MAX_PEERS_PER_ROOM = 16
MAX_CHAT_CHARS = 2000  # the limit of RealtimeKit's chat (the SDK's maxTextLimit), so both rooms agree
MAX_MESSAGE_BYTES = 64 * 1024
CLOSE_MALFORMED = 4400
CLOSE_NO_TICKET = 4401
CLOSE_FULL = 4429


class Join(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["join"]
    name: str = "guest"  # cut to 64 characters on join
    kind: PeerKind = "human"
    ticket: str | None = Field(default=None, max_length=200)
    mic: StrictBool = True  # False: joins muted


class Signal(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["signal"]
    to: str = Field(max_length=64)
    data: dict[str, JsonValue]


class Chat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["chat"]
    text: str  # cut to MAX_CHAT_CHARS when relayed


class Mic(BaseModel):
    """A person muted or unmuted their microphone; everyone else is told, as RealtimeKit's ``audioUpdate`` does."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["mic"]
    enabled: StrictBool


class Relay(RootModel[Annotated[Signal | Chat | Mic, Field(discriminator="type")]]):
    """What a peer sends once in the room: signalling for one peer, a chat message or its microphone's state for
    everyone."""


M = TypeVar("M", Join, Relay)


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _parse(text: str, model: type[M]) -> M:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "message"
        if err["type"] in ("json_invalid", "model_type"):
            raise _Refused(CLOSE_MALFORMED, "signal messages are JSON objects") from None
        raise _Refused(CLOSE_MALFORMED, f"bad '{model.__name__.lower()}' message: {where}: {err['msg']}") from None


@dataclass
class Peer:
    id: str
    name: str
    kind: str
    ws: web.WebSocketResponse
    mic: bool = True  # a newcomer's microphone is on until it says otherwise

    def public(self) -> dict[str, str | bool]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "mic": self.mic}


@dataclass
class LocalRoomHub:
    ice: str = "any"
    tickets: RoomTickets | None = None  # None: the open demo (anyone who reaches the port may join)
    rooms: dict[str, dict[str, Peer]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def participants(self, room_id: str) -> list[dict[str, str | bool]]:
        return [p.public() for p in self.rooms.get(room_id, {}).values()]

    async def close_all(self, reason: str) -> None:
        """Close every socket with 1001 (going away) and ``reason``, so clients see why (service stopping)."""
        peers = [p for room in self.rooms.values() for p in room.values()]
        closes = [asyncio.wait_for(p.ws.close(code=1001, message=reason.encode()[:120]), 1.0) for p in peers]
        for result in await asyncio.gather(*closes, return_exceptions=True):
            if isinstance(result, BaseException):
                log.debug("local_room.close_failed", error=repr(result))

    async def _broadcast(self, room_id: str, message: dict[str, Any], *, skip: str | None = None) -> None:
        data = json.dumps(message)
        for peer in list(self.rooms.get(room_id, {}).values()):
            if peer.id != skip and not peer.ws.closed:
                await peer.ws.send_str(data)

    async def handle(self, request: web.Request, room_id: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        peer: Peer | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if peer is None:
                    peer = await self._join(ws, room_id, _parse(msg.data, Join))
                    continue
                relayed = _parse(msg.data, Relay).root
                if isinstance(relayed, Chat):  # everyone else sees it; the demo shows it in the captions
                    chat = {"type": "chat", "from": peer.public(), "text": relayed.text[:MAX_CHAT_CHARS]}
                    await self._broadcast(room_id, chat, skip=peer.id)
                    continue
                if isinstance(relayed, Mic):
                    if relayed.enabled != peer.mic:
                        peer.mic = relayed.enabled
                        await self._broadcast(room_id, {"type": "peer_mic", "peer": peer.public()}, skip=peer.id)
                    continue
                target = self.rooms.get(room_id, {}).get(relayed.to)
                if target and not target.ws.closed:
                    await target.ws.send_str(json.dumps({"type": "signal", "from": peer.id, "data": relayed.data}))
        except _Refused as exc:
            log.info("local_room.refused", room_id=room_id, code=exc.code, reason=exc.reason)
            await ws.close(code=exc.code, message=exc.reason.encode()[:120])
        finally:
            if peer is not None:
                members = self.rooms.get(room_id, {})
                members.pop(peer.id, None)
                if not members:
                    self.rooms.pop(room_id, None)
                log.info("local_room.left", room_id=room_id, peer=peer.id, name=peer.name)
                await self._broadcast(room_id, {"type": "peer_left", "peer": peer.public()})
        return ws

    async def _join(self, ws: web.WebSocketResponse, room_id: str, join: Join) -> Peer:
        kind: PeerKind = join.kind
        if self.tickets is not None:
            admitted = self.tickets.redeem(join.ticket, room_id) if join.ticket else None
            if admitted is None:
                raise _Refused(CLOSE_NO_TICKET, "joining needs a room ticket: missing, expired or already used")
            kind = admitted
        members = self.rooms.setdefault(room_id, {})
        if len(members) >= MAX_PEERS_PER_ROOM:
            raise _Refused(CLOSE_FULL, "local room is full")
        peer = Peer(id=f"p{next(self._ids)}", name=join.name.strip()[:64] or "guest", kind=kind, ws=ws, mic=join.mic)
        await ws.send_str(
            json.dumps(
                {"type": "welcome", "id": peer.id, "peers": [p.public() for p in members.values()], "ice": self.ice}
            )
        )
        await self._broadcast(room_id, {"type": "peer_joined", "peer": peer.public()})
        members[peer.id] = peer
        log.info("local_room.joined", room_id=room_id, peer=peer.id, name=peer.name, kind=kind)
        return peer
