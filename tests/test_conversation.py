"""Scripted multi-speaker timelines through the sans-I/O conversation core, with a fake clock (``scripted_room``)."""

from __future__ import annotations

import pytest

from luna_voice.conversation import actions as act
from luna_voice.conversation.domain import SpokenReason, Usage
from luna_voice.conversation.endpointing import EndpointConfig
from luna_voice.conversation.events import MutedChanged
from scripted_room import FRAME, GROUP, Room, luna_talking


@pytest.mark.parametrize(
    "text",
    [
        "Luna, what time is it?",
        "露娜，今天天气怎么样？",
        "I wonder what Luna thinks about it",
        "Lunar, can you hear me?",
    ],
)
def test_addressed_by_name_in_a_group(text):
    room = Room()
    room.join(*GROUP)
    room.say("a", text)
    room.wait(3)
    turn = room.turn_by("a")
    assert (turn["decision"], turn["reason"], turn["state"]) == ("answer", "addressed_by_name", "done")
    assert turn["spoken_text"] == "Hello Alice. Nice day."
    request = room.of(act.RequestReply)[0].request
    assert request.speaker_name == "Alice" and request.addressed and request.text == text


def test_a_misheard_name_calls_her_unless_someone_in_the_room_carries_it():
    """STT writes "Luna, …" as "Lena, …" over noise; in a room with a Lena, that is Lena being called."""
    room = Room()
    room.join(*GROUP)
    room.say("a", "Lena, what time is it?")
    room.wait(3)
    assert room.turn_by("a")["reason"] == "addressed_by_name"
    room.join(("c", "Lena"))
    room.say("b", "Lena, what time is it?")
    room.wait(3)
    assert (room.turn_by("b")["decision"], room.turn_by("b")["reason"]) == ("listen", "not_addressed")


def test_not_addressed_in_a_group_stays_silent():
    room = Room()
    room.join(*GROUP)
    room.say("a", "Bob, did you see the game last night?")
    room.wait(2)
    turn = room.turn_by("a")
    assert (turn["decision"], turn["reason"], turn["state"]) == ("listen", "not_addressed", "skipped")
    assert room.of(act.RequestReply) == [] and room.of(act.SendAudio) == []


def test_one_to_one_always_answers():
    room = Room()
    room.join(("a", "Alice"))
    room.say("a", "What should I cook tonight?")
    room.wait(3)
    assert room.turn_by("a")["reason"] == "one_to_one"
    assert room.turn_by("a")["state"] == "done"


def test_follow_up_window_open_then_expired():
    room = Room(follow_up_window_s=8.0)
    room.join(*GROUP)
    room.say("a", "Luna, recommend a film.")
    room.wait(3)
    room.say("a", "Something older, maybe?")
    room.wait(3)
    assert room.turn_by("a", 1)["reason"] == "follow_up"
    room.say("b", "That sounds good.")  # someone else: not a follow-up
    room.wait(10)
    room.say("a", "Anyway, back to work.")  # Alice again, but after the window
    room.wait(2)
    assert room.turn_by("b")["reason"] == "not_addressed"
    assert room.turn_by("a", 2)["reason"] == "not_addressed"


def test_two_speakers_overlapping_become_two_turns_in_order():
    room = Room(policy="always")
    room.join(*GROUP)
    room.transcripts.update(a="Luna, first question.", b="Luna, second question.")
    room.talk(0.6, a=True, b=True)
    room.talk(0.4, a=False, b=True)  # Alice stops first
    room.talk(0.8, a=False, b=False)
    room.wait(6)
    a, b = room.turn_by("a"), room.turn_by("b")
    assert a["timings"]["end_of_speech"] < b["timings"]["end_of_speech"]
    assert a["state"] == "done" and b["state"] == "done"
    assert a["timings"]["finished"] <= b["timings"]["first_audio_sent"]  # Bob waited for Alice's answer
    assert [r.request.speaker_name for r in room.of(act.RequestReply)] == ["Alice", "Bob"]


