"""Scripted timelines for the hearing rules in the core: semantic end of turn, no turns from noise, and a
barge-in that ducks Luna at once, then stops her or gives her voice back.

The ``Room`` (see test_conversation) plays the page, the providers and the turn model: ``room.turn_model[pid]``
holds the model's answers for that speaker's next candidate ends, in order; with none it never answers.
"""

from __future__ import annotations

import pytest

from luna_voice.conversation import actions as act
from luna_voice.conversation.domain import Usage
from luna_voice.conversation.endpointing import (
    EndCandidate,
    EndpointConfig,
    Endpointer,
    EndReason,
    UtteranceEnded,
    UtteranceStarted,
)
from luna_voice.conversation.transcript_filter import no_speech_reason
from luna_voice.providers.base import Confidence
from scripted_room import FRAME, Room, luna_talking

DUCK = 10 ** (-15 / 20)


def end_delay(turn: dict) -> float:
    return turn["timings"]["end_of_turn"] - turn["timings"]["end_of_speech"]


# ---------------------------------------------------------------------------------------- semantic end of turn
def test_finished_question_commits_when_the_model_says_complete():
    room = Room()
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.72]  # the first answer's threshold is 0.7 (measured: bench/README.md)
    room.say("a", "Luna, what time is it?", seconds=1.0, then_silence=0.3)
    turn = room.turn_by("a")
    assert turn["end"] == {"reason": "semantic", "probability": 0.72}
    # asked at the second silent frame, not after 200 ms (the old rule) nor 500 ms (the silence rule)
    assert end_delay(turn) == pytest.approx(0.04, abs=FRAME / 2)
    assert len(room.of(act.PredictEndOfTurn)) == 1
    assert room.of(act.PredictEndOfTurn)[0].pcm  # the model hears the utterance


def test_with_two_confident_asks_a_second_early_answer_ends_the_turn_at_once():
    room = Room(endpoint=EndpointConfig(confident_asks=2))
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.6, 0.92]  # at 40 ms of silence "probably", at 140 ms "finished"
    room.say("a", "Luna, what is the capital of Japan?", seconds=1.2, then_silence=0.3)
    turn = room.turn_by("a")
    assert turn["end"] == {"reason": "semantic", "probability": 0.92}
    assert end_delay(turn) == pytest.approx(0.14, abs=FRAME / 2)


def test_paused_sentence_stays_one_utterance():
    room = Room()
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.08, 0.1, 0.2, 0.97]  # mid-thought at each question in the pause, then complete
    room.transcripts["a"] = "Luna, what do you think about the budget?"
    room.talk(1.0, a=True)
    room.talk(0.8, a=False)  # a 800 ms pause: longer than the 500 ms silence rule
    room.talk(0.6, a=True)
    room.talk(0.4, a=False)
    assert len(room.of(act.StartTranscription)) == 1
    assert [t["end"] for t in room.turns()] == [{"reason": "semantic", "probability": 0.97}]


def test_the_model_is_asked_again_as_the_silence_grows_and_the_latest_answer_sets_the_wait():
    """A finished question that only sounds finished after a moment ends after 1 s, not after 2.5 s."""
    room = Room()
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.3, 0.6, 0.8]
    room.say("a", "Luna, which room is the workshop in?", seconds=1.2, then_silence=0.98)
    assert not room.turns()
    room.talk(0.04, a=False)
    (turn,) = room.turns()
    assert turn["end"] == {"reason": "semantic", "probability": 0.8}
    assert end_delay(turn) == pytest.approx(1.0, abs=FRAME / 2)
    assert len(room.of(act.PredictEndOfTurn)) == 3  # at 40, 140 and 240 ms of silence; none after 300 ms


