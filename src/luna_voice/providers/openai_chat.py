"""Reply engine for any OpenAI-compatible chat endpoint (Zhipu's glm-4.7-flash, vLLM, Ollama, OpenAI itself).

Used when there is no BotSession, so it keeps what BotSession would keep: a bounded history per room, the room
transcript rendered into the prompt (so "what did Bob just say?" works), and the ``<silent>`` convention of the
``llm`` turn policy. Like the BotSession contract, a turn enters the history only when ``record_spoken`` closes it,
with what the room actually heard (a merged turn, or one nobody heard anything of, is dropped).

Thinking is turned off per request (``extra_body``, default ``DEFAULT_EXTRA_BODY``); if a model reasons anyway,
``reasoning_content`` and ``<think>`` blocks are never spoken, but their tokens are counted.

The SDK's own retries are off by default: a voice turn is better failed fast (the pipeline carries on) than answered
after several seconds of back-off, and a 429 must reach the pipeline as ``RateLimited``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import openai
import structlog

from luna_voice.conversation.domain import ReplyRequest, SpokenReason, Usage
from luna_voice.providers.base import ProviderError
from luna_voice.providers.replies import SILENCE_TOKEN, SilenceGate, ThinkFilter, UsageMeter, status_error

log = structlog.get_logger(__name__)

NAME = "openai_chat"
# Sent with every request unless configured otherwise: GLM-4.7 thinks by default (docs.z.ai thinking mode), which
# delays the first spoken word by the whole reasoning and bills it as output.
DEFAULT_EXTRA_BODY: Mapping[str, Any] = {"thinking": {"type": "disabled"}}
METER_STEP_TOKENS = 32  # during reasoning, estimated usage is reported every this many tokens
MAX_PENDING = 64

INTERRUPTED_MARK = "[interrupted]"
HISTORY_NOTE = (
    f"Each user message starts with the speaker's name. An answer of yours ending in {INTERRUPTED_MARK} was cut off "
    "by someone speaking; people heard only the words shown."
)
SILENCE_INSTRUCTIONS = (
    "You are listening to a group conversation and not every line is meant for you. If the latest line is not "
    f"addressed to you and needs no answer from you, reply with exactly {SILENCE_TOKEN} and nothing else. "
    "Otherwise answer normally."
)


@dataclass
class _Exchange:
    """One turn as the model will see it next time: who said what, and what Luna said back."""

    turn_id: str
    user: str
    assistant: str = ""
    interrupted: bool = False

    def messages(self) -> list[dict[str, str]]:
        said = self.assistant.strip()
        if self.interrupted:
            said = f"{said} {INTERRUPTED_MARK}".lstrip()
        return [{"role": "user", "content": self.user}, {"role": "assistant", "content": said}]

    def chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages())


class _RoomHistory:
    """Recent exchanges of one room, bounded by message count and characters (oldest dropped first)."""

    def __init__(self, max_messages: int, max_chars: int) -> None:
        self._max_messages = max_messages
        self._max_chars = max_chars
        self._exchanges: deque[_Exchange] = deque()

    def messages(self) -> list[dict[str, str]]:
        return [m for ex in self._exchanges for m in ex.messages()]

    def add(self, exchange: _Exchange) -> None:
        self._exchanges.append(exchange)
        self.trim()

    def trim(self) -> None:
        while self._exchanges and (
            2 * len(self._exchanges) > self._max_messages or sum(ex.chars() for ex in self._exchanges) > self._max_chars
        ):
            self._exchanges.popleft()


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))


def render_turn(request: ReplyRequest) -> str:
    """The user message for this turn: the room transcript (names and UTC times), then who is speaking now."""
    lines = []
    if request.context:
        lines.append("Recent conversation in the room (oldest first, UTC):")
        lines += [f"[{_clock(line.at)}] {line.speaker}: {line.text}" for line in request.context]
        lines.append("")
    to_you = " (to you)" if request.addressed else ""
    lines.append(f"Now {request.speaker_name}{to_you}: {request.text}")
    return "\n".join(lines)


def _reported_usage(reported: Any) -> Usage:
    """The service's token counts (reasoning included in completion tokens), read defensively."""
    prompt, completion = getattr(reported, "prompt_tokens", None), getattr(reported, "completion_tokens", None)
    return Usage(
        llm_input_tokens=prompt if isinstance(prompt, int) else 0,
        llm_output_tokens=completion if isinstance(completion, int) else 0,
    )


def _map_error(err: openai.OpenAIError) -> ProviderError:
    """Translate SDK errors; SDK messages are not passed on (a 401 message echoes part of the key)."""
    if isinstance(err, openai.APITimeoutError):
        return ProviderError(NAME, "timeout")
    if isinstance(err, openai.APIConnectionError):
        return ProviderError(NAME, "connection failed")
    if isinstance(err, openai.APIStatusError):
        retry_after = err.response.headers.get("retry-after")
        return status_error(NAME, err.status_code, retry_after=retry_after, code=err.code)
    if isinstance(err, openai.APIError):  # an {"error": ...} event inside the stream
        return ProviderError(NAME, "stream error")
    return ProviderError(NAME, f"client error: {type(err).__name__}")


