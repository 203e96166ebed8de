"""Pieces both reply engines (BotSession, OpenAI-compatible chat) share: the filters a reply passes before it may be
spoken (``<think>`` blocks, the ``<silent>`` token), the usage meter for replies cut off mid-stream, and HTTP error
mapping."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any

from luna_voice.providers.base import ProviderError, RateLimited, Usage
from luna_voice.retry_after import parse_retry_after

SILENCE_TOKEN = "<silent>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag`` (kept back until it is decided)."""
    return next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if tag.startswith(text[-n:])), 0)


class ThinkFilter:
    """Removes ``<think>…</think>`` blocks from streamed text, so reasoning is never spoken.

    A self-hosted model without a reasoning parser puts its reasoning into the answer this way. Text that could be
    the start of a tag is held back only until the next delta decides it; an unterminated block is dropped, and
    whitespace right after a block is dropped too (models put a blank line there).
    """

    def __init__(self) -> None:
        self._buf = ""
        self._inside = False
        self._after_block = False

    def feed(self, delta: str) -> str:
        self._buf += delta
        out = []
        while self._buf:
            if self._inside:
                end = self._buf.find(THINK_CLOSE)
                if end < 0:
                    self._buf = self._buf[len(self._buf) - _held_prefix(self._buf, THINK_CLOSE) :]
                    break
                self._buf, self._inside, self._after_block = self._buf[end + len(THINK_CLOSE) :], False, True
                continue
            if self._after_block:
                self._buf = self._buf.lstrip()
                if not self._buf:
                    break
                self._after_block = False
            start = self._buf.find(THINK_OPEN)
            if start >= 0:
                out.append(self._buf[:start])
                self._buf, self._inside = self._buf[start + len(THINK_OPEN) :], True
                continue
            keep = _held_prefix(self._buf, THINK_OPEN)
            out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            break
        return "".join(out)

    def flush(self) -> str:
        """The text held back at the end of the reply (nothing, if it ended inside a block)."""
        rest, self._buf = ("" if self._inside else self._buf), ""
        return rest


def estimate_tokens(text: str) -> int:
    """A rough token count: about one token per CJK character and per four other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


class UsageMeter:
    """Reports a reply's usage as it accrues, so a reply cancelled mid-stream (barge-in) is still counted.

    Until the service's own count arrives the numbers are estimates (the prompt when the stream opens, the text and
    reasoning as they stream); ``exact`` then reports the difference, so the total is the service's figure.
    """

    def __init__(self) -> None:
        self._estimate = Usage()
        self._reported = Usage()

    def add(self, *, input_text: str = "", output_text: str = "") -> None:
        self._estimate += Usage(
            llm_input_tokens=estimate_tokens(input_text), llm_output_tokens=estimate_tokens(output_text)
        )

    def take(self, at_least: int = 1) -> Usage | None:
        """Estimated usage not yet reported, if it comes to ``at_least`` tokens."""
        return self._report(self._estimate, at_least)

    def exact(self, usage: Usage) -> Usage:
        """The rest of the service's final count (which replaces every estimate)."""
        return self._report(usage, 0) or Usage()

    def _report(self, total: Usage, at_least: int) -> Usage | None:
        delta = Usage(**{f.name: getattr(total, f.name) - getattr(self._reported, f.name) for f in fields(Usage)})
        if delta == Usage() or (at_least and delta.llm_input_tokens + delta.llm_output_tokens < at_least):
            return None
        self._reported = Usage(**vars(total))
        return delta


SAFE_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # a server-chosen error code we may repeat in logs and errors


class SilenceGate:
    """Recognises a reply that is the silence token (or empty) without delaying a real answer.

    Text is held back only while everything received so far (ignoring leading whitespace) could still turn out to
    be ``<silent>``; the first delta that rules it out releases the held text at once. A reply that starts with the
    token is silence (anything after it is dropped), and so is a reply that ends while still undecided.
    """

    def __init__(self, active: bool) -> None:
        self._deciding = active
        self._silent = False
        self._held = ""

    @property
    def silent(self) -> bool:
        """True once the reply is known to be silence, or if it ended while undecided."""
        return self._silent or self._deciding

    def feed(self, delta: str) -> str:
        """Return the text that may be spoken now."""
        if self._silent:
            return ""
        if not self._deciding:
            return delta
        self._held += delta
        head = self._held.lstrip()
        if head.startswith(SILENCE_TOKEN):
            self._deciding, self._silent = False, True
            return ""
        if SILENCE_TOKEN.startswith(head):
            return ""
        self._deciding = False
        released, self._held = self._held, ""
        return released


def status_error(provider: str, status: int, *, retry_after: str | None = None, code: Any = None) -> ProviderError:
    """Map a non-2xx answer to the pipeline's errors; ``code`` (server-chosen) is kept only if it looks like one."""
    detail = f"HTTP {status}"
    if isinstance(code, str) and SAFE_CODE.fullmatch(code):
        detail += f" {code}"
    if status == 429:
        return RateLimited(provider, f"rate limited ({detail})", retry_after=parse_retry_after(retry_after))
    if status in (401, 403):
        return ProviderError(provider, f"auth refused ({detail})")
    return ProviderError(provider, detail)
