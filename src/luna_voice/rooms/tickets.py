"""Room tickets: short-lived, single-use passes into one local room, minted by an authenticated API call.

A browser cannot put ``Authorization`` on a WebSocket, and the API token must never reach a browser the operator
does not control. So with ``LUNA_API_TOKEN`` set, whoever holds the token (an app backend, the operator's demo
page) mints a ticket for one room; the page presents it in its first signaling message. The ticket also fixes
what the peer is: only the service mints ``bot`` tickets, so nobody can appear as a second "Luna (AI)".
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

PeerKind = Literal["human", "bot"]

TICKET_TTL_S = 60.0
MAX_OUTSTANDING = 1024  # unredeemed tickets kept; minting more drops the oldest


@dataclass(frozen=True)
class _Pass:
    room_id: str
    kind: PeerKind
    expires: float


@dataclass
class RoomTickets:
    ttl_s: float = TICKET_TTL_S
    clock: Callable[[], float] = time.monotonic
    _passes: dict[str, _Pass] = field(default_factory=dict)

    def mint(self, room_id: str, kind: PeerKind = "human") -> str:
        now = self.clock()
        for ticket, p in list(self._passes.items()):
            if p.expires <= now:
                del self._passes[ticket]
        while len(self._passes) >= MAX_OUTSTANDING:
            del self._passes[next(iter(self._passes))]
        ticket = secrets.token_urlsafe(24)
        self._passes[ticket] = _Pass(room_id, kind, now + self.ttl_s)
        return ticket

    def redeem(self, ticket: str, room_id: str) -> PeerKind | None:
        """The peer kind the ticket admits to ``room_id``, or None (unknown, used, expired or another room)."""
        p = self._passes.get(ticket)
        if p is None or p.room_id != room_id:
            return None
        del self._passes[ticket]
        return p.kind if p.expires > self.clock() else None