class OpenAIChatEngine:
    """``ReplyEngine`` over ``chat.completions`` with streaming and usage reporting."""

    name = NAME

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        system_prompt: str,
        model: str = "glm-4.7-flash",
        timeout_s: float = 20.0,
        max_history_messages: int = 20,
        max_history_chars: int = 6000,
        max_retries: int = 0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        """``timeout_s`` bounds connecting and every read, so it is both the first-byte and the idle timeout.

        ``extra_body`` is merged into every request body; the default turns GLM's thinking off
        (``DEFAULT_EXTRA_BODY``). Pass ``{}`` for a server that rejects unknown fields.

        A keyless local server still needs a non-empty key for the SDK; ``None`` is never passed on, because the
        SDK would then fall back to ``OPENAI_API_KEY``, which belongs to a different service here.
        """
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "none",
            timeout=openai.Timeout(timeout_s),
            max_retries=max_retries,
        )
        self._model = model
        self._system_prompt = system_prompt
        self._timeout_s = timeout_s
        self._extra_body = dict(DEFAULT_EXTRA_BODY if extra_body is None else extra_body)
        self._max_history_messages = max_history_messages
        self._max_history_chars = max_history_chars
        self._rooms: dict[str, _RoomHistory] = {}
        # Turns asked but not yet closed by record_spoken, oldest first; bounded in case a close never comes.
        self._pending: dict[tuple[str, str], _Exchange] = {}

    def __repr__(self) -> str:
        return f"OpenAIChatEngine(model={self._model!r})"

    def _history(self, room_id: str) -> _RoomHistory:
        if room_id not in self._rooms:
            self._rooms[room_id] = _RoomHistory(self._max_history_messages, self._max_history_chars)
        return self._rooms[room_id]

    def _messages(self, history: _RoomHistory, request: ReplyRequest) -> list[dict[str, str]]:
        system = f"{self._system_prompt}\n\n{HISTORY_NOTE}"
        if request.may_stay_silent:
            system += f"\n\n{SILENCE_INSTRUCTIONS}"
        return [
            {"role": "system", "content": system},
            *history.messages(),
            {"role": "user", "content": render_turn(request)},
        ]

    async def _stream(self, messages: list[dict[str, str]]) -> Any:
        return await self._client.chat.completions.create(
            model=self._model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_body=self._extra_body or None,
        )

    async def _chunks(self, stream: Any) -> AsyncIterator[Any]:
        """The stream's chunks, each within ``timeout_s`` (an idle bound that does not depend on the HTTP library)."""
        async with stream:
            iterator = aiter(stream)
            while True:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        chunk = await anext(iterator, None)
                except TimeoutError:
                    raise ProviderError(NAME, "timeout") from None
                if chunk is None:
                    return
                yield chunk

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str | Usage]:
        messages = self._messages(self._history(request.room_id), request)
        # Kept pending until record_spoken closes the turn with what the room heard of the answer.
        self._remember_pending(request.room_id, _Exchange(request.turn_id, f"{request.speaker_name}: {request.text}"))
        think, gate, meter = ThinkFilter(), SilenceGate(request.may_stay_silent), UsageMeter()
        exact: Usage | None = None
        reasoned = False
        try:
            stream = await self._stream(messages)
            meter.add(input_text=json.dumps(messages, ensure_ascii=False))
            async for chunk in self._chunks(stream):
                if (reported := getattr(chunk, "usage", None)) is not None:
                    exact = _reported_usage(reported)
                for choice in getattr(chunk, "choices", None) or ():
                    delta = getattr(choice, "delta", None)
                    # Reasoning (Z.ai's reasoning_content): never spoken, but billed, so metered.
                    if reasoning := getattr(delta, "reasoning_content", None):
                        reasoned = True
                        meter.add(output_text=reasoning)
                    if not (text := getattr(delta, "content", None)):
                        continue
                    meter.add(output_text=text)
                    if spoken := gate.feed(think.feed(text)):
                        if usage := meter.take():
                            yield usage
                        yield spoken
                if usage := meter.take(METER_STEP_TOKENS):
                    yield usage
            if spoken := gate.feed(think.flush()):
                yield spoken
        except openai.OpenAIError as err:
            log.warning("openai_chat.failed", room_id=request.room_id, error=type(err).__name__)
            raise _map_error(err) from None
        except json.JSONDecodeError:
            log.warning("openai_chat.malformed", room_id=request.room_id)
            raise ProviderError(NAME, "malformed response") from None
        if reasoned:
            log.warning("openai_chat.reasoning", model=self._model, hint="thinking is on: check LUNA_LLM_EXTRA_BODY")
        if gate.silent:
            log.info("openai_chat.silent", room_id=request.room_id, turn_id=request.turn_id)
        if exact is None:
            log.warning("openai_chat.no_usage", model=self._model)
            yield meter.take() or Usage()
        else:
            yield meter.exact(exact)

    def _remember_pending(self, room_id: str, exchange: _Exchange) -> None:
        self._pending[(room_id, exchange.turn_id)] = exchange
        while len(self._pending) > MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))

    async def record_spoken(self, room_id: str, turn_id: str, spoken_text: str, reason: SpokenReason) -> None:
        """Close the turn: store what the room heard of it, or nothing if it was merged or nothing was heard (the
        line itself reaches the model through the room transcript either way)."""
        exchange = self._pending.pop((room_id, turn_id), None)
        interrupted = reason is SpokenReason.INTERRUPTED
        if exchange is None or reason is SpokenReason.MERGED or not (spoken_text.strip() or interrupted):
            return
        exchange.assistant, exchange.interrupted = spoken_text, interrupted
        self._history(room_id).add(exchange)

    async def aclose(self) -> None:
        await self._client.close()
