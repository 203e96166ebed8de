"""Luna as a participant, in scripted timelines through the sans-I/O core: the greeting, texts the app asks her
to say (queued or interrupting), and voice requests to stop, hush or leave, in English and Chinese."""

from __future__ import annotations

import pytest

from luna_voice.conversation import actions as act
from luna_voice.conversation.addressing import REQUEST_PHRASES, AddressDetector
from luna_voice.conversation.domain import SpokenReason
from luna_voice.conversation.requests import RequestDetector, SayRefused, VoiceRequest
from luna_voice.events import to_wire
from scripted_room import GROUP, Room

GREETING = "Hi, I'm Luna. Say my name to talk to me."
LONG = "This answer is long on purpose. It keeps going for many seconds. Nobody should have to hear all of it."

# (stop, quiet, leave, goodbye said) in each language
ENGLISH = ("Luna, stop.", "Luna, be quiet.", "Luna, you can leave.", "Okay, goodbye everyone!")
CHINESE = ("露娜，停。", "露娜，安静。", "露娜，你可以走了。", "好的，大家再见！")
LANGUAGES = pytest.mark.parametrize("lang", [ENGLISH, CHINESE], ids=["en", "zh"])


def wire(a: act.Publish) -> dict:
    return to_wire(a.event, room_id="r1", bot_id="b1")


def events(room: Room, kind: str) -> list[dict]:
    return [wire(a) for a in room.of(act.Publish) if wire(a)["type"] == kind]


def speech_turns(room: Room) -> list[dict]:
    return [t for t in room.turns() if t["kind"] != "utterance"]


def luna_talking(room: Room, pid: str = "a") -> None:
    """Someone asks; Luna is well into a long answer."""
    room.replies[pid] = LONG
    room.say(pid, "Luna, tell me everything.")
    room.wait(0.5)
    assert room.turn_by(pid)["state"] == "speaking"


# ---------------------------------------------------------------------------------------------------- greeting
@pytest.mark.parametrize("text", [GREETING, "大家好，我是露娜。叫我的名字就可以和我说话。"], ids=["en", "zh"])
def test_greeting_waits_for_a_listener_is_said_once_and_never_after_a_rejoin(text):
    room = Room(greeting=text)
    room.core.arrived(room.now)  # she joined an empty room: nobody to greet yet
    room.run()
    assert speech_turns(room) == []
    room.join(("a", "Alice"))
    room.wait(4)
    (greeting,) = speech_turns(room)
    assert (greeting["kind"], greeting["state"], greeting["spoken_text"]) == ("greeting", "done", text)
    assert greeting["speaker"]["name"] == "Luna" and greeting["heard_text"] == ""
    assert [e["type"] for e in room.core.drain()] == []  # all published already
    started, completed = events(room, "speak.started"), events(room, "speak.completed")
    assert [e["kind"] for e in started] == ["greeting"] and completed[0]["spoken_text"] == text
    # The page crashed and rejoined: everyone is announced again, Luna arrives again; no second greeting.
    room.core.participant_left("a", room.now)
    room.core.arrived(room.now)
    room.join(("a", "Alice"), ("b", "Bob"))
    room.wait(4)
    assert len(speech_turns(room)) == 1


def test_no_greeting_in_listen_only_mode_or_when_empty():
    for room in (Room(policy="never", greeting=GREETING), Room(greeting="  ")):
        room.core.arrived(room.now)
        room.join(("a", "Alice"))
        room.wait(3)
        assert speech_turns(room) == [] and room.of(act.Synthesize) == []


def test_someone_talking_over_the_greeting_cuts_it_like_any_reply():
    room = Room(greeting=GREETING)
    room.join(*GROUP)
    room.core.arrived(room.now)
    room.wait(0.4)
    room.say("b", "Hello everyone, can you hear me?", seconds=1.0)
    room.wait(2)
    (greeting,) = speech_turns(room)
    assert greeting["state"] == "interrupted" and 0 < len(greeting["spoken_text"]) < len(GREETING)
    assert events(room, "speak.interrupted")[0]["spoken_text"] == greeting["spoken_text"]


