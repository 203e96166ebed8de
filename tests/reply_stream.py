"""Reading a reply engine's stream in tests: its text deltas and its total usage, every wait bounded."""

from __future__ import annotations

import asyncio

import pytest

from luna_voice.conversation.domain import ReplyRequest, Usage
from luna_voice.providers.base import ProviderError, ReplyEngine

GUARD_S = 5.0  # no test may hang: every await on the engine is bounded by this


async def collect(engine: ReplyEngine, req: ReplyRequest) -> list[str | Usage]:
    """The reply's text deltas, then its total usage (reported in parts while it streams)."""
    async with asyncio.timeout(GUARD_S):
        items = [item async for item in engine.reply(req)]
    return [*texts(items), total(items)]


async def failure(engine: ReplyEngine, req: ReplyRequest) -> tuple[ProviderError, list[str | Usage]]:
    """The error a failing reply ends with, and what it streamed before it (the wait bounded)."""
    got: list[str | Usage] = []
    with pytest.raises(ProviderError) as info:
        async with asyncio.timeout(GUARD_S):
            async for item in engine.reply(req):
                got.append(item)
    return info.value, got


def texts(items: list[str | Usage]) -> list[str]:
    return [i for i in items if isinstance(i, str)]


def total(items: list[str | Usage]) -> Usage:
    usage = Usage()
    for item in items:
        if isinstance(item, Usage):
            usage += item
    return usage
