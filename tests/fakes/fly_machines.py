"""A local stand-in for the Fly Machines REST API that runs each "machine" as a real process on 127.0.0.1.

It answers under ``/v1/apps/{app}/machines`` with the documented shapes (docs: "Machines resource"):

* ``POST ""`` create (body ``{config: {image, env, metadata, init: {cmd}, restart: {policy}, guest}, region, name,
  skip_launch}``); ``GET ""`` list (``metadata.{key}=value``, ``region``, ``include_deleted``);
  ``GET /{id}``; ``POST /{id}/start``; ``POST /{id}/stop`` (``{signal, timeout}``); ``DELETE /{id}`` (``force``);
  ``GET /{id}/wait`` (``state`` started|stopped|destroyed, ``timeout`` seconds, ``instance_id`` required for
  stopped; 408 on timeout).
* ``POST /{id}/metadata/{key}`` (``{"value": ...}``, 204) and ``DELETE`` of a key: metadata without a new
  machine version. Not verified: the exact request body (flaps sends ``{"value"}``).
* Bearer auth: a missing or wrong token is 401. Errors are ``{"error": "<message>"}`` with an optional ``status``
  code word, as flaps sends them. Unknown app or machine: 404. A taken name, or an injected host capacity
  failure: 409. Starting a running machine or destroying one without ``force``: 412 (what flyd answers for a
  machine in the wrong state). Faults (``fault``) inject 429 (with ``Retry-After``) or 5xx before any handling.

"Starting" a machine spawns the image's command (or ``config.init.cmd``) as a process with the image's base env,
the app's secrets, ``config.env`` and the ``FLY_*`` variables Fly sets, plus ``LUNA_PORT``: every fake machine
shares 127.0.0.1, so each gets its own port instead of its own private IP (``address(id)``). The process exiting
stops the machine; the restart policy is applied as flyd does, and like Fly the default is ``on-failure`` (up to
10 restarts), so a caller that wants a crash to stay down must say ``restart: {policy: "no"}``. ``kill(id)`` is
the host failure or OOM kill. Destroying kills the process.

Not verified against the real service: the exact wording of messages, and that ``start`` on a started machine is a
412 rather than a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

MAX_RESTARTS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _err(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if code:
        body["status"] = code
    return web.json_response(body, status=status, headers=headers)


@dataclass
class Fault:
    status: int
    method: str | None
    action: str | None
    times: int
    retry_after: float | None
    message: str


@dataclass
class FakeMachine:
    id: str
    name: str
    region: str
    config: dict[str, Any]
    state: str = "created"
    instance_id: str = field(default_factory=lambda: "01" + secrets.token_hex(12).upper())
    port: int = field(default_factory=free_port)
    events: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    stopping: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "region": self.region,
            "instance_id": self.instance_id,
            "private_ip": "127.0.0.1",
            "config": self.config,
            "image_ref": {"registry": "registry.fly.io", "repository": self.config["image"], "tag": "latest"},
            "created_at": self.created_at,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "events": self.events[:20],
        }


class FakeFlyMachines:
    def __init__(
        self,
        *,
        app: str = "luna-bots",
        token: str = "fly-test-token",
        images: dict[str, list[str]] | None = None,
        base_env: dict[str, str] | None = None,
        secrets_env: dict[str, str] | None = None,
        default_region: str = "nrt",
        log_dir: Path | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.images = dict(images or {})  # image ref -> its default command (the Dockerfile's CMD)
        self.base_env = dict(base_env or {})  # the image's ENV
        self.secrets_env = dict(secrets_env or {})  # `fly secrets set` on the app
        self.default_region = default_region
        self.log_dir = log_dir
        self.machines: dict[str, FakeMachine] = {}
        self.created: list[dict[str, Any]] = []  # every accepted create body, in order
        self.calls: Counter[str] = Counter()  # "create", "start", "stop", "destroy", "list", "get", "wait"
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self._faults: list[Fault] = []
        self._changed = asyncio.Condition()
        self._watchers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------------ test controls
    def fault(
        self,
        status: int,
        *,
        method: str | None = None,
        action: str | None = None,
        times: int = 1,
        retry_after: float | None = None,
        message: str = "injected fault",
    ) -> None:
        self._faults.append(Fault(status, method, action, times, retry_after, message))

    def address(self, machine_id: str) -> str:
        return f"http://127.0.0.1:{self.machines[machine_id].port}"

    def dispatcher_settings(self, port: int, image: str, **overrides: Any) -> dict[str, Any]:
        """The ``FlySettings`` fields of a dispatcher on 127.0.0.1:``port`` whose bot machines are this fake's."""
        return {
            "LUNA_BOT_HOST": "fly",
            "api_token": self.token,
            "api_base": self.url,
            "app": self.app,
            "LUNA_FLY_IMAGE": image,
            "FLY_REGION": "nrt",
            "dispatcher_url": f"http://127.0.0.1:{port}",
            **overrides,
        }

    def kill(self, machine_id: str) -> None:
        """The host lost the VM (or the kernel OOM-killed it): SIGKILL, no goodbye."""
        proc = self.machines[machine_id].proc
        if proc is not None and proc.returncode is None:
            proc.kill()

    def live(self) -> list[FakeMachine]:
        return [m for m in self.machines.values() if m.state != "destroyed"]

    # ------------------------------------------------------------------ server
    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/v1/apps/{app}/machines", self._collection)
        app.router.add_route("*", "/v1/apps/{app}/machines/{id}", self._member)
        app.router.add_route("*", "/v1/apps/{app}/machines/{id}/{action}", self._member)
        app.router.add_route("*", "/v1/apps/{app}/machines/{id}/metadata/{key}", self._metadata)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        for m in self.machines.values():
            await self._kill_process(m)
        if self._runner is not None:
            await self._runner.cleanup()

    def _gate(self, request: web.Request, action: str) -> web.Response | None:
        self.requests.append((request.method, request.path_qs, request.headers.get("Authorization")))
        for f in self._faults:
            if f.times > 0 and f.method in (None, request.method) and f.action in (None, action):
                f.times -= 1
                headers = {"Retry-After": str(f.retry_after)} if f.retry_after is not None else None
                return _err(f.status, f.message, headers=headers)
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            return _err(401, "You must be authenticated to view this.", "unauthorized")
        if request.match_info["app"] != self.app:
            return _err(404, f"app {request.match_info['app']} not found", "not_found")
        return None

    async def _collection(self, request: web.Request) -> web.Response:
        action = {"GET": "list", "POST": "create"}.get(request.method, "?")
        if (refused := self._gate(request, action)) is not None:
            return refused
        if request.method == "GET":
            self.calls["list"] += 1
            return web.json_response([m.to_json() for m in self._filter(request)])
        if request.method != "POST":
            return _err(405, "method not allowed")
        self.calls["create"] += 1
        return await self._create(request)

    def _filter(self, request: web.Request) -> list[FakeMachine]:
        include_deleted = request.query.get("include_deleted") == "true"
        out = []
        for m in self.machines.values():
            if m.state == "destroyed" and not include_deleted:
                continue
            if request.query.get("region") and m.region != request.query["region"]:
                continue
            meta = m.config.get("metadata") or {}
            if all(meta.get(k[len("metadata.") :]) == v for k, v in request.query.items() if k.startswith("metadata.")):
                out.append(m)
        return out

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _err(400, "invalid JSON body")
        config = body.get("config") if isinstance(body, dict) else None
        if not isinstance(config, dict) or not config.get("image"):
            return _err(400, "invalid config: image is required", "invalid_argument")
        if config["image"] not in self.images:
            return _err(400, f"failed to get manifest {config['image']}: not found", "invalid_argument")
        name = body.get("name") or f"fake-{secrets.token_hex(4)}"
        if any(m.name == name and m.state != "destroyed" for m in self.machines.values()):
            return _err(409, f"machine name {name!r} is already taken", "already_exists")
        machine = FakeMachine(
            id=secrets.token_hex(7), name=name, region=body.get("region") or self.default_region, config=config
        )
        self.machines[machine.id] = machine
        self.created.append(body)
        self._event(machine, "launch", "created")
        if not body.get("skip_launch"):
            await self._spawn(machine)
        return web.json_response(machine.to_json())

    async def _member(self, request: web.Request) -> web.Response:
        action = request.match_info.get("action") or {"GET": "get", "DELETE": "destroy", "POST": "update"}.get(
            request.method, "?"
        )
        if (refused := self._gate(request, action)) is not None:
            return refused
        machine = self.machines.get(request.match_info["id"])
        if machine is None or (machine.state == "destroyed" and action != "get"):
            return _err(404, "machine not found", "not_found")
        self.calls[action] += 1
        if action == "get" and request.method == "GET":
            return web.json_response(machine.to_json())
        if action == "start" and request.method == "POST":
            if machine.state not in ("created", "stopped", "suspended"):
                message = f"unable to start machine from current state: '{machine.state}'"
                return _err(412, message, "failed_precondition")
            previous = machine.state
            await self._spawn(machine)
            return web.json_response({"previous_state": previous, "migrated": False, "new_host": ""})
        if action == "stop" and request.method == "POST":
            body = await request.json() if request.can_read_body else {}
            await self._stop(machine, (body or {}).get("signal") or "SIGINT", _seconds((body or {}).get("timeout")))
            return web.json_response({"ok": True})
        if action == "wait" and request.method == "GET":
            return await self._wait(request, machine)
        if action == "destroy" and request.method == "DELETE":
            if machine.state in ("started", "starting") and request.query.get("force") != "true":
                return _err(412, "unable to destroy machine, not currently stopped", "failed_precondition")
            await self._kill_process(machine)
            await self._set(machine, "destroyed", "destroy")
            return web.json_response({"ok": True})
        return _err(405, f"{request.method} {action} is not supported by this fake")

    async def _metadata(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request, "metadata")) is not None:
            return refused
        machine = self.machines.get(request.match_info["id"])
        if machine is None or machine.state == "destroyed":
            return _err(404, "machine not found", "not_found")
        self.calls["metadata"] += 1
        meta = machine.config.setdefault("metadata", {})
        if request.method == "DELETE":
            meta.pop(request.match_info["key"], None)
            return web.Response(status=204)
        try:
            value = (await request.json())["value"]
        except (ValueError, KeyError, TypeError):
            return _err(400, 'body must be {"value": string}', "invalid_argument")
        if not isinstance(value, str):
            return _err(400, "metadata values are strings", "invalid_argument")
        meta[request.match_info["key"]] = value
        return web.Response(status=204)

    async def _wait(self, request: web.Request, machine: FakeMachine) -> web.Response:
        state = request.query.get("state", "started")
        if state not in ("started", "stopped", "destroyed"):
            return _err(400, f"invalid state {state!r}", "invalid_argument")
        if state == "stopped" and not request.query.get("instance_id"):
            return _err(400, "instance_id is required when waiting for stopped", "invalid_argument")
        timeout = float(request.query.get("timeout", "60"))
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: machine.state == state), timeout)
        except TimeoutError:
            return _err(408, f"deadline_exceeded: machine did not reach {state}", "deadline_exceeded")
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ processes
    async def _spawn(self, machine: FakeMachine) -> None:
        config = machine.config
        cmd = ((config.get("init") or {}).get("cmd")) or self.images[config["image"]]
        env = {
            **self.base_env,
            **self.secrets_env,
            **(config.get("env") or {}),
            "FLY_APP_NAME": self.app,
            "FLY_MACHINE_ID": machine.id,
            "FLY_ALLOC_ID": machine.id,
            "FLY_REGION": machine.region,
            "FLY_IMAGE_REF": config["image"],
            "FLY_MACHINE_VERSION": machine.instance_id,
            "FLY_PRIVATE_IP": "127.0.0.1",
            "LUNA_HOST": "127.0.0.1",
            "LUNA_PORT": str(machine.port),
        }
        out = self._log_file(machine)
        await self._set(machine, "starting", "start")
        machine.stopping = False
        machine.proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
        if not isinstance(out, int):
            out.close()
        await self._set(machine, "started", "start")
        task = asyncio.get_running_loop().create_task(self._watch(machine, machine.proc))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _log_file(self, machine: FakeMachine) -> Any:
        if self.log_dir is None:
            return asyncio.subprocess.DEVNULL
        return (self.log_dir / f"machine-{machine.id}.log").open("ab")

    async def _watch(self, machine: FakeMachine, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if machine.proc is not proc or machine.state == "destroyed":
            return
        machine.proc = None
        self._event(machine, "exit", "stopped", exit_event={"exit_code": code, "oom_killed": False})
        policy = ((machine.config.get("restart") or {}).get("policy")) or "on-failure"
        again = not machine.stopping and (policy == "always" or (policy == "on-failure" and code != 0))
        if again and machine.restarts < MAX_RESTARTS:
            machine.restarts += 1
            await self._spawn(machine)
            return
        await self._set(machine, "stopped", "exit")

    async def _stop(self, machine: FakeMachine, sig: str, grace_s: float) -> None:
        proc = machine.proc
        if proc is None or proc.returncode is not None:
            return
        machine.stopping = True
        await self._set(machine, "stopping", "stop")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(getattr(signal, sig, signal.SIGINT))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace_s)
        if proc.returncode is None:
            proc.kill()

    async def _kill_process(self, machine: FakeMachine) -> None:
        proc, machine.proc = machine.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def _set(self, machine: FakeMachine, state: str, source: str) -> None:
        machine.state = state
        self._event(machine, source, state)
        async with self._changed:
            self._changed.notify_all()

    @staticmethod
    def _event(machine: FakeMachine, kind: str, status: str, **request: Any) -> None:
        event = {"type": kind, "status": status, "source": "flyd", "timestamp": int(time.time() * 1000)}
        if request:
            event["request"] = request
        machine.events.insert(0, event)


def _seconds(value: Any) -> float:
    """Fly's stop ``timeout`` is a Go duration string ("10s") or seconds; flyd's default is 5 s."""
    if value is None:
        return 5.0
    text = str(value)
    try:
        return float(text[:-1]) if text.endswith("s") else float(json.loads(text))
    except ValueError:
        return 5.0
