"""A local stand-in for the Cloudflare v4 API's RealtimeKit endpoints that Luna uses.

It listens on 127.0.0.1 and answers, under ``/client/v4/accounts/{account_id}/realtime/kit/{app_id}``:

* ``POST /meetings/{meeting_id}/participants`` (add participant): 201 ``{"success": true, "data": {id, token,
  custom_participant_id, preset_name, name, picture, created_at, updated_at}}``. The token looks like RTK's JWT:
  the web SDK decodes its payload client-side and reads ``meetingId``, ``orgId`` and ``participantId``.
* ``POST /meetings/{meeting_id}/active-session/kick``: body ``{participant_ids?, custom_participant_ids?}``,
  answers ``data: {action: "kick", participants: [...]}``.
* ``GET /presets?page_no&per_page&search`` (fetch all presets): ``{"success": true, "data": [{id, name,
  created_at, updated_at}], "paging": {start_offset, end_offset, total_count}}``, paged like the real list.
* ``GET /presets/{preset_id}`` (fetch details of a preset): ``data: {id, name, config, permissions}`` with
  ``permissions.media.audio.can_produce`` (ALLOWED | NOT_ALLOWED | CAN_REQUEST) and ``permissions.
  waiting_room_type`` (SKIP | ON_PRIVILEGED_USER_ENTRY | SKIP_ON_ACCEPT), the shapes of Cloudflare's API reference
  (and the ``cloudflare`` SDK's ``PresetGetPresetByIDResponse``).

Errors use the shapes Cloudflare documents: the gateway's v4 envelope for a refused token
(``{"success": false, "errors": [{"code", "message"}], "messages": [], "result": null}``), and for the RTK
service's own refusals either that envelope (``error_style="v4"``) or the RTK OpenAPI's
``{"success": false, "error": {"code": <status>, "message"}}`` (``error_style="rtk"``), so clients are tested against
both. Not verified against the real service: the exact numeric codes, whether an unknown preset is a 422, and what a
second add with the same ``custom_participant_id`` does (here it adds another participant, as documented).

Faults (``fail_next``, ``fail_always``, ``hang_next``, ``hang_always``) apply to any request before authentication,
like Cloudflare's edge rate limiting.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

PREFIX = "/client/v4/accounts/{account_id}/realtime/kit/{app_id}"


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None
    json: Any


@dataclass
class FakeMeeting:
    id: str
    participants: list[dict[str, Any]] = field(default_factory=list)
    kicked: list[str] = field(default_factory=list)


@dataclass
class FakePreset:
    """A preset of the app; ``audio`` is ``media.audio.can_produce``, ``waiting_room`` its ``waiting_room_type``."""

    name: str
    audio: Literal["ALLOWED", "NOT_ALLOWED", "CAN_REQUEST"] = "ALLOWED"
    waiting_room: Literal["SKIP", "ON_PRIVILEGED_USER_ENTRY", "SKIP_ON_ACCEPT"] = "SKIP"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: str = field(default_factory=lambda: _now())


@dataclass
class _Fault:
    status: int | None  # None: never answer
    retry_after: str | None = None


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token_payload(token: str) -> dict[str, Any]:
    """What the RTK web SDK reads from a participant token before it connects."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _v4_error(status: int, code: int, *messages: str) -> web.Response:
    body = {
        "success": False,
        "errors": [{"code": code, "message": m} for m in messages],
        "messages": [],
        "result": None,
    }
    return web.json_response(body, status=status)


