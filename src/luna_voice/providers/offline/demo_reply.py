"""The demo responder: **not an AI**. It repeats what it heard, so the offline demo exercises the whole loop
(speech in, a streamed reply, speech out) without any language model.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from luna_voice.conversation.domain import ReplyRequest, SpokenReason, Usage
from luna_voice.providers.offline._shared import CJK_RANGES, cjk_share

# A delta is one Chinese character, or one run of other non-space text, with the spaces after it.
_DELTA = re.compile(rf"[{CJK_RANGES}]\s*|[^\s{CJK_RANGES}]+\s*|\s+")


class DemoReply:
    """``ReplyEngine`` that echoes: "I heard Ana say: …" (or its Chinese form for mostly-Chinese text)."""

    name = "demo"

    async def reply(self, request: ReplyRequest) -> AsyncIterator[str | Usage]:
        # Under the ``llm`` turn policy a model would choose to stay out of talk not meant for it; so does the echo.
        if request.addressed or not request.may_stay_silent:
            if cjk_share(request.text) > 0.5:
                answer = f"我听到{request.speaker_name or '有人'}说：{request.text}"
            else:
                answer = f"I heard {request.speaker_name or 'someone'} say: {request.text}"
            for delta in _DELTA.findall(answer):
                yield delta
        yield Usage()

    async def record_spoken(self, room_id: str, turn_id: str, spoken_text: str, reason: SpokenReason) -> None:
        """The echo keeps no conversation, so there is nothing to record."""

    async def aclose(self) -> None:
        """Holds nothing."""