def test_a_later_confident_answer_waits_a_second_so_a_pause_is_not_a_cut():
    """Later in a pause the model calls many mid-sentence fragments finished: such an answer waits 1 s."""
    room = Room()
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.2, 0.95, 0.97, 0.96]
    room.transcripts["a"] = "Could you tell me if the train is on time today?"
    room.talk(1.0, a=True)
    room.talk(0.8, a=False)  # "Could you tell me if …": 0.95 at the second question, 140 ms into the pause
    room.talk(0.8, a=True)
    room.talk(0.2, a=False)
    (turn,) = room.turns()
    assert turn["end"] == {"reason": "semantic", "probability": 0.96}


def test_probably_complete_waits_a_second_so_a_pause_is_not_a_cut():
    room = Room()
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.6] * 6  # the model calls a mid-sentence fragment "probably finished"
    room.talk(1.0, a=True)
    room.talk(0.8, a=False)  # the pause
    room.talk(0.6, a=True)
    room.talk(0.98, a=False)
    assert not room.turns()
    room.talk(0.04, a=False)
    (turn,) = room.turns()
    assert turn["end"] == {"reason": "semantic", "probability": 0.6}
    assert end_delay(turn) == pytest.approx(1.0, abs=FRAME / 2)


def test_a_lone_name_before_a_pause_is_not_asked_about():
    room = Room()
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.95, 0.95]  # after "Luna," alone the model hears a finished turn
    room.talk(0.4, a=True)  # "Luna,"
    room.talk(0.3, a=False)
    room.talk(1.0, a=True)  # "what time is it?"
    room.talk(0.3, a=False)
    assert len(room.of(act.PredictEndOfTurn)) == 1
    assert [t["end"]["reason"] for t in room.turns()] == ["semantic"]


def test_incomplete_turn_ends_after_the_longest_wait():
    room = Room(endpoint=EndpointConfig(max_wait_ms=1500))
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.2, 0.2, 0.2]
    room.say("a", "Luna, I was wondering whether", seconds=1.0, then_silence=1.4)
    assert not room.turns()
    room.talk(0.2, a=False)
    turn = room.turn_by("a")
    assert turn["end"] == {"reason": "max_wait", "probability": 0.2}
    assert end_delay(turn) == pytest.approx(1.5, abs=FRAME / 2)


@pytest.mark.parametrize("answer", ["fails", "never"])
def test_without_a_model_answer_the_silence_rule_ends_the_turn(answer):
    room = Room()
    room.join(("a", "Alice"))
    if answer == "fails":
        room.turn_model["a"] = [None, 0.99]  # after a failure it is not asked again during that silence
    room.say("a", "Luna, hello there.", seconds=1.0, then_silence=0.6)
    turn = room.turn_by("a")
    assert turn["end"] == {"reason": "silence", "probability": None}
    assert end_delay(turn) == pytest.approx(0.5, abs=FRAME / 2)
    assert turn["decision"] == "answer"
    assert len(room.of(act.PredictEndOfTurn)) == 1


def _feed(ep: Endpointer, t: float, frames: list[bool]) -> tuple[float, list]:
    events = []
    for voiced in frames:
        t += FRAME
        events += ep.feed(t, bytes(640), voiced)
    return t, events


def _candidates(events: list) -> list:
    return [e for e in events if isinstance(e, EndCandidate)]


def test_one_question_at_a_time_and_the_answer_ends_the_turn_when_it_arrives():
    """The model is slower than a frame: no second question while one is out; a confident first answer ends the
    turn the moment it arrives, with the end of speech where the voice stopped."""
    ep = Endpointer(EndpointConfig())
    t, events = _feed(ep, 0.0, [True] * 40 + [False] * 2)
    (first,) = _candidates(events)
    t, events = _feed(ep, t, [False] * 10)  # 200 ms more silence, the answer still out
    assert _candidates(events) == []
    (end,) = ep.prediction(first.request, 0.95)
    assert end.reason is EndReason.SEMANTIC and end.end_of_speech == pytest.approx(40 * FRAME)
    assert not ep.speaking


