"""Pieces both reply engines (BotSession, OpenAI-compatible chat) share: the silence gate and HTTP error mapping."""

from __future__ import annotations

import re
from typing import Any

from luna_voice.providers.base import ProviderError, RateLimited
from luna_voice.retry_after import parse_retry_after

SILENCE_TOKEN = "<silent>"
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
