"""RtkApi against a local server speaking Cloudflare's RealtimeKit REST shapes (tests/fakes/cloudflare_rtk.py)."""

from __future__ import annotations

import logging
import socket
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
import structlog

from fakes.cloudflare_rtk import FakeCloudflareRtk, FakePreset, decode_token_payload
from luna_voice.rooms.rtk_api import MintedParticipant, RtkApi, RtkApiError, custom_participant_id
from roomtools import until


@pytest.fixture
async def fake():
    async with FakeCloudflareRtk() as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_api(fake: FakeCloudflareRtk, sleeps: list[float] | None = None, **overrides) -> RtkApi:
    """An RtkApi for the fake; backoff sleeps are recorded instead of waited when ``sleeps`` is given."""

    async def record(delay: float) -> None:
        assert sleeps is not None
        sleeps.append(delay)

    options = {
        "account_id": fake.account_id,
        "app_id": fake.app_id,
        "api_token": fake.api_token,
        "base_url": fake.base_url,
        "preset_name": "group_call_participant",
        "backoff_base_s": 0.01,
    }
    if sleeps is not None:
        options["sleep"] = record
    options.update(overrides)
    return RtkApi(**options)


# --- minting -------------------------------------------------------------------------------------------------------
async def test_mint_sends_documented_request_and_returns_the_token(fake: FakeCloudflareRtk) -> None:
    meeting_id = fake.add_meeting()
    async with aclosing(make_api(fake, picture="https://example.com/luna.png")) as api:
        minted = await api.mint_token(meeting_id, "stay1")

    [request] = fake.requests
    assert request.method == "POST"
    assert request.path == (
        f"/client/v4/accounts/{fake.account_id}/realtime/kit/{fake.app_id}/meetings/{meeting_id}/participants"
    )
    assert request.authorization == f"Bearer {fake.api_token}"
    assert request.json == {
        "name": "Luna",
        "picture": "https://example.com/luna.png",
        "preset_name": "group_call_participant",
        "custom_participant_id": f"luna-{meeting_id}-stay1",
    }
    [participant] = fake.meetings[meeting_id].participants
    assert minted == MintedParticipant(participant["id"], f"luna-{meeting_id}-stay1", participant["token"])
    claims = decode_token_payload(minted.token)
    assert claims["meetingId"] == meeting_id
    assert claims["participantId"] == minted.participant_id
    assert claims["orgId"] == fake.org_id


async def test_name_is_always_sent_and_picture_only_when_set(fake: FakeCloudflareRtk) -> None:
    meeting_id = fake.add_meeting()
    async with aclosing(make_api(fake)) as api:
        await api.mint_token(meeting_id, "stay1")
    async with aclosing(make_api(fake, name="露娜")) as api:
        await api.mint_token(meeting_id, "stay2")

    assert [r.json["name"] for r in fake.requests] == ["Luna", "露娜"]
    assert all("picture" not in r.json for r in fake.requests)
    with pytest.raises(ValueError, match="name"):
        make_api(fake, name="")


async def test_custom_participant_id_is_unique_per_stay_and_names_the_meeting(fake: FakeCloudflareRtk) -> None:
    first, second = fake.add_meeting(), fake.add_meeting()
    async with aclosing(make_api(fake)) as api:
        a1 = await api.mint_token(first, "s1")
        a2 = await api.mint_token(first, "s2")  # Luna summoned again to the same meeting: another identity
        b = await api.mint_token(second, "s1")

    sent = [r.json["custom_participant_id"] for r in fake.requests]
    assert sent == [custom_participant_id(first, "s1"), custom_participant_id(first, "s2"), f"luna-{second}-s1"]
    assert len({a1.custom_participant_id, a2.custom_participant_id, b.custom_participant_id}) == 3
    assert a1.custom_participant_id.startswith(f"luna-{first}-") and a1.token != a2.token


async def test_result_envelope_is_accepted_too() -> None:
    async with FakeCloudflareRtk(data_key="result") as fake:
        meeting_id = fake.add_meeting()
        async with aclosing(make_api(fake)) as api:
            minted = await api.mint_token(meeting_id, "stay1")
            assert await api.check_preset() is None
    assert minted.token == fake.minted_tokens[0]


