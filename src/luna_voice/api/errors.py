"""JSON errors for the control API: every failure is ``{"error": {"code", "message"}}`` with an HTTP status.

That includes what aiohttp answers before any middleware runs (a malformed request line, header or chunk):
``AppRunner`` swaps in a protocol handler whose error page is the same JSON.
"""

from __future__ import annotations

import secrets
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = structlog.get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def error_response(status: int, code: str, message: str, *, retry_after: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
    500: "internal",
}


def _http_error(status: int, message: str) -> web.Response:
    return error_response(status, _HTTP_CODES.get(status, "http_error"), message)


@web.middleware
async def json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, retry_after=exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"no route for {request.method} {request.path}" if exc.status in (404, 405) else exc.reason
        return _http_error(exc.status, message)
    except HttpProcessingError as exc:  # a broken body (bad chunk framing, short read) while a handler read it
        return _http_error(exc.code or 400, f"malformed request: {exc.message}")
    except Exception:
        log.exception("api.unhandled", path=request.path, method=request.method)
        return _http_error(500, "internal error; see the service log")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


class _JsonErrorHandler(RequestHandler):
    """aiohttp's protocol handler with JSON instead of its text/plain error page (parser errors, timeouts)."""

    __slots__ = ()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs, and refuses once a response has started
        if isinstance(exc, HttpProcessingError) and exc.message:
            text = f"malformed request: {exc.message}"
        elif status == 500:
            text = "internal error; see the service log"
        else:
            text = _phrase(status)
        resp = _http_error(status, text)
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _JsonErrorHandler  # same slots, only handle_error differs
        return handler


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer even unparseable requests in JSON.

    aiohttp has no public hook for the responses its HTTP parser sends before the application sees a request,
    so this overrides the runner's server factory; tests/test_api.py sends raw malformed requests to check it.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server


def _bearer(header: str) -> str | None:
    """The credentials of an ``Authorization: Bearer …`` header; the scheme is case-insensitive (RFC 9110 §11.1)."""
    scheme, _, credentials = header.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def authorized(request: web.Request, token: str) -> bool:
    given = _bearer(request.headers.get("Authorization", ""))
    return given is not None and secrets.compare_digest(given.encode(), token.encode())


def needs_token(path: str) -> bool:
    """What the API token guards: the control API, metrics, and the local room's ticket and participant list.

    Open: ``/healthz``, ``/readyz`` (probes: readiness, provider names, bot counts), ``/openapi.json`` (no data),
    the static pages, and the two sockets, which carry their own credentials (a bridge token per bot, a room
    ticket per local-room peer).
    """
    if path.startswith("/rooms") or path == "/metrics":
        return True
    return path.startswith("/local/rooms/") and not path.endswith("/signal")


def require_token(token: str | None):  # type: ignore[no-untyped-def]
    """Middleware: with a token configured, what ``needs_token`` names answers only callers that present it."""

    @web.middleware
    async def check(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if token and needs_token(request.path) and not authorized(request, token):
            return error_response(401, "unauthorized", "missing or wrong 'Authorization: Bearer' token")
        return await handler(request)

    return check