def test_barge_in_stops_luna_and_keeps_only_what_was_played():
    room = Room()
    room.join(*GROUP)
    room.replies["a"] = "The first sentence is here. The second sentence is longer and will not be heard at all."
    room.say("a", "Luna, tell me a story.")
    room.wait(0.5)  # Luna speaks for a while, then Bob talks over her
    room.say("b", "Wait, stop, I have an urgent question", seconds=1.2)
    room.wait(3)
    a = room.turn_by("a")
    assert a["state"] == "interrupted" and a["interrupted"] is True
    assert 0 < len(a["spoken_text"]) < len(a["reply_text"])
    assert a["reply_text"].startswith(a["spoken_text"])
    assert room.of(act.ClearPlayback) and room.of(act.CancelSynthesis)
    recorded = [r for r in room.of(act.RecordSpoken) if r.turn_id == a["id"]]
    assert recorded == [act.RecordSpoken(a["id"], a["spoken_text"], SpokenReason.INTERRUPTED)]
    assert room.core.stats["barge_ins"] == 1
    # the interruption is then a turn like any other (addressed or not, Bob gets no answer here: 2 humans)
    assert room.turn_by("b")["heard_text"] == "Wait, stop, I have an urgent question"


def test_barge_in_at_the_first_sentence_keeps_a_prefix():
    room = Room()
    room.join(("a", "Alice"))
    room.replies["a"] = "Once upon a time there was a very long story that nobody got to hear in full."
    room.say("a", "Tell me a story.")
    room.say("a", "No, stop.", seconds=0.5)
    a = room.turn_by("a")
    assert a["state"] == "interrupted"
    assert a["reply_text"].startswith(a["spoken_text"]) and len(a["spoken_text"]) < len(a["reply_text"])


def test_backchannel_does_not_interrupt_and_is_not_answered():
    room = Room()
    room.join(("a", "Alice"))
    room.replies["a"] = "Here is a long answer. It goes on for several seconds. And then some more."
    room.say("a", "Luna, explain tides.")
    room.wait(0.3)
    room.say("a", "mm", seconds=0.2)  # short "mm" while Luna talks
    room.wait(8)
    first, mm = room.turn_by("a"), room.turn_by("a", 1)
    assert first["state"] == "done" and not first["interrupted"]
    assert (mm["decision"], mm["reason"]) == ("listen", "backchannel")
    assert len(room.of(act.RequestReply)) == 1


def test_long_monologue_is_cut_and_nothing_is_lost():
    room = Room(policy="never", endpoint=EndpointConfig(max_utterance_s=2.0))
    room.join(("a", "Alice"))
    room.transcripts["a"] = ["first part", "second part", "last part"]
    room.talk(5.0, a=True)
    room.talk(0.6, a=False)
    starts = room.of(act.StartTranscription)
    assert len(starts) == 3  # 2 s + 2 s + 1 s
    # every frame from the first voiced one to the end of speech (500 ms of silence) reached STT exactly once
    assert sum(room.stt_audio.values()) == round(5.5 / FRAME) * 640
    # each piece became its own turn, heard in order, and the listen-only policy answered none of them
    turns = room.turns()
    assert [t["heard_text"] for t in turns] == ["first part", "second part", "last part"]
    assert {(t["state"], t["decision"], t["reason"]) for t in turns} == {("skipped", "listen", "listen_only")}


def test_pre_roll_and_end_of_speech_instant():
    room = Room(policy="never", endpoint=EndpointConfig(preroll_ms=200))
    room.join(("a", "Alice"))
    room.talk(1.0, a=False)
    room.transcripts["a"] = "hello"
    room.talk(0.5, a=True)
    spoke_until = room.now
    room.talk(0.6, a=False)
    start = room.of(act.StartTranscription)[0]
    assert len(start.pcm) == 10 * 640  # 200 ms pre-roll, which includes the 60 ms that triggered the start
    turn = room.turn_by("a")
    assert turn["timings"]["end_of_speech"] == pytest.approx(spoke_until)
    assert turn["reason"] == "listen_only" and turn["heard_text"] == "hello"