def test_an_answer_about_audio_that_moved_on_is_ignored():
    ep = Endpointer(EndpointConfig())
    t, events = _feed(ep, 0.0, [True] * 40 + [False] * 3 + [True] * 5)  # asked at 40 ms, then speech resumed
    (candidate,) = _candidates(events)
    assert ep.prediction(candidate.request, 0.99) == []  # late "complete": the speaker already went on
    assert ep.speaking
    t, events = _feed(ep, t, [False] * 2)  # the next silence asks afresh
    (again,) = _candidates(events)
    assert again.request > candidate.request and len(again.pcm) > len(candidate.pcm)


def test_semantic_off_never_asks_the_model():
    room = Room(endpoint=EndpointConfig(semantic=False))
    room.join(("a", "Alice"))
    room.say("a", "Luna, hello.")
    assert not room.of(act.PredictEndOfTurn)
    assert room.turn_by("a")["end"]["reason"] == "silence"


def test_after_a_gap_in_the_frames_the_pre_roll_holds_nothing_from_before_it():
    """A person mutes mid-word (frames stop), then unmutes: their first words must not come with up to 300 ms
    of what they said before the mute, which the STT would prepend to the new utterance."""
    ep = Endpointer(EndpointConfig())
    before, after = b"\x01\x00" * 320, b"\x02\x00" * 320
    t = 0.0
    for _ in range(2):  # two voiced frames, then the microphone goes off: no utterance yet (60 ms starts one)
        t += FRAME
        assert ep.feed(t, before, True) == []
    t += 5.0  # muted for five seconds
    events = []
    for _ in range(3):
        t += FRAME
        events += ep.feed(t, after, True)
    (start,) = [e for e in events if isinstance(e, UtteranceStarted)]
    assert start.pcm == after * 3  # only what was said after the gap


def test_monologue_cut_at_max_length_records_why():
    ep = Endpointer(EndpointConfig(max_utterance_s=1.0))
    ends = [e for i in range(60) for e in ep.feed((i + 1) * FRAME, bytes(640), True) if isinstance(e, UtteranceEnded)]
    assert [e.reason for e in ends] == [EndReason.MAX_LENGTH]


# ---------------------------------------------------------------------------------------- unfinished transcripts
# The turn model is sure "Could you tell me if" is finished (0.99); the words say it is not. The core holds a
# plainly unfinished transcript for ``continuation_wait_s`` (1.5 s by default) after its end of speech.
def requested(room: Room) -> list[str]:
    return [a.request.text for a in room.of(act.RequestReply)]


def test_an_unfinished_transcript_is_held_and_joined_to_the_speaker_s_next_words():
    room = Room()
    room.join(("a", "Alice"))
    room.transcripts["a"] = ["Could you tell me if", "the train is on time today?"]
    room.turn_model["a"] = [0.99, 0.95]  # the model calls both pieces finished at once
    room.talk(1.0, a=True)
    room.talk(0.8, a=False)  # a 800 ms pause mid-sentence
    assert requested(room) == [] and room.turn_by("a")["hold"] == "held"
    room.talk(1.2, a=True)
    room.talk(0.3, a=False)
    assert requested(room) == ["Could you tell me if the train is on time today?"]  # one answer, the whole sentence
    fragment, whole = room.turn_by("a"), room.turn_by("a", 1)
    assert (fragment["state"], fragment["hold"]) == ("merged", "merged")
    assert (whole["hold"], whole["decision"]) == ("joined", "answer")
    assert not room.of(act.CancelReply)  # nothing was asked of the reply engine twice
    lines = room.core.transcript_record.lines() if room.core.transcript_record else []
    (line,) = [line for line in lines if not line.luna]
    assert line.text == "Could you tell me if the train is on time today?"
    assert line.start == fragment["timings"]["speech_started"] and whole["timings"]["speech_started"] == line.start


