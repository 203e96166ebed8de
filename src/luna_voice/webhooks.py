"""Signed webhooks: the app learns when Luna joined, answered, spoke or left without polling.

Events (``type``): ``bot.state`` (every lifecycle state with ``sub_code`` and ``reason``, and ``muted`` when a host
muted her, ``joined`` again once she is audible), ``turn.completed`` (an
utterance's turn ended: speaker, heard, decision, reply, spoken, latency, cost), ``speak.started``,
``speak.completed``, ``speak.interrupted``, ``speak.failed`` (greeting, say, goodbye), and ``transcript.ready``
(the stay ended; carries the transcript). The body is JSON: ``{id, type, created_at, room_id, bot_id, data}``.

Signature: the same ``X-Luna-Signature: t=<unix seconds>,v1=…,v2=…`` as BotSession requests (``signing.py``;
``v2`` is HMAC-SHA256 over ``"<t>.POST.<path>."`` and the body), and the event id in ``X-Luna-Webhook-Id`` (also
in the signed body). A receiver recomputes the HMAC over the exact bytes, refuses a ``t`` more than 5 minutes from
its clock (a captured request cannot be replayed later) and drops ids it has already handled (a retry is
re-signed with a fresh ``t`` but keeps its id).

Delivery never touches the audio path: ``submit`` only appends to a bounded queue (an overflow drops the new event
and counts it), and one background task posts events in order, retrying 5xx, 408, 429 and network errors with
exponential backoff (honouring ``Retry-After``) for up to ``retry_for_s``; other 4xx answers drop the event.
A receiver that is down loses nothing while the queue has room and the retry window lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter
from yarl import URL

from luna_voice.conversation.events import MutedChanged, SpeakChanged, TurnChanged
from luna_voice.events import Event, StateChanged, to_wire
from luna_voice.retry_after import parse_retry_after
from luna_voice.signing import SIGNATURE_HEADER, signature

log = structlog.get_logger(__name__)

ID_HEADER = "X-Luna-Webhook-Id"
_RETRYABLE = {408, 429}


def webhook_event(event: Event) -> tuple[str, dict[str, Any]] | None:
    """The webhook (type, data) for an event a bot published, or None for events only captions need."""
    if isinstance(event, MutedChanged):  # a host's mute is a state of her stay for the app: muted, then joined again
        return "bot.state", {"state": "muted" if event.muted else "joined", "sub_code": None, "reason": event.reason}
    if isinstance(event, StateChanged | SpeakChanged):  # the event stream's JSON form, without the envelope
        wire = to_wire(event, room_id="", bot_id="")
        kind = "bot.state" if isinstance(event, StateChanged) else wire["type"]
        return kind, {k: v for k, v in wire.items() if k not in ("type", "room_id", "bot_id")}
    if isinstance(event, TurnChanged) and event.state.terminal and event.turn.get("kind") == "utterance":
        t = event.turn
        return "turn.completed", {
            "turn_id": t["id"],
            "speaker": t["speaker"],
            "state": t["state"],
            "heard": t["heard_text"],
            "language": t["language"],
            "decision": t["decision"],
            "reason": t["reason"],
            "request": t.get("request"),
            "reply": t["reply_text"],
            "spoken": t["spoken_text"],
            "interrupted": t["interrupted"],
            "error": t["error"],
            "latency": t["latency"],
            "cost_usd": t["cost_usd"],
        }
    return None


class WebhookSender:
    def __init__(
        self,
        url: str,
        secret: str,
        *,
        registry: CollectorRegistry,
        max_queue: int = 1000,
        retry_for_s: float = 3600.0,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._path = URL(url).raw_path_qs  # signed (v2), so a receiver can tell its webhook route from others
        self._secret = secret.encode()
        self._queue: deque[dict[str, Any]] = deque()
        self._max_queue = max_queue
        self._retry_for_s = retry_for_s
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.outcomes = Counter(
            "luna_webhook_events",
            "Webhook events by outcome: delivered, retried (one per failed attempt), overflow (queue full), "
            "gave_up (retry window over) or rejected (the receiver answered 4xx)",
            ["outcome"],
            registry=registry,
        )

    # ------------------------------------------------------------------ producer side (never blocks)
    def observe(self, event: Event, *, room_id: str, bot_id: str) -> None:
        """Called with every event a bot publishes; forwards the ones webhooks carry."""
        mapped = webhook_event(event)
        if mapped is not None:
            self.submit(mapped[0], mapped[1], room_id=room_id, bot_id=bot_id)

    def submit(self, kind: str, data: dict[str, Any], *, room_id: str | None, bot_id: str | None) -> None:
        if len(self._queue) >= self._max_queue:
            self.outcomes.labels("overflow").inc()
            log.warning("webhook.overflow", type=kind, queued=len(self._queue))
            return
        event_id = "evt_" + secrets.token_hex(10)
        created = self._clock()
        self._queue.append(
            {"id": event_id, "type": kind, "created_at": created, "room_id": room_id, "bot_id": bot_id, "data": data}
        )
        self._idle.clear()
        self._wake.set()

    # ------------------------------------------------------------------ delivery task
    def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def aclose(self, drain_s: float = 5.0) -> None:
        """Give queued events ``drain_s`` to go out (the last stays' transcript.ready), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._http is not None:
            await self._http.close()
        if self._queue:
            log.warning("webhook.undelivered_at_shutdown", count=len(self._queue))

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._deliver(self._queue[0])
            self._queue.popleft()

    async def _deliver(self, event: dict[str, Any]) -> None:
        body = json.dumps(event, ensure_ascii=False).encode()
        delay = self._first_backoff_s
        while True:
            outcome, retry_after = await self._post(event["id"], body)
            if outcome in ("delivered", "rejected"):
                self.outcomes.labels(outcome).inc()
                return
            self.outcomes.labels("retried").inc()
            wait = max(delay, retry_after or 0.0)
            if self._clock() + wait - event["created_at"] > self._retry_for_s:
                self.outcomes.labels("gave_up").inc()
                log.warning("webhook.gave_up", id=event["id"], type=event["type"], reason=outcome)
                return
            await asyncio.sleep(wait)  # backoff between attempts, not synchronisation
            delay = min(self._max_backoff_s, delay * 2)

    async def _post(self, event_id: str, body: bytes) -> tuple[str, float | None]:
        """One attempt: ("delivered" | "rejected" | the reason to retry, Retry-After seconds)."""
        assert self._http is not None
        headers = {
            "Content-Type": "application/json",
            ID_HEADER: event_id,
            SIGNATURE_HEADER: signature(self._secret, str(int(self._clock())), "POST", self._path, body),
        }
        try:
            async with self._http.post(self.url, data=body, headers=headers) as resp:
                if resp.status < 300:
                    return "delivered", None
                if resp.status >= 500 or resp.status in _RETRYABLE:
                    return f"HTTP {resp.status}", parse_retry_after(resp.headers.get("Retry-After"))
                log.warning("webhook.rejected", id=event_id, status=resp.status)
                return "rejected", None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}", None