def test_failing_provider_fails_the_turn_and_the_next_turn_works():
    room = Room()
    room.join(("a", "Alice"))
    room.auto_reply = False
    room.say("a", "Luna, first try.")
    turn_id = room.of(act.RequestReply)[0].turn_id
    room.core.reply_failed(turn_id, "timeout", room.now)
    room.run()
    assert room.turn_by("a")["state"] == "failed" and room.turn_by("a")["error"] == "llm: timeout"
    room.auto_reply = True
    room.say("a", "Luna, second try.")
    room.wait(3)
    assert room.turn_by("a", 1)["state"] == "done"


@pytest.mark.parametrize(
    ("first", "then", "merged_text"),
    [
        ("Luna, how is the weather", "in Paris tomorrow?", "Luna, how is the weather in Paris tomorrow?"),
        ("露娜，明天北京天气怎么样？", "后天呢？", "露娜，明天北京天气怎么样？后天呢？"),  # no space between Chinese
    ],
    ids=["english", "chinese"],
)
def test_same_speaker_while_luna_thinks_is_merged(first, then, merged_text):
    room = Room()
    room.join(("a", "Alice"))
    room.auto_reply = False
    room.say("a", first)  # sounds finished, and reads finished: answered at once
    room.say("a", then)
    merged, second = room.turn_by("a"), room.turn_by("a", 1)
    assert merged["state"] == "merged" and merged["hold"] is None
    requests = room.of(act.RequestReply)
    assert requests[-1].request.text == merged_text
    assert act.CancelReply(merged["id"]) in room.log
    assert second["state"] == "thinking"


def _alice_waits(text: str) -> tuple[Room, dict]:
    """Alice alone with Luna asks ``text``; the reply engine does not answer until the test says so."""
    room = Room()
    room.join(("a", "Alice"))
    room.auto_reply = False
    room.say("a", text)
    return room, room.turn_by("a")


def _reply_now(room: Room, turn_id: str, text: str = "Sunny all day.") -> None:
    """The reply engine answers ``turn_id`` now (the scripted room's synthesis follows at once)."""
    room.core.reply_delta(turn_id, text, room.now)
    room.core.reply_done(turn_id, Usage(llm_output_tokens=5), room.now)
    room.run()


def test_her_answer_waits_while_the_asker_goes_on_then_takes_both_halves():
    """Smart Turn ended the turn at a pause and the reply is synthesized, but Alice is talking again: nothing of
    the answer to the first half is sent, and the whole sentence is answered once she stops."""
    room, first = _alice_waits("Luna, how much would it cost to fly")
    assert first["state"] == "thinking"
    room.transcripts["a"] = "to Tokyo next week?"
    room.talk(0.3, a=True)  # she goes on
    _reply_now(room, first["id"])  # ... while the first half's answer arrives, synthesized at once
    room.talk(0.7, a=True)
    assert room.of(act.SendAudio) == [] and room.gain == 1.0  # not a word over her, and no duck for her own voice
    room.talk(0.6, a=False)  # she stops; her transcript comes back
    merged, whole = room.turn_by("a"), room.turn_by("a", 1)
    assert merged["state"] == "merged" and merged["spoken_text"] == ""
    assert room.of(act.RequestReply)[-1].request.text == "Luna, how much would it cost to fly to Tokyo next week?"
    _reply_now(room, whole["id"])
    room.wait(3)
    assert room.turn_by("a", 1)["state"] == "done"
    sent = {a.seq for a in room.of(act.SendAudio)}
    assert sent and room.core.stats["barge_ins"] == 0


