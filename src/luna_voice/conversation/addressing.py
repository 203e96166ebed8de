"""Was Luna spoken to, and is an utterance only a backchannel? Pure text rules for the turn policy.

Addressing means the name occurs anywhere in the utterance ("hey luna what's up", "我觉得露娜说得对"): in a group
call people name whom they talk to, and a mention is a good enough cue. Names are matched on the *transcript*, so
the list includes what speech-to-text really writes when someone says "Luna" (see ``DEFAULT_NAMES``).

Speech-to-text also mishears "Luna" as a real word or name ("Lena", "Lina", "Lynna", "Luner", "Lunar"), mostly
over noise. Such a sound-alike counts only in vocative position, where people call someone: opening the utterance
and followed by a comma or a pause mark ("Lena, what time is it?", "hey Lina, …"), or closing it after a comma
("…, Lunar?"). So "the lunar eclipse" and "Lena said so" are not addressed to her, and a sound-alike that is the
name of someone in the room (``AddressDetector.present``) never is: "Lena, …" then talks to Lena.

A backchannel ("mhm", "嗯嗯", "ok ok") carries no content: it is not a barge-in and not a turn worth answering.
Whether a bare "yes" answers a question Luna just asked is the turn policy's call, not this module's.

Requests to Luna herself ("Luna, stop", "露娜，安静") are listed here too (``REQUEST_PHRASES``), next to the names
they must come with; ``conversation/requests.py`` recognises them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Final

from luna_voice.conversation.chunking import is_cjk

# Every spelling that counts as "Luna". Latin-script names match case-insensitively as whole words, with an optional
# possessive ('s / ’s) and any punctuation around them ("Luna," "LUNA!" "Luna's"), so "lunatic", "lunacy" and
# "Lunarian" never match. Names in a CJK script match as substrings: Chinese has no spaces between words.
DEFAULT_NAMES: Final[tuple[str, ...]] = (
    "Luna",  # the name itself ("Lunar", the dictionary word, only as a vocative sound-alike: see _SOUND_ALIKE)
    "Loona",  # phonetic spelling STT picks for a long "oo" (and the usual spelling of the K-pop name)
    "露娜",  # the Chinese name
    "卢娜",  # homophones of 露 (lù/lú) that STT picks for the same syllables ...
    "鲁娜",
    "璐娜",
    "路娜",  # 路/陆/芦 (lù, lù, lú): also "Luna"; 娜 is a name character, so X娜 is never an ordinary word
    "陆娜",
    "芦娜",
    "露那",  # ... and 那 for 娜 (both nà); false friends such as 暴露那 are excluded by _FALSE_FRIENDS
    "盧娜",  # traditional-script forms: Whisper-family models often answer Mandarin in traditional characters
    "魯娜",
)
# What people say to make Luna stop, hush or leave, once her name and politeness words are taken out (see
# ``conversation/requests.py``). An utterance is a request only if, after that, it is exactly one of these: "Luna,
# please stop" is; "I asked Luna to stop" and "Luna, don't stop" are not. Keys are ``VoiceRequest`` values.
# Not "bye Luna" / "再见露娜": someone who leaves says that to her, and it must not send her away from the others.
REQUEST_PHRASES: Final[dict[str, tuple[str, ...]]] = {
    "stop": (
        "stop", "stop it", "stop talking", "stop there", "that's enough", "enough", "cut it",
        "停", "停下", "停一下", "停下来", "停止", "别说了", "不要说了", "够了",
    ),
    "quiet": (
        "be quiet", "quiet", "keep quiet", "stay quiet", "hush", "shush", "shut up", "mute yourself",
        "安静", "安静一下", "安静点", "保持安静", "别说话", "不要说话", "闭嘴",
    ),
    "leave": (
        "you can leave", "you can go", "you may leave", "you may go", "please leave", "leave", "leave the meeting",
        "you can leave the meeting",
        "你可以走了", "你可以离开了", "你走吧", "你可以退出了", "离开", "退出",
    ),
}  # fmt: skip
# Words that make a request polite without changing it, dropped (from utterances and phrases alike) before
# matching. The articles are here because STT swaps them ("leave the meeting" comes back as "leave that meeting").
REQUEST_FILLERS: Final[tuple[str, ...]] = (
    "please", "now", "ok", "okay", "hey", "thanks", "thank you", "right now", "for now", "the", "this", "that",
    "请", "现在", "好了", "麻烦",
)  # fmt: skip

# Not listed: "Lune" (French for moon, not a spelling STT produces for an English "Luna"). Real names and words that
# sound close are matched as vocatives only (below).

# "Luna" misheard: L, one vowel sound, n, an unstressed ending: Lena, Lina, Lynna, Leno, Lana, Luner, Lunar, Lunah,
# Loona (Whisper tiny.en on the bench's questions over 10 dB SNR noise writes Lena, Lina, Lynna, Leno without her
# name as a hotword, and still "Lena" now and then with it). Two-syllable names only: "Linda", "Lynette" are not
# heard for "Luna".
_SOUND_ALIKE: Final = r"l[aeiouy]{1,2}n{1,2}(?:a|ah|ar|er|o)"
_OPENERS: Final = r"(?:hey|hi|hello|ok|okay|oh|so|and|well)"
_VOCATIVE: Final = re.compile(
    rf"^[^\w]*(?:{_OPENERS}[\s,]+)?(?P<first>{_SOUND_ALIKE})\s*[,，:：!！?？]"  # opens the utterance, then a pause
    rf"|[,，]\s*(?P<last>{_SOUND_ALIKE})[\s.。!！?？]*$",  # or closes it after a comma
    re.IGNORECASE,
)

# A Latin-script name ends where Latin letters and digits end; a CJK neighbour is a boundary ("是Luna吗").
_LATIN_ALNUM: Final = r"[0-9A-Za-z\u00c0-\u024f]"

# Words that contain a name variant but mean something else; blanked out before matching.
_FALSE_FRIENDS: Final = re.compile(r"[暴揭透流显顯表披吐泄洩败敗袒裸展]露那")


def _name_pattern(name: str) -> str:
    name = " ".join(name.split())
    if any(is_cjk(c) for c in name):
        return re.escape(name)
    words = r"[\s-]+".join(re.escape(w) for w in name.split(" "))
    return rf"(?<!{_LATIN_ALNUM}){words}(?:['’]s)?(?!{_LATIN_ALNUM})"


class AddressDetector:
    """Matches the default names plus the bot's display name, compiled once per bot.

    The display name (``Settings.bot_name``) adds itself with the same rules as the defaults: case-insensitive,
    whole words (its words may be joined by spaces or hyphens), optional possessive; substring if CJK. Sound-alikes
    of "Luna" count as vocatives when "Luna" is among the names, unless ``present`` (the display names of the
    people in the room, a live view the service points at the core's participants) holds that word.
    """

    def __init__(self, display_name: str | None = None, names: Sequence[str] = DEFAULT_NAMES) -> None:
        all_names = [*names, display_name] if display_name and display_name.strip() else list(names)
        if not all_names:
            raise ValueError("AddressDetector needs at least one name")
        patterns = dict.fromkeys(_name_pattern(n) for n in all_names)
        self._pattern = re.compile("|".join(patterns), re.IGNORECASE)
        self._sound_alikes = any(n.strip().casefold() == "luna" for n in all_names)
        self.present: Collection[str] = ()

    def is_addressed(self, text: str) -> bool:
        """True if the utterance names the bot anywhere, or calls her by a sound-alike of her name."""
        text = _FALSE_FRIENDS.sub(" ", text)
        return self._pattern.search(text) is not None or self._called_by_sound_alike(text) is not None

    def _called_by_sound_alike(self, text: str) -> re.Match[str] | None:
        if not self._sound_alikes or (match := _VOCATIVE.search(text)) is None:
            return None
        word = (match["first"] or match["last"]).casefold()
        if any(word == part.casefold() for name in self.present for part in re.split(r"[\s\-]+", name)):
            return None  # someone in the room carries that name: they are the one called
        return match

    def without_names(self, text: str) -> str:
        """The utterance with every name of the bot blanked out (what is left is what was said *to* her)."""
        text = self._pattern.sub(" ", _FALSE_FRIENDS.sub(" ", text))
        if (match := self._called_by_sound_alike(text)) is not None:
            group = "first" if match["first"] else "last"
            text = text[: match.start(group)] + " " + text[match.end(group) :]
        return text


# Acknowledgements and fillers. English tokens must stand as whole words (so "ohm" or "mum" are not "oh" + "m");
# elongations ("mmmm", "yeahhh", "okayyy") and repetitions ("yeah yeah", "对对对") are allowed; everything else in
# the utterance must be punctuation or whitespace.
_EN_BACKCHANNEL: Final = (
    r"h*m+|m+-?h+m+|uh+[\s-]*huh|uh+|um+|er+m*|ah+|oh+"
    r"|o+k+(?:a+y+)?|okey|ye+a+h*|ye+s+|yep|yup|ri+ght|i\s+see|got\s+it"
)
_ZH_BACKCHANNEL: Final = "嗯哼|嗯|哦|噢|喔|啊|呃|额|唔|哈|对的|對的|对|對|好的|好吧|好|是的|是|没错|沒錯|行"
_BACKCHANNEL: Final = re.compile(
    rf"[\W_]*(?:(?:(?<![a-z])(?:{_EN_BACKCHANNEL})(?![a-z])|{_ZH_BACKCHANNEL})[\W_]*)+", re.IGNORECASE
)
_MAX_BACKCHANNEL_CHARS: Final = 64  # beyond this it is a monologue of "yeah"s at best; also bounds the regex


def is_backchannel(text: str) -> bool:
    """True if the utterance is only acknowledgements/fillers ("mhm", "嗯嗯", "ok, ok"); False for empty text."""
    text = text.strip()
    return 0 < len(text) <= _MAX_BACKCHANNEL_CHARS and _BACKCHANNEL.fullmatch(text) is not None
