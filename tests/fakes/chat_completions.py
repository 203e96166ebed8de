"""A local OpenAI-compatible ``POST /v1/chat/completions`` on 127.0.0.1, streaming like the real API.

Streaming answers are ``data: <chat.completion.chunk>`` SSE events: a first chunk with ``delta.role``, one chunk per
scripted delta, a chunk with ``finish_reason: "stop"``, then, when the request set
``stream_options.include_usage``, a chunk with ``choices: []`` and the usage (earlier chunks then carry
``"usage": null``), and finally ``data: [DONE]``. Non-streaming requests get one ``chat.completion`` object.
Errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}`` body; a failure inside a stream is a
``data: {"error": ...}`` event, which is how OpenAI reports it.

Like GLM-4.7 on Z.ai, the fake *thinks by default*: a completion's ``reasoning`` streams first, as
``delta.reasoning_content``, unless the request has ``"thinking": {"type": "disabled"}``, and its tokens count in
``completion_tokens`` (``reasoning_tokens`` in the details). A model without a reasoning parser is a completion whose
``deltas`` carry ``<think>…</think>``. With ``strict=True`` the fake is a server that, like OpenAI's, refuses request
fields it does not know (``thinking`` among them) with a 400.

Faults are the ones of ``fakes.botsession`` (``Fault``). Requests are recorded with their headers and JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from .botsession import Fault, serve


@dataclass
class Completion:
    """One scripted answer; usage defaults to a rough count of the request and the deltas."""

    deltas: Sequence[str] = ()
    reasoning: Sequence[str] = ()  # streamed as reasoning_content first, unless thinking is disabled
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    fault: Fault | None = None
    retry_after: str = "3"
    delay_s: float = 0.005
    hold_last: asyncio.Event | None = None  # the last delta is sent only once the test sets it


DEFAULT_COMPLETION = Completion(deltas=("Hi", "!"))
# Chat-completions request fields OpenAI knows (a strict server refuses anything else).
OPENAI_FIELDS = {
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens", "max_completion_tokens",
    "stop", "n", "presence_penalty", "frequency_penalty", "logit_bias", "user", "seed", "tools", "tool_choice",
    "response_format", "logprobs", "top_logprobs", "parallel_tool_calls", "metadata", "store", "reasoning_effort",
    "service_tier", "modalities", "audio", "prediction", "web_search_options", "verbosity", "prompt_cache_key",
    "safety_identifier",
}  # fmt: skip


@dataclass
class RecordedCall:
    headers: dict[str, str]
    json: dict[str, Any]


def _error(
    status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


@dataclass
class FakeChatCompletions:
    api_key: str = "test-key"
    model: str = "glm-4.7-flash"
    base_url: str = ""
    strict: bool = False
    requests: list[RecordedCall] = field(default_factory=list)
    _script: deque[Completion] = field(default_factory=deque)
    _created: int = field(default_factory=lambda: int(time.time()))

    def script(self, *completions: Completion) -> None:
        self._script.extend(completions)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(RecordedCall(dict(request.headers), body))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if self.strict and (unknown := sorted(set(body) - OPENAI_FIELDS)):
            return _error(400, f"Unrecognized request argument supplied: {unknown[0]}", "invalid_request_error", None)
        completion = self._script.popleft() if self._script else DEFAULT_COMPLETION
        if (body.get("thinking") or {}).get("type") == "disabled":
            completion = replace(completion, reasoning=())
        if completion.fault == "rate_limit":
            headers = {"retry-after": completion.retry_after}
            return _error(429, "Rate limit reached for requests.", "requests", "rate_limit_exceeded", headers)
        if completion.fault == "http_500":
            return _error(500, "The server had an error processing your request.", "server_error", None)
        if completion.fault == "slow_first_byte":
            await asyncio.Event().wait()  # until the client disconnects
        usage = self._usage(body, completion)
        if not body.get("stream"):
            return web.json_response(self._whole(body, completion, usage))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await self._stream(resp, completion, usage if include_usage else None, body.get("model", self.model))
        return resp

    @staticmethod
    def _usage(body: dict[str, Any], completion: Completion) -> dict[str, Any]:
        prompt = completion.prompt_tokens
        if prompt is None:
            prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4 + 1
        reasoning = len(completion.reasoning)
        output = completion.completion_tokens
        if output is None:
            output = len(completion.deltas) + reasoning
        return {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _whole(self, body: dict[str, Any], completion: Completion, usage: dict[str, Any]) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(completion.deltas), "refusal": None, "annotations": []}
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": self._created,
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    async def _stream(
        self, resp: web.StreamResponse, completion: Completion, usage: dict[str, Any] | None, model: str
    ) -> None:
        def chunk(delta: dict[str, Any] | None, finish: str | None = None, final_usage: Any = None) -> bytes:
            data: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if usage is not None:  # with include_usage every chunk has the key, null until the last
                data["usage"] = final_usage
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

        await resp.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        if completion.fault == "malformed":
            await resp.write(b'data: {"id": "chatcmpl-fake", "choices": [\n\n')
            return
        for thought in completion.reasoning:
            await resp.write(chunk({"content": None, "reasoning_content": thought}))
            await asyncio.sleep(completion.delay_s)
        deltas = list(completion.deltas)
        for i, text in enumerate(deltas):
            if i == len(deltas) - 1 and completion.hold_last is not None:
                await completion.hold_last.wait()
            await resp.write(chunk({"content": text}))
            await asyncio.sleep(completion.delay_s)
            if completion.fault == "stall":
                await asyncio.Event().wait()
            if completion.fault == "error_event":
                error = {"message": "The model is overloaded.", "type": "server_error", "param": None, "code": None}
                await resp.write(f"data: {json.dumps({'error': error})}\n\n".encode())
                return
        await resp.write(chunk({}, finish="stop"))
        if usage is not None:
            await resp.write(chunk(None, final_usage=usage))
        await resp.write(b"data: [DONE]\n\n")


@asynccontextmanager
async def fake_chat_completions(
    api_key: str = "test-key", *, strict: bool = False
) -> AsyncIterator[FakeChatCompletions]:
    """A running fake; pass ``fake.base_url`` (ends in ``/v1``) and ``fake.api_key`` to the client."""
    fake = FakeChatCompletions(api_key=api_key, strict=strict)
    async with serve(fake.app()) as base:
        fake.base_url = f"{base}/v1"
        yield fake