def test_a_cough_from_the_asker_delays_her_answer_only_until_it_is_dropped():
    room, asked = _alice_waits("Luna, what time is it?")
    room.talk(0.06, a=True)  # a click: too short to transcribe
    _reply_now(room, asked["id"], "It is noon.")
    assert room.of(act.SendAudio) == []  # it might be the start of more words
    room.talk(0.6, a=False)  # the silence rule ends the click, which is dropped as too short
    assert room.of(act.SendAudio)
    room.wait(2)
    assert room.turn_by("a")["state"] == "done" and room.turn_by("a")["spoken_text"] == "It is noon."


def test_someone_else_talking_does_not_hold_her_answer():
    """The wait is for the asker's own next words; Bob talking is a barge-in matter, as before."""
    room = Room(policy="always")
    room.join(*GROUP)
    room.auto_reply = False
    room.say("a", "Luna, what time is it?")
    asked = room.turn_by("a")
    room.talk(0.1, b=True)
    _reply_now(room, asked["id"], "It is noon.")
    assert room.of(act.SendAudio)


def closing_calls(room: Room) -> dict[str, list[tuple[str, SpokenReason]]]:
    """Every RecordSpoken per turn id, so a test can check there is exactly one per requested turn."""
    out: dict[str, list[tuple[str, SpokenReason]]] = {}
    for r in room.of(act.RecordSpoken):
        out.setdefault(r.turn_id, []).append((r.text, r.reason))
    return out


def test_every_requested_turn_gets_exactly_one_closing_call():
    """Contract v2: merged, failed, silent and done turns that reached the reply engine are all closed once."""
    room = Room(policy="llm")
    room.join(*GROUP)
    room.auto_reply = False
    room.say("a", "Luna, how is the weather")
    room.say("a", "in Paris tomorrow?")  # merged into a new turn
    merged, second = room.turn_by("a"), room.turn_by("a", 1)
    room.core.reply_failed(second["id"], "timeout", room.now)  # failed before a word was played
    room.run()
    room.auto_reply = True
    room.replies["b"] = ""
    room.say("b", "Nice weather today.")  # the model stays silent
    room.say("a", "Luna, hello?")  # answered and played to the end
    room.wait(4)
    silent, done = room.turn_by("b"), room.turn_by("a", 2)

    assert (silent["state"], done["state"]) == ("silent", "done")
    assert closing_calls(room) == {
        merged["id"]: [("", SpokenReason.MERGED)],
        second["id"]: [("", SpokenReason.FAILED)],
        silent["id"]: [("", SpokenReason.DONE)],
        done["id"]: [(done["spoken_text"], SpokenReason.DONE)],
    }
    assert len(room.of(act.RequestReply)) == 4


def test_a_turn_that_never_reached_the_engine_gets_no_closing_call():
    room = Room(policy="always", stale_after_s=2.0)
    room.join(*GROUP)
    room.auto_reply = False
    room.say("a", "Luna, a question.")
    room.say("b", "Luna, another question.")  # queued, then stale: never requested
    room.wait(3)
    first = room.of(act.RequestReply)[0].turn_id
    room.core.reply_delta(first, "Short.", room.now)
    room.core.reply_done(first, Usage(), room.now)
    room.run()
    room.wait(2)

    assert room.turn_by("b")["state"] == "stale"
    assert list(closing_calls(room)) == [first]


