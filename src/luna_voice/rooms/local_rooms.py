"""The local demo room as both service roles serve it (the all-in-one and the dispatcher): the signaling hub,
its room tickets, and the backend a summon gets when the request names none."""

from __future__ import annotations

from aiohttp import web

from luna_voice.config import Settings
from luna_voice.rooms.local_hub import LocalRoomHub
from luna_voice.rooms.tickets import RoomTickets


class LocalRooms:
    """Mixed into a ``LunaService``: the local-room half of that interface, in one place for both roles."""

    settings: Settings
    tickets: RoomTickets
    hub: LocalRoomHub

    def _open_local_rooms(self, settings: Settings) -> None:
        # With an API token, joining a local room takes a ticket minted by an authenticated call.
        self.tickets = RoomTickets()
        self.hub = LocalRoomHub(ice=settings.local_ice, tickets=self.tickets if settings.api_token else None)

    @property
    def local_rooms(self) -> bool:
        return self.settings.local_rooms

    async def local_signal(self, room_id: str, request: web.Request) -> web.StreamResponse:
        return await self.hub.handle(request, room_id)

    def local_participants(self, room_id: str) -> list[dict[str, str | bool]]:
        return self.hub.participants(room_id)

    def local_ticket(self, room_id: str) -> str:
        return self.tickets.mint(room_id, "human")

    def _default_backend(self) -> str:
        if self.settings.default_backend != "auto":
            return self.settings.default_backend
        return "rtk" if self.settings.rtk_configured else "local"
