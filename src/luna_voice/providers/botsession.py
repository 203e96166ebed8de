"""Reply engine backed by the chat app's BotSession endpoint (the contract is ``docs/botsession.md``).

The app owns the model (glm-4.7-flash), the room history and the rate limits; Luna sends one POST per turn and reads
an SSE stream of text deltas ending in a ``done`` event with token usage. After playback Luna POSTs ``{url}/spoken``
so the app's history holds only what people actually heard.

Timeouts are applied per await, never around a ``yield``: the consumer's time between items (TTS, playback) must
not count against the provider.

The pieces both reply engines share (the ``<silent>`` gate of the ``llm`` turn policy, the HTTP-status mapping)
live in ``providers/replies.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog
from aiohttp.http_exceptions import LineTooLong
from yarl import URL

from luna_voice.conversation.domain import ReplyRequest, SpokenReason, Usage
from luna_voice.providers.base import ProviderError, RateLimited
from luna_voice.providers.replies import SAFE_CODE, SilenceGate, ThinkFilter, UsageMeter, status_error
from luna_voice.retry_after import parse_retry_after
from luna_voice.signing import SIGNATURE_HEADER, signature

log = structlog.get_logger(__name__)

NAME = "botsession"
VERSION_HEADER = "X-Luna-BotSession-Version"
CONTRACT_VERSION = "2"


# ---------------------------------------------------------------------------------------------- the engine
def _malformed(why: str) -> ProviderError:
    log.warning("botsession.malformed", why=why)
    return ProviderError(NAME, "malformed response")


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _request_body(request: ReplyRequest) -> bytes:
    return _encode(
        {
            "room_id": request.room_id,
            "turn_id": request.turn_id,
            "speaker_id": request.speaker_id,
            "speaker_name": request.speaker_name,
            "text": request.text,
            "language": request.language,
            "addressed": request.addressed,
            "may_stay_silent": request.may_stay_silent,
            "context": [{"speaker": line.speaker, "text": line.text, "at": line.at} for line in request.context],
        }
    )


def _json_object(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise _malformed("event data is not JSON") from None
    if not isinstance(value, dict):
        raise _malformed("event data is not an object")
    return value


def _usage(data: dict[str, Any]) -> Usage:
    usage = data.get("usage")
    tokens = [usage.get(k) if isinstance(usage, dict) else None for k in ("input_tokens", "output_tokens")]
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
        raise _malformed("done event without valid usage")
    return Usage(llm_input_tokens=tokens[0], llm_output_tokens=tokens[1])


def _error_event(data: dict[str, Any]) -> ProviderError:
    code = data.get("code")
    log.warning("botsession.error_event", code=code, message=str(data.get("message", ""))[:200])
    safe = code if isinstance(code, str) and SAFE_CODE.fullmatch(code) else "unknown"
    if safe == "rate_limited":
        retry = data.get("retry_after")
        retry_after = parse_retry_after(str(retry)) if isinstance(retry, int | float | str) else None
        return RateLimited(NAME, "rate limited (error event)", retry_after=retry_after)
    return ProviderError(NAME, f"app error: {safe}")


async def _sse_events(content: aiohttp.StreamReader, idle_timeout_s: float) -> AsyncIterator[tuple[str, str]]:
    """Parse ``text/event-stream`` into ``(event, data)``; every line must arrive within ``idle_timeout_s``."""
    event, data = "message", []
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                raw = await content.readline()
        except (LineTooLong, ValueError):  # one line beyond aiohttp's buffer (older versions raise ValueError)
            raise _malformed("line too long") from None
        if not raw:
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        # comments (":" lines), "id" and "retry" carry nothing for us


class BotSessionEngine:
    """``ReplyEngine`` speaking the BotSession contract over one pooled aiohttp session."""

    name = NAME

    def __init__(
        self,
        url: str,
        token: str | None,
        hmac_secret: str | None,
        timeout_s: float = 20.0,
        *,
        idle_timeout_s: float | None = None,
    ) -> None:
        """``timeout_s`` bounds connect + response headers (and a ``/spoken`` call); ``idle_timeout_s`` (default
        ``timeout_s``) bounds the wait for each line of the stream, so a stalled app cannot hang a turn."""
        self._url = url.rstrip("/")
        self._token = token
        self._secret = hmac_secret.encode() if hmac_secret else None
        self._timeout_s = timeout_s
        self._idle_timeout_s = idle_timeout_s if idle_timeout_s is not None else timeout_s
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # the host only: a URL may carry credentials in its query or user part
        return f"BotSessionEngine(host={URL(self._url).host!r})"

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:  # created lazily: a ClientSession belongs to the running loop
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._http

    def _headers(self, url: str, body: bytes, accept: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": accept, VERSION_HEADER: CONTRACT_VERSION}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(
                self._secret, str(int(time.time())), "POST", URL(url).raw_path_qs, body
            )
        return headers

    async def _post(self, url: str, body: bytes, accept: str) -> aiohttp.ClientResponse:
        """POST and wait for the response headers within ``timeout_s``."""
        async with asyncio.timeout(self._timeout_s):
            return await self._session().post(url, data=body, headers=self._headers(url, body, accept))

    async def _error_code(self, resp: aiohttp.ClientResponse) -> Any:
        """The app's ``{"error": {"code": ...}}``, if it sent one promptly."""
        try:
            async with asyncio.timeout(self._idle_timeout_s):
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        error = body.get("error") if isinstance(body, dict) else None
        return error.get("code") if isinstance(error, dict) else None

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str | Usage]:
        bound = log.bind(room_id=request.room_id, turn_id=request.turn_id)
        think, gate, meter = ThinkFilter(), SilenceGate(request.may_stay_silent), UsageMeter()
        body = _request_body(request)
        try:
            resp = await self._post(self._url, body, "text/event-stream")
        except TimeoutError:
            raise ProviderError(NAME, "timeout") from None
        except aiohttp.ClientError as exc:
            bound.warning("botsession.connect_failed", error=type(exc).__name__)
            raise ProviderError(NAME, "connection failed") from None
        async with resp, contextlib.aclosing(_sse_events(resp.content, self._idle_timeout_s)) as events:
            if not 200 <= resp.status < 300:
                code = await self._error_code(resp)
                bound.warning("botsession.refused", status=resp.status, code=code)
                raise status_error(NAME, resp.status, retry_after=resp.headers.get("Retry-After"), code=code)
            if resp.content_type != "text/event-stream":
                raise _malformed(f"content type {resp.content_type}")
            meter.add(input_text=body.decode())  # an estimate until ``done``: a cancelled reply is still counted
            while True:
                try:
                    item = await anext(events, None)
                except TimeoutError:
                    raise ProviderError(NAME, "timeout") from None
                except aiohttp.ClientError as exc:
                    bound.warning("botsession.stream_broken", error=type(exc).__name__)
                    raise ProviderError(NAME, "connection lost") from None
                if item is None:
                    raise ProviderError(NAME, "truncated response")
                event, data = item
                if event == "delta":
                    text = _json_object(data).get("text")
                    if not isinstance(text, str):
                        raise _malformed("delta without text")
                    meter.add(output_text=text)
                    if spoken := gate.feed(think.feed(text)):
                        if usage := meter.take():
                            yield usage
                        yield spoken
                elif event == "done":
                    usage = _usage(_json_object(data))
                    if spoken := gate.feed(think.flush()):
                        yield spoken
                    if gate.silent:
                        bound.info("botsession.silent")
                    yield meter.exact(usage)
                    return
                elif event == "error":
                    raise _error_event(_json_object(data))
                # other event names are reserved for later versions of the contract and skipped

    async def record_spoken(self, room_id: str, turn_id: str, spoken_text: str, reason: SpokenReason) -> None:
        """Best effort: the turn is over, so a failure here is logged and forgotten.

        ``interrupted`` is still sent beside ``reason`` so an app on contract version 1 keeps working.
        """
        body = _encode(
            {
                "room_id": room_id,
                "turn_id": turn_id,
                "spoken_text": spoken_text,
                "reason": reason.value,
                "interrupted": reason is SpokenReason.INTERRUPTED,
            }
        )
        bound = log.bind(room_id=room_id, turn_id=turn_id)
        try:
            async with await self._post(f"{self._url}/spoken", body, "application/json") as resp:
                if not 200 <= resp.status < 300:
                    bound.warning("botsession.spoken_refused", status=resp.status)
        except (TimeoutError, aiohttp.ClientError) as exc:
            bound.warning("botsession.spoken_failed", error=type(exc).__name__)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