def test_leaving_mid_answer_closes_the_turn_with_what_was_heard():
    """Contract v2 when the stay ends mid-turn (dismissed, kicked, room ended ...): the answer being spoken closes
    as interrupted with the part the room heard; a queued turn never reached the engine and gets no call."""
    room = Room(policy="always", barge_in_min_ms=60_000)  # Alice talking on does not cut Luna off here
    room.join(*GROUP)
    room.auto_reply = False
    room.say("a", "Luna, tell me something.")
    room.say("b", "Luna, and me?")  # queued behind Alice's answer
    first = room.turn_by("a")["id"]
    room.core.reply_delta(
        first, "The first sentence is here. The second sentence is longer and nobody will hear it.", room.now
    )
    room.core.reply_done(first, Usage(), room.now)
    room.run()
    room.wait(1.0)
    a = room.turn_by("a")
    assert a["state"] == "speaking" and 0 < a["played_audio_s"] < a["reply_audio_s"]
    assert room.turn_by("b")["state"] == "queued"
    room.transcripts["a"] = "Luna, one more?"
    room.talk(0.6, a=True)  # still talking when Luna leaves: transcribed afterwards

    room.core.stay_ended(room.now)
    room.run()
    room.talk(0.7, a=False)
    room.core.stay_ended(room.now)  # the driver's close says it again: nothing more happens
    room.run()

    a, b, late = room.turn_by("a"), room.turn_by("b"), room.turn_by("a", 1)
    assert a["state"] == "interrupted" and a["spoken_text"] and "nobody will hear it" not in a["spoken_text"]
    assert closing_calls(room) == {a["id"]: [(a["spoken_text"], SpokenReason.INTERRUPTED)]}
    assert b["state"] == "cancelled"
    assert (late["state"], late["reason"]) == ("skipped", "leaving")  # heard, never sent to the engine
    assert len(room.of(act.RequestReply)) == 1 and room.of(act.ClearPlayback)  # she stops talking at once


def test_leaving_while_thinking_closes_the_turn_with_nothing_heard():
    room, turn = _alice_waits("What is the weather?")
    assert turn["state"] == "thinking"

    room.core.stay_ended(room.now)
    room.run()
    room.core.reply_delta(turn["id"], "Sunny.", room.now)  # the cancelled reply's late words are dropped
    room.run()

    assert room.turn_by("a")["state"] == "interrupted"
    assert closing_calls(room) == {turn["id"]: [("", SpokenReason.INTERRUPTED)]}
    assert act.CancelReply(turn["id"]) in room.log and room.of(act.Synthesize) == []


def test_a_goodbye_cut_by_the_end_of_the_stay_asks_for_no_second_leave():
    room = Room(policy="always")
    room.join(("a", "Alice"))
    room.say("a", "Luna, you can leave.")
    room.wait(0.3)  # the goodbye is playing when the room ends
    room.core.stay_ended(room.now)
    room.run()
    (bye,) = [t for t in room.turns() if t["kind"] == "goodbye"]
    assert bye["state"] == "interrupted"
    assert room.of(act.Leave) == [] and room.of(act.RecordSpoken) == []  # no reply engine in a goodbye


def test_turn_records_how_long_the_final_transcript_took():
    room = Room()
    room.join(("a", "Alice"))
    room.say("a", "Luna, hi.")
    room.wait(2)
    turn = room.turn_by("a")
    assert turn["stt_final_after_ms"] == 250.0
    start = room.of(act.StartTranscription)[0]
    assert start.keywords == ("Luna", "露娜", "Alice")


def test_queued_turn_goes_stale():
    room = Room(policy="always", stale_after_s=2.0)
    room.join(*GROUP)
    room.auto_reply = False
    room.say("a", "Luna, a question.")
    room.say("b", "Luna, another question.")
    assert room.turn_by("b")["state"] == "queued"
    room.wait(3)
    first = room.of(act.RequestReply)[0].turn_id
    room.core.reply_delta(first, "Short.", room.now)
    room.core.reply_done(first, Usage(), room.now)
    room.run()
    room.wait(2)
    assert room.turn_by("b")["state"] == "stale"


def test_llm_policy_lets_the_model_stay_silent():
    room = Room(policy="llm")
    room.join(*GROUP)
    room.replies["a"] = ""
    room.say("a", "Nice weather today.")
    room.wait(1)
    turn = room.turn_by("a")
    assert (turn["reason"], turn["state"]) == ("llm_decides", "silent")
    assert room.of(act.RequestReply)[0].request.may_stay_silent is True


def test_context_carries_the_room_transcript_with_names():
    room = Room()
    room.join(*GROUP)
    room.say("b", "I'm flying to Tokyo on Friday.")
    room.say("a", "Luna, where is Bob going?")
    room.wait(3)
    context = room.of(act.RequestReply)[0].request.context
    assert [(line.speaker, line.text) for line in context] == [("Bob", "I'm flying to Tokyo on Friday.")]