# --- kick and the preset check ---------------------------------------------------------------------------------
async def test_kick_names_the_participant_by_both_ids(fake: FakeCloudflareRtk) -> None:
    meeting_id = fake.add_meeting()
    async with aclosing(make_api(fake)) as api:
        minted = await api.mint_token(meeting_id, "stay1")
        await api.kick(meeting_id, minted)

    kick = fake.requests[-1]
    assert kick.path.endswith(f"/meetings/{meeting_id}/active-session/kick")
    assert kick.json == {
        "participant_ids": [minted.participant_id],
        "custom_participant_ids": [minted.custom_participant_id],
    }
    assert fake.meetings[meeting_id].kicked == [minted.participant_id]


@pytest.mark.parametrize(
    ("preset", "problem"),
    [
        (FakePreset("luna_bot"), None),
        (FakePreset("someone_else"), "has no preset named 'luna_bot'"),
        (FakePreset("luna_bot", audio="NOT_ALLOWED"), "does not allow Luna to speak (media.audio.can_produce is NOT"),
        (FakePreset("luna_bot", audio="CAN_REQUEST"), "does not allow Luna to speak"),
        (FakePreset("luna_bot", waiting_room="ON_PRIVILEGED_USER_ENTRY"), "has a waiting room"),
    ],
    ids=["fine", "missing", "no-audio", "audio-on-request", "waiting-room"],
)
async def test_the_preset_check_lists_presets_and_reads_the_one_named(preset: FakePreset, problem: str | None) -> None:
    # 130 other presets whose names contain the search term: the one we want is on the second page
    others = [FakePreset(f"luna_bot_old_{i}") for i in range(130)]
    async with (
        FakeCloudflareRtk(presets=(*others, preset)) as fake,
        aclosing(make_api(fake, preset_name="luna_bot")) as api,
    ):
        found = await api.check_preset()
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
    listing = [r for r in fake.requests if r.path.endswith("/presets")]
    assert len(listing) == 2  # the named preset is on the second page of the search
    assert all(r.authorization == f"Bearer {fake.api_token}" for r in fake.requests)