def test_a_held_fragment_nobody_finishes_is_answered_when_the_wait_runs_out():
    room = Room()
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.96]
    room.say("a", "Luna, how much would it cost to", seconds=1.5, then_silence=0.1)
    (turn,) = room.turns()
    assert turn["hold"] == "held" and requested(room) == []
    room.wait(1.5 - 0.1 - FRAME)  # a frame before the wait (1.5 s after the end of speech) runs out
    assert requested(room) == []
    room.wait(2 * FRAME)
    assert requested(room) == ["Luna, how much would it cost to"]  # never lost
    turn = room.turn_by("a")
    assert (turn["hold"], turn["decision"]) == ("expired", "answer")
    assert turn["timings"]["released"] - turn["timings"]["end_of_speech"] == pytest.approx(1.5, abs=FRAME)


def test_someone_else_s_words_are_not_joined_to_a_held_fragment():
    room = Room()
    room.join(("a", "Alice"), ("b", "Bob"))
    room.transcripts["a"] = "Luna, could you check whether"
    room.transcripts["b"] = "Luna, what time is it?"
    room.turn_model["b"] = [0.9]
    room.talk(1.2, a=True)
    room.talk(0.52, a=False)  # the silence rule ends Alice's utterance
    room.talk(0.7, b=True)  # Bob speaks while Alice's fragment is held
    room.talk(0.1, b=False)
    assert requested(room) == ["Luna, what time is it?"]  # Bob's question, on its own, at once
    room.wait(1.5)
    assert requested(room) == ["Luna, what time is it?", "Luna, could you check whether"]
    assert room.turn_by("a")["hold"] == "expired" and room.turn_by("b")["hold"] is None


def test_a_speaker_who_goes_on_within_the_wait_is_joined_even_when_their_transcript_comes_later():
    room = Room()
    room.join(("a", "Alice"))
    room.transcripts["a"] = ["Luna, tell me about", "the weather this weekend."]
    room.talk(1.0, a=True)
    room.talk(1.4, a=False)  # goes on just before the wait runs out
    room.auto_transcript = False  # ... and the STT takes its time with the rest
    room.talk(1.0, a=True)
    room.talk(1.5, a=False)
    assert requested(room) == []
    assert room.core.next_deadline(room.now) > room.now  # it waits for the transcript, not by spinning the ticker
    room.auto_transcript = True
    (uid,) = room.unanswered
    room.core.transcript(uid, "the weather this weekend.", None, Usage(), room.now)
    room.run()
    assert requested(room) == ["Luna, tell me about the weather this weekend."]


@pytest.mark.parametrize(
    ("text", "held"),
    [("Luna, what do you think about?", None), ("Luna, what do you think about", "held")],
)
def test_a_finished_question_is_answered_at_once_and_the_same_words_trailing_off_are_held(text, held):
    room = Room()
    room.join(("a", "Alice"))
    room.turn_model["a"] = [0.94]
    room.say("a", text, seconds=1.2, then_silence=0.1)
    assert room.turn_by("a")["hold"] == held
    assert requested(room) == ([text] if held is None else [])


def test_half_a_sentence_over_her_voice_stops_her_while_it_waits_for_the_rest():
    room = Room()
    luna_talking(room)
    room.transcripts["a"] = "Wait, could you tell me about"
    room.talk(0.3, a=True)  # ducked, below barge_in_min_ms
    room.talk(0.6, a=False)
    assert room.turn_by("a")["state"] == "interrupted" and room.gain == 1.0
    assert room.turn_by("a", 1)["hold"] == "held"


# ---------------------------------------------------------------------------------------- no turns from noise
def test_a_blip_shorter_than_min_speech_is_dropped_before_stt():
    room = Room()
    room.join(("a", "Alice"))
    room.say("a", "Luna, answer this noise.", seconds=0.12)  # 120 ms of "voice": a click, a cough
    turn = room.turn_by("a")
    assert (turn["state"], turn["reason"], turn["no_speech"]) == ("skipped", "no_speech", "short")
    assert room.of(act.CancelTranscription) and not room.of(act.FinishTranscription)
    assert not room.of(act.RequestReply)