def test_cost_and_usage_are_summed_per_turn():
    room = Room()
    room.join(("a", "Alice"))
    room.say("a", "Hi Luna.")
    room.wait(3)
    turn = room.turn_by("a")
    synthesized = sum(len(a.text) for a in room.of(act.Synthesize))
    assert turn["usage"]["stt_seconds"] == 1.0 and turn["usage"]["tts_characters"] == synthesized > 0
    assert turn["cost_usd"] == pytest.approx(0.1)
    assert room.core.cost_usd == pytest.approx(0.1)


@pytest.mark.parametrize("line", ["", "I'm getting a lot of questions, give me a moment."])
def test_rate_limited_reply_is_silence_or_one_configured_line(line):
    room = Room(rate_limited_line=line)
    room.join(("a", "Alice"))
    room.auto_reply = False
    room.say("a", "Luna, are you there?")
    turn_id = room.of(act.RequestReply)[0].turn_id
    room.core.reply_failed(turn_id, "rate limited", room.now, rate_limited=True)
    room.run()
    room.wait(4)
    turn = room.turn_by("a")
    assert turn["error"] == "llm: rate limited" and turn["state"] == "failed"
    assert turn["spoken_text"] == line
    assert [a.text for a in room.of(act.Synthesize)] == ([line] if line else [])


def test_rate_limit_retry_after_is_honoured():
    room = Room()
    room.join(("a", "Alice"))
    room.auto_reply = False
    room.say("a", "Luna, first question.")
    first = room.of(act.RequestReply)[0].turn_id
    room.core.reply_failed(first, "rate limited", room.now, rate_limited=True, retry_after=5.0)
    room.run()
    room.say("a", "Luna, second question.")  # within the 5 s: no request is sent
    assert len(room.of(act.RequestReply)) == 1
    assert room.turn_by("a", 1)["state"] == "failed" and "retry in" in room.turn_by("a", 1)["error"]
    room.wait(5)
    room.auto_reply = True
    room.say("a", "Luna, third question.")
    room.wait(3)
    assert len(room.of(act.RequestReply)) == 2 and room.turn_by("a", 2)["state"] == "done"


# --- muted by someone else (a host's mute in RealtimeKit) ----------------------------------------------------------
def test_a_host_mute_stops_luna_at_once_and_she_keeps_captioning():
    room = Room()
    room.join(*GROUP)
    room.replies["a"] = "The first sentence is here. The second sentence is longer and takes a while to say."
    room.say("a", "Luna, tell me something.")
    room.wait(0.5)
    assert room.turn_by("a")["state"] == "speaking"
    room.core.set_muted(True, "a host muted Luna", room.now)
    room.run()
    assert room.turn_by("a")["state"] == "interrupted" and not room.page  # playback cleared
    assert room.of(act.ClearPlayback)
    muted = [a.event for a in room.of(act.Publish) if isinstance(a.event, MutedChanged)]
    assert muted == [MutedChanged(True, "a host muted Luna", room.now)]

    sent = len(room.of(act.SendAudio))
    room.say("b", "What do you all think about the plan?")  # Bob's follow-up-free question: captioned only
    room.wait(2)
    bob = room.turn_by("b")
    assert bob["heard_text"] == "What do you all think about the plan?" and bob["state"] == "skipped"
    assert len(room.of(act.SendAudio)) == sent and room.of(act.Unmute) == []


