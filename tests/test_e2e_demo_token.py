"""With LUNA_API_TOKEN set, the demo still works in two clicks: the page opened with the token in its fragment
joins with a room ticket it mints, summons Luna (whose page joins with its own bot ticket), and reads the event
stream with the token; a page without the token cannot join."""

from __future__ import annotations

import pytest

from roomtools import until

pytestmark = pytest.mark.browser


async def test_the_demo_joins_and_summons_with_the_token(start_service, launch_human):
    svc = await start_service(api_token="s3cret")
    browser = await launch_human(None)
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{svc.url}/demo/rooms/guarded?name=Alice#token=s3cret")
    assert "s3cret" not in page.url  # taken out of the address bar and history at once

    await page.evaluate("lunaDemo.join()")
    await page.evaluate("lunaDemo.summon()")

    async def luna_in_grid() -> bool:
        return "Luna" in [p["name"] for p in await page.evaluate("lunaDemo.participants()")]

    await until(luna_in_grid, 30, "Luna in Alice's grid")
    status_line = page.locator("#status")
    await until(lambda: _contains(status_line, "joined"), 10, "the event stream to report Luna joined")

    stranger = await (await browser.new_context()).new_page()  # no token: cannot mint a ticket, cannot join
    stranger.on("dialog", lambda dialog: dialog.dismiss())
    await stranger.goto(f"{svc.url}/demo/rooms/guarded?name=Mallory")
    error = await stranger.evaluate("lunaDemo.join().then(() => 'joined', (e) => String(e))")
    assert "ticket" in error and "Mallory" not in str(await page.evaluate("lunaDemo.participants()"))


async def _contains(locator, text: str) -> bool:  # type: ignore[no-untyped-def]
    return text in (await locator.text_content() or "")
