"""Addressing and backchannels: tables of real-looking transcripts in English, Chinese and both."""

from __future__ import annotations

import pytest

from luna_voice.conversation.addressing import DEFAULT_NAMES, AddressDetector, is_backchannel
from luna_voice.conversation.requests import RequestDetector, VoiceRequest

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
    "Lunar, what time is it?",  # STT near-miss of "Luna", as a vocative
    "Loona, tell me a joke",
    # What Whisper tiny.en wrote for Piper's "Luna, …" over pink noise at 10 dB SNR (bench H2), all vocatives:
    "Lena, what time is it?",
    "Lynna, can you tell me the weather in Paris today?",
    "Lina, how long does the flight to Tokyo take?",
    "Leno, is it going to rain tomorrow?",
    "hey Lena, what's up?",
    "Luner! Are you there?",
    "Lunah: stop",
    "what do you think, Lena?",
    "so what's the plan, Lunar?",
    "路娜，明天会下雨吗？",
    "陆娜你好",
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
    "Nina said hi",
    # Sound-alikes of her name that are not calls: ordinary words and names in the sentence.
    "the lunar eclipse is tonight",
    "Lunar New Year starts on Friday",
    "Lena said the budget is ready",
    "I asked Lena whether we could move it",
    "ask Lina, she knows",
    "Linda, can you share your screen?",  # a different name, not a mishearing
    "Lynette, what time is it?",
    "the lunar, solar and tidal calendars",
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


@pytest.mark.parametrize("text", ["Lena, what time is it?", "what do you think, Lena?", "hey lena, quick question"])
def test_a_sound_alike_that_someone_in_the_room_is_called_talks_to_them(text: str) -> None:
    detector = AddressDetector()
    assert detector.is_addressed(text)
    detector.present = {"p1": "Lena Park", "p2": "Bob"}.values()
    assert not detector.is_addressed(text)
    assert detector.is_addressed("Luna, what time is it?")  # her own name still counts


def test_a_request_made_by_a_sound_alike_is_hers() -> None:
    detector = AddressDetector()
    find = RequestDetector(detector.is_addressed, detector.without_names)
    assert find("Lena, stop.") is VoiceRequest.STOP
    assert find("that's enough, Lunar.") is VoiceRequest.STOP
    detector.present = ["Lena"]
    assert find("Lena, stop.") is None


def test_sound_alikes_are_hers_only() -> None:
    assert not AddressDetector(names=["Nova"]).is_addressed("Lena, what time is it?")


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
