"""The dispatcher's sans-I/O core: pool, cap, deploys, crashes, retention and restart, on a clock passed in."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from luna_voice.bots.states import BotState
from luna_voice.conversation.transcript import Line, MeetingTranscript
from luna_voice.scale.dispatch import (
    BOT_ROLE,
    ROLE,
    ROOM,
    STAY,
    CapacityReached,
    CreateMachine,
    DestroyMachine,
    DispatchConfig,
    Dispatcher,
    FetchStatus,
    Purpose,
    StartPooled,
    StayKeys,
    public_status,
)
from luna_voice.scale.machines import Machine, MachineState

V1, V2 = "registry.fly.io/luna-voice:deployment-1", "registry.fly.io/luna-voice:deployment-2"
_ids = itertools.count(1)


def machine(state: MachineState = MachineState.STOPPED, image: str = V1, **meta: str) -> Machine:
    n = next(_ids)
    return Machine(
        id=f"m{n}",
        name=f"luna-x-{n}",
        state=state,
        region="nrt",
        image=image,
        private_ip="fdaa::1",
        instance_id="i1",
        metadata={ROLE: BOT_ROLE, **meta},
    )


def disp(**cfg: object) -> Dispatcher:
    return Dispatcher(DispatchConfig(**{"image": V1, "region": "nrt", "pool_size": 2, "max_machines": 5, **cfg}))


def run_creates(d: Dispatcher, actions: list, state: MachineState | None = None) -> list[Machine]:
    """Play the adapter: every CreateMachine succeeds (pool machines stopped, stay machines started)."""
    made = []
    for a in actions:
        if isinstance(a, CreateMachine):
            st = state or (MachineState.STOPPED if a.purpose is Purpose.POOL else MachineState.STARTED)
            meta = {ROLE: BOT_ROLE, **({STAY: a.stay_id, ROOM: a.room_id} if a.stay_id else {})}
            m = replace(machine(st, a.image), name=a.name, region=a.region, metadata=meta)
            made.append(m)
            d.created(a, m)
    return made


def warm_pool(d: Dispatcher) -> None:
    run_creates(d, d.refill())
    assert len(d.warm()) == d.cfg.pool_size


def joined(participants: int = 1) -> dict[str, object]:
    return {"state": "joined", "participants": [{"id": f"p{i}", "name": "Ann"} for i in range(participants)]}


def test_pool_of_two_with_three_summons_is_two_starts_and_one_create():
    d = disp()
    warm_pool(d)
    kinds = []
    for room in "abc":  # back to back: the pool's refills are still in flight
        _stay, created, actions = d.summon(room, {}, None, now=0.0)
        assert created
        kinds += [type(a).__name__ + (f":{a.purpose}" if isinstance(a, CreateMachine) else "") for a in actions]
        run_creates(d, [a for a in actions if isinstance(a, CreateMachine) and a.purpose is Purpose.STAY])
    assert kinds.count("StartPooled") == 2
    assert kinds.count("CreateMachine:stay") == 1
    assert kinds.count("CreateMachine:pool") == 2  # refilled in the background, within the cap of 5


def test_summon_is_idempotent_per_room_and_prefers_the_requested_region():
    d = disp(pool_size=2)
    run_creates(d, d.refill())
    fra = next(iter(d.slots.values()))
    fra.region = "fra"
    stay, created, actions = d.summon("a", {}, "fra", now=0.0)
    assert created and actions[0] == StartPooled(fra.id, stay.id, "a")
    again, created, actions = d.summon("a", {}, "fra", now=1.0)
    assert again is stay and not created and actions == []


def test_the_cap_counts_pool_and_in_flight_creates_and_answers_with_retry_after():
    d = disp(pool_size=0, max_machines=2, retry_after_s=12)
    d.summon("a", {}, None, 0.0)  # create in flight
    d.summon("b", {}, None, 0.0)
    with pytest.raises(CapacityReached) as exc:
        d.summon("c", {}, None, 0.0)
    assert exc.value.retry_after == 12 and "c" not in d.rooms


def test_refill_never_passes_the_cap():
    d = disp(pool_size=4, max_machines=3)
    assert sum(isinstance(a, CreateMachine) for a in d.refill()) == 3


def test_a_deploy_moves_the_pool_and_leaves_stays_on_the_old_image_alone():
    d = disp()
    warm_pool(d)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    pooled = next(a for a in actions if isinstance(a, StartPooled))
    d.slots[pooled.machine_id].state = MachineState.STARTED
    old = [m for m in d.slots.values()]
    # the dispatcher restarts on the new image and finds the old machines
    listed = [
        replace(
            machine(s.state, V1),
            id=s.id,
            metadata={ROLE: BOT_ROLE, **({STAY: s.stay_id, ROOM: "a"} if s.stay_id else {})},
        )
        for s in old
    ]
    d2 = disp(image=V2)
    actions = d2.rebuild(listed, now=0.0)
    destroyed = {a.machine_id for a in actions if isinstance(a, DestroyMachine)}
    assert pooled.machine_id not in destroyed  # the live stay finishes on the old image
    assert destroyed == {s.id for s in old if s.stay_id is None}
    new_pool = [a for a in actions if isinstance(a, CreateMachine)]
    assert len(new_pool) == 2 and all(a.image == V2 and a.purpose is Purpose.POOL for a in new_pool)
    assert FetchStatus(stay.id) in actions and d2.stay_in("a").state is BotState.STARTING


def test_machine_down_is_a_crash_and_the_stay_restarts_once_on_a_fresh_machine_if_the_room_is_live():
    d = disp(pool_size=0)
    stay, _, actions = d.summon("a", {"policy": "always"}, None, 0.0)
    (m,) = run_creates(d, actions)
    d.report(stay.id, joined(), 1.0)
    actions = d.machines_listed([replace(m, state=MachineState.STOPPED, exit_code=137)], now=2.0)
    assert stay.state is BotState.FAILED and stay.sub_code == "crashed" and "137" in stay.reason
    assert DestroyMachine(m.id, f"stay {stay.id} ended (crashed)") in actions
    retry_create = next(a for a in actions if isinstance(a, CreateMachine))
    retry = d.stay_in("a")
    assert retry is not stay and retry.attempt == 1 and retry.request == {"policy": "always"}
    assert retry_create.stay_id == retry.id and retry.previous["sub_code"] == "crashed"
    assert public_status(retry)["restarted_from"]["bot_id"] == stay.id
    # the retry crashes too: no second restart
    (m2,) = run_creates(d, [retry_create])
    d.report(retry.id, joined(), 3.0)
    actions = d.machines_listed([replace(m2, state=MachineState.STOPPED)], now=4.0)
    assert retry.state is BotState.FAILED and d.stay_in("a") is retry
    assert not any(isinstance(a, CreateMachine) for a in actions)


def test_no_restart_when_nobody_else_was_in_the_room():
    d = disp(pool_size=0)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    (m,) = run_creates(d, actions)
    d.report(stay.id, joined(participants=0), 1.0)
    actions = d.machines_listed([replace(m, state=MachineState.STOPPED)], now=2.0)
    assert stay.sub_code == "crashed" and d.stay_in("a") is stay
    assert not any(isinstance(a, CreateMachine) for a in actions)


def test_a_missed_heartbeat_is_a_crash_within_the_timeout():
    d = disp(pool_size=0, heartbeat_timeout_s=5)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    run_creates(d, actions)
    d.report(stay.id, joined(), 10.0)
    assert d.tick(14.9) == [] and stay.live
    d.tick(15.1)
    assert stay.state is BotState.FAILED and "heartbeat" in stay.reason
    assert d.stay_in("a").attempt == 1


def test_a_machine_that_never_reports_fails_at_the_boot_timeout():
    d = disp(pool_size=0, boot_timeout_s=60)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    (m,) = run_creates(d, actions)
    assert d.tick(59.0) == []
    actions = d.tick(61.0)
    assert stay.sub_code == "join_timeout" and DestroyMachine(m.id, f"stay {stay.id} ended (join_timeout)") in actions


def test_final_report_ends_the_stay_and_its_status_outlives_the_machine_until_retention():
    d = disp(pool_size=0, retention_s=100, retention_count=2)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    (m,) = run_creates(d, actions)
    d.report(stay.id, {**joined(), "turns": [{"id": "t1"}]}, 1.0)
    actions = d.report(stay.id, {"state": "ended", "sub_code": "dismissed", "reason": "dismissed through the API"}, 2.0)
    assert actions == [DestroyMachine(m.id, f"stay {stay.id} ended (dismissed)")]
    d.destroyed(m.id)
    status = public_status(d.stay_in("a"))
    assert status["state"] == "ended" and status["sub_code"] == "dismissed" and status["bot_id"] == stay.id
    assert status["machine"]["id"] == m.id and m.id not in d.slots  # which machine hosted it, after it is gone
    assert d.report(stay.id, joined(), 3.0) == [] and stay.state is BotState.ENDED  # late heartbeat ignored
    d.tick(50.0)
    assert d.stay_in("a") is stay
    d.tick(103.0)
    assert d.stay_in("a") is None


def test_the_final_reports_transcript_is_kept_with_the_stay_out_of_its_status_and_evicted_with_it():
    d = disp(pool_size=0, retention_s=100)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    (m,) = run_creates(d, actions)
    doc = {"started_at": 1.0, "lines": [{"speaker": "Ann", "text": "hi"}], "dropped": 0, "max_lines": 10}
    d.report(stay.id, {**joined(), "transcript": {"lines": ["a heartbeat's is not kept"]}}, 1.0)
    assert stay.transcript is None and "transcript" not in stay.status
    d.report(stay.id, {"state": "ended", "sub_code": "asked_to_leave", "transcript": doc}, 2.0)
    d.destroyed(m.id)
    assert d.stay_in("a").transcript == doc and "transcript" not in public_status(stay)
    d.tick(103.0)
    assert d.stay_in("a") is None  # gone with the stay's status: the same retention


def test_webvtt_rendered_from_the_json_a_bot_hands_over_is_the_bots_own():
    record = MeetingTranscript(max_lines=2)
    record.add(Line("p0", "Old", 100.0, 100.5, "dropped"))
    record.add(Line("p1", "Ann <host>", 101.25, 103.5, "Luna, what time is it?", language="en"))
    record.add(Line("luna", "Luna", 104.0, 105.125, "It is noon.", luna=True, kind="reply", interrupted=True))
    doc = record.to_json(origin=100.0, to_wall=1_764_000_000.0)
    again, origin = MeetingTranscript.from_json(json.loads(json.dumps(doc)))
    assert again.to_vtt(origin) == record.to_vtt(100.0) and again.to_json(origin, 0.0) == doc
    with pytest.raises(ValueError, match="not a transcript"):
        MeetingTranscript.from_json({"started_at": 1.0, "lines": [{"speaker": "Ann"}], "dropped": 0, "max_lines": 1})


def test_retention_is_bounded_by_count():
    d = disp(pool_size=0, retention_count=2, max_machines=50)
    for i, room in enumerate("abcd"):
        stay, _, _ = d.summon(room, {}, None, float(i))
        d.report(stay.id, {"state": "ended", "sub_code": "dismissed"}, float(i))
    d.tick(10.0)
    assert sorted(d.rooms) == ["c", "d"] and len(d.stays) == 2


def test_a_warm_machine_that_will_not_start_is_replaced_by_a_fresh_one():
    d = disp(pool_size=1)
    warm_pool(d)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    start = next(a for a in actions if isinstance(a, StartPooled))
    actions = d.start_failed(start, "409 insufficient memory available to fulfill request", 0.5)
    assert (
        DestroyMachine(start.machine_id, "would not start: 409 insufficient memory available to fulfill request")
        in actions
    )
    create = next(a for a in actions if isinstance(a, CreateMachine))
    assert create.purpose is Purpose.STAY and create.stay_id == stay.id and stay.live


def test_a_stay_dismissed_while_its_machine_is_made_gets_the_machine_destroyed():
    d = disp(pool_size=0)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    d.dismissed(stay.id, 0.1)
    m = replace(machine(MachineState.STARTED), name=actions[0].name)
    assert d.created(actions[0], m) == [DestroyMachine(m.id, "its stay ended before it booted")]


def test_create_failure_fails_the_stay_with_a_reason():
    d = disp(pool_size=0)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    d.create_failed(actions[0], "422 insufficient_capacity in nrt", 0.2)
    assert stay.state is BotState.FAILED and stay.sub_code == "no_machine" and "nrt" in stay.reason
    assert d.machine_count() == 0


def test_rebuild_ends_stays_whose_machine_stopped_and_drops_orphans():
    d = disp(pool_size=0)
    done = machine(MachineState.STOPPED, **{STAY: "bot_1", ROOM: "a"})
    crashed = replace(machine(MachineState.STOPPED, **{STAY: "bot_2", ROOM: "b"}), exit_code=1)
    orphan = machine(MachineState.STARTED)
    actions = d.rebuild([done, crashed, orphan], now=0.0)
    assert d.stay_in("a").state is BotState.ENDED and d.stay_in("b").sub_code == "crashed"
    assert {a.machine_id for a in actions if isinstance(a, DestroyMachine)} == {done.id, crashed.id, orphan.id}


def test_a_machine_made_while_a_list_was_in_flight_is_adopted_not_lost():
    d = disp(pool_size=0)
    stay, _, actions = d.summon("a", {}, None, 0.0)
    (m,) = run_creates(d, actions)
    d.machines_listed([], now=0.5)  # the list was taken before the create finished
    d.machines_listed([m], now=1.0)
    assert d.slots[m.id].stay_id == stay.id
    d.report(stay.id, joined(), 1.5)
    d.machines_listed([replace(m, state=MachineState.STOPPED)], now=2.0)
    assert stay.sub_code == "crashed"


def test_stay_secrets_are_derived_per_stay_and_stable_across_restarts():
    a, b = StayKeys.from_token("fly-token"), StayKeys.from_token("fly-token")
    assert a.stay_secret("bot_1") == b.stay_secret("bot_1") != a.stay_secret("bot_2")
    assert a.boot_secret("luna-pool-1") != a.stay_secret("luna-pool-1")
    assert "fly-token" not in a.stay_secret("bot_1")
    assert StayKeys.from_token("other").stay_secret("bot_1") != a.stay_secret("bot_1")
    assert a.check(a.stay_secret("bot_1"), b.stay_secret("bot_1")) and not a.check(a.stay_secret("bot_1"), "x")
