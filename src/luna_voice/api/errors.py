"""JSON errors for the control API: every failure is ``{"error": {"code", "message"}}`` with an HTTP status."""

from __future__ import annotations

import secrets

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def error_response(status: int, code: str, message: str, *, retry_after: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 400: "bad_request"}


@web.middleware
async def json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, retry_after=exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = f"no route for {request.method} {request.path}" if exc.status in (404, 405) else exc.reason
        return error_response(exc.status, code, message)
    except Exception:
        log.exception("api.unhandled", path=request.path, method=request.method)
        return error_response(500, "internal", "internal error; see the service log")


def require_token(token: str | None):  # type: ignore[no-untyped-def]
    """Middleware: the control API (``/rooms…``) answers only callers with the configured bearer token."""

    @web.middleware
    async def check(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if token and request.path.startswith("/rooms"):
            given = request.headers.get("Authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error_response(401, "unauthorized", "missing or wrong 'Authorization: Bearer' token")
        return await handler(request)

    return check
