"""Is a transcript plainly unfinished? The text half of end of turn: acoustic for speed, text for safety.

The turn model (Smart Turn) ends turns on the sound of the voice. It is sure some clauses are finished that no
listener would answer ("Could you tell me if" 0.99, "Luna, how much would it cost to" 0.96: bench/README.md,
"End of turn"). The words say what the melody cannot: a sentence does not end on "if", "to", "the", "my" or
"如果". The core holds such a transcript for a moment (``LUNA_CONTINUATION_WAIT_S``) and joins it to the same
speaker's next words; livekit-agents' text turn detector plays the same part after its VAD.

The rule is deliberately narrow, since a wrong hold delays an answer by the whole wait:

* a transcript that ends a sentence (".", "?", "!", "。", "？", "！") is never held: the STT's own language
  model heard a whole sentence;
* one that trails off ("…", "...", a dash, a comma) is held;
* otherwise it is held when its last word is one a sentence cannot end on: an English conjunction,
  preposition, article, possessive, auxiliary or contracted auxiliary ("it's"), a question word left hanging
  ("We need to decide who"), or a Chinese function word (的, 和, 把, 关于, 如果, 因为, 但是, …).

Whisper tiny.en wrote 32 fragments of the bench's paused sentences (two Piper paces) without punctuation
("Could you tell me if", "Luna, tell me about") or with "..." or a dash, none with a full stop, and two with a
"?" ("Luna, what do you think about?", left to the turn model), while it sometimes drops the "?" of a finished
question ("Luna is the budget ready yet"). So a missing full stop alone never holds a transcript; the last word
or a trailing mark must.
"""

from __future__ import annotations

import re
from enum import StrEnum

from luna_voice.conversation.chunking import is_cjk


class Unfinished(StrEnum):
    """Why a transcript was held as a fragment."""

    TRAILING = "trailing"  # it trails off: an ellipsis, a dash or a comma
    DANGLING_WORD = "dangling_word"  # its last word cannot end a sentence


def _words(spaced: str) -> frozenset[str]:
    return frozenset(spaced.split())


_FINAL = frozenset(".?!。？！")
_TRAILING = ("…", "...", "-", "—", "–", ",", "，", "、", "：", ":")
# Words an English sentence does not end on. Particles that often end one ("in", "on", "up", "over") and words
# that end set phrases ("so" in "I think so", "like" in "what's it like", "while" in "for a while") are left out:
# a wrong hold costs a wait.
_EN = _words(
    """
    and or but nor because if whether that than unless although until whereas
    about of to for with from at by into onto toward towards between without within during against via per among
    a an the my your our their his its whose
    is are was were am be been being do does did have has had will would can could should shall may might must
    it's that's there's what's he's she's who's i'm you're we're they're i've you've we've they've
    i'll you'll we'll they'll i'd you'd we'd they'd
    who what when where which why how whom
    """
)
# Chinese words a sentence does not end on: conjunctions, prepositions, a pending "是" or "的话" clause, and
# adverbs that need a verb after them. The attributive 的 is left out: 好的, 是的 and the 是…的 construction end
# sentences all the time. A single character also ends many a word that does end one (现在, 不对, 方向, 不是).
_ZH = (
    "的话", "关于", "如果", "因为", "但是", "可是", "所以", "或者", "还是", "就是", "而且", "然后", "虽然", "不过",
    "应该", "需要", "比如", "以及", "除了", "为了", "和", "跟", "与", "把", "被", "在", "对", "给", "从", "向",
    "是", "先", "再",
)  # fmt: skip
_ZH_WHOLE = _words(
    "现在 存在 正在 实在 自在 好在 不在 还在 暖和 温和 不对 面对 绝对 相对 反对 不是 总是 于是 老是 真是 "
    "方向 一向 首先 原先 事先 预先 优先 不再 自从"
)
_WORD = re.compile(r"[A-Za-z']+$")


def unfinished(text: str) -> Unfinished | None:
    """Why ``text`` is plainly unfinished, or None if it may be a whole turn."""
    text = text.strip().replace("’", "'")
    if text.endswith(_TRAILING):
        return Unfinished.TRAILING
    if not text or text[-1] in _FINAL:
        return None
    if is_cjk(text[-1]):
        word = next((w for w in _ZH if text.endswith(w)), None)
        if word is None or any(text.endswith(w) for w in _ZH_WHOLE):
            return None
        before = text[: -len(word)]
    else:
        found = _WORD.search(text)
        if found is None or found.group().lower() not in _EN:
            return None
        before = text[: found.start()]
    # A dangling word said alone ("是", "就是", "And") is an answer or a backchannel, not half a sentence.
    return Unfinished.DANGLING_WORD if sum(c.isalnum() for c in before) >= 2 else None
