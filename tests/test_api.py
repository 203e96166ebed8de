"""Control API: summon is idempotent per room, errors are JSON with a clear code, capacity is enforced."""

from __future__ import annotations

import pytest

from test_bridge import PagelessHost


@pytest.fixture
async def api(start_service):  # type: ignore[no-untyped-def]
    return await start_service(host=PagelessHost(), max_bots=2)


async def test_summon_is_idempotent_and_listed(api):
    status, first = await api.call("POST", "/rooms/room-1/luna", json={"backend": "local", "policy": "always"})
    assert status == 201 and first["room_id"] == "room-1" and first["policy"] == "always"
    status, second = await api.call("POST", "/rooms/room-1/luna")
    assert status == 200 and second["bot_id"] == first["bot_id"]
    status, rooms = await api.call("GET", "/rooms")
    assert [r["room_id"] for r in rooms["rooms"]] == ["room-1"]
    status, got = await api.call("GET", "/rooms/room-1/luna")
    assert status == 200
    assert {"room_id", "state", "sub_code", "participants", "turns", "usage"} <= got.keys()


async def test_capacity_is_enforced_with_retry_after(api):
    for room in ("a", "b"):
        assert (await api.call("POST", f"/rooms/{room}/luna"))[0] == 201
    async with api.http.post(api.url + "/rooms/c/luna") as resp:
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "capacity_reached"
        assert int(resp.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("POST", "/rooms/bad$room/luna", {}, 400, "invalid_room_id"),
        ("POST", "/rooms/" + "x" * 129 + "/luna", {}, 400, "invalid_room_id"),
        ("GET", "/rooms/-leading-dash/luna", {}, 400, "invalid_room_id"),
        ("GET", "/rooms/nobody-here/luna", {}, 404, "not_found"),
        ("DELETE", "/rooms/nobody-here/luna", {}, 404, "not_found"),
        ("POST", "/rooms/r/luna", {"data": "{not json"}, 400, "invalid_json"),
        ("POST", "/rooms/r/luna", {"json": [1, 2]}, 400, "invalid_body"),
        ("POST", "/rooms/r/luna", {"json": {"colour": "blue"}}, 400, "invalid_body"),
        ("POST", "/rooms/r/luna", {"json": {"backend": "zoom"}}, 400, "invalid_body"),
        ("POST", "/rooms/r/luna", {"json": {"policy": "sometimes"}}, 400, "invalid_body"),
        ("GET", "/no/such/route", {}, 404, "not_found"),
        ("PUT", "/rooms/r/luna", {}, 405, "method_not_allowed"),
    ],
)
async def test_bad_requests_get_json_errors(api, method, path, kwargs, status, code):
    got_status, body = await api.call(method, path, **kwargs)
    assert got_status == status, body
    assert body["error"]["code"] == code and body["error"]["message"]


async def test_invalid_body_message_names_the_field(api):
    _, body = await api.call("POST", "/rooms/r/luna", json={"policy": "sometimes"})
    assert "policy" in body["error"]["message"]


async def test_health_and_readiness(api):
    assert await api.call("GET", "/healthz") == (200, {"ok": True})
    status, ready = await api.call("GET", "/readyz")
    assert status == 200 and ready["ready"] is True
    assert ready["providers"] == {"stt": "whisper", "llm": "demo", "tts": "offline"}
    assert ready["offline"] is True


async def test_dismiss_ends_the_bot(api):
    await api.call("POST", "/rooms/gone/luna")
    status, body = await api.call("DELETE", "/rooms/gone/luna")
    assert status == 200 and body["state"] == "ended" and body["sub_code"] == "dismissed"
    status, again = await api.call("POST", "/rooms/gone/luna")
    assert status == 201 and again["bot_id"] != body["bot_id"]


async def test_openapi_document_describes_the_api(api):
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"post", "get", "delete"} <= doc["paths"]["/rooms/{room_id}/luna"].keys()
    summon = doc["components"]["schemas"]["SummonRequest"]
    assert {"backend", "auth_token", "policy", "name"} == set(summon["properties"])
    assert summon["additionalProperties"] is False


async def test_metrics_are_prometheus_text(api):
    await api.call("POST", "/rooms/m/luna")
    async with api.http.get(api.url + "/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    assert 'luna_bots{state="joining"} 1.0' in text


async def test_api_token_guards_the_control_api(start_service):
    svc = await start_service(host=PagelessHost(), api_token="s3cret")
    assert (await svc.call("POST", "/rooms/r/luna"))[0] == 401
    status, body = await svc.call("GET", "/rooms", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _ = await svc.call("POST", "/rooms/r/luna", headers={"Authorization": "Bearer s3cret"})
    assert status == 201
    assert (await svc.call("GET", "/healthz"))[0] == 200  # probes stay open


async def test_local_rooms_can_be_turned_off(start_service):
    svc = await start_service(host=PagelessHost(), local_rooms=False)
    status, body = await svc.call("POST", "/rooms/r/luna", json={"backend": "local"})
    assert status == 400 and body["error"]["code"] == "local_rooms_disabled"
    async with svc.http.get(svc.url + "/demo/rooms/r") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "local_rooms_disabled"
