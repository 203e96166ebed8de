"""A cheap bot machine for the dispatcher's tests: the real agent protocol, a scripted room instead of Chromium.

Run as a process by the fake Fly (``python -m tests.fakes.bot_machine``). It asks the dispatcher for its stay with
the real ``scale.agent.Agent``, serves the bot's control API (``GET``/``DELETE /rooms/{room}/luna`` and
``/events``, ``/transcript``) behind the stay's secret like ``luna-voice bot`` does, reports a ``joined`` status
with one person in the room (``STAND_IN_ALONE=1``: nobody), and on DELETE or SIGTERM sends its final status, with
the meeting transcript as ``luna-voice bot`` does, and exits.
The end-to-end test with a real ``luna-voice bot`` and a real room is in ``tests/test_scale_e2e.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time

import aiohttp
from aiohttp import web

from luna_voice.conversation.transcript import Line, MeetingTranscript
from luna_voice.scale.agent import Agent

SAID = "Luna, what time is it?"  # the one line Ann says in the scripted room


async def main() -> None:
    agent = Agent.from_env()
    ended = asyncio.Event()
    async with aiohttp.ClientSession() as http:
        assignment = await agent.assignment(http)
        alone = os.environ.get("STAND_IN_ALONE") == "1"
        status = {
            "state": "joined",
            "sub_code": None,
            "reason": None,
            "participants": [] if alone else [{"id": "p1", "name": "Ann"}],
            "turns": [],
            "joined_at": time.time(),
            "pid": os.getpid(),
        }

        record = MeetingTranscript(max_lines=100)
        record.add(Line("p1", "Ann", 1.0, 2.5, SAID, language="en"))
        record.add(Line("luna", "Luna", 3.0, 4.0, "It is noon.", luna=True, kind="reply"))

        def transcript_doc() -> dict:
            return {"room_id": assignment.room_id, "state": status["state"], **record.to_json(0.0, time.time())}

        def authorized(request: web.Request) -> bool:
            return secrets.compare_digest(request.headers.get("Authorization", ""), f"Bearer {assignment.secret}")

        async def control(request: web.Request) -> web.StreamResponse:
            if not authorized(request):
                return web.json_response({"error": {"code": "unauthorized", "message": "no"}}, status=401)
            if request.match_info["room_id"] != assignment.room_id:
                return web.json_response({"error": {"code": "not_found", "message": "other room"}}, status=404)
            if request.method == "DELETE":
                status.update(state="ended", sub_code="dismissed", reason="dismissed through the API")
                ended.set()
            return web.json_response(status)

        async def events(request: web.Request) -> web.StreamResponse:
            if not authorized(request):
                return web.json_response({"error": {"code": "unauthorized", "message": "no"}}, status=401)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(f"data: {json.dumps({'type': 'status', 'status': status})}\n\n".encode())
            await ended.wait()
            await resp.write(f"data: {json.dumps({'type': 'status', 'status': status})}\n\n".encode())
            return resp

        async def transcript(request: web.Request) -> web.StreamResponse:
            if not authorized(request):
                return web.json_response({"error": {"code": "unauthorized", "message": "no"}}, status=401)
            return web.json_response(transcript_doc())

        async def final() -> dict:
            return {**status, "transcript": transcript_doc()}

        app = web.Application()
        app.router.add_route("*", "/rooms/{room_id}/luna", control)
        app.router.add_get("/rooms/{room_id}/luna/events", events)
        app.router.add_get("/rooms/{room_id}/luna/transcript", transcript)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, os.environ["LUNA_HOST"], int(os.environ["LUNA_PORT"])).start()

        def stop() -> None:
            status.update(state="ended", sub_code="shutdown", reason="machine stopping")
            ended.set()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        await agent.heartbeat(http, assignment, lambda: dict(status), ended, final=final)
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