# ---------------------------------------------------------------------------------------------------- say
def test_say_when_idle_is_spoken_at_once_with_her_chunking():
    room = Room()
    room.join(("a", "Alice"))
    turn = room.core.say("The meeting moves to three. 会议改到三点。", room.now)
    room.run()
    room.wait(5)
    said = room.core.turns[turn.id].to_dict()
    assert (said["kind"], said["state"], said["decision"]) == ("say", "done", "speak")
    assert [s.text for s in room.of(act.Synthesize)] == ["The meeting moves to three.", "会议改到三点。"]
    assert said["spoken_text"] == "The meeting moves to three.会议改到三点。"
    assert said["latency"]["first_audio_sent_ms"] >= 0  # measured from the request
    assert room.of(act.RequestReply) == [] and room.of(act.RecordSpoken) == []  # not the reply engine's turn
    (done,) = events(room, "speak.completed")
    assert done["say_id"] == turn.id and done["spoken_text"] == said["spoken_text"] and done["played_audio_s"] > 0


@pytest.mark.parametrize("message", ["A message from the app.", "应用有一条消息。"], ids=["en", "zh"])
def test_say_is_queued_behind_what_she_is_saying(message):
    room = Room()
    room.join(*GROUP)
    luna_talking(room)
    turn = room.core.say(message, room.now)
    room.run()
    assert room.core.turns[turn.id].state == "queued" and events(room, "speak.started") == []
    room.wait(12)
    answer, said = room.turn_by("a"), room.core.turns[turn.id].to_dict()
    assert answer["state"] == "done" and answer["spoken_text"] == LONG  # not cut
    assert said["state"] == "done" and said["spoken_text"] == message
    assert answer["timings"]["finished"] <= said["timings"]["first_audio_sent"]
    assert events(room, "speak.started")[0]["at"] >= answer["timings"]["finished"]


@pytest.mark.parametrize("message", ["Sorry to cut in: room booked.", "打断一下：会议室订好了。"], ids=["en", "zh"])
def test_say_with_interrupt_cuts_her_reply_like_a_barge_in(message):
    room = Room()
    room.join(*GROUP)
    luna_talking(room)
    turn = room.core.say(message, room.now, interrupt=True)
    room.run()
    room.wait(4)
    answer, said = room.turn_by("a"), room.core.turns[turn.id].to_dict()
    assert answer["state"] == "interrupted" and 0 < len(answer["spoken_text"]) < len(LONG)
    assert room.of(act.ClearPlayback) and act.CancelSynthesis(answer["id"]) in room.of(act.CancelSynthesis)
    assert next(r for r in room.of(act.RecordSpoken) if r.turn_id == answer["id"]).reason is SpokenReason.INTERRUPTED
    assert said["state"] == "done" and said["spoken_text"] == message


def test_someone_talking_over_a_say_interrupts_it_with_what_was_heard():
    room = Room()
    room.join(*GROUP)
    turn = room.core.say(LONG, room.now)
    room.run()
    room.wait(0.6)
    room.say("b", "Hang on, hang on, one moment", seconds=1.0)
    room.wait(1)
    said = room.core.turns[turn.id].to_dict()
    (cut,) = events(room, "speak.interrupted")
    assert said["state"] == "interrupted" and cut["spoken_text"] == said["spoken_text"]
    assert 0 < len(cut["spoken_text"]) < len(LONG) and LONG.startswith(cut["spoken_text"])


# ---------------------------------------------------------------------------------------------------- requests
@LANGUAGES
def test_stop_cuts_her_reply_and_what_was_queued_and_is_not_answered(lang):
    stop = lang[0]
    room = Room(barge_in_min_ms=60_000)  # no barge-in: the request alone must cut her (as with ducking)
    room.join(*GROUP)
    luna_talking(room)
    queued = room.core.say("Queued message.", room.now)
    room.run()
    room.say("b", stop, seconds=0.6)
    room.wait(3)
    answer, request = room.turn_by("a"), room.turn_by("b")
    assert answer["state"] == "interrupted" and len(answer["spoken_text"]) < len(LONG)
    assert room.core.turns[queued.id].state == "cancelled"
    assert request["request"] == {"kind": "stop", "outcome": "stopped"}
    assert (request["decision"], request["reason"], request["state"]) == ("request", "stop", "handled")
    assert [r.request.speaker_id for r in room.of(act.RequestReply)] == ["a"]  # the request got no answer
    assert room.core.listen_only is False


