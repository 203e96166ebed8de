"""Sentence chunking: worked examples plus properties over mixed Chinese/English streams sliced at random."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luna_voice.conversation.chunking import ASCII_TERMINATORS, CJK_TERMINATORS, CLOSERS, SentenceChunker, is_cjk

# Deterministic runs (same examples every time), enough of them to find slicing bugs.
PROPERTY = settings(derandomize=True, deadline=None, max_examples=400)


def chunk(deltas: list[str]) -> list[str]:
    chunker = SentenceChunker()
    out: list[str] = []
    for delta in deltas:
        out += chunker.feed(delta)
    return out + chunker.flush()


def cut(text: str, points: list[int]) -> list[str]:
    bounds = [0, *sorted(p % (len(text) + 1) for p in points), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


EXAMPLES = [
    ("你好！我是Luna。How are you? 今天3.5度。", ["你好！", "我是Luna。", "How are you?", "今天3.5度。"]),
    ("他说：“好的。”然后就走了。", ["他说：“好的。”", "然后就走了。"]),
    ("「真的吗？」她问。", ["「真的吗？」", "她问。"]),
    ("好的！！我知道了？！嗯……那么；我们走吧", ["好的！！", "我知道了？！", "嗯……", "那么；", "我们走吧"]),
    ("It is 3.14 today. Pi is 3.", ["It is 3.14 today.", "Pi is 3."]),
    ("That costs 1,000.5 dollars in v2.0.1 of the app.", ["That costs 1,000.5 dollars in v2.0.1 of the app."]),
    ("Dr. Smith and Mr. Lee met Mrs. Wu and Ms. Li.", ["Dr. Smith and Mr. Lee met Mrs. Wu and Ms. Li."]),
    ("Fruit, e.g. apples, i.e. food. Cats vs. dogs.", ["Fruit, e.g. apples, i.e. food.", "Cats vs. dogs."]),
    (
        "Apples, pears, etc. and more. I like fruit etc. Then I left.",
        ["Apples, pears, etc. and more.", "I like fruit etc.", "Then I left."],
    ),
    ("Take No. 5 to St. Louis. No. That is wrong.", ["Take No. 5 to St. Louis.", "No.", "That is wrong."]),
    ("J. K. Rowling wrote it. I came 1st. Then I won.", ["J. K. Rowling wrote it.", "I came 1st.", "Then I won."]),
    ("Meet at 5 p.m. Then go. Meet at 5 p.m. tomorrow.", ["Meet at 5 p.m.", "Then go.", "Meet at 5 p.m. tomorrow."]),
    (
        "See https://example.com/a.b?x=1 or mail luna@example.com. Done!",
        ["See https://example.com/a.b?x=1 or mail luna@example.com.", "Done!"],
    ),
    ("Wait...what? Well... I think so.", ["Wait...what?", "Well...", "I think so."]),
    ('He said "hi." Then left.', ['He said "hi."', "Then left."]),
    ("Hello.你好。OK!好的", ["Hello.", "你好。", "OK!", "好的"]),
    ("first line\nsecond line\n\n\nthird", ["first line", "second line", "third"]),
    ("Yahoo!Inc is a name.", ["Yahoo!Inc is a name."]),
    ("   \n \n", []),
    ("", []),
]


@pytest.mark.parametrize(("text", "expected"), EXAMPLES)
def test_examples_whole_and_char_by_char(text: str, expected: list[str]) -> None:
    assert chunk([text]) == expected
    assert chunk(list(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**Note.** This is `code`.", ["Note.", "This is code."]),
        (
            "# Weather today\n- Sunny, 25 度。\n* Windy.\n1. First. 2. second",
            ["Weather today", "Sunny, 25 度。", "Windy.", "1. First.", "2. second"],
        ),
        ("```\nprint(1)\n```", ["print(1)"]),
        # a dash mid-line is not a list marker, even right after a sentence
        ("Cost - about 5 dollars. - or less", ["Cost - about 5 dollars.", "- or less"]),
        ("#1 fan!", ["#1 fan!"]),  # no space after '#': not a heading
        ("-\n**\n", []),  # markup alone is never a chunk
    ],
)
def test_markdown_is_stripped(text: str, expected: list[str]) -> None:
    assert chunk([text]) == expected
    assert chunk(list(text)) == expected


def test_first_sentence_goes_out_without_waiting_for_more() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("好！") == []  # a closing quote could still follow
    assert chunker.feed("我") == ["好！"]
    assert chunker.feed("是Luna。Hi. ") == ["我是Luna。", "Hi."]
    assert chunker.feed("OK") == []
    assert chunker.flush() == ["OK"]


@pytest.mark.parametrize(
    "deltas",
    [
        ["It is 3.", "14 today."],
        ["It is 3", ".", "1", "4 today", "."],
        ["It is 3.14 today", "."],
    ],
)
def test_decimal_point_at_delta_boundary_is_held(deltas: list[str]) -> None:
    chunker = SentenceChunker()
    assert [c for d in deltas for c in chunker.feed(d)] == []
    assert chunker.flush() == ["It is 3.14 today."]


def test_closing_quote_in_next_delta_stays_with_sentence() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("他说：“好的。") == []
    assert chunker.feed("”然后") == ["他说：“好的。”"]
    assert chunker.flush() == ["然后"]


def test_abbreviation_waits_for_next_word() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("Bring pens etc. ") == []
    assert chunker.feed(" Then") == ["Bring pens etc."]
    assert chunker.feed(" go, etc. ") == []
    assert chunker.feed("and run.") == []
    assert chunker.flush() == ["Then go, etc. and run."]


def test_flush_resets_for_reuse() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("- one. Two") == ["one."]
    assert chunker.flush() == ["Two"]
    assert chunker.feed("- three. ") == ["three."]  # a new stream starts at the beginning of a line again


# --- properties ----------------------------------------------------------------------------------------------

# fmt: off
WORDS = [
    "你好", "我是", "露娜", "今天", "天气", "很好", "Luna", "How", "are", "you", "it", "is", "fine", "OK",
    "3.14", "1,000.5", "v2.0.1", "Dr.", "e.g.", "etc.", "No.", "J.", "x.com",
]
PUNCTUATION = [*"。！？；…,.!?，：“”「」（）\"'()", "……", "...", " ", " ", "  ", "\n", "\t"]
PIECES = WORDS + PUNCTUATION
# fmt: on
MARKDOWN_PIECES = ["**", "`", "# ", "- ", "* ", "\n- ", "\n# ", "\n* "]
TEXT_ALPHABET = "ab Lu你好。！？；…,.!?，”“」）)\"' \n31"

plain_text = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.text(alphabet=TEXT_ALPHABET, max_size=40),
)
any_text = st.one_of(plain_text, st.lists(st.sampled_from(PIECES + MARKDOWN_PIECES), max_size=40).map("".join))
cut_points = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)

_MODEL_LINE_MARKER = re.compile(r"^\s*(?:#+|[-*])(?:\s+|$)")


def spoken_content(text: str) -> str:
    """What must reach TTS, per the documented stripping: markers at line starts, then every * and `, no spaces."""
    lines = (_MODEL_LINE_MARKER.sub("", line, count=1) for line in text.split("\n"))
    return re.sub(r"[\s*`]", "", "".join(lines))