@pytest.mark.parametrize(
    ("text", "confidence", "why"),
    [
        ("Thank you for watching!", None, "hallucination"),
        ("字幕由Amara.org社区提供", None, "hallucination"),
        ("...", None, "punctuation"),
        ("Luna. Alice.", None, "prompt_words"),
        ("", None, "empty"),
        ("What is the capital of France?", Confidence(speech=0.1, words=0.2), "low_confidence"),
    ],
)
def test_transcripts_of_noise_are_recorded_as_no_speech_and_never_answered(text, confidence, why):
    room = Room()
    room.join(("a", "Alice"))
    room.transcripts["a"] = text
    if confidence is not None:
        room.confidence["a"] = confidence
    room.say("a", text, seconds=1.0)
    turn = room.turn_by("a")
    assert (turn["state"], turn["reason"], turn["no_speech"]) == ("skipped", "no_speech", why)
    assert not room.of(act.RequestReply)
    room.say("a", "Luna, what time is it?")
    (request,) = [r.request for r in room.of(act.RequestReply)]
    assert [line.text for line in request.context] == []  # the noise is not something Alice said


@pytest.mark.parametrize(
    ("said", "heard"),
    [
        (["Luna.", "please tell me a story about the sea."], "Luna. please tell me a story about the sea."),
        (["露娜。", "给我讲一个关于大海的故事。"], "露娜。给我讲一个关于大海的故事。"),  # no space where Chinese meets
    ],
    ids=["english", "chinese"],
)
def test_a_name_said_alone_before_a_pause_carries_over_to_the_request(said, heard):
    room = Room()
    room.join(("a", "Alice"), ("b", "Bob"))  # a group: only words with her name are answered
    room.transcripts["a"] = said
    room.talk(0.4, a=True)
    room.talk(0.7, a=False)  # a long pause after her name: two utterances
    room.talk(1.5, a=True)
    room.talk(0.6, a=False)
    name, request = room.turn_by("a"), room.turn_by("a", 1)
    assert (name["reason"], name["no_speech"]) == ("no_speech", "prompt_words")
    assert (request["decision"], request["reason"]) == ("answer", "addressed_by_name")
    assert request["heard_text"] == heard
    assert room.of(act.RequestReply)[-1].request.text == heard


def test_confident_speech_passes_the_gate():
    room = Room()
    room.join(("a", "Alice"))
    room.confidence["a"] = Confidence(speech=0.35, words=0.6)  # noisy room, but the words are sure
    room.say("a", "Luna, what time is it?")
    assert room.turn_by("a")["decision"] == "answer"


# ---------------------------------------------------------------------------------------- barge-in
def test_a_sure_onset_over_her_voice_ducks_her_on_its_first_frame_and_a_cough_gives_it_back():
    room = Room()
    luna_talking(room)
    room.talk(FRAME, a=True, probability=0.85)  # the first window of a voice: the utterance needs 60 ms, not the duck
    assert room.gain == pytest.approx(DUCK)
    room.talk(0.1, a=True)  # 120 ms in all: a cough
    room.talk(0.6, a=False)
    assert room.gain == 1.0
    room.wait(8)
    first = room.turn_by("a")
    assert first["state"] == "done" and not first["interrupted"]
    assert first["spoken_text"] == first["reply_text"]  # nothing lost
    assert room.core.stats["false_interruptions"] == 1 and room.core.stats["barge_ins"] == 0
    assert sum(n for _t, _g, n in room.rendered) == sum(s.samples for s in room.core.turns[first["id"]].sentences)
    assert sorted({round(g, 3) for _t, g, _n in room.rendered}) == [round(DUCK, 3), 1.0]  # quieter, never cut
    assert room.of(act.SetPlaybackGain) == [act.SetPlaybackGain(pytest.approx(DUCK)), act.SetPlaybackGain(1.0)]


