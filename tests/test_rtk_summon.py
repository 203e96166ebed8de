"""Summoning Luna into a RealtimeKit meeting: token minting through the Cloudflare-shaped fake, clear errors
for each way Cloudflare refuses, the app's own token, and the REST kick when the page does not answer."""

from __future__ import annotations

import asyncio
import json

import pytest

from fakes.cloudflare_rtk import FakeCloudflareRtk
from pageless import PagelessHost, page_config, page_hello
from roomtools import until


@pytest.fixture
async def cloudflare():  # type: ignore[no-untyped-def]
    async with FakeCloudflareRtk() as fake:
        yield fake


async def rtk_service(start_service, cloudflare, **overrides):  # type: ignore[no-untyped-def]
    host = PagelessHost()
    settings = {
        "rtk_account_id": cloudflare.account_id,
        "rtk_app_id": cloudflare.app_id,
        "rtk_api_token": cloudflare.api_token,
        "rtk_api_base": cloudflare.base_url,
        **overrides,
    }
    return await start_service(host=host, **settings), host


async def opened_url(host: PagelessHost) -> str:
    await until(lambda: asyncio.sleep(0, bool(host.urls)), 2, "Luna's page to open", step=0.02)
    return host.urls[0]


async def test_summon_mints_a_named_token_and_hands_it_to_the_page(start_service, cloudflare):
    svc, host = await rtk_service(start_service, cloudflare)
    meeting = cloudflare.add_meeting()
    status, bot = await svc.call("POST", f"/rooms/{meeting}/luna")  # rtk is the default once configured
    assert status == 201 and bot["backend"] == "rtk"
    cfg = page_config(await opened_url(host))
    assert cfg["backend"] == "rtk"
    assert cfg["room"] == {"authToken": cloudflare.minted_tokens[0], "name": "Luna"}
    sent = next(r for r in cloudflare.requests if r.method == "POST")
    assert sent.json["name"] == "Luna" and sent.json["preset_name"] == "group_call_participant"
    assert sent.json["custom_participant_id"]
    # neither our API token nor Luna's participant token shows in what we answer
    _, status_body = await svc.call("GET", f"/rooms/{meeting}/luna")
    text = json.dumps([bot, status_body])
    assert cloudflare.api_token not in text and cloudflare.minted_tokens[0] not in text
    assert cloudflare.minted_tokens[0] not in repr(svc.service.manager.get(meeting))
    # a second summon returns the same bot and mints nothing new
    status, again = await svc.call("POST", f"/rooms/{meeting}/luna")
    assert status == 200 and again["bot_id"] == bot["bot_id"] and len(cloudflare.minted_tokens) == 1


async def test_app_minted_token_is_used_as_is(start_service):
    host = PagelessHost()
    svc = await start_service(host=host)
    status, _ = await svc.call("POST", "/rooms/m-1/luna", json={"backend": "rtk", "auth_token": "eyJapp.minted.token"})
    assert status == 201
    assert page_config(await opened_url(host))["room"]["authToken"] == "eyJapp.minted.token"


async def test_rtk_without_credentials_is_a_clear_400(start_service):
    svc = await start_service(host=PagelessHost())
    status, body = await svc.call("POST", "/rooms/m-2/luna", json={"backend": "rtk"})
    assert status == 400 and body["error"]["code"] == "rtk_not_configured"
    assert "LUNA_RTK_API_TOKEN" in body["error"]["message"]


async def test_unknown_meeting_is_404(start_service, cloudflare):
    svc, _ = await rtk_service(start_service, cloudflare)
    status, body = await svc.call("POST", "/rooms/4a1f9b0e-0000-4000-8000-000000000000/luna")
    assert status == 404 and body["error"]["code"] == "meeting_not_found"


async def test_refused_credentials_are_a_502_that_says_so(start_service, cloudflare):
    svc, _ = await rtk_service(start_service, cloudflare, rtk_api_token="wrong-token")
    status, body = await svc.call("POST", f"/rooms/{cloudflare.add_meeting()}/luna")
    assert status == 502 and body["error"]["code"] == "rtk_auth_failed"
    assert "wrong-token" not in json.dumps(body)


async def test_cloudflare_unavailable_is_a_503_with_retry_after(start_service, cloudflare):
    svc, _ = await rtk_service(start_service, cloudflare)
    cloudflare.fail_always(503)
    async with svc.http.post(f"{svc.url}/rooms/{cloudflare.add_meeting()}/luna") as resp:
        body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "rtk_unavailable"
    assert int(resp.headers["Retry-After"]) >= 1


async def test_dismiss_kicks_luna_through_rest_when_her_page_does_not_answer(start_service, cloudflare):
    svc, host = await rtk_service(start_service, cloudflare)
    meeting = cloudflare.add_meeting()
    _, bot = await svc.call("POST", f"/rooms/{meeting}/luna")
    cfg = page_config(await opened_url(host))
    async with svc.http.ws_connect(f"{svc.url.replace('http', 'ws')}/bridge/{bot['bot_id']}") as page:
        await page.send_str(page_hello(cfg))
        await page.send_str(json.dumps({"type": "room_state", "state": "joined"}))

        async def joined() -> bool:
            return (await svc.call("GET", f"/rooms/{meeting}/luna"))[1]["state"] == "joined"

        await until(joined, 5, "Luna to be joined")
        # the page is stuck: it never confirms leaving
        status, after = await svc.call("DELETE", f"/rooms/{meeting}/luna")
    assert status == 200 and after["state"] == "ended" and after["sub_code"] == "dismissed"
    assert after["room_minutes"] > 0  # RTK bills Luna's minutes in the room: $0.0005 each by default
    assert after["room_cost_usd"] == pytest.approx(after["room_minutes"] * 0.0005, abs=1e-6)
    participant = cloudflare.meetings[meeting].participants[0]["id"]
    assert cloudflare.meetings[meeting].kicked == [participant]


async def test_no_token_is_minted_when_capacity_is_reached(start_service, cloudflare):
    svc, _host = await rtk_service(start_service, cloudflare, max_bots=1)
    assert (await svc.call("POST", "/rooms/other/luna", json={"backend": "local"}))[0] == 201
    status, body = await svc.call("POST", f"/rooms/{cloudflare.add_meeting()}/luna")
    assert status == 503 and body["error"]["code"] == "capacity_reached"
    assert cloudflare.minted_tokens == []  # a refused summon leaves no participant behind in the meeting
