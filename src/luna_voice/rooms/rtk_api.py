"""Cloudflare RealtimeKit REST client: mint Luna's participant token, kick a stuck Luna, check her preset.

Every failure becomes one ``RtkApiError`` whose ``http_status``, ``code`` and ``message`` are already what the
control API answers (``{"error": {"code", "message"}}``), so callers never translate RTK's statuses themselves:

* 404 → 404 ``meeting_not_found``;
* 401/403 → 502 ``rtk_auth_failed`` (it is *our* Cloudflare token that was refused, not the caller's request);
* other 4xx → 400 ``rtk_rejected`` with RTK's own message(s);
* 429, 5xx, timeouts and connection errors are retried with exponential backoff (``Retry-After`` wins), then
  503 ``rtk_unavailable`` with ``retry_after`` set.

Error bodies come in two shapes: Cloudflare's gateway answers with the v4 envelope
(``{"success": false, "errors": [{"code", "message"}], "messages": [], "result": null}``), while the RTK service's
OpenAPI documents ``{"success": false, "error": {"code", "message"}}``; both are read. Success bodies carry ``data``
(RTK) or ``result`` (the rest of the v4 API); both are accepted.

The API token and minted participant tokens never reach logs, exception messages or reprs.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from pydantic import SecretStr

from luna_voice.retry_after import parse_retry_after

log = structlog.get_logger(__name__)

# RTK ids are UUIDs (meetings, participants). Anything else is refused before a request is built: a room id from
# the control API must never be able to walk the URL path ("..") to another endpoint with our token.
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_MESSAGE = 300


class RtkApiError(Exception):
    """A RealtimeKit call failed; the fields are the control API's answer (status, code, message) as they are."""

    def __init__(self, http_status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"RtkApiError(http_status={self.http_status}, code={self.code!r}, message={self.message!r}, "
            f"retry_after={self.retry_after!r})"
        )


@dataclass(frozen=True)
class MintedParticipant:
    """Luna's participant in one meeting; ``token`` is the secret the page passes to ``RealtimeKitClient.init``."""

    participant_id: str
    custom_participant_id: str
    token: str = field(repr=False)


def custom_participant_id(meeting_id: str, stay_id: str) -> str:
    """Luna's identity for one stay in a meeting: ``luna-<meeting>-<stay>``.

    RTK wants it unique per participant. Each stay mints its own, so a stale Luna from an earlier stay can be
    told apart (and kicked) by it; retries of one mint reuse it. The add-participant API has no metadata field
    (only ``custom_participant_id``, ``preset_name``, ``name``, ``picture``), so the meeting is part of the id.
    """
    return f"luna-{meeting_id}-{stay_id}"


# waiting_room_type values of a preset (Cloudflare's preset API): only SKIP lets Luna straight in.
_NO_WAITING_ROOM = "SKIP"


