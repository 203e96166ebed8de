"""The text half of end of turn: which transcripts are plainly unfinished (``conversation/continuation.py``)."""

from __future__ import annotations

import pytest

from luna_voice.conversation.continuation import Unfinished, unfinished


@pytest.mark.parametrize(
    "text",
    [
        "Could you tell me if",  # Smart Turn: 0.99 "complete"
        "Luna, how much would it cost to",
        "Luna, tell me about",
        "Luna, can you remind me about",
        "My question is about",
        "Luna, I was wondering whether",
        "I think the main problem with the plan is",
        "I'm not sure if it's",
        "We need to decide who",
        "Luna, what's the status of my",
        "Can you send the",
        "Luna, what do you think about",  # the same words with a "?" are a question (below)
    ],
)
def test_english_that_ends_on_a_word_no_sentence_ends_on_is_held(text):
    assert unfinished(text) is Unfinished.DANGLING_WORD


@pytest.mark.parametrize(
    "text", ["Could you tell me if the...", "Luna, we should probably…", "Luna, I was wondering whether we-", "So,"]
)
def test_a_transcript_that_trails_off_is_held(text):
    assert unfinished(text) is Unfinished.TRAILING


@pytest.mark.parametrize(
    "text",
    [
        "我觉得这个计划最大的问题是",
        "露娜，如果明天下雨的话",
        "我们应该先",
        "露娜，你能帮我看一下关于",
        "我想问一下因为",
        "这个要跟",
        "露娜，我们今天下午还是",
    ],
)
def test_chinese_that_ends_on_a_function_word_is_held(text):
    assert unfinished(text) is Unfinished.DANGLING_WORD


@pytest.mark.parametrize(
    "text",
    [
        "Luna, what time is it?",
        "Luna, what do you think about?",  # a "?" is never held: questions end on prepositions too
        "Talk for a while.",
        "Could you tell me if.",  # a full stop: the STT heard a sentence end
        "Luna is the budget ready yet",  # tiny.en dropped the "?": no dangling word, not held
        "I'm not sure",
        "Luna, which room is the workshop in",  # particles that end sentences are not on the list
        "露娜，明天会下雨吗",
        "露娜，今天的会议几点开始？",
        "好的",  # the attributive 的 ends sentences
        "是的",
        "就是",  # a dangling word alone is an answer, not half a sentence
        "我们现在",  # 在 inside a word that ends one
        "不对",
        "And",
        "",
    ],
)
def test_whole_sentences_questions_and_short_answers_are_not_held(text):
    assert unfinished(text) is None
