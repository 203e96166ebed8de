"""Signaling hub for the local room: a WebRTC mesh on loopback between Luna's page and human pages.

It relays SDP and ICE between peers of one room and tells everyone who joined and left; media never passes
through here. The message shapes are documented in ``bot_page/lib/local-room.js``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import structlog
from aiohttp import WSMsgType, web

log = structlog.get_logger(__name__)

MAX_PEERS_PER_ROOM = 16
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass
class Peer:
    id: str
    name: str
    kind: str
    ws: web.WebSocketResponse

    def public(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "kind": self.kind}


@dataclass
class LocalRoomHub:
    ice: str = "any"
    rooms: dict[str, dict[str, Peer]] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def participants(self, room_id: str) -> list[dict[str, str]]:
        return [p.public() for p in self.rooms.get(room_id, {}).values()]

    async def _broadcast(self, room_id: str, message: dict, *, skip: str | None = None) -> None:
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
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    await ws.close(code=4400, message=b"signal messages are JSON")
                    break
                if peer is None:
                    peer = await self._join(ws, room_id, data)
                    if peer is None:
                        break
                elif data.get("type") == "signal":
                    target = self.rooms.get(room_id, {}).get(str(data.get("to")))
                    if target and not target.ws.closed:
                        await target.ws.send_str(
                            json.dumps({"type": "signal", "from": peer.id, "data": data.get("data")})
                        )
        finally:
            if peer is not None:
                members = self.rooms.get(room_id, {})
                members.pop(peer.id, None)
                if not members:
                    self.rooms.pop(room_id, None)
                log.info("local_room.left", room_id=room_id, peer=peer.id, name=peer.name)
                await self._broadcast(room_id, {"type": "peer_left", "peer": peer.public()})
        return ws

    async def _join(self, ws: web.WebSocketResponse, room_id: str, data: dict) -> Peer | None:
        if data.get("type") != "join":
            await ws.close(code=4400, message=b"first message must be 'join'")
            return None
        members = self.rooms.setdefault(room_id, {})
        if len(members) >= MAX_PEERS_PER_ROOM:
            await ws.close(code=4429, message=b"local room is full")
            return None
        name = str(data.get("name") or "guest")[:64]
        kind = "bot" if data.get("kind") == "bot" else "human"
        peer = Peer(id=f"p{next(self._ids)}", name=name, kind=kind, ws=ws)
        await ws.send_str(
            json.dumps(
                {"type": "welcome", "id": peer.id, "peers": [p.public() for p in members.values()], "ice": self.ice}
            )
        )
        await self._broadcast(room_id, {"type": "peer_joined", "peer": peer.public()})
        members[peer.id] = peer
        log.info("local_room.joined", room_id=room_id, peer=peer.id, name=name, kind=kind)
        return peer