async def test_the_fake_pages_and_searches_presets_like_the_api(fake: FakeCloudflareRtk) -> None:
    """The list shape the check relies on: data array, paging offsets and totals, search by name."""
    url = f"{fake.base_url}/accounts/{fake.account_id}/realtime/kit/{fake.app_id}/presets"
    headers = {"Authorization": f"Bearer {fake.api_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"search": "host", "per_page": "1"}, headers=headers) as resp:
            body = await resp.json()
        async with session.get(url, params={"per_page": "500"}, headers=headers) as bad:
            assert bad.status == 400
    assert body["success"] is True and [p["name"] for p in body["data"]] == ["group_call_host"]
    assert body["paging"] == {"start_offset": 1, "end_offset": 1, "total_count": 1}


async def test_ids_that_could_walk_the_url_are_refused_before_any_request(fake: FakeCloudflareRtk) -> None:
    async with aclosing(make_api(fake)) as api:
        for bad in ("..", "../../apps", "a/b", "", "x" * 200):
            with pytest.raises(RtkApiError) as caught:
                await api.mint_token(bad, "stay1")
            assert (caught.value.http_status, caught.value.code) == (400, "invalid_meeting_id")
        with pytest.raises(RtkApiError) as caught:
            await api.kick(fake.add_meeting(), MintedParticipant("p/../x", "luna-x", "token"))
        assert caught.value.code == "invalid_participant_id"
        with pytest.raises(RtkApiError) as caught:
            await api.mint_token(fake.add_meeting(), "../x")
        assert caught.value.code == "invalid_stay_id"
    assert fake.requests == []


# --- error mapping -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error_style", ["v4", "rtk"])
async def test_unknown_meeting_is_404_meeting_not_found(error_style: str) -> None:
    async with FakeCloudflareRtk(error_style=error_style) as fake, aclosing(make_api(fake)) as api:
        someone = MintedParticipant("some-participant", "luna-x-s1", "token")
        for call in (lambda m: api.mint_token(m, "s1"), lambda m: api.kick(m, someone)):
            with pytest.raises(RtkApiError) as caught:
                await call("6f1c8e4e-0000-4000-8000-000000000000")
            err = caught.value
            assert (err.http_status, err.code, err.retry_after) == (404, "meeting_not_found", None)
            assert "Meeting not found" in err.message
    assert len(fake.requests) == 2  # a 404 is not retried


async def test_wrong_token_is_502_rtk_auth_failed(fake: FakeCloudflareRtk) -> None:
    meeting_id = fake.add_meeting()
    async with aclosing(make_api(fake, api_token="not-the-right-token")) as api:
        with pytest.raises(RtkApiError) as caught:
            await api.mint_token(meeting_id, "stay1")
    err = caught.value
    assert (err.http_status, err.code) == (502, "rtk_auth_failed")
    assert "Cloudflare API token" in err.message and "Realtime Admin" in err.message
    assert "HTTP 401: Authentication error" in err.message
    assert len(fake.requests) == 1


async def test_forbidden_is_502_rtk_auth_failed(fake: FakeCloudflareRtk) -> None:
    fake.fail_next(403)
    async with aclosing(make_api(fake)) as api:
        with pytest.raises(RtkApiError) as caught:
            await api.check_preset()
    assert (caught.value.http_status, caught.value.code) == (502, "rtk_auth_failed")
    assert "HTTP 403" in caught.value.message


@pytest.mark.parametrize("error_style", ["v4", "rtk"])
async def test_validation_errors_are_400_rtk_rejected_with_rtk_messages(error_style: str) -> None:
    async with FakeCloudflareRtk(error_style=error_style) as fake:
        meeting_id = fake.add_meeting()
        async with aclosing(make_api(fake, preset_name="no_such_preset")) as api:
            with pytest.raises(RtkApiError) as unknown_preset:
                await api.mint_token(meeting_id, "stay1")
        async with aclosing(make_api(fake, picture="not a uri")) as api:
            with pytest.raises(RtkApiError) as bad_picture:
                await api.mint_token(meeting_id, "stay1")

    assert (unknown_preset.value.http_status, unknown_preset.value.code) == (400, "rtk_rejected")
    assert "HTTP 422" in unknown_preset.value.message
    assert "Preset no_such_preset not found" in unknown_preset.value.message
    assert (bad_picture.value.http_status, bad_picture.value.code) == (400, "rtk_rejected")
    assert "picture 'not a uri' must be a URI" in bad_picture.value.message
    assert len(fake.requests) == 2


async def test_fake_rejects_missing_required_fields(fake: FakeCloudflareRtk) -> None:
    """The fake's validation is what gives the rtk_rejected mapping meaning; check it answers like RTK."""
    meeting_id = fake.add_meeting()
    url = f"{fake.base_url}/accounts/{fake.account_id}/realtime/kit/{fake.app_id}/meetings/{meeting_id}/participants"
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {fake.api_token}"}
        async with session.post(url, json={"name": "Luna"}, headers=headers) as resp:
            assert resp.status == 400
            body = await resp.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    assert [e["message"] for e in body["errors"]] == ["preset_name is required", "custom_participant_id is required"]


async def test_success_false_in_a_2xx_is_a_bad_response(fake: FakeCloudflareRtk) -> None:
    fake.fail_next(200)
    async with aclosing(make_api(fake)) as api:
        with pytest.raises(RtkApiError) as caught:
            await api.mint_token(fake.add_meeting(), "stay1")
    assert (caught.value.http_status, caught.value.code) == (502, "rtk_bad_response")


# --- retries -------------------------------------------------------------------------------------------------------
async def test_429_honours_retry_after_then_succeeds(fake: FakeCloudflareRtk, sleeps: list[float]) -> None:
    meeting_id = fake.add_meeting()
    fake.fail_next(429, times=2, retry_after="2")
    async with aclosing(make_api(fake, sleeps)) as api:
        minted = await api.mint_token(meeting_id, "stay1")
    assert minted.token == fake.minted_tokens[0]
    assert len(fake.requests) == 3
    assert sleeps == [2.0, 2.0]
    # the retried POSTs carry the same identity, so a retry cannot add a second, different Luna
    assert len({r.json["custom_participant_id"] for r in fake.requests}) == 1


async def test_retry_after_as_http_date(fake: FakeCloudflareRtk, sleeps: list[float]) -> None:
    fake.fail_next(429, retry_after=format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True))
    async with aclosing(make_api(fake, sleeps)) as api:
        await api.check_preset()
    [delay] = sleeps
    assert 7.0 < delay <= 10.0


