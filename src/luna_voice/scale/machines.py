"""A thin client for the Fly Machines REST API (``/v1/apps/{app}/machines``), on aiohttp.

Fly publishes no maintained Python SDK for the Machines API, so this covers exactly the calls the dispatcher
makes: create, start, stop, wait, get, list (with a metadata filter) and destroy. Errors arrive as
``{"error": "<message>"}`` (sometimes with a ``status`` code word) and become ``FlyApiError``.

Retries: a 429 is retried for every call, honouring ``Retry-After``; 5xx and connection errors only for calls
that are safe to repeat (everything but create, which could make a second machine). The bearer token never
appears in a log line, an exception message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import json as _json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import structlog

from luna_voice.retry_after import parse_retry_after

log = structlog.get_logger(__name__)

PUBLIC_BASE = "https://api.machines.dev"


class MachineState(StrEnum):
    """Fly's machine states (docs: "Machine states"); unknown ones map to ``UNKNOWN`` rather than failing."""

    CREATED = "created"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    REPLACING = "replacing"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: Any) -> MachineState:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN

    @property
    def gone(self) -> bool:
        return self in (MachineState.DESTROYING, MachineState.DESTROYED)

    @property
    def down(self) -> bool:
        """Not running the bot any more (and not about to)."""
        return self in (MachineState.STOPPED, MachineState.SUSPENDED, MachineState.FAILED) or self.gone


@dataclass(frozen=True)
class Machine:
    id: str
    name: str
    state: MachineState
    region: str
    image: str
    private_ip: str
    instance_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    exit_code: int | None = None  # from the latest exit event, when the process ended
    oom_killed: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Machine:
        config = data.get("config") or {}
        exit_code, oom = None, False
        for event in data.get("events") or []:  # newest first, as Fly returns them
            exit_event = ((event.get("request") or {}).get("exit_event")) or None
            if event.get("type") == "exit" and exit_event is not None:
                exit_code, oom = exit_event.get("exit_code"), bool(exit_event.get("oom_killed"))
                break
        return cls(
            id=str(data["id"]),
            name=str(data.get("name") or ""),
            state=MachineState.parse(data.get("state")),
            region=str(data.get("region") or ""),
            image=str(config.get("image") or ""),
            private_ip=str(data.get("private_ip") or ""),
            instance_id=str(data.get("instance_id") or ""),
            metadata={str(k): str(v) for k, v in (config.get("metadata") or {}).items()},
            env={str(k): str(v) for k, v in (config.get("env") or {}).items()},
            exit_code=exit_code,
            oom_killed=oom,
        )


class FlyApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(f"Fly Machines API {status}: {message}")
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after

    @property
    def not_found(self) -> bool:
        return self.status == 404


class MachinesApi:
    def __init__(
        self,
        *,
        app: str,
        token: str,
        base_url: str = PUBLIC_BASE,
        attempts: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"MachinesApi(app={self.app!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ------------------------------------------------------------------ calls
    async def create(
        self,
        config: dict[str, Any],
        *,
        region: str | None = None,
        name: str | None = None,
        skip_launch: bool = False,
    ) -> Machine:
        body: dict[str, Any] = {"config": config, "skip_launch": skip_launch}
        if region:
            body["region"] = region
        if name:
            body["name"] = name
        return Machine.from_json(await self._call("POST", "", json=body, idempotent=False))

    async def start(self, machine_id: str) -> None:
        await self._call("POST", f"/{machine_id}/start")

    async def stop(self, machine_id: str, *, signal: str | None = None, timeout_s: int | None = None) -> None:
        body: dict[str, Any] = {}
        if signal:
            body["signal"] = signal
        if timeout_s is not None:
            body["timeout"] = f"{timeout_s}s"
        await self._call("POST", f"/{machine_id}/stop", json=body)

    async def wait(self, machine_id: str, state: str, *, instance_id: str | None = None, timeout_s: int = 60) -> None:
        """Block (server-side) until the machine reaches ``state``; 408 from Fly becomes ``FlyApiError``."""
        params = {"state": state, "timeout": str(timeout_s)}
        if instance_id:
            params["instance_id"] = instance_id
        await self._call("GET", f"/{machine_id}/wait", params=params, request_timeout_s=timeout_s + 10)

    async def get(self, machine_id: str) -> Machine:
        return Machine.from_json(await self._call("GET", f"/{machine_id}"))

    async def list(self, *, metadata: dict[str, str] | None = None, region: str | None = None) -> list[Machine]:
        params = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
        if region:
            params["region"] = region
        data = await self._call("GET", "", params=params)
        return [Machine.from_json(m) for m in data or []]

    async def set_metadata(self, machine_id: str, key: str, value: str) -> None:
        """Change one metadata key without a new machine version (no reboot)."""
        await self._call("POST", f"/{machine_id}/metadata/{key}", json={"value": value})

    async def destroy(self, machine_id: str, *, force: bool = False) -> None:
        await self._call("DELETE", f"/{machine_id}", params={"force": "true"} if force else None)

    # ------------------------------------------------------------------ transport
    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        idempotent: bool = True,
        request_timeout_s: float | None = None,
    ) -> Any:
        url = f"{self.base_url}/v1/apps/{self.app}/machines{path}"
        headers = {"Authorization": f"Bearer {self._token}"}
        timeout = aiohttp.ClientTimeout(total=request_timeout_s) if request_timeout_s else None
        last: FlyApiError | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session().request(
                    method, url, json=json, params=params, headers=headers, timeout=timeout
                ) as resp:
                    if resp.status < 400:
                        body = await resp.read()
                        return _json.loads(body) if body.strip() else None
                    last = await _error(resp)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if not idempotent:
                    raise FlyApiError(503, f"{type(exc).__name__} talking to the Machines API") from None
                last = FlyApiError(503, f"{type(exc).__name__} talking to the Machines API")
            retryable = last.status == 429 or (idempotent and last.status >= 500)
            if not retryable or attempt == self.attempts:
                raise last
            delay = last.retry_after if last.retry_after is not None else self.backoff_s * 2 ** (attempt - 1)
            log.warning("fly.retry", method=method, path=path, status=last.status, delay_s=round(delay, 2))
            await asyncio.sleep(min(delay, 30.0))
        raise AssertionError("unreachable")  # pragma: no cover


async def _error(resp: aiohttp.ClientResponse) -> FlyApiError:
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body.get("status") if isinstance(body.get("status"), str) else None
        return FlyApiError(resp.status, body["error"], code=code, retry_after=retry_after)
    return FlyApiError(resp.status, resp.reason or "error", retry_after=retry_after)
