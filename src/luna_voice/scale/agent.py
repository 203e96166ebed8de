"""The bot machine's side of the dispatcher protocol: ask for the stay, then report until it ends.

A bot machine boots with ``LUNA_DISPATCHER_URL``, ``LUNA_BOT_BOOT_SECRET`` and Fly's ``FLY_MACHINE_ID``, and no
other credentials. It asks ``POST /internal/machines/{id}/assignment`` (bearer: the boot secret) for its stay
(room, summon body, the stay's secret), then posts its status to ``/internal/stays/{stay}/report`` (bearer: the
stay secret) every ``HEARTBEAT_S`` and once more, as its final word, when the stay ends. The final word also carries
the meeting transcript (``transcript``: the JSON of ``GET .../luna/transcript``), so the dispatcher can serve it after
the machine is gone; the whole report stays under ``MAX_REPORT``. The dispatcher calls the bot's own
``/rooms/{room}/luna`` with the same stay secret. Each time Luna's page opens in a local room on the dispatcher's
hub, it asks ``/internal/stays/{stay}/local-ticket`` (same secret) for its single-use ticket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger(__name__)

HEARTBEAT_S = 1.0
ASSIGNMENT_WAIT_S = 30.0  # a freshly created machine may boot before the dispatcher has recorded it
FINAL_ATTEMPTS = 5
MAX_REPORT = 4 * 1024 * 1024  # a long stay's final status carries every turn and the transcript (5000 lines by default)


class NoAssignment(Exception):
    pass


@dataclass(frozen=True)
class Assignment:
    stay_id: str
    room_id: str
    request: dict[str, Any]
    secret: str = field(repr=False)
    local_room_url: str | None = None


@dataclass(frozen=True)
class Agent:
    dispatcher_url: str
    machine_id: str
    boot_secret: str = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Agent:
        missing = [k for k in ("LUNA_DISPATCHER_URL", "LUNA_BOT_BOOT_SECRET", "FLY_MACHINE_ID") if not env.get(k)]
        if missing:
            raise NoAssignment(f"not started by a dispatcher: {', '.join(missing)} unset")
        return cls(env["LUNA_DISPATCHER_URL"].rstrip("/"), env["FLY_MACHINE_ID"], env["LUNA_BOT_BOOT_SECRET"])

    async def assignment(self, http: aiohttp.ClientSession, wait_s: float = ASSIGNMENT_WAIT_S) -> Assignment:
        url = f"{self.dispatcher_url}/internal/machines/{self.machine_id}/assignment"
        headers = {"Authorization": f"Bearer {self.boot_secret}"}
        deadline = asyncio.get_running_loop().time() + wait_s
        delay = 0.2
        while True:
            try:
                async with http.post(url, headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status == 200 and isinstance(body, dict):
                        return Assignment(
                            body["stay_id"],
                            body["room_id"],
                            body.get("request") or {},
                            body["secret"],
                            body.get("local_room_url"),
                        )
                    if resp.status in (401, 403):
                        raise NoAssignment("the dispatcher refused this machine's boot secret")
                    why = f"dispatcher answered {resp.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                why = f"{type(exc).__name__} reaching the dispatcher"
            if asyncio.get_running_loop().time() + delay > deadline:
                raise NoAssignment(f"no assignment within {wait_s:.0f} s ({why})")
            await asyncio.sleep(delay)  # retry backoff, not synchronisation
            delay = min(delay * 2, 2.0)

    async def local_ticket(self, http: aiohttp.ClientSession, assignment: Assignment) -> str:
        """A single-use ticket for Luna's page into the stay's local room on the dispatcher's hub."""
        url = f"{self.dispatcher_url}/internal/stays/{assignment.stay_id}/local-ticket"
        async with http.post(url, headers={"Authorization": f"Bearer {assignment.secret}"}) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 201 or not isinstance(body, dict) or not isinstance(body.get("ticket"), str):
                message = body.get("message") if isinstance(body, dict) else None
                raise NoAssignment(f"the dispatcher gave no room ticket ({resp.status}: {message})")
            return str(body["ticket"])

    async def report(self, http: aiohttp.ClientSession, assignment: Assignment, status: dict[str, Any]) -> bool:
        """Post one status; False when the dispatcher no longer counts this stay as live."""
        url = f"{self.dispatcher_url}/internal/stays/{assignment.stay_id}/report"
        headers = {"Authorization": f"Bearer {assignment.secret}"}
        async with http.post(url, json=status, headers=headers) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 400:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=str(body))
            return bool(isinstance(body, dict) and body.get("live"))

    async def heartbeat(
        self,
        http: aiohttp.ClientSession,
        assignment: Assignment,
        status: Callable[[], dict[str, Any]],
        ended: asyncio.Event,
        final: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        """Report every HEARTBEAT_S until ``ended``; then the final status (``final``, default the last
        ``status``), retried a few times."""
        while not ended.is_set():
            try:
                await self.report(http, assignment, status())
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("agent.report_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), HEARTBEAT_S)
        await self.final(http, assignment, await final() if final is not None else status())

    async def final(self, http: aiohttp.ClientSession, assignment: Assignment, status: dict[str, Any]) -> None:
        """The stay's last status, retried a few times: GET keeps answering with it after the machine is gone."""
        for attempt in range(1, FINAL_ATTEMPTS + 1):
            try:
                await self.report(http, assignment, status)
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("agent.final_report_failed", attempt=attempt, error=type(exc).__name__)
                await asyncio.sleep(0.5 * attempt)  # retry backoff
