"""The dispatcher's adapter against the fake Fly: warm pool, cap, crashes, dispatcher restart, deploys, secrets.

Machines here run ``tests/fakes/bot_machine.py`` (the real agent protocol, no Chromium) so many can run at once;
``tests/test_scale_e2e.py`` runs the real ``luna-voice bot`` in a real room.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from fakes.bot_machine import SAID
from fakes.fly_machines import FakeFlyMachines, free_port
from luna_voice.api.errors import json_errors
from luna_voice.bots.states import BotState
from luna_voice.rooms.tickets import RoomTickets
from luna_voice.scale.dispatch import CapacityReached, DispatchConfig, Dispatcher, StayKeys, public_status
from luna_voice.scale.fleet import Fleet, FleetConfig
from luna_voice.scale.internal import FLEET, LOCAL_TICKETS, internal_routes
from luna_voice.scale.machines import MachinesApi
from roomtools import until

ROOT = Path(__file__).resolve().parents[1]
V1, V2 = "registry.fly.io/luna-voice:deployment-1", "registry.fly.io/luna-voice:deployment-2"
BOT = (sys.executable, "-m", "tests.fakes.bot_machine")


async def eventually(check: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    """Wait for a condition the system reaches on its own (bounded); fails with what was awaited."""
    await until(lambda: asyncio.sleep(0, check()), within, what, step=0.05)


@dataclass
class Rig:
    fly: FakeFlyMachines
    fleet: Fleet
    url: str
    runner: web.AppRunner
    tickets: RoomTickets  # the local rooms' hub's, as the dispatcher serves it

    async def stop(self) -> None:
        """The dispatcher process goes away; its machines do not."""
        await self.fleet.aclose()
        await self.runner.cleanup()

    @property
    def core(self) -> Dispatcher:
        return self.fleet.core


StartRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def fly(tmp_path: Path) -> AsyncIterator[FakeFlyMachines]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "HOME": str(tmp_path)}
    fake = FakeFlyMachines(images={V1: list(BOT), V2: list(BOT)}, base_env=env, log_dir=tmp_path)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def start_rig(fly: FakeFlyMachines) -> AsyncIterator[StartRig]:
    rigs: list[Rig] = []
    port = free_port()

    async def start(image: str = V1, **cfg: object) -> Rig:
        """A dispatcher (same port each time, as after a restart) around a fresh core."""
        core = Dispatcher(DispatchConfig(**{"image": image, "region": "nrt", "pool_size": 2, **cfg}))
        api = MachinesApi(app=fly.app, token=fly.token, base_url=fly.url, backoff_s=0.01)
        url = f"http://127.0.0.1:{port}"
        config = FleetConfig(app=fly.app, dispatcher_url=url, bot_cmd=BOT, list_interval_s=0.3, tick_interval_s=0.1)
        fleet = Fleet(api, core, StayKeys.from_token(fly.token), config, address=fly.address)
        app = web.Application(middlewares=[json_errors])
        app[FLEET] = fleet
        app[LOCAL_TICKETS] = tickets = RoomTickets()
        app.add_routes(internal_routes)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await fleet.start()
        rigs.append(Rig(fly, fleet, url, runner, tickets))
        return rigs[-1]

    yield start
    for rig in rigs:
        await rig.stop()


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def warm_count(rig: Rig) -> int:
    return len(rig.core.warm())


async def test_pool_of_two_with_three_summons_is_two_starts_and_one_create(start_rig: StartRig):
    rig = await start_rig(pool_size=2, max_machines=6)
    await eventually(lambda: warm_count(rig) == 2, what="two warm machines")
    creates_before = len(rig.fly.created)
    stays = [rig.fleet.summon(room, {}, None)[0] for room in ("a", "b", "c")]
    await eventually(lambda: all(s.state is BotState.JOINED for s in stays), what="three bots joined")
    assert rig.fly.calls["start"] == 2
    new = rig.fly.created[creates_before:]
    for_stays = [c for c in new if "luna_stay" in c["config"]["metadata"]]
    assert len(for_stays) == 1 and not for_stays[0].get("skip_launch")
    assert all(c["skip_launch"] for c in new if c not in for_stays)  # the refills are stopped pool machines
    await eventually(lambda: warm_count(rig) == 2, what="the pool refilled")


async def test_the_cap_refuses_with_retry_after(start_rig: StartRig):
    rig = await start_rig(pool_size=0, max_machines=1, retry_after_s=7)
    rig.fleet.summon("a", {}, None)
    with pytest.raises(CapacityReached) as exc:
        rig.fleet.summon("b", {}, None)
    assert exc.value.retry_after == 7


async def test_a_killed_bot_machine_is_crashed_within_seconds_then_restarted_on_a_fresh_machine(start_rig: StartRig):
    rig = await start_rig(pool_size=0)
    stay, _ = rig.fleet.summon("a", {"policy": "always"}, None)
    await eventually(lambda: stay.state is BotState.JOINED, what="joined")
    first_machine = stay.machine_id
    assert first_machine is not None
    killed_at = time.monotonic()
    rig.fly.kill(first_machine)
    await eventually(lambda: stay.state is BotState.FAILED, within=5, what="failed/crashed")
    assert stay.sub_code == "crashed" and time.monotonic() - killed_at < 5
    retry = rig.core.stay_in("a")
    assert retry is not None and retry is not stay and retry.request == {"policy": "always"}
    await eventually(lambda: retry.state is BotState.JOINED, what="the restart joined")
    assert retry.machine_id not in (None, first_machine)
    assert public_status(retry)["restarted_from"]["sub_code"] == "crashed"
    await eventually(lambda: rig.fly.machines[first_machine].state == "destroyed", what="old machine destroyed")


async def test_no_restart_when_the_bot_was_alone(start_rig: StartRig, fly: FakeFlyMachines):
    fly.base_env["STAND_IN_ALONE"] = "1"
    rig = await start_rig(pool_size=0)
    stay, _ = rig.fleet.summon("a", {}, None)
    await eventually(lambda: stay.state is BotState.JOINED, what="joined")
    fly.kill(stay.machine_id or "")
    await eventually(lambda: stay.state is BotState.FAILED, within=5, what="failed/crashed")
    assert rig.core.stay_in("a") is stay and len(fly.created) == 1


async def test_a_restarted_dispatcher_still_answers_for_and_dismisses_the_live_stay(start_rig: StartRig):
    rig = await start_rig(pool_size=1)
    stay, _ = rig.fleet.summon("a", {}, None)
    await eventually(lambda: stay.state is BotState.JOINED, what="joined")
    pool_before = {s.id for s in rig.core.warm()}
    await rig.stop()
    rig2 = await start_rig(pool_size=1)
    again = rig2.core.stay_in("a")
    assert again is not None and again.id == stay.id
    await eventually(lambda: again.state is BotState.JOINED, what="status fetched from the bot")
    assert {s.id for s in rig2.core.warm()} == pool_before  # the same warm machine, not a new one
    await rig2.fleet.dismiss(again)
    assert again.state is BotState.ENDED and again.sub_code == "dismissed"
    machine = again.machine_id or ""
    await eventually(lambda: rig2.fly.machines[machine].state == "destroyed", what="its machine destroyed")
    assert public_status(rig2.core.stay_in("a"))["state"] == "ended"  # after the machine is gone


async def test_the_bots_transcript_outlives_its_machine_when_it_ends_itself_or_is_dismissed(start_rig: StartRig):
    rig = await start_rig(pool_size=0)
    ended_itself, _ = rig.fleet.summon("a", {}, None)
    dismissed, _ = rig.fleet.summon("b", {}, None)
    await eventually(lambda: ended_itself.state is dismissed.state is BotState.JOINED, what="both joined")
    proc = rig.fly.machines[ended_itself.machine_id or ""].proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)  # the stand-in leaves on its own (as after "Luna, you can leave") and reports
    await rig.fleet.dismiss(dismissed)
    await eventually(lambda: not ended_itself.live, what="the first bot's final report")
    for stay in (ended_itself, dismissed):
        machine = stay.machine_id or ""
        await eventually(lambda m=machine: rig.fly.machines[m].state == "destroyed", what="its machine destroyed")
        doc = rig.core.stays[stay.id].transcript
        assert doc is not None, stay.sub_code
        assert [(line["speaker"], line["text"]) for line in doc["lines"]] == [
            ("Ann", SAID),
            ("Luna", "It is noon."),
        ]
    assert (ended_itself.sub_code, dismissed.sub_code) == ("shutdown", "dismissed")


async def test_a_deploy_moves_the_pool_and_the_live_stay_finishes_on_the_old_image(start_rig: StartRig):
    rig = await start_rig(pool_size=2)
    await eventually(lambda: warm_count(rig) == 2, what="warm pool")
    stay, _ = rig.fleet.summon("a", {}, None)
    await eventually(lambda: stay.state is BotState.JOINED, what="joined")
    old_pool = {s.id for s in rig.core.warm()}
    await rig.stop()
    rig2 = await start_rig(image=V2, pool_size=2)
    await eventually(lambda: warm_count(rig2) == 2, what="a new pool")
    assert all(s.image == V2 for s in rig2.core.warm())
    await eventually(
        lambda: all(rig2.fly.machines[m].state == "destroyed" for m in old_pool), what="old pool destroyed"
    )
    live = rig2.core.stay_in("a")
    assert live is not None and live.live and rig2.fly.machines[live.machine_id or ""].config["image"] == V1


async def test_secrets_stay_where_they_belong(start_rig: StartRig, fly: FakeFlyMachines):
    rig = await start_rig(pool_size=1)
    stay, _ = rig.fleet.summon("a", {}, None)
    await eventually(lambda: stay.state is BotState.JOINED, what="joined")
    for m in fly.live():
        env = m.config.get("env") or {}
        assert fly.token not in str(m.config) and "FLY_API_TOKEN" not in env
        if m.proc is not None:
            assert fly.token.encode() not in environ_of(m.proc.pid)
    async with aiohttp.ClientSession() as http:
        url = f"{rig.url}/internal/stays/{stay.id}/report"
        async with http.post(url, json={"state": "ended"}, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        machine = stay.machine_id or ""
        url = f"{rig.url}/internal/machines/{machine}/assignment"
        async with http.post(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(f"{fly.address(machine)}/rooms/a/luna") as resp:  # the bot wants the stay secret
            assert resp.status == 401
    assert stay.live


async def test_a_bot_machine_gets_its_local_room_tickets_with_its_stay_secret_only(start_rig: StartRig):
    """With LUNA_API_TOKEN the dispatcher's hub admits only ticket holders; a bot machine knows no API token, so
    its stay secret buys Luna's page a fresh ticket (each page open, a rejoin too), for her stay's room only."""
    rig = await start_rig(pool_size=1)
    stay, _ = rig.fleet.summon("a", {}, None)
    await eventually(lambda: stay.state is BotState.JOINED, what="joined")
    url = f"{rig.url}/internal/stays/{stay.id}/local-ticket"
    secret = {"Authorization": f"Bearer {rig.fleet.keys.stay_secret(stay.id)}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
        tickets = []
        for _ in range(2):
            async with http.post(url, headers=secret) as resp:
                assert resp.status == 201
                tickets.append((await resp.json())["ticket"])
        assert tickets[0] != tickets[1]
        assert rig.tickets.redeem(tickets[0], "b") is None  # another room: refused (and used up)
        assert rig.tickets.redeem(tickets[1], "a") == "bot"  # her room, as Luna
        assert rig.tickets.redeem(tickets[1], "a") is None  # single use
        await rig.fleet.dismiss(stay)
        await eventually(lambda: not stay.live, what="the stay to end")
        async with http.post(url, headers=secret) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_live"