@PROPERTY
@given(text=any_text, points=cut_points)
def test_any_slicing_gives_the_same_chunks(text: str, points: list[int]) -> None:
    whole = chunk([text])
    assert chunk(cut(text, points)) == whole
    assert chunk(list(text)) == whole


@PROPERTY
@given(text=any_text, points=cut_points)
def test_chunks_are_nonempty_and_keep_all_content(text: str, points: list[int]) -> None:
    chunks = chunk(cut(text, points))
    assert all(c and c == c.strip() for c in chunks)
    assert all("\n" not in c for c in chunks)
    assert re.sub(r"\s", "", "".join(chunks)) == spoken_content(text)


def end_positions(text: str, chunks: list[str]) -> list[int]:
    """Index in ``text`` just past each chunk (markdown-free text: chunks are verbatim slices in order)."""
    ends, pos = [], 0
    for c in chunks:
        pos = text.index(c, pos) + len(c)
        ends.append(pos)
    return ends


@PROPERTY
@given(text=plain_text, points=cut_points)
def test_every_chunk_but_the_last_ends_at_a_sentence_boundary(text: str, points: list[int]) -> None:
    chunks = chunk(cut(text, points))
    for c, end in zip(chunks[:-1], end_positions(text, chunks), strict=False):
        if "\n" in text[end : len(text) - len(text[end:].lstrip())]:
            continue  # cut at a newline
        body = c.rstrip(CLOSERS)
        assert body and body[-1] in CJK_TERMINATORS + ASCII_TERMINATORS, c
        if not any(t in CJK_TERMINATORS for t in body[len(body.rstrip(CJK_TERMINATORS + ASCII_TERMINATORS)) :]):
            assert end == len(text) or text[end].isspace() or is_cjk(text[end]), (c, text[end:])


# fmt: off
PROTECTED = [
    "3.14", "1,000.5", "v2.0.1", "3.5度", "Dr. Smith", "Mr. Lee", "Mrs. Wu", "Ms. Li", "e.g. apples", "i.e. pears",
    "etc. and", "St. Louis", "cats vs. dogs", "No. 5", "J. K. Rowling", "example.com/docs", "luna@example.com",
]
# fmt: on
FILLER = ["我们", "明天", "去", "the", "park", "is", "nice", "Luna", "说"]
# An ASCII terminator needs whitespace after it to end a sentence (the next sentence may start with a letter).
ending = st.one_of(
    st.tuples(st.sampled_from([".", "!", "?"]), st.sampled_from([" ", "\n"])),
    st.tuples(st.sampled_from(["。", "！", "？", "…", "……"]), st.sampled_from(["", " ", "\n"])),
).map("".join)
sentence = st.tuples(st.lists(st.sampled_from(PROTECTED + FILLER), min_size=1, max_size=6), ending).map(
    lambda t: " ".join(t[0]) + t[1]
)


@PROPERTY
@given(sentences=st.lists(sentence, min_size=1, max_size=6), points=cut_points)
def test_numbers_and_abbreviations_never_split(sentences: list[str], points: list[int]) -> None:
    text = "".join(sentences)
    chunks = chunk(cut(text, points))
    for token in PROTECTED:
        assert sum(c.count(token) for c in chunks) == text.count(token), token
    assert len(chunks) == len(sentences)  # and every sentence end was found
