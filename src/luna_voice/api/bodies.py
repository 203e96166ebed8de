"""Strict input at the HTTP edge: room ids and JSON bodies, refused with a clear JSON error before any handler
logic runs.

Limits hold whatever the framing: a chunked body is counted as it arrives (it has no Content-Length), and a
deeply nested document is refused before ``json.loads`` can recurse into a stack overflow.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from luna_voice.api.errors import ApiError
from luna_voice.api.models import ROOM_ID

MAX_BODY = 64 * 1024
MAX_DEPTH = 16  # our bodies are flat; this is far more than any of them needs
JSON = "application/json"

M = TypeVar("M", bound=BaseModel)


def room_id(request: web.Request) -> str:
    """The ``{room_id}`` of the path, matched whole (``$`` would let ``x\\n`` through as a second room ``x``)."""
    value = request.match_info["room_id"]
    if not ROOM_ID.fullmatch(value):
        raise ApiError(
            400,
            "invalid_room_id",
            "room id must be 1-128 characters of letters, digits, '-' or '_', starting alphanumeric",
        )
    return value


async def read_json(request: web.Request, model: type[M]) -> M:
    """The body as ``model``; an empty body is ``model()`` (every field optional)."""
    body = await json_object(request, empty_ok=True)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid_body", _validation_message(exc)) from None


async def json_object(request: web.Request, *, max_bytes: int = MAX_BODY, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object, within ``max_bytes`` and ``MAX_DEPTH`` whatever its framing."""
    raw = await _read_bounded(request, max_bytes)
    if not raw.strip():
        if empty_ok:
            return {}
        raise ApiError(400, "invalid_json", "request body is empty")
    # Only JSON is JSON: a form or text/plain body is what a cross-site page can send without a CORS preflight.
    if request.content_type != JSON:
        raise ApiError(415, "unsupported_media_type", f"request body must be sent as Content-Type: {JSON}")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "request body is not UTF-8") from None
    if nesting(text) > MAX_DEPTH:
        raise ApiError(400, "invalid_json", f"request body is nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(text)
    except ValueError:
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    return body


async def _read_bounded(request: web.Request, max_bytes: int) -> bytes:
    if not request.can_read_body:
        return b""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    data = bytearray()
    async for chunk in request.content.iter_any():  # chunked bodies announce no length: count as they come
        data += chunk
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(data)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body over {max_bytes} bytes")


def nesting(text: str) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