@LANGUAGES
def test_stop_when_she_is_silent_is_recorded_as_nothing_to_stop(lang):
    room = Room()
    room.join(*GROUP)
    room.say("a", lang[0])
    room.wait(2)
    assert room.turn_by("a")["request"] == {"kind": "stop", "outcome": "nothing_to_stop"}
    assert room.of(act.RequestReply) == [] and room.of(act.Synthesize) == []


@LANGUAGES
def test_quiet_means_listen_only_until_addressed_by_name_again(lang):
    quiet = lang[1]
    room = Room()
    room.join(("a", "Alice"))  # one to one: she would answer everything
    luna_talking(room)
    room.say("a", quiet, seconds=0.6)
    room.wait(3)
    assert room.turn_by("a")["state"] == "interrupted"
    assert room.turn_by("a", 1)["request"] == {"kind": "quiet", "outcome": "listen_only"}
    assert room.core.listen_only and events(room, "listen_only")[-1]["listen_only"] is True
    with pytest.raises(SayRefused) as refused:
        room.core.say("hello", room.now)
    assert refused.value.code == "listen_only"
    room.say("a", "What should I cook tonight?")
    room.wait(3)
    skipped = room.turn_by("a", 2)
    assert (skipped["state"], skipped["reason"]) == ("skipped", "asked_to_be_quiet")
    room.say("a", "露娜，现在几点？" if lang is CHINESE else "Luna, what time is it?")
    room.wait(4)
    back = room.turn_by("a", 3)
    assert (back["state"], back["reason"]) == ("done", "addressed_by_name")
    assert room.core.listen_only is False and events(room, "listen_only")[-1]["listen_only"] is False


@LANGUAGES
def test_leave_says_goodbye_in_the_askers_language_then_leaves(lang):
    leave, goodbye = lang[2], lang[3]
    room = Room()
    room.join(*GROUP)
    luna_talking(room)
    room.say("b", leave, seconds=1.0)  # Bob talks over her: barge-in, then the request
    room.wait(0.1)
    assert room.core.leaving and room.of(act.Leave) == []  # not before the goodbye is heard
    room.wait(5)
    request = room.turn_by("b")
    assert request["request"] == {"kind": "leave", "outcome": "leaving"}
    (bye,) = [t for t in speech_turns(room) if t["kind"] == "goodbye"]
    assert (bye["state"], bye["spoken_text"]) == ("done", goodbye)
    assert room.of(act.Leave) == [act.Leave("Bob asked Luna to leave")]
    leave_at = room.log.index(room.of(act.Leave)[0])
    assert room.log.index(events_action(room, "speak.completed", bye["id"])) < leave_at
    # On her way out she answers nobody and says nothing more.
    room.say("a", "Luna, one more thing?")
    room.wait(2)
    assert room.turn_by("a", 1)["reason"] == "leaving"
    with pytest.raises(SayRefused):
        room.core.say("hello", room.now)


def events_action(room: Room, kind: str, say_id: str) -> act.Publish:
    return next(a for a in room.of(act.Publish) if wire(a)["type"] == kind and wire(a).get("say_id") == say_id)


def test_leave_without_a_goodbye_leaves_at_once():
    room = Room(goodbye="")
    room.join(*GROUP)
    room.say("a", "Luna, you may leave now, thanks.")
    room.wait(1)
    assert room.of(act.Leave) == [act.Leave("Alice asked Luna to leave")] and room.of(act.Synthesize) == []


@pytest.mark.parametrize(
    "text",
    [
        "I told Luna to stop yesterday",  # a mention, not a request
        "Luna, don't stop",
        "stop",  # not addressed: in a one-to-one room this is an ordinary turn
        "Luna, can you leave the door open?",
        "露娜说她要离开",  # "Luna said she is leaving"
        "bye Luna",  # someone leaving says this; Luna stays for the others
        "Luna, stop the music",
        "Luna, you can leave the house",  # what STT made of "you can leave now" once
    ],
)
def test_only_a_request_addressed_to_her_counts(text):
    room = Room()
    room.join(("a", "Alice"))
    room.say("a", text)
    room.wait(3)
    turn = room.turn_by("a")
    assert turn["request"] is None and turn["decision"] == "answer" and turn["state"] == "done"
    assert room.of(act.Leave) == [] and not room.core.listen_only


