"""Reply engine for any OpenAI-compatible chat endpoint (Zhipu's glm-4.7-flash, vLLM, Ollama, OpenAI itself).

Used when there is no BotSession, so it keeps what BotSession would keep: a bounded history per room, the room
transcript rendered into the prompt (so "what did Bob just say?" works), and the ``<silent>`` convention of the
``llm`` turn policy. After a barge-in ``record_spoken`` cuts Luna's stored answer to what was actually heard.

The SDK's own retries are off by default: a voice turn is better failed fast (the pipeline carries on) than answered
after several seconds of back-off, and a 429 must reach the pipeline as ``RateLimited``.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import structlog

from luna_voice.conversation.domain import ReplyRequest, Usage
from luna_voice.providers.base import ProviderError
from luna_voice.providers.replies import SILENCE_TOKEN, SilenceGate, status_error

log = structlog.get_logger(__name__)

NAME = "openai_chat"

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

    def discard(self, exchange: _Exchange) -> None:
        if exchange in self._exchanges:
            self._exchanges.remove(exchange)

    def find(self, turn_id: str) -> _Exchange | None:
        return next((ex for ex in reversed(self._exchanges) if ex.turn_id == turn_id), None)

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
    ) -> None:
        """``timeout_s`` bounds connecting and every read, so it is both the first-byte and the idle timeout.

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
        self._max_history_messages = max_history_messages
        self._max_history_chars = max_history_chars
        self._rooms: dict[str, _RoomHistory] = {}

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
        )

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str | Usage]:
        history = self._history(request.room_id)
        messages = self._messages(history, request)
        # Stored before the answer arrives: after a barge-in the stream is cancelled and record_spoken follows.
        exchange = _Exchange(request.turn_id, f"{request.speaker_name}: {request.text}")
        history.add(exchange)
        gate = SilenceGate(request.may_stay_silent)
        usage: Usage | None = None
        try:
            stream = await self._stream(messages)
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = Usage(
                            llm_input_tokens=chunk.usage.prompt_tokens or 0,
                            llm_output_tokens=chunk.usage.completion_tokens or 0,
                        )
                    for choice in chunk.choices or ():
                        text = choice.delta.content if choice.delta is not None else None
                        if not text:
                            continue
                        exchange.assistant += text
                        if spoken := gate.feed(text):
                            yield spoken
        except openai.OpenAIError as err:
            history.discard(exchange)
            log.warning("openai_chat.failed", room_id=request.room_id, error=type(err).__name__)
            raise _map_error(err) from None
        except json.JSONDecodeError:
            history.discard(exchange)
            log.warning("openai_chat.malformed", room_id=request.room_id)
            raise ProviderError(NAME, "malformed response") from None
        if gate.silent:
            history.discard(exchange)
            log.info("openai_chat.silent", room_id=request.room_id, turn_id=request.turn_id)
        history.trim()
        if usage is None:
            log.warning("openai_chat.no_usage", model=self._model)
        yield usage or Usage()

    async def record_spoken(self, room_id: str, turn_id: str, spoken_text: str, interrupted: bool) -> None:
        history = self._rooms.get(room_id)
        exchange = history.find(turn_id) if history is not None else None
        if exchange is None:  # silent, failed or already trimmed away
            return
        exchange.assistant = spoken_text
        exchange.interrupted = interrupted

    async def aclose(self) -> None:
        await self._client.close()