def test_an_unsure_window_waits_for_the_utterance_start_and_a_sure_one_then_ducks():
    room = Room()
    luna_talking(room)
    room.talk(0.06, a=True, probability=0.6)  # voiced, enough for an utterance, not sure enough to duck
    assert room.gain == 1.0 and room.of(act.StartTranscription)
    room.talk(FRAME, a=True, probability=0.95)
    assert room.gain == pytest.approx(DUCK)


def test_a_sure_window_that_never_becomes_an_utterance_is_a_false_duck_given_back_at_once():
    room = Room()
    luna_talking(room)
    room.talk(FRAME, a=True, probability=0.9)  # a click Silero was sure about, for one window
    room.talk(FRAME, a=False)
    assert room.gain == 1.0  # on the next frame, not after an utterance and its transcript
    assert room.core.stats["false_ducks"] == 1 and room.core.stats["false_interruptions"] == 0
    assert len(room.of(act.StartTranscription)) == 1  # the question only: a click is never an utterance
    room.wait(8)
    first = room.turn_by("a")
    assert first["state"] == "done" and first["spoken_text"] == first["reply_text"]
    assert sum(n for _t, _g, n in room.rendered) == sum(s.samples for s in room.core.turns[first["id"]].sentences)


def test_a_speaker_who_leaves_mid_onset_gives_her_volume_back():
    room = Room()
    room.join(("b", "Bob"))
    luna_talking(room)
    room.talk(FRAME, b=True, probability=0.9)
    assert room.gain == pytest.approx(DUCK)
    room.core.participant_left("b", room.now)
    room.run()
    assert room.gain == 1.0 and room.core.stats["false_ducks"] == 1


def test_backchannel_restores_her_volume_after_its_transcript():
    room = Room()
    luna_talking(room)
    room.say("a", "mm", seconds=0.24)
    room.wait(8)
    first, mm = room.turn_by("a"), room.turn_by("a", 1)
    assert (mm["decision"], mm["reason"]) == ("listen", "backchannel")
    assert first["state"] == "done" and first["spoken_text"] == first["reply_text"]
    assert room.core.stats["false_interruptions"] == 1
    assert [a.gain for a in room.of(act.SetPlaybackGain)] == [pytest.approx(DUCK), 1.0]


def test_an_okay_as_long_as_the_old_stop_rule_is_a_backchannel_now():
    room = Room()
    luna_talking(room)
    room.say("a", "Okay.", seconds=0.42)  # Silero holds "okay" voiced for about 400 ms: over the old 300 ms rule
    room.wait(8)
    first = room.turn_by("a")
    assert first["state"] == "done" and first["spoken_text"] == first["reply_text"]
    assert room.core.stats["false_interruptions"] == 1 and room.core.stats["barge_ins"] == 0


def test_short_words_that_are_more_than_a_backchannel_stop_her():
    room = Room()
    luna_talking(room)
    room.say("a", "Stop, wait.", seconds=0.24)  # below barge_in_min_ms of voice
    first = room.turn_by("a")
    assert first["state"] == "interrupted"
    assert room.core.stats["barge_ins"] == 1 and room.core.stats["false_interruptions"] == 0
    assert room.of(act.ClearPlayback)
    assert room.gain == 1.0  # her next answer starts at full volume


def test_long_overlap_stops_her_as_before_after_ducking_first():
    room = Room()
    luna_talking(room)
    room.talk(0.6, a=True)  # still talking: the stop does not wait for a transcript
    first = room.turn_by("a")
    assert first["state"] == "interrupted"
    gains, clear = room.of(act.SetPlaybackGain), room.log.index(room.of(act.ClearPlayback)[0])
    assert room.log.index(gains[0]) < clear  # ducked before the stop
    assert 0 < len(first["spoken_text"]) < len(first["reply_text"])


@pytest.mark.parametrize(
    "text",
    ["Thank you, Luna, that really helps.", "露娜，今天天气怎么样？", "Luna, what time is it?", "Alice, you go first."],
)
def test_the_filter_lets_real_talk_through(text):
    assert no_speech_reason(text, Confidence(speech=0.9, words=0.7), ["Luna", "露娜", "Alice"]) is None
