"""Small helpers the offline engines share: load-once models, CPU work off the event loop, a CJK test."""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from luna_voice.providers.base import ProviderError

log = structlog.get_logger(__name__)

T = TypeVar("T")

# CJK unified ideographs (extension A, the main block, compatibility): what makes a text "Chinese" here.
CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK = re.compile(f"[{CJK_RANGES}]")
_LETTER = re.compile(r"\w")


def load_once(load: Callable[[], T]) -> Callable[[], T]:
    """Share one slow load per process: every bot uses the same model, and concurrent first callers wait for it."""
    cached = functools.cache(load)
    lock = threading.Lock()

    def get() -> T:
        with lock:
            return cached()

    return get


async def in_thread(provider: str, what: str, work: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound model work in a worker thread; any failure becomes the seam's ``ProviderError``.

    Cancelling the caller does not stop the thread (models cannot be interrupted); its result is dropped.
    """
    try:
        return await asyncio.to_thread(work, *args)
    except Exception as exc:
        log.exception("offline.failed", provider=provider, what=what)
        raise ProviderError(provider, f"{what} failed ({type(exc).__name__})") from exc


def cjk_share(text: str) -> float:
    """Fraction of the letters in ``text`` that are Chinese characters (0.0 for text without letters)."""
    letters = len(_LETTER.findall(text))
    return len(_CJK.findall(text)) / letters if letters else 0.0