# ---------------------------------------------------------------------------------------------------- phrases
DETECT = RequestDetector(AddressDetector().is_addressed, AddressDetector().without_names)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Luna, stop!", "stop"),
        ("Stop, Luna.", "stop"),
        ("luna please stop talking", "stop"),
        ("OK Luna, that's enough.", "stop"),
        ("Lunar, stop", "stop"),  # STT's near-miss of her name still counts as a call (vocative: see addressing)
        ("露娜，停一下！", "stop"),
        ("露娜别说了", "stop"),
        ("Luna, be quiet please.", "quiet"),
        ("Luna, shush.", "quiet"),
        ("露娜，请安静。", "quiet"),
        ("露娜闭嘴", "quiet"),
        ("Luna, you can go now.", "leave"),
        ("Luna, please leave the meeting.", "leave"),
        ("Luna, you can leave that meeting.", "leave"),  # what STT makes of "the meeting"
        ("露娜，你可以离开了", "leave"),
        ("卢娜你走吧", "leave"),
    ],
)
def test_request_phrases_in_both_languages(text, kind):
    assert DETECT(text) is VoiceRequest(kind)


def test_every_phrase_list_names_a_request_and_every_request_has_english_and_chinese():
    assert set(REQUEST_PHRASES) == {str(k) for k in VoiceRequest}
    for phrases in REQUEST_PHRASES.values():
        assert any(p.isascii() for p in phrases) and any(not p.isascii() for p in phrases)
        for phrase in phrases:  # each one works with her name in front
            assert DETECT(f"Luna, {phrase}") is not None and DETECT(phrase) is None


# ---------------------------------------------------------------------------------------------------- transcript
def test_transcript_holds_both_people_and_what_luna_said_as_heard():
    room = Room()
    room.join(*GROUP)
    room.say("b", "Morning all.")
    luna_talking(room)
    room.say("b", "Wait, stop, an urgent question", seconds=1.0)
    room.wait(2)
    lines = room.core.transcript_record.lines()
    assert [(line.speaker, line.luna) for line in lines] == [
        ("Bob", False),
        ("Alice", False),
        ("Luna", True),
        ("Bob", False),
    ]
    luna = lines[2]
    assert luna.interrupted and luna.text == room.turn_by("a")["spoken_text"] and luna.kind == "reply"
    assert lines[1].start < lines[1].end <= luna.start < luna.end
    vtt = room.core.transcript_record.to_vtt(origin=lines[0].start - 1)
    assert vtt.startswith("WEBVTT\n\n1\n00:00:01.000 --> ")
    assert "<v Alice>Luna, tell me everything." in vtt and f"<v Luna>{luna.text}…" in vtt


def test_transcript_is_bounded_and_can_be_off():
    room = Room(policy="never", transcript_lines=2)
    room.join(("a", "Alice"))
    for n in range(4):
        room.say("a", f"Line number {n} & <more>.")
    data = room.core.transcript_record.to_json(origin=0.0, to_wall=0.0)
    assert [line["text"] for line in data["lines"]] == ["Line number 2 & <more>.", "Line number 3 & <more>."]
    assert data["dropped"] == 2
    assert "Line number 3 &amp; &lt;more&gt;." in room.core.transcript_record.to_vtt(0.0)
    assert Room(transcript_lines=0).core.transcript_record is None


def test_no_say_and_no_goodbye_while_a_host_has_muted_her():
    room = Room(greeting=GREETING)
    room.join(*GROUP)
    room.core.set_muted(True, "a host muted Luna", room.now)
    room.core.arrived(room.now)  # joined muted: nobody would hear a greeting
    with pytest.raises(SayRefused) as refused:
        room.core.say("hello", room.now)
    assert refused.value.code == "muted_by_host"
    room.say("a", ENGLISH[2])
    room.wait(1)
    assert room.of(act.Leave) == [act.Leave("Alice asked Luna to leave")] and room.of(act.Synthesize) == []
