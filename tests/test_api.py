"""Control API: summon is idempotent per room, errors are JSON with a clear code, capacity is enforced."""

from __future__ import annotations

import asyncio
import json

import pytest

from pageless import PagelessHost

JSON = {"Content-Type": "application/json"}


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
        pytest.param(  # `$` let this through: a second Luna in room x
            "POST", "/rooms/x%0A/luna", {}, 400, "invalid_room_id", marks=pytest.mark.faults, id="newline-room-id"
        ),
        ("GET", "/rooms/x%0A/luna", {}, 400, "invalid_room_id"),
        ("GET", "/local/rooms/x%0A/participants", {}, 400, "invalid_room_id"),
        ("POST", "/rooms/r/luna", {"data": "{not json", "headers": JSON}, 400, "invalid_json"),
        ("POST", "/rooms/r/luna", {"data": "[" * 25_000 + "]" * 25_000, "headers": JSON}, 400, "invalid_json"),
        ("POST", "/rooms/r/luna", {"data": b"\xff\xfe{}", "headers": JSON}, 400, "invalid_json"),
        ("POST", "/rooms/r/luna", {"data": '{"policy": "always"}'}, 415, "unsupported_media_type"),
        ("POST", "/rooms/r/luna", {"data": '{"a": 1}', "headers": {"Content-Type": "text/plain"}}, 415, None),
        ("POST", "/rooms/r/luna", {"data": "x" * 70_000, "headers": JSON}, 413, "body_too_large"),
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
    assert body["error"]["code"] == (code or "unsupported_media_type") and body["error"]["message"]
    assert (await api.call("GET", "/rooms"))[1] == {"rooms": []}  # nothing was summoned by a refused request


async def _chunks(data: bytes, size: int = 4096):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b'{"name": "' + b"x" * 100_000 + b'"}', 413, "body_too_large"),  # no Content-Length to check up front
        (b"[" * 25_000 + b"]" * 25_000, 400, "invalid_json"),  # 50 KB of nesting: was a RecursionError, 500
    ],
)
async def test_chunked_bodies_meet_the_same_limits(api, data, status, code):
    async with api.http.post(api.url + "/rooms/r/luna", data=_chunks(data), headers=JSON) as resp:
        assert resp.status == status and (await resp.json())["error"]["code"] == code


async def _raw(api, request: bytes) -> tuple[int, str, dict]:  # type: ignore[no-untyped-def]
    """Send bytes no well-behaved client would, and parse the answer."""
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers.get("content-type", ""), json.loads(body)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /rooms HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",  # header line the parser refuses
        b"GET /rooms HTT/1.1\r\nHost: x\r\n\r\n",  # bad request line
        b"POST /rooms/r/luna HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # broken chunk size
    ],
)
async def test_parser_errors_are_json_too(api, request_bytes):
    status, content_type, body = await _raw(api, request_bytes)
    assert status == 400 and content_type.startswith("application/json")
    assert body["error"]["code"] == "bad_request" and body["error"]["message"]


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
    assert "415" in doc["paths"]["/rooms/{room_id}/luna"]["post"]["responses"]
    assert "201" in doc["paths"]["/local/rooms/{room_id}/tickets"]["post"]["responses"]


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
    # the scheme is case-insensitive (RFC 9110); the credentials are not
    assert (await svc.call("GET", "/rooms", headers={"Authorization": "bearer s3cret"}))[0] == 200
    assert (await svc.call("GET", "/rooms", headers={"Authorization": "BEARER  s3cret"}))[0] == 200
    assert (await svc.call("GET", "/rooms", headers={"Authorization": "Bearer S3CRET"}))[0] == 401
    assert (await svc.call("GET", "/rooms", headers={"Authorization": "Basic s3cret"}))[0] == 401
    assert (await svc.call("GET", "/rooms", headers={"Authorization": "s3cret"}))[0] == 401
    assert (await svc.call("GET", "/healthz"))[0] == 200  # probes stay open


async def test_local_rooms_can_be_turned_off(start_service):
    svc = await start_service(host=PagelessHost(), local_rooms=False)
    status, body = await svc.call("POST", "/rooms/r/luna", json={"backend": "local"})
    assert status == 400 and body["error"]["code"] == "local_rooms_disabled"
    async with svc.http.get(svc.url + "/demo/rooms/r") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "local_rooms_disabled"
