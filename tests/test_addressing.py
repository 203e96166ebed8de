"""Addressing and backchannels: tables of real-looking transcripts in English, Chinese and both."""

from __future__ import annotations

import pytest

from luna_voice.conversation.addressing import DEFAULT_NAMES, AddressDetector, is_backchannel

ADDRESSED = [
    "Luna，明天天气怎么样？",
    "hey luna what's up",
    "我觉得露娜说得对",
    "Luna, can you hear me?",
    "LUNA!",
    "what do you think, Luna?",
    "Luna's answer was good",
    "Luna’s answer was good",
    "is that right (luna)",
    "是Luna吗",
    "Luna-chan, hi",
    "Lunar, what time is it?",  # STT near-miss of "Luna"
    "the lunar eclipse",  # counts: STT writes "Luna" as "lunar", so we accept the moon as a false positive
    "Loona, tell me a joke",
    "卢娜你好",
    "鲁娜，帮我查一下",
    "露那在吗",
    "璐娜你觉得呢",
    "盧娜，你好",
    "魯娜在嗎",
    "嗨露娜",
    "okay 露娜 what about tomorrow",
    "透露那个秘密吧露娜",  # the false friend is ignored, the real name still counts
]

NOT_ADDRESSED = [
    "",
    "what's the weather tomorrow",
    "明天天气怎么样？",
    "that's lunatic",
    "pure lunacy",
    "the Lunarian calendar",
    "lunas",
    "Lena, come here",
    "Nina said hi",
    "Helunar",
    "luna2",  # glued to a digit: a username, not the name
    "不要暴露那个密码",  # 暴露 + 那个: "expose that", not 露那
    "他透露那件事",
    "娜娜在吗",
    "露水很重",
]


@pytest.fixture(scope="module")
def detector() -> AddressDetector:
    return AddressDetector()


@pytest.mark.parametrize("text", ADDRESSED)
def test_addressed(detector: AddressDetector, text: str) -> None:
    assert detector.is_addressed(text)


@pytest.mark.parametrize("text", NOT_ADDRESSED)
def test_not_addressed(detector: AddressDetector, text: str) -> None:
    assert not detector.is_addressed(text)


@pytest.mark.parametrize(
    ("display_name", "text", "expected"),
    [
        ("Aria", "hey aria, what's up", True),
        ("Aria", "Aria's turn", True),
        ("Aria", "the arias were lovely", False),
        ("Aria", "luna are you there", True),  # the default names still count
        ("Luna Bot", "ask luna bot", True),
        ("Luna Bot", "ask Luna-Bot", True),
        ("Luna Bot", "ask lunabotics", False),
        ("小月", "小月，你好", True),
        ("小月", "你好", False),
        ("  ", "hello there", False),  # a blank display name adds nothing
    ],
)
def test_display_name_adds_its_variants(display_name: str, text: str, expected: bool) -> None:
    assert AddressDetector(display_name).is_addressed(text) is expected


def test_names_can_be_replaced() -> None:
    detector = AddressDetector(names=["Nova"])
    assert detector.is_addressed("nova, hi")
    assert not detector.is_addressed("luna, hi")
    assert "Luna" in DEFAULT_NAMES


def test_no_names_at_all_is_an_error() -> None:
    with pytest.raises(ValueError):
        AddressDetector(names=[])


BACKCHANNELS = [
    "mm",
    "Mmm.",
    "mhm",
    "Mm-hmm.",
    "uh-huh",
    "uh huh",
    "Hmm?",
    "hmmmm...",
    "ok",
    "OK!",
    "okay",
    "Okay, okay.",
    "okayyy",
    "yeah",
    "Yeah yeah yeah.",
    "yeahhh",
    "yes",
    "Yes.",
    "yep",
    "right",
    "Right, right.",
    "uh",
    "um...",
    "oh",
    "ah, I see",
    "got it",
    "嗯",
    "嗯。",
    "嗯嗯",
    "嗯嗯嗯！",
    "哦",
    "哦哦",
    "啊",
    "对",
    "对对",
    "对对对。",
    "對",
    "好",
    "好的",
    "好的好的",
    "好吧",
    "是的",
    "是的是的",
    "行",
    "没错",
    "嗯，好的",
    "嗯 ok",
    "OK，好的。",
    "  yeah  ",
    "—嗯—",
]

NOT_BACKCHANNELS = [
    "",
    "   ",
    "...",
    "ok so what about tomorrow",
    "yes please",
    "okay thanks",
    "no",
    "right now",
    "mum",
    "ohm",
    "yesterday",
    "okapi",
    "hmm let me think about that",
    "ok luna",
    "嗯，Luna",
    "好的，那明天呢？",
    "对不对",
    "是吗",
    "行不行",
    "好几个",
    "嗯我觉得不对",
    "ok 3",
    "3",
    "yeah " * 20,  # long monologue of yeahs is not a short acknowledgement
]


@pytest.mark.parametrize("text", BACKCHANNELS)
def test_backchannel(text: str) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize("text", NOT_BACKCHANNELS)
def test_not_backchannel(text: str) -> None:
    assert not is_backchannel(text)