class FakeCloudflareRtk:
    """Use as ``async with FakeCloudflareRtk() as fake:``; point the client at ``fake.base_url``."""

    def __init__(
        self,
        *,
        account_id: str = "0123456789abcdef0123456789abcdef",
        app_id: str = "a1b2c3d4-app",
        api_token: str = "cf-api-token-Sn3lZJTBX6kkg7OdcBUA",
        presets: tuple[str | FakePreset, ...] = ("group_call_participant", "group_call_host"),
        error_style: Literal["v4", "rtk"] = "v4",
        data_key: Literal["data", "result"] = "data",
    ) -> None:
        self.account_id = account_id
        self.app_id = app_id
        self.api_token = api_token
        self.presets = [p if isinstance(p, FakePreset) else FakePreset(p) for p in presets]
        self.error_style = error_style
        self.data_key = data_key
        self.org_id = str(uuid.uuid4())
        self.meetings: dict[str, FakeMeeting] = {}
        self.requests: list[RecordedRequest] = []
        self.minted_tokens: list[str] = []
        self._faults: deque[_Fault] = deque()
        self._always: _Fault | None = None
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- set-up ------------------------------------------------------------------------------------------------
    def add_meeting(self, *, meeting_id: str | None = None) -> str:
        meeting = FakeMeeting(id=meeting_id or str(uuid.uuid4()))
        self.meetings[meeting.id] = meeting
        return meeting.id

    def fail_next(self, status: int, times: int = 1, *, retry_after: str | None = None) -> None:
        self._faults.extend(_Fault(status, retry_after) for _ in range(times))

    def fail_always(self, status: int, *, retry_after: str | None = None) -> None:
        self._always = _Fault(status, retry_after)

    def hang_next(self, times: int = 1) -> None:
        self._faults.extend(_Fault(None) for _ in range(times))

    def hang_always(self) -> None:
        self._always = _Fault(None)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._always = None

    # --- lifecycle ---------------------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeCloudflareRtk:
        app = web.Application(middlewares=[self._gateway])
        prefix = PREFIX.format(account_id=self.account_id, app_id=self.app_id)
        app.router.add_post(prefix + "/meetings/{meeting_id}/participants", self._add_participant)
        app.router.add_get(prefix + "/presets", self._list_presets)
        app.router.add_get(prefix + "/presets/{preset_id}", self._get_preset)
        app.router.add_post(prefix + "/meetings/{meeting_id}/active-session/kick", self._kick)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/client/v4"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()  # lets hanging handlers return so shutdown is quick
        if self._runner is not None:
            await self._runner.cleanup()

    # --- the "edge": recording, faults, bearer token -------------------------------------------------------------
    @web.middleware
    async def _gateway(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = "<invalid json>"
        self.requests.append(RecordedRequest(request.method, request.path, request.headers.get("Authorization"), body))
        fault = self._faults.popleft() if self._faults else self._always
        if fault is not None:
            return await self._inject(fault)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return _v4_error(400, 6003, "Invalid request headers")
        if auth.removeprefix("Bearer ") != self.api_token:
            return _v4_error(401, 10000, "Authentication error")
        if body == "<invalid json>":
            return self._rtk_error(400, 10002, "Request body is not valid JSON")
        return await handler(request)

    async def _inject(self, fault: _Fault) -> web.Response:
        if fault.status is None:
            await self._closing.wait()
            raise web.HTTPServiceUnavailable()
        messages = {
            403: (10000, "Authentication error"),
            429: (971, "Please wait and consider throttling your request speed"),
        }
        code, message = messages.get(fault.status, (10013, f"Upstream RealtimeKit error {fault.status}"))
        response = _v4_error(fault.status, code, message)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        return response

    def _rtk_error(self, status: int, code: int, *messages: str) -> web.Response:
        if self.error_style == "v4":
            return _v4_error(status, code, *messages)
        return web.json_response(
            {"success": False, "error": {"code": status, "message": "; ".join(messages)}}, status=status
        )

    def _ok(self, data: dict[str, Any], status: int = 200) -> web.Response:
        body: dict[str, Any] = {"success": True, self.data_key: data}
        if self.data_key == "result":
            body.update(errors=[], messages=[])
        return web.json_response(body, status=status)

    def _meeting(self, request: web.Request) -> FakeMeeting | None:
        return self.meetings.get(request.match_info["meeting_id"])

    def _no_meeting(self) -> web.Response:
        return self._rtk_error(404, 10404, "Meeting not found")

    # --- endpoints ---------------------------------------------------------------------------------------------
    async def _add_participant(self, request: web.Request) -> web.Response:
        meeting = self._meeting(request)
        if meeting is None:
            return self._no_meeting()
        body = await request.json()
        if not isinstance(body, dict):
            return self._rtk_error(400, 10002, "Request body must be a JSON object")
        missing = [f"{f} is required" for f in ("preset_name", "custom_participant_id") if not body.get(f)]
        if missing:
            return self._rtk_error(400, 10002, *missing)
        picture = body.get("picture")
        if picture is not None and not str(picture).startswith(("http://", "https://")):
            return self._rtk_error(400, 10002, f"picture '{picture}' must be a URI")
        if body["preset_name"] not in {p.name for p in self.presets}:
            return self._rtk_error(422, 10003, f"Preset {body['preset_name']} not found for this app")
        participant_id = str(uuid.uuid4())
        token = self._jwt(meeting.id, participant_id, body["preset_name"])
        self.minted_tokens.append(token)
        created = _now()
        participant = {
            "id": participant_id,
            "token": token,
            "custom_participant_id": body["custom_participant_id"],
            "preset_name": body["preset_name"],
            "name": body.get("name"),
            "picture": picture,
            "created_at": created,
            "updated_at": created,
        }
        meeting.participants.append(participant)
        return self._ok(participant, status=201)

    async def _list_presets(self, request: web.Request) -> web.Response:
        try:
            page = int(request.query.get("page_no", "1"))
            per_page = int(request.query.get("per_page", "20"))
        except ValueError:
            return self._rtk_error(400, 10002, "page_no and per_page must be numbers")
        if page < 1 or not 1 <= per_page <= 100:
            return self._rtk_error(400, 10002, "page_no must be at least 1 and per_page between 1 and 100")
        search = request.query.get("search", "").lower()
        matching = [p for p in self.presets if search in p.name.lower()]
        shown = matching[(page - 1) * per_page : page * per_page]
        listed = [{"id": p.id, "name": p.name, "created_at": p.created_at, "updated_at": p.created_at} for p in shown]
        start = (page - 1) * per_page + 1
        paging = {"start_offset": start, "end_offset": start + len(shown) - 1, "total_count": len(matching)}
        return web.json_response({"success": True, "data": listed, "paging": paging})

    async def _get_preset(self, request: web.Request) -> web.Response:
        preset = next((p for p in self.presets if p.id == request.match_info["preset_id"]), None)
        if preset is None:
            return self._rtk_error(404, 10404, "Preset not found")
        can = {"can_produce": "ALLOWED"}
        permissions = {
            "accept_waiting_requests": False,
            "can_accept_production_requests": False,
            "can_change_participant_permissions": False,
            "can_edit_display_name": False,
            "can_livestream": False,
            "can_record": False,
            "can_spotlight": False,
            "chat": {
                "private": {"can_receive": True, "can_send": True, "files": True, "text": True},
                "public": {"can_send": True, "files": True, "text": True},
            },
            "connected_meetings": {
                "can_alter_connected_meetings": False,
                "can_switch_connected_meetings": False,
                "can_switch_to_parent_meeting": False,
            },
            "disable_participant_audio": False,
            "disable_participant_screensharing": False,
            "disable_participant_video": False,
            "hidden_participant": False,
            "kick_participant": False,
            "media": {"audio": {"can_produce": preset.audio}, "screenshare": can, "video": can},
            "pin_participant": False,
            "plugins": {"can_close": False, "can_edit_config": False, "can_start": False, "config": ""},
            "polls": {"can_create": False, "can_view": True, "can_vote": True},
            "recorder_type": "NONE",
            "show_participant_list": True,
            "waiting_room_type": preset.waiting_room,
            "is_recorder": False,
        }
        config = {
            "max_screenshare_count": 1,
            "max_video_streams": {"desktop": 6, "mobile": 6},
            "media": {
                "screenshare": {"frame_rate": 5, "quality": "hd"},
                "video": {"frame_rate": 30, "quality": "vga"},
                "audio": {"enable_high_bitrate": False, "enable_stereo": False},
            },
            "view_type": "GROUP_CALL",
        }
        return self._ok({"id": preset.id, "name": preset.name, "config": config, "permissions": permissions})

    async def _kick(self, request: web.Request) -> web.Response:
        meeting = self._meeting(request)
        if meeting is None:
            return self._no_meeting()
        body = await request.json()
        ids = set(body.get("participant_ids") or []) if isinstance(body, dict) else set()
        custom_ids = set(body.get("custom_participant_ids") or []) if isinstance(body, dict) else set()
        if not (ids or custom_ids):
            return self._rtk_error(400, 10002, "participant_ids or custom_participant_ids is required")
        kicked = [p for p in meeting.participants if p["id"] in ids or p["custom_participant_id"] in custom_ids]
        meeting.kicked += [p["id"] for p in kicked]
        listed = [{k: p[k] for k in ("id", "name", "picture", "created_at", "updated_at")} for p in kicked]
        return self._ok({"action": "kick", "participants": listed})

    def _jwt(self, meeting_id: str, participant_id: str, preset_name: str) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT"}
        payload = {
            "orgId": self.org_id,
            "meetingId": meeting_id,
            "participantId": participant_id,
            "presetName": preset_name,
            "iat": now,
            "exp": now + 100 * 24 * 3600,  # RTK participant tokens are valid for 100 days
        }
        parts = [_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)]
        return ".".join([*parts, _b64url(secrets.token_bytes(256))])