class RtkApi:
    """Talks to ``{base_url}/accounts/{account_id}/realtime/kit/{app_id}/…`` with one ``ClientSession``."""

    def __init__(
        self,
        *,
        account_id: str,
        app_id: str,
        api_token: str,
        preset_name: str,
        base_url: str = "https://api.cloudflare.com/client/v4",
        name: str = "Luna",
        picture: str | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 3,
        backoff_base_s: float = 0.5,
        max_retry_wait_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not (account_id and app_id and api_token and preset_name):
            raise ValueError("account_id, app_id, api_token and preset_name are all required")
        if not name:
            # A token minted without a name fails at join ("could not connect to media servers"):
            # cloudflare-typescript issue 2737.
            raise ValueError("name must not be empty")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._prefix = f"{base_url.rstrip('/')}/accounts/{account_id}/realtime/kit/{app_id}"
        self._account_id = account_id
        self._app_id = app_id
        self._token = SecretStr(api_token)
        self._preset_name = preset_name
        self._name = name
        self._picture = picture
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        # A Retry-After longer than this is not waited out inside one HTTP call: we answer 503 with it instead.
        self._max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"RtkApi(account_id={self._account_id!r}, app_id={self._app_id!r}, prefix={self._prefix!r})"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def mint_token(self, meeting_id: str, stay_id: str) -> MintedParticipant:
        """Add Luna to the meeting for one stay and return the participant token (always with a ``name``)."""
        _check_id("meeting", meeting_id)
        _check_id("stay", stay_id)
        custom_id = custom_participant_id(meeting_id, stay_id)
        body: dict[str, Any] = {
            "name": self._name,
            "preset_name": self._preset_name,
            "custom_participant_id": custom_id,
        }
        if self._picture:
            body["picture"] = self._picture
        data = await self._call("POST", f"/meetings/{meeting_id}/participants", body, meeting_id=meeting_id)
        token, participant_id = data.get("token"), data.get("id")
        if not (isinstance(token, str) and token and isinstance(participant_id, str) and participant_id):
            raise RtkApiError(502, "rtk_bad_response", "RealtimeKit answered without a participant id and token")
        log.info("rtk_token_minted", meeting_id=meeting_id, participant_id=participant_id, custom_id=custom_id)
        return MintedParticipant(participant_id=participant_id, custom_participant_id=custom_id, token=token)

    async def kick(self, meeting_id: str, participant: MintedParticipant) -> None:
        """Remove Luna's participant from the live session (when its page no longer answers at dismiss).

        Both ids go in the body: the participant id names this token's participant, the custom id also catches
        a client of this stay that RTK lists under it.
        """
        _check_id("meeting", meeting_id)
        _check_id("participant", participant.participant_id)
        body = {
            "participant_ids": [participant.participant_id],
            "custom_participant_ids": [participant.custom_participant_id],
        }
        await self._call("POST", f"/meetings/{meeting_id}/active-session/kick", body, meeting_id=meeting_id)
        log.info("rtk_participant_kicked", meeting_id=meeting_id, participant_id=participant.participant_id)

    async def check_preset(self) -> str | None:
        """Why Luna's preset would fail her first summon (it does not exist, allows no audio, or has a waiting
        room), or None when it is fine. Lists the app's presets by name, then reads that preset's permissions."""
        found = None
        page = 1
        while found is None:
            listing = await self._call(
                "GET", "/presets", params={"search": self._preset_name, "page_no": page, "per_page": 100}
            )
            presets = listing.get("data")
            if not isinstance(presets, list):
                raise RtkApiError(502, "rtk_bad_response", "RealtimeKit listed presets without a data array")
            found = next((p for p in presets if isinstance(p, dict) and p.get("name") == self._preset_name), None)
            total = (listing.get("paging") or {}).get("total_count", 0)
            if found is None and (not presets or page * 100 >= total):
                return f"RealtimeKit app {self._app_id} has no preset named '{self._preset_name}' (LUNA_RTK_PRESET)"
            page += 1
        preset_id = str(found.get("id") or "")
        _check_id("preset", preset_id)
        details = await self._call("GET", f"/presets/{preset_id}")
        permissions = details.get("permissions") or {}
        problems = []
        audio = ((permissions.get("media") or {}).get("audio") or {}).get("can_produce")
        if audio != "ALLOWED":
            problems.append(f"does not allow Luna to speak (media.audio.can_produce is {audio})")
        waiting = permissions.get("waiting_room_type")
        if waiting != _NO_WAITING_ROOM:
            problems.append(f"has a waiting room (waiting_room_type is {waiting}; use SKIP)")
        if not problems:
            return None
        return f"RealtimeKit preset '{self._preset_name}' " + " and ".join(problems)

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, Any] | None = None,
        meeting_id: str | None = None,
    ) -> dict[str, Any]:
        """One logical call with bounded retries; returns the envelope: ``data`` (or ``result``) for objects, the
        whole body for lists (whose ``data`` is an array next to ``paging``)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        url = self._prefix + path
        for attempt in range(1, self._max_attempts + 1):
            started = time.monotonic()
            retry_after: float | None = None
            try:
                async with self._session.request(method, url, json=body, params=params, headers=headers) as resp:
                    status = resp.status
                    payload = _parse_json(await resp.read())
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError) as exc:
                failure = "timed out" if isinstance(exc, TimeoutError) else f"connection failed ({type(exc).__name__})"
                log.warning(
                    "rtk_api_attempt", method=method, path=path, attempt=attempt, error=failure, elapsed_ms=_ms(started)
                )
            else:
                (log.info if status < 400 else log.warning)(
                    "rtk_api_attempt", method=method, path=path, attempt=attempt, status=status, elapsed_ms=_ms(started)
                )
                if 200 <= status < 300:
                    return self._data(status, payload)
                if status != 429 and status < 500:
                    raise self._refusal(status, payload, meeting_id)
                failure = f"HTTP {status}: {self._messages(payload, status)}"
            delay = retry_after if retry_after is not None else self._backoff_base_s * 2 ** (attempt - 1)
            if attempt == self._max_attempts or delay > self._max_retry_wait_s:
                retry_after = delay
                break
            await self._sleep(delay)
        log.warning("rtk_api_unavailable", method=method, path=path, attempts=attempt, retry_after=retry_after)
        raise RtkApiError(
            503,
            "rtk_unavailable",
            f"RealtimeKit API unavailable after {attempt} attempt(s), last: {failure}",
            retry_after=retry_after,
        )

    def _data(self, status: int, payload: Any) -> dict[str, Any]:
        if isinstance(payload, dict) and payload.get("success") is not False:
            data = payload.get("data")
            if data is None:
                data = payload.get("result")
            if isinstance(data, dict):
                return data
            if isinstance(data, list):
                return {**payload, "data": data}
        raise RtkApiError(502, "rtk_bad_response", f"RealtimeKit answered HTTP {status} without a usable body")

    def _refusal(self, status: int, payload: Any, meeting_id: str | None) -> RtkApiError:
        detail = self._messages(payload, status)
        if status == 404 and meeting_id is not None:
            return RtkApiError(
                404, "meeting_not_found", f"RealtimeKit has no meeting '{meeting_id}' in app {self._app_id} ({detail})"
            )
        if status in (401, 403):
            return RtkApiError(
                502,
                "rtk_auth_failed",
                f"RealtimeKit refused Luna's Cloudflare API token (HTTP {status}: {detail}); check that the token "
                f"has the Realtime or Realtime Admin permission on account {self._account_id}",
            )
        return RtkApiError(400, "rtk_rejected", f"RealtimeKit rejected the request (HTTP {status}): {detail}")

    def _messages(self, payload: Any, status: int) -> str:
        """RTK's own error text from either error shape, scrubbed of anything token-like."""
        found: list[str] = []
        if isinstance(payload, dict):
            errors = payload.get("errors")
            if isinstance(errors, list):
                found += [str(e["message"]) for e in errors if isinstance(e, dict) and e.get("message")]
            error = payload.get("error")
            if isinstance(error, dict) and error.get("message"):
                found.append(str(error["message"]))
            elif isinstance(error, str) and error:
                found.append(error)
        text = "; ".join(found) or f"HTTP {status} without an error message"
        text = _JWT.sub("[token]", text.replace(self._token.get_secret_value(), "[token]"))
        return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _check_id(kind: str, value: str) -> None:
    if not _ID.fullmatch(value or ""):
        raise RtkApiError(400, f"invalid_{kind}_id", f"'{value[:80]}' is not a valid RealtimeKit {kind} id")


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None  # an HTML error page from a proxy, an empty body…


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