@pytest.mark.parametrize("unmute_when_addressed", [True, False])
def test_after_a_host_mute_luna_unmutes_only_when_addressed_by_name(unmute_when_addressed):
    room = Room(policy="always", unmute_when_addressed=unmute_when_addressed)
    room.join(*GROUP)
    room.core.set_muted(True, "a host muted Luna", room.now)
    room.say("a", "What a week it has been.")  # policy "always" would answer; muted, she only listens
    room.wait(2)
    assert (room.turn_by("a")["state"], room.turn_by("a")["reason"]) == ("skipped", "muted")
    room.say("b", "Luna, can you summarise?")
    room.wait(3)
    bob = room.turn_by("b")
    if unmute_when_addressed:
        assert len(room.of(act.Unmute)) == 1 and bob["state"] == "done"
        room.core.set_muted(False, None, room.now)  # the page published her voice again
        assert room.core.muted is False
    else:
        assert room.of(act.Unmute) == [] and (bob["state"], bob["reason"]) == ("skipped", "muted")


def test_a_transcript_that_never_comes_fails_the_turn_after_the_timeout():
    """A stuck STT (an engine that hangs, a model load that never ends) must not leave a turn "transcribing"."""
    room = Room(transcribe_timeout_s=5.0)
    room.join(("a", "Alice"))
    room.auto_transcript = False
    room.say("a", "Luna, are you there?")
    [uid] = room.unanswered
    ended = room.now
    room.wait(4.8)
    assert room.turn_by("a")["state"] == "transcribing" and room.of(act.CancelTranscription) == []
    assert room.core.next_deadline(room.now) <= ended + 5.0
    room.wait(0.4)
    turn = room.turn_by("a")
    assert turn["state"] == "failed"
    assert turn["error"] == "stt: timeout (no transcript within 5 s)"
    assert room.of(act.CancelTranscription) == [act.CancelTranscription(uid)]
    room.core.transcript(uid, "Luna, are you there?", "en", Usage(stt_seconds=1.0), room.now)  # too late: ignored
    assert room.turn_by("a")["state"] == "failed" and room.of(act.RequestReply) == []
    room.auto_transcript = True  # the next utterance is heard as usual
    room.say("a", "Luna, hello again.")
    room.wait(3)
    assert room.turn_by("a", 1)["state"] == "done"


def test_a_speaker_needs_the_clock_only_when_their_frames_would_stall():
    """While someone spoke, the core asked for a tick every frame (50 a second per speaker, each a pass of the
    driver's event loop) though ``audio`` does the endpointing: the clock matters only if their frames stop."""
    room = Room(endpoint=EndpointConfig(semantic=False))
    room.join(("a", "Alice"))
    room.talk(0.5, a=True)  # speaking: an utterance is open
    last = room.now
    due = room.core.next_deadline(room.now)
    assert due == pytest.approx(last + 0.5)  # end_of_speech_ms after the last frame, not the next frame
    room.core.tick(due - 0.001)
    room.run()
    assert not room.of(act.FinishTranscription)
    room.core.tick(due)  # her frames stopped: the one timer ends the utterance on time
    room.run()
    assert room.of(act.FinishTranscription) and room.turn_by("a")["end"]["reason"] == "stalled"


def test_luna_s_audio_is_released_a_refill_at_a_time_and_never_runs_dry():
    """The pacer released one 20 ms frame whenever the lead fell under 0.6 s: a wake-up of the driver's loop per
    frame. Now it tops the lead up once it has fallen by ``refill_s``: a few frames per wake-up."""
    room = Room()
    luna_talking(room, reply="Here is a long answer. It goes on for several seconds. And more and more.")
    released = []
    for _ in range(100):  # two seconds of her answer, the page rendering in real time
        before = len(room.of(act.SendAudio))
        room.wait(FRAME)
        released.append(len(room.of(act.SendAudio)) - before)
        due = room.core.next_deadline(room.now)
        assert due is not None and due - room.now <= 0.1 + FRAME + 1e-6  # when the lead has fallen by refill_s
    refills = [n for n in released if n]
    assert len(refills) <= 21 and min(refills) >= 4, released  # a refill every 100 ms, 5 frames each
    room.wait(8)
    turn = room.turn_by("a")
    assert turn["state"] == "done" and turn["spoken_text"] == turn["reply_text"]
    assert room.core.stats["playback_gaps"] == 0  # the page never ran dry mid-answer
