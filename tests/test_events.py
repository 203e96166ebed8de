"""Turn states are an enum with guarded moves; published events are typed and have one JSON form."""

from __future__ import annotations

import json

import pytest

from luna_voice.conversation import actions as act
from luna_voice.conversation.events import Participant, ParticipantsChanged, SpeakingChanged, TurnChanged
from luna_voice.conversation.turns import TERMINAL, InvalidTransition, Turn, TurnState
from luna_voice.events import StateChanged, StatusSnapshot, sse, to_wire
from luna_voice.metrics import Metrics
from scripted_room import GROUP, Room


def test_terminal_states_are_the_ones_with_no_way_out() -> None:
    terminal = {"skipped", "silent", "done", "interrupted", "failed", "merged", "stale", "handled", "cancelled"}
    assert {str(s) for s in TERMINAL} == terminal
    assert "empty" not in {str(s) for s in TurnState}  # never produced, so not a state


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ([], TurnState.DONE),  # still transcribing: nothing was answered
        ([TurnState.QUEUED], TurnState.SPEAKING),  # a queued turn must be started first
        ([TurnState.THINKING, TurnState.SPEAKING], TurnState.THINKING),  # no way back
        ([TurnState.SKIPPED], TurnState.THINKING),  # terminal is final
        ([TurnState.THINKING, TurnState.SPEAKING, TurnState.DONE], TurnState.INTERRUPTED),
    ],
)
def test_a_forbidden_move_raises_and_leaves_the_state(path: list[TurnState], bad: TurnState) -> None:
    turn = Turn("t1", "u1", "a", "Alice", 48_000)
    for state in path:
        turn.move(state)
    before = turn.state
    with pytest.raises(InvalidTransition):
        turn.move(bad)
    assert turn.state is before


def test_the_core_publishes_typed_events_and_a_turn_moves_through_its_states() -> None:
    room = Room()
    room.join(("a", "Alice"))
    room.say("a", "Luna, how are you?")
    room.wait(3)
    events = [a.event for a in room.of(act.Publish)]
    assert all(isinstance(e, ParticipantsChanged | SpeakingChanged | TurnChanged) for e in events)
    states = [e.state for e in events if isinstance(e, TurnChanged)]
    assert list(dict.fromkeys(states)) == [TurnState.THINKING, TurnState.SPEAKING, TurnState.DONE]
    speaking = [e.speaking for e in events if isinstance(e, SpeakingChanged)]
    assert speaking == [True, False]


def test_a_turn_event_is_a_snapshot_not_a_live_view() -> None:
    room = Room()
    room.join(*GROUP)
    room.say("a", "Luna, hello there.")
    room.wait(3)
    first = next(a.event for a in room.of(act.Publish) if isinstance(a.event, TurnChanged))
    assert first.turn["state"] == "thinking" and first.turn["spoken_text"] == ""


def test_every_event_has_one_json_form() -> None:
    ids = {"room_id": "r1", "bot_id": "bot_1"}
    cases = [
        (ParticipantsChanged((Participant("p1", "Alice"),)), {"participants": [{"id": "p1", "name": "Alice"}]}),
        (SpeakingChanged(True, 12.5), {"speaking": True, "at": 12.5}),
        (TurnChanged({"id": "t1", "state": "done"}), {"turn": {"id": "t1", "state": "done"}}),
        (StateChanged("ended", "dismissed", None), {"state": "ended", "sub_code": "dismissed", "reason": None}),
        (StatusSnapshot({"state": "joined"}), {"status": {"state": "joined"}}),
    ]
    kinds = []
    for event, fields in cases:
        wire = to_wire(event, **ids)
        kinds.append(wire.pop("type"))
        assert wire == {**fields, **ids}
        frame = sse(event, **ids)
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
        assert json.loads(frame[6:]) == {"type": kinds[-1], **fields, **ids}
    assert kinds == ["participants", "speaking", "turn", "state", "status"]


def test_captions_keep_chinese_readable() -> None:
    frame = sse(TurnChanged({"id": "t1", "heard_text": "露娜"}), room_id="r", bot_id="b")
    assert "露娜".encode() in frame


def test_metrics_count_what_the_typed_events_say() -> None:
    metrics = Metrics(lambda: [])
    room = Room()
    room.join(("a", "Alice"))
    room.say("a", "Luna, how are you?")
    room.wait(3)
    for a in room.of(act.Publish):
        metrics.observe(a.event)
    metrics.observe(StateChanged("ended", "dismissed", None))
    metrics.observe(StateChanged("joined", None, None))
    text = metrics.render().decode()
    assert 'luna_turns_total{reason="addressed_by_name",state="done"} 1.0' in text  # the end, not every update
    assert 'luna_bots_ended_total{sub_code="dismissed"} 1.0' in text
    assert "luna_reply_latency_seconds_count 1.0" in text
