"""The service as the HTTP API sees it: a small interface, so routes never reach into the bot manager and
``api`` does not import ``service`` (which assembles the application from these routes).

A dispatcher that runs each bot on its own machine implements the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from luna_voice.api.models import SummonRequest


class EventStream(Protocol):
    async def next(self, wait_s: float) -> bytes | None:
        """The next server-sent event frame, None after ``wait_s`` with nothing to send; EOFError once over."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TranscriptDoc:
    """A stay's meeting transcript in both forms ``GET .../luna/transcript`` serves."""

    json: dict[str, Any]
    vtt: str


class LunaService(Protocol):
    @property
    def local_rooms(self) -> bool: ...

    async def summon(self, room_id: str, req: SummonRequest) -> tuple[dict[str, Any], bool]:
        """Luna's status in the room and whether this call started her (raises ApiError)."""
        ...

    def status(self, room_id: str) -> dict[str, Any] | None: ...

    async def dismiss(self, room_id: str) -> dict[str, Any] | None:
        """Ask Luna to leave and wait (bounded) until she has; her status then, or None if never summoned."""
        ...

    def watch(self, room_id: str, *, follow: bool) -> EventStream | None: ...

    async def say(self, room_id: str, text: str, *, interrupt: bool) -> dict[str, Any]:
        """Luna says ``text`` in the room: ``{say_id, state}`` (raises ApiError 404, or 409 when she cannot)."""
        ...

    async def transcript(self, room_id: str) -> TranscriptDoc | None:
        """The meeting transcript of her latest stay in the room (raises ApiError when it is turned off)."""
        ...

    def rooms(self) -> list[dict[str, Any]]: ...

    def readiness(self) -> dict[str, Any]: ...

    def metrics(self) -> bytes: ...

    async def bridge(self, bot_id: str, request: web.Request) -> web.StreamResponse: ...

    async def local_signal(self, room_id: str, request: web.Request) -> web.StreamResponse: ...

    def local_participants(self, room_id: str) -> list[dict[str, str | bool]]: ...

    def local_ticket(self, room_id: str) -> str:
        """A single-use pass into the local room for one person's page."""
        ...


SERVICE: web.AppKey[LunaService] = web.AppKey("service")
