"""The Machines API client against the local fake Fly (real processes as machines, Fly's errors and faults)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from fakes.fly_machines import FakeFlyMachines
from luna_voice.scale.machines import FlyApiError, MachinesApi, MachineState

SLEEPER = "registry.fly.io/luna-bots:sleeper"
CRASHER = "registry.fly.io/luna-bots:crasher"
ECHO = "registry.fly.io/luna-bots:echo"
IMAGES = {
    SLEEPER: [sys.executable, "-c", "import time; time.sleep(60)"],
    ECHO: [sys.executable, "-c", "import os; print(*(os.environ[k] for k in ('FLY_MACHINE_ID', 'SECRET_KEY', 'X')))"],
    CRASHER: [sys.executable, "-c", "import sys; sys.exit(3)"],
}


@pytest.fixture
async def fly(tmp_path: Path) -> AsyncIterator[FakeFlyMachines]:
    fake = FakeFlyMachines(images=IMAGES, log_dir=tmp_path, secrets_env={"SECRET_KEY": "from-fly-secrets"})
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def api(fly: FakeFlyMachines) -> AsyncIterator[MachinesApi]:
    client = MachinesApi(app=fly.app, token=fly.token, base_url=fly.url, backoff_s=0.01)
    yield client
    await client.aclose()


def config(image: str = SLEEPER, **extra: object) -> dict[str, object]:
    return {"image": image, "restart": {"policy": "no"}, "metadata": {"luna_role": "bot"}, **extra}


async def test_create_start_stop_destroy_spawns_and_kills_a_real_process(api: MachinesApi, fly: FakeFlyMachines):
    m = await api.create(config(env={"X": "1"}), region="fra", skip_launch=True)
    assert m.state is MachineState.CREATED and m.region == "fra" and m.private_ip == "127.0.0.1"
    assert fly.machines[m.id].proc is None
    await api.start(m.id)
    await api.wait(m.id, "started", timeout_s=5)
    proc = fly.machines[m.id].proc
    assert proc is not None and proc.returncode is None
    await api.stop(m.id, timeout_s=2)
    await api.wait(m.id, "stopped", instance_id=m.instance_id, timeout_s=5)
    assert (await api.get(m.id)).state is MachineState.STOPPED
    await api.destroy(m.id)
    assert proc.returncode is not None
    with pytest.raises(FlyApiError) as exc:
        await api.get(m.id + "00")
    assert exc.value.not_found


async def test_list_filters_by_metadata(api: MachinesApi):
    a = await api.create(config(metadata={"luna_role": "bot", "luna_room": "a"}), skip_launch=True)
    await api.create(config(metadata={"luna_role": "bot", "luna_room": "b"}), skip_launch=True)
    await api.create(config(metadata={"other": "x"}), skip_launch=True)
    assert len(await api.list(metadata={"luna_role": "bot"})) == 2
    assert [m.id for m in await api.list(metadata={"luna_room": "a"})] == [a.id]
    assert (await api.list(metadata={"luna_room": "a"}))[0].metadata["luna_room"] == "a"


async def test_wrong_token_is_refused_and_never_logged(fly: FakeFlyMachines):
    bad = MachinesApi(app=fly.app, token="s3cret-wrong-token", base_url=fly.url)
    with structlog.testing.capture_logs() as logs, pytest.raises(FlyApiError) as exc:
        await bad.list()
    await bad.aclose()
    assert exc.value.status == 401
    assert "s3cret" not in str(exc.value) and "s3cret" not in repr(bad) and "s3cret" not in repr(logs)


async def test_unknown_app_is_404(fly: FakeFlyMachines):
    other = MachinesApi(app="nope", token=fly.token, base_url=fly.url)
    with pytest.raises(FlyApiError) as exc:
        await other.list()
    await other.aclose()
    assert exc.value.status == 404 and "not found" in exc.value.message


async def test_conflicts_and_wrong_state(api: MachinesApi):
    await api.create(config(), name="bot-1", skip_launch=True)
    with pytest.raises(FlyApiError) as exc:
        await api.create(config(), name="bot-1")
    assert exc.value.status == 409
    m = await api.create(config())
    with pytest.raises(FlyApiError) as exc:
        await api.start(m.id)
    assert exc.value.status == 412
    with pytest.raises(FlyApiError) as exc:
        await api.destroy(m.id)
    assert exc.value.status == 412
    await api.destroy(m.id, force=True)
    assert m.id not in {x.id for x in await api.list()}


async def test_429_is_retried_after_retry_after_and_5xx_only_when_safe(api: MachinesApi, fly: FakeFlyMachines):
    fly.fault(429, action="list", retry_after=0.05)
    assert await api.list() == []
    assert fly.calls["list"] == 1 and len(fly.requests) == 2
    fly.fault(503, action="list", times=2)
    assert await api.list() == []
    fly.fault(500, action="create")
    with pytest.raises(FlyApiError) as exc:  # a retried create could make two machines
        await api.create(config())
    assert exc.value.status == 500 and fly.calls["create"] == 0
    fly.fault(503, action="get", times=10)
    with pytest.raises(FlyApiError) as exc:
        await api.get("whatever")
    assert exc.value.status == 503


async def test_wait_times_out_with_408(api: MachinesApi):
    m = await api.create(config(), skip_launch=True)
    with pytest.raises(FlyApiError) as exc:
        await api.wait(m.id, "started", timeout_s=1)
    assert exc.value.status == 408
    with pytest.raises(FlyApiError) as exc:
        await api.wait(m.id, "stopped", timeout_s=1)  # Fly needs the instance id for this one
    assert exc.value.status == 400


async def test_exit_stops_the_machine_and_records_the_exit_code(api: MachinesApi):
    m = await api.create(config(CRASHER))
    await api.wait(m.id, "stopped", instance_id=m.instance_id, timeout_s=5)
    got = await api.get(m.id)
    assert got.state is MachineState.STOPPED and got.exit_code == 3


async def test_default_restart_policy_restarts_a_crash_like_fly(api: MachinesApi, fly: FakeFlyMachines):
    m = await api.create({"image": CRASHER})
    await api.wait(m.id, "stopped", instance_id=m.instance_id, timeout_s=20)
    assert fly.machines[m.id].restarts == 10


async def test_kill_is_a_host_failure(api: MachinesApi, fly: FakeFlyMachines):
    m = await api.create(config())
    fly.kill(m.id)
    await api.wait(m.id, "stopped", instance_id=m.instance_id, timeout_s=5)
    assert (await api.get(m.id)).exit_code == -9


async def test_machine_env_has_secrets_config_env_and_the_fly_variables(api: MachinesApi, tmp_path: Path):
    m = await api.create(config(ECHO, env={"X": "from-config"}))
    await api.wait(m.id, "stopped", instance_id=m.instance_id, timeout_s=5)
    assert (tmp_path / f"machine-{m.id}.log").read_text().split() == [m.id, "from-fly-secrets", "from-config"]


async def test_metadata_changes_without_a_new_version_and_filters_the_list(api: MachinesApi, fly: FakeFlyMachines):
    m = await api.create(config(), skip_launch=True)
    await api.set_metadata(m.id, "luna_stay", "bot_1")
    got = await api.get(m.id)
    assert got.metadata["luna_stay"] == "bot_1" and got.instance_id == m.instance_id
    assert [x.id for x in await api.list(metadata={"luna_stay": "bot_1"})] == [m.id]
    with pytest.raises(FlyApiError) as exc:
        await api.set_metadata("nope", "luna_stay", "x")
    assert exc.value.status == 404