async def test_503_backs_off_exponentially_then_succeeds(fake: FakeCloudflareRtk, sleeps: list[float]) -> None:
    meeting_id = fake.add_meeting()
    fake.fail_next(503, times=2)
    async with aclosing(make_api(fake, sleeps, backoff_base_s=0.5)) as api:
        assert (await api.mint_token(meeting_id, "stay1")).token == fake.minted_tokens[0]
    assert len(fake.requests) == 3
    assert sleeps == [0.5, 1.0]


async def test_always_500_gives_up_with_503_rtk_unavailable(fake: FakeCloudflareRtk, sleeps: list[float]) -> None:
    fake.fail_always(500)
    async with aclosing(make_api(fake, sleeps, backoff_base_s=0.5, max_attempts=3)) as api:
        with pytest.raises(RtkApiError) as caught:
            await api.mint_token(fake.add_meeting(), "stay1")
    err = caught.value
    assert (err.http_status, err.code) == (503, "rtk_unavailable")
    assert err.retry_after == 2.0  # the next backoff step
    assert "3 attempt(s)" in err.message and "HTTP 500" in err.message
    assert len(fake.requests) == 3
    assert sleeps == [0.5, 1.0]


async def test_persistent_429_reports_the_servers_retry_after(fake: FakeCloudflareRtk, sleeps: list[float]) -> None:
    fake.fail_always(429, retry_after="5")
    async with aclosing(make_api(fake, sleeps, max_attempts=2)) as api:
        with pytest.raises(RtkApiError) as caught:
            await api.kick(fake.add_meeting(), MintedParticipant("some-participant", "luna-x-s1", "token"))
    assert (caught.value.http_status, caught.value.code, caught.value.retry_after) == (503, "rtk_unavailable", 5.0)
    assert sleeps == [5.0]


async def test_long_retry_after_is_not_waited_out(fake: FakeCloudflareRtk, sleeps: list[float]) -> None:
    fake.fail_next(429, retry_after="120")
    async with aclosing(make_api(fake, sleeps, max_retry_wait_s=30)) as api:
        with pytest.raises(RtkApiError) as caught:
            await api.check_preset()
    assert (caught.value.code, caught.value.retry_after) == ("rtk_unavailable", 120.0)
    assert sleeps == [] and len(fake.requests) == 1


async def test_hanging_server_times_out_and_retries(fake: FakeCloudflareRtk) -> None:
    meeting_id = fake.add_meeting()
    fake.hang_next()
    async with aclosing(make_api(fake, timeout_s=0.2)) as api:  # real (tiny) sleeps here
        minted = await api.mint_token(meeting_id, "stay1")
        assert minted.token == fake.minted_tokens[0]
        fake.hang_always()
        with pytest.raises(RtkApiError) as caught:
            await api.check_preset()
    assert caught.value.code == "rtk_unavailable" and "timed out" in caught.value.message
    assert caught.value.retry_after is not None
    assert len(fake.requests) == 2 + 3


