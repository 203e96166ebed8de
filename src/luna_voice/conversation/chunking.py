"""Cut a streamed LLM answer into sentences so TTS can start on the first one while the rest is still arriving.

There is deliberately **no minimum length**: a short first sentence ("好的！") goes to TTS at once. (Pipecat's CJK
bug was the opposite: Chinese text was never split, so TTS waited for the whole answer.)

Where a sentence ends:

* after a run of ``。！？；…`` (including ``……``) and any closing quotes or brackets that follow, so ``他说：“好的。”``
  stays one sentence;
* after a run of ``.!?`` (including ``...``) and closers, when the next character is whitespace, a CJK character or
  the end of the stream, except a single ``.`` after an abbreviation (``Dr.``, ``e.g.``, ``vs.``, ``St.``, …), after a
  single capital initial other than ``I`` (``J. K. Rowling``), or after a bare list number (``1. First``). A few
  abbreviations also end sentences (``etc.``, ``No.``, ``Inc.``, ``a.m.``): they split only when the next word does
  not start with a lower-case letter or a digit (``No. 5`` and ``etc. and more`` stay whole). Because a ``.`` must
  be followed by whitespace or CJK, numbers (``3.14``, ``1,000.5``), versions (``v2.0.1``), URLs and e-mail
  addresses never split;
* at every newline.

A terminator at the very end of a delta is held until the next character arrives (or ``flush``), because that
character decides: ``3.`` + ``14`` is a number, ``好。`` + ``”`` keeps its quote. The same holds for whitespace
after an abbreviation that needs the next word. Every decision looks only at the text itself, so any way of
slicing the stream into deltas yields the same chunks.

Markdown that TTS would read aloud is stripped from each chunk: every ``*`` and backtick (bold, emphasis, inline
code and fences; a literal asterisk in a spoken answer is almost always markdown), and at the start of a line a
heading ``#`` or a ``-``/``*`` list marker followed by a space. Chunks are stripped of surrounding whitespace and
never empty.
"""

from __future__ import annotations

import re
from typing import Final

CJK_TERMINATORS: Final = "。！？；…"
ASCII_TERMINATORS: Final = ".!?"
# Closing quotes and brackets stay with the sentence they close; ``*`` and backtick close markdown spans.
CLOSERS: Final = "”’」』）》】〉〕\"')]}*`"

# Never the end of a sentence: titles, Latin abbreviations that always introduce something, "vs.".
_ABBREVIATIONS: Final = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "cf", "e.g", "i.e"})
# The end of a sentence only when the next word does not continue it (lower case or a digit).
_MAYBE_ABBREVIATIONS: Final = frozenset({"etc", "no", "inc", "ltd", "approx"})
_DOTTED_INITIALISM = re.compile(r"(?:[a-z]\.)+[a-z]", re.IGNORECASE)  # U.S., a.m., p.m.
_LIST_NUMBER = re.compile(r"\s*\d+")
_LINE_MARKER = re.compile(r"^\s*(?:#+|[-*])(?:\s+|$)")
_MARKDOWN_CHARS = str.maketrans("", "", "*`")


def is_cjk(ch: str) -> bool:
    """Han, kana, hangul, CJK punctuation and full-width forms: scripts written without spaces."""
    cp = ord(ch)
    return (
        0x3000 <= cp <= 0x30FF  # CJK symbols and punctuation, hiragana, katakana
        or 0x3400 <= cp <= 0x4DBF  # Han extension A
        or 0x4E00 <= cp <= 0x9FFF  # Han
        or 0xAC00 <= cp <= 0xD7AF  # hangul syllables
        or 0xF900 <= cp <= 0xFAFF  # Han compatibility
        or 0xFF00 <= cp <= 0xFFEF  # full-width forms
        or 0x20000 <= cp <= 0x3134F  # Han extensions B–G
    )


def _word_before(buf: str, start: int, dot: int) -> str:
    """The ASCII word (letters and inner dots) ending at ``dot``; empty if it is glued to a digit, as in ``1st.``."""
    k = dot
    while k > start and ((buf[k - 1].isascii() and buf[k - 1].isalpha()) or buf[k - 1] == "."):
        k -= 1
    if k > start and buf[k - 1].isascii() and buf[k - 1].isalnum():
        return ""
    return buf[k:dot].lower()


class SentenceChunker:
    """Feed LLM text deltas, get back complete sentences ready for TTS.

    One instance per reply; ``flush`` at the end of the stream returns the rest and resets the chunker.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._pos = 0  # where scanning resumes in ``_buf``; everything before it is decided "not a boundary"
        self._line_start = True  # ``_buf`` begins a line, so a leading list marker is markdown

    def feed(self, delta: str) -> list[str]:
        """Add a delta; return the sentences it completed (possibly none)."""
        self._buf += delta
        return self._scan(final=False)

    def flush(self) -> list[str]:
        """End of stream: return every remaining sentence, including an unterminated last one."""
        out = self._scan(final=True)
        self._emit(self._buf, out)
        self._buf, self._pos, self._line_start = "", 0, True
        return out

    def _scan(self, *, final: bool) -> list[str]:
        buf, out = self._buf, list[str]()
        start, i = 0, self._pos
        while i < len(buf):
            ch = buf[i]
            if ch == "\n":
                self._emit(buf[start:i], out)
                self._line_start = True
                start = i = i + 1
                continue
            if ch not in CJK_TERMINATORS and ch not in ASCII_TERMINATORS:
                i += 1
                continue
            run_end = i
            while run_end < len(buf) and (buf[run_end] in CJK_TERMINATORS or buf[run_end] in ASCII_TERMINATORS):
                run_end += 1
            end = run_end
            while end < len(buf) and buf[end] in CLOSERS:
                end += 1
            boundary = self._is_boundary(buf, start, i, run_end, end, final=final)
            if boundary is None:
                break  # the next character decides; resume here on the next feed
            if boundary:
                self._emit(buf[start:end], out)
                self._line_start = False
                start = end
            i = end
        self._buf = buf[start:]
        self._pos = i - start
        return out

    @staticmethod
    def _is_boundary(buf: str, start: int, run: int, run_end: int, end: int, *, final: bool) -> bool | None:
        """Whether a sentence ends after ``buf[run:end]`` (terminators, then closers); None = need more text."""
        if end == len(buf) and not final:
            return None
        terminators = buf[run:run_end]
        if any(c in CJK_TERMINATORS for c in terminators):
            return True
        if end < len(buf) and not (buf[end].isspace() or is_cjk(buf[end])):
            return False  # 3.14, v2.0.1, example.com, "wait...what"
        if terminators != ".":
            return True
        word = _word_before(buf, start, run)
        if word in _ABBREVIATIONS or (len(word) == 1 and word != "i" and buf[run - 1].isupper()):
            return False
        if _LIST_NUMBER.fullmatch(buf, start, run):
            return False
        if word in _MAYBE_ABBREVIATIONS or _DOTTED_INITIALISM.fullmatch(word):
            k = end
            while k < len(buf) and buf[k].isspace():
                k += 1
            if k == len(buf):
                return True if final else None
            nxt = buf[k]
            return not (nxt.isascii() and (nxt.islower() or nxt.isdigit()))
        return True

    def _emit(self, text: str, out: list[str]) -> None:
        if self._line_start:
            text = _LINE_MARKER.sub("", text, count=1)
        text = text.translate(_MARKDOWN_CHARS).strip()
        if text:
            out.append(text)