async def test_connection_refused_is_rtk_unavailable(sleeps: list[float]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        async with FakeCloudflareRtk() as fake:
            api = make_api(fake, sleeps, base_url=f"http://127.0.0.1:{port}/client/v4")
        async with aclosing(api):
            with pytest.raises(RtkApiError) as caught:
                await api.mint_token("6f1c8e4e-0000-4000-8000-000000000000", "stay1")
    assert caught.value.code == "rtk_unavailable" and "connection failed" in caught.value.message
    assert len(sleeps) == 2


# --- logging and secrets --------------------------------------------------------------------------------------------
async def test_each_attempt_is_logged(fake: FakeCloudflareRtk, sleeps: list[float]) -> None:
    fake.fail_next(503)
    with structlog.testing.capture_logs() as logs:
        async with aclosing(make_api(fake, sleeps)) as api:
            assert await api.check_preset() is None
    attempts = [e for e in logs if e["event"] == "rtk_api_attempt"]
    assert [(e["attempt"], e["status"]) for e in attempts] == [(1, 503), (2, 200), (1, 200)]
    assert all(isinstance(e["elapsed_ms"], int) and e["method"] == "GET" for e in attempts)


async def test_no_secret_in_logs_errors_or_reprs(
    fake: FakeCloudflareRtk, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    meeting_id = fake.add_meeting()
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with aclosing(make_api(fake, sleeps)) as api:
            minted = await api.mint_token(meeting_id, "stay1")
            texts += [repr(api), repr(minted), str(minted)]
            fake.fail_always(500)
            for call in (lambda: api.mint_token(meeting_id, "stay2"), api.check_preset):
                with pytest.raises(RtkApiError) as caught:
                    await call()
                texts += [str(caught.value), repr(caught.value)]
    # RTK echoing a secret back in its error text (here: a picture holding one) is scrubbed too
    fake.clear_faults()
    with structlog.testing.capture_logs() as more_logs:
        for bad in (f"token {fake.api_token}", f"token {minted.token}"):
            async with aclosing(make_api(fake, picture=bad)) as api:
                with pytest.raises(RtkApiError) as caught:
                    await api.mint_token(meeting_id, "stay3")
            texts += [str(caught.value), repr(caught.value)]
        async with aclosing(make_api(fake, api_token=fake.api_token + "x")) as api:
            with pytest.raises(RtkApiError) as caught:
                await api.mint_token(meeting_id, "stay4")
            texts += [str(caught.value), repr(api)]

    everything = "\n".join([*texts, str(logs), str(more_logs), caplog.text])
    assert "rtk_rejected" in everything and "rtk_unavailable" in everything  # the errors really happened
    assert fake.api_token not in everything
    for token in fake.minted_tokens:
        _, payload, signature = token.split(".")
        assert payload[:40] not in everything and signature[:40] not in everything


# --- the service's startup check ------------------------------------------------------------------------------------
class _NoBrowser:
    """The service's browser seam, ready and empty: these tests open no page."""

    ready = True

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def _checked(svc) -> dict:  # type: ignore[no-untyped-def]
    async def done() -> dict | None:
        status, ready = await svc.call("GET", "/readyz")
        return {"http": status, **ready} if ready["rtk_preset"]["status"] != "checking" else None

    return await until(done, 5, "the startup preset check", step=0.02)


@pytest.mark.parametrize(
    ("preset", "status", "reason"),
    [
        (FakePreset("group_call_participant"), "ok", None),
        (FakePreset("group_call_host"), "unusable", "has no preset named 'group_call_participant'"),
        (FakePreset("group_call_participant", audio="NOT_ALLOWED"), "unusable", "does not allow Luna to speak"),
        (FakePreset("group_call_participant", waiting_room="SKIP_ON_ACCEPT"), "unusable", "has a waiting room"),
    ],
    ids=["fine", "missing", "no-audio", "waiting-room"],
)
async def test_readyz_and_the_log_say_at_startup_when_the_preset_cannot_work(start_service, preset, status, reason):
    async with FakeCloudflareRtk(presets=(preset,)) as fake:
        with structlog.testing.capture_logs() as logs:
            svc = await start_service(
                host=_NoBrowser(),
                rtk_account_id=fake.account_id,
                rtk_app_id=fake.app_id,
                rtk_api_token=fake.api_token,
                rtk_api_base=fake.base_url,
            )
            ready = await _checked(svc)
    assert ready["rtk_preset"]["status"] == status and ready["rtk_preset"]["name"] == "group_call_participant"
    if reason is None:
        assert (ready["http"], ready["ready"]) == (200, True)
    else:
        assert (ready["http"], ready["ready"]) == (503, False) and reason in ready["rtk_preset"]["reason"]
        [logged] = [e for e in logs if e["event"] == "rtk.preset_unusable"]
        assert logged["log_level"] == "error" and reason in logged["reason"]


async def test_an_unreachable_rtk_api_leaves_the_preset_unchecked_not_unusable(start_service):
    async with FakeCloudflareRtk() as fake:
        fake.fail_always(403)
        svc = await start_service(
            host=_NoBrowser(),
            rtk_account_id=fake.account_id,
            rtk_app_id=fake.app_id,
            rtk_api_token=fake.api_token,
            rtk_api_base=fake.base_url,
        )
        ready = await _checked(svc)
    assert ready["rtk_preset"]["status"] == "unchecked" and "HTTP 403" in ready["rtk_preset"]["reason"]
    assert ready["ready"] is True  # a summon will say what is wrong with the token; the preset may be fine
