"""The dispatcher's decisions, sans I/O: which machine hosts which stay, the warm pool, the cap, crashes.

Every input is an event with a monotonic ``now`` (a summon, a machine list from the Fly API, a bot's report, a
clock tick); every output is a list of ``Action`` values for the adapter (``scale/host.py``) to carry out against
the Machines API. Nothing here sleeps, talks to the network or reads the clock, so pool, cap, crash and
retention timelines are unit-tested in milliseconds.

Machines are the only state that survives a dispatcher restart: each bot machine carries metadata (``luna_role``,
``luna_stay``, ``luna_room``), and ``rebuild`` turns a machine list back into the map. A stay's secret is derived
from the dispatcher key and the stay id (``StayKeys``), so it needs no storage either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from luna_voice.bots import states as sc
from luna_voice.bots.states import BotState
from luna_voice.scale.machines import Machine, MachineState

ROLE, STAY, ROOM = "luna_role", "luna_stay", "luna_room"
BOT_ROLE = "bot"
NO_MACHINE = "no_machine"  # sub-code: Fly could not give the stay a machine


class Purpose(StrEnum):
    POOL = "pool"
    STAY = "stay"


@dataclass(frozen=True)
class CreateMachine:
    purpose: Purpose
    name: str
    region: str
    image: str
    stay_id: str | None = None
    room_id: str | None = None


@dataclass(frozen=True)
class StartPooled:
    """Tag a stopped pool machine with the stay (metadata), then start it."""

    machine_id: str
    stay_id: str
    room_id: str


@dataclass(frozen=True)
class DestroyMachine:
    machine_id: str
    reason: str


@dataclass(frozen=True)
class FetchStatus:
    """Ask a bot machine for its status (after a dispatcher restart, before its next report)."""

    stay_id: str


Action = CreateMachine | StartPooled | DestroyMachine | FetchStatus


class CapacityReached(Exception):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class DispatchConfig:
    image: str  # what new machines run: the dispatcher's own image (FLY_IMAGE_REF), so a deploy moves the pool
    region: str
    pool_size: int = 2
    max_machines: int = 20
    heartbeat_timeout_s: float = 5.0
    boot_timeout_s: float = 90.0
    retention_s: float = 3600.0
    retention_count: int = 200
    retry_after_s: float = 30.0


@dataclass
class Slot:
    """What the dispatcher knows about one bot machine."""

    id: str
    name: str
    image: str
    region: str
    state: MachineState
    stay_id: str | None = None


@dataclass
class Stay:
    id: str
    room_id: str
    request: dict[str, Any] = field(repr=False)  # the summon body (may hold the app's RTK token): never in status
    region: str
    started_at: float
    attempt: int = 0  # 1 for the one restart after a crash
    machine_id: str | None = None
    state: BotState = BotState.STARTING
    sub_code: str | None = None
    reason: str | None = None
    last_seen: float | None = None
    ended_at: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] | None = None  # the crashed stay this one restarts
    # The meeting transcript the bot handed over with its final status: served once its machine is gone, kept as
    # long as the stay (retention). In memory only: a restarted dispatcher has none for stays that already ended.
    transcript: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def live(self) -> bool:
        return self.state.live

    def room_is_live(self) -> bool:
        """Someone else was in the room at the bot's last report (our only view of an RTK meeting)."""
        return bool(self.status.get("participants"))


class StayKeys:
    """Per-stay and per-machine secrets derived from one dispatcher key (HMAC-SHA256), so none are stored."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_token(cls, token: str) -> StayKeys:
        return cls(hashlib.sha256(b"luna-dispatch\0" + token.encode()).digest())

    def _derive(self, label: str) -> str:
        return hmac.new(self._key, label.encode(), hashlib.sha256).hexdigest()

    def stay_secret(self, stay_id: str) -> str:
        return self._derive("stay\0" + stay_id)

    def boot_secret(self, machine_name: str) -> str:
        """Lets a freshly booted machine ask for its assignment before it knows any stay."""
        return self._derive("boot\0" + machine_name)

    def check(self, expected: str, given: str) -> bool:
        return hmac.compare_digest(expected.encode(), given.encode())


class Dispatcher:
    def __init__(self, config: DispatchConfig) -> None:
        self.cfg = config
        self.slots: dict[str, Slot] = {}
        self.stays: dict[str, Stay] = {}
        self.rooms: dict[str, str] = {}  # room id -> its latest stay id
        self._pending: dict[str, CreateMachine] = {}  # name -> create in flight
        self._ended: OrderedDict[str, float] = OrderedDict()  # stay id -> ended_at, oldest first
        self._destroyed: OrderedDict[str, None] = OrderedDict()  # recent ids we destroyed: never adopt them again

    # ------------------------------------------------------------------ queries
    def stay_in(self, room_id: str) -> Stay | None:
        stay_id = self.rooms.get(room_id)
        return self.stays.get(stay_id) if stay_id is not None else None

    def live_stays(self) -> list[Stay]:
        return [s for s in self.stays.values() if s.live]

    def machine_count(self) -> int:
        return sum(1 for s in self.slots.values() if not s.state.gone) + len(self._pending)

    def warm(self) -> list[Slot]:
        """Pool machines ready to start: on the current image, stopped, not promised to a stay."""
        return [
            s
            for s in self.slots.values()
            if s.stay_id is None
            and s.image == self.cfg.image
            and s.state in (MachineState.CREATED, MachineState.STOPPED)
        ]

    # ------------------------------------------------------------------ summon and dismiss
    def summon(
        self, room_id: str, request: dict[str, Any], region: str | None, now: float
    ) -> tuple[Stay, bool, list[Action]]:
        """Place a stay for ``room_id``: a warm machine if there is one, else a new machine, else 503."""
        current = self.stay_in(room_id)
        if current is not None and current.live:
            return current, False, []
        stay = Stay(
            id="bot_" + secrets.token_hex(6),
            room_id=room_id,
            request=dict(request),
            region=region or self.cfg.region,
            started_at=now,
        )
        actions = self._place(stay)
        self._add(stay)
        return stay, True, actions + self.refill()

    def _place(self, stay: Stay) -> list[Action]:
        warm = self.warm()
        if warm:
            slot = next((s for s in warm if s.region == stay.region), warm[0])
            slot.stay_id = stay.id
            stay.machine_id = slot.id
            return [StartPooled(slot.id, stay.id, stay.room_id)]
        if self.machine_count() >= self.cfg.max_machines:
            raise CapacityReached(
                f"all {self.cfg.max_machines} bot machines are in use", retry_after=self.cfg.retry_after_s
            )
        return [self._create(Purpose.STAY, stay.region, stay)]

    def _create(self, purpose: Purpose, region: str, stay: Stay | None = None) -> CreateMachine:
        action = CreateMachine(
            purpose=purpose,
            name=f"luna-{purpose}-{secrets.token_hex(5)}",
            region=region,
            image=self.cfg.image,
            stay_id=stay.id if stay else None,
            room_id=stay.room_id if stay else None,
        )
        self._pending[action.name] = action
        return action

    def _add(self, stay: Stay) -> None:
        old = self.stay_in(stay.room_id)
        if old is not None and not old.live:
            self._forget(old.id)
        self.stays[stay.id] = stay
        self.rooms[stay.room_id] = stay.id

    def dismissed(self, stay_id: str, now: float) -> list[Action]:
        """The bot did not answer a dismiss: end the stay here and take its machine away."""
        stay = self.stays.get(stay_id)
        if stay is None or not stay.live:
            return []
        return self._end(stay, sc.DISMISSED, "dismissed; the bot machine did not answer, so it was destroyed", now)

    # ------------------------------------------------------------------ the pool
    def refill(self) -> list[Action]:
        """Old-image pool machines go; new ones are created until K are warm or the cap is reached."""
        stale = [
            s
            for s in self.slots.values()
            if s.stay_id is None
            and s.image != self.cfg.image
            and s.state in (MachineState.CREATED, MachineState.STOPPED)
        ]
        actions: list[Action] = []
        for slot in stale:
            slot.state = MachineState.DESTROYING
            actions.append(DestroyMachine(slot.id, "pool machine on an old image"))
        pending_pool = sum(1 for p in self._pending.values() if p.purpose is Purpose.POOL)
        missing = self.cfg.pool_size - len(self.warm()) - pending_pool
        for _ in range(max(0, missing)):
            if self.machine_count() >= self.cfg.max_machines:
                break
            actions.append(self._create(Purpose.POOL, self.cfg.region))
        return actions

    # ------------------------------------------------------------------ results of actions
    def created(self, action: CreateMachine, machine: Machine) -> list[Action]:
        self._pending.pop(action.name, None)
        stay = self.stays.get(action.stay_id) if action.stay_id else None
        slot = Slot(machine.id, machine.name, machine.image, machine.region, machine.state)
        self.slots[machine.id] = slot
        if action.purpose is Purpose.STAY:
            if stay is None or not stay.live:  # dismissed while the machine was being made
                slot.state = MachineState.DESTROYING
                return [DestroyMachine(machine.id, "its stay ended before it booted")]
            slot.stay_id, stay.machine_id = stay.id, machine.id
        return []

    def create_failed(self, action: CreateMachine, error: str, now: float) -> list[Action]:
        self._pending.pop(action.name, None)
        stay = self.stays.get(action.stay_id) if action.stay_id else None
        if stay is None or not stay.live:
            return []
        return self._end(stay, NO_MACHINE, f"Fly could not create a machine: {error}", now)

    def start_failed(self, action: StartPooled, error: str, now: float) -> list[Action]:
        """A warm machine would not start (host out of capacity, gone): drop it, try a fresh machine once."""
        actions: list[Action] = []
        slot = self.slots.get(action.machine_id)
        if slot is not None:
            slot.stay_id, slot.state = None, MachineState.DESTROYING
            actions.append(DestroyMachine(slot.id, f"would not start: {error}"))
        stay = self.stays.get(action.stay_id)
        if stay is None or not stay.live:
            return actions
        stay.machine_id = None
        if self.machine_count() >= self.cfg.max_machines:
            return actions + self._end(stay, NO_MACHINE, f"the warm machine would not start: {error}", now)
        return [*actions, self._create(Purpose.STAY, stay.region, stay)]

    def destroyed(self, machine_id: str) -> None:
        self._destroyed[machine_id] = None
        while len(self._destroyed) > 1000:
            self._destroyed.popitem(last=False)
        self._drop(machine_id)

    def _drop(self, machine_id: str) -> None:
        """Forget a machine; a stay that ran on it keeps its id in its status (which machine hosted it)."""
        self.slots.pop(machine_id, None)

    # ------------------------------------------------------------------ what bots and Fly tell us
    def report(self, stay_id: str, status: dict[str, Any], now: float) -> list[Action]:
        """A bot's status (heartbeat); a terminal state is its final word, kept after the machine is gone, with
        the meeting transcript it may carry."""
        stay = self.stays.get(stay_id)
        if stay is None or not stay.live:
            return []
        stay.last_seen = now
        stay.status = {k: v for k, v in status.items() if k not in ("room_id", "bot_id", "transcript")}
        state = _parse_state(status.get("state"))
        if state is None or state.live:
            if state is not None:
                stay.state = state
            return []
        transcript = status.get("transcript")
        stay.transcript = transcript if isinstance(transcript, dict) else None
        sub_code = status.get("sub_code") if isinstance(status.get("sub_code"), str) else None
        reason = status.get("reason") if isinstance(status.get("reason"), str) else None
        return self._end(stay, sub_code or sc.CRASHED, reason, now, state=state)

    def machines_listed(self, machines: list[Machine], now: float) -> list[Action]:
        """Reconcile with Fly's view: a stay whose machine is down without a final report has crashed."""
        seen = {m.id: m for m in machines if m.metadata.get(ROLE) == BOT_ROLE}
        for m in seen.values():  # made while this list was in flight, or by another path: adopt it
            if m.id not in self.slots and m.id not in self._destroyed and not m.state.gone:
                stay_id = m.metadata.get(STAY)
                self.slots[m.id] = Slot(m.id, m.name, m.image, m.region, m.state, stay_id)
        actions: list[Action] = []
        for slot in list(self.slots.values()):
            machine = seen.get(slot.id)
            if machine is None:
                self._drop(slot.id)
                continue
            if slot.state is not MachineState.DESTROYING:
                slot.state = machine.state
            stay = self.stays.get(slot.stay_id) if slot.stay_id else None
            if stay is None:
                if slot.stay_id is not None and machine.state.down and not machine.state.gone:
                    slot.state = MachineState.DESTROYING
                    actions.append(DestroyMachine(slot.id, "its stay is over"))
                continue
            if stay.live and machine.state.down:
                cause = "out of memory" if machine.oom_killed else f"the bot machine stopped (exit {machine.exit_code})"
                actions += self._crash(stay, cause, now)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Heartbeats overdue → crashed; machines that never booted → failed; old statuses evicted."""
        actions: list[Action] = []
        for stay in self.live_stays():
            if stay.last_seen is not None:
                if now - stay.last_seen > self.cfg.heartbeat_timeout_s:
                    silent = now - stay.last_seen
                    actions += self._crash(stay, f"no heartbeat from the bot machine for {silent:.1f} s", now)
            elif stay.machine_id is not None and now - stay.started_at > self.cfg.boot_timeout_s:
                actions += self._end(
                    stay, sc.JOIN_TIMEOUT, f"the bot machine did not report within {self.cfg.boot_timeout_s:.0f} s", now
                )
        self._evict(now)
        return actions

    # ------------------------------------------------------------------ endings
    def _crash(self, stay: Stay, cause: str, now: float) -> list[Action]:
        room_live = stay.room_is_live() and stay.state is not BotState.LEAVING
        actions = self._end(stay, sc.CRASHED, cause, now)
        if stay.attempt > 0 or not room_live:
            return actions
        retry = Stay(
            id="bot_" + secrets.token_hex(6),
            room_id=stay.room_id,
            request=stay.request,
            region=stay.region,
            started_at=now,
            attempt=stay.attempt + 1,
            previous={"bot_id": stay.id, "state": str(stay.state), "sub_code": stay.sub_code, "reason": cause},
        )
        try:
            actions += self._place(retry)
        except CapacityReached:
            return actions
        self._add(retry)
        return actions + self.refill()

    def _end(
        self, stay: Stay, sub_code: str, reason: str | None, now: float, *, state: BotState | None = None
    ) -> list[Action]:
        failed = sub_code in sc.FAILURES or sub_code == NO_MACHINE
        stay.state = state if state is not None else (BotState.FAILED if failed else BotState.ENDED)
        stay.sub_code, stay.reason, stay.ended_at = sub_code, reason, now
        self._ended[stay.id] = now
        slot = self.slots.get(stay.machine_id) if stay.machine_id else None
        actions: list[Action] = []
        if slot is not None and not slot.state.gone:
            slot.state = MachineState.DESTROYING
            actions.append(DestroyMachine(slot.id, f"stay {stay.id} ended ({sub_code})"))
        return actions + self.refill()

    def _evict(self, now: float) -> None:
        while self._ended:
            stay_id, ended_at = next(iter(self._ended.items()))
            if len(self._ended) <= self.cfg.retention_count and now - ended_at <= self.cfg.retention_s:
                break
            self._forget(stay_id)

    def _forget(self, stay_id: str) -> None:
        self._ended.pop(stay_id, None)
        stay = self.stays.pop(stay_id, None)
        if stay is not None and self.rooms.get(stay.room_id) == stay_id:
            del self.rooms[stay.room_id]

    # ------------------------------------------------------------------ restart
    def rebuild(self, machines: list[Machine], now: float) -> list[Action]:
        """A restarted dispatcher: the machine list is the map. Live stays are asked for their status."""
        actions: list[Action] = []
        for m in machines:
            if m.metadata.get(ROLE) != BOT_ROLE or m.state.gone:
                continue
            stay_id, room_id = m.metadata.get(STAY), m.metadata.get(ROOM)
            slot = Slot(m.id, m.name, m.image, m.region, m.state, stay_id)
            self.slots[m.id] = slot
            if stay_id is None or room_id is None:
                if m.state not in (MachineState.CREATED, MachineState.STOPPED):  # started with no stay: orphan
                    slot.state = MachineState.DESTROYING
                    actions.append(DestroyMachine(m.id, "a running pool machine with no stay"))
                continue
            stay = Stay(id=stay_id, room_id=room_id, request={}, region=m.region, started_at=now, machine_id=m.id)
            self._add(stay)
            if m.state.down:
                code = sc.CRASHED if m.exit_code not in (0, None) else "ended_unobserved"
                actions += self._end(stay, code, "the stay ended while the dispatcher was restarting", now)
            else:
                stay.last_seen = now  # the heartbeat clock starts now
                actions.append(FetchStatus(stay_id))
        return actions + self.refill()


def public_status(stay: Stay, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stay as the public API shows it: the bot's last report (or ``status``), with the dispatcher's word on
    state, its own stay id as ``bot_id``, and where it runs."""
    ended = not stay.live
    status = stay.status if status is None else status
    return {
        **status,
        "room_id": stay.room_id,
        "bot_id": stay.id,
        "state": str(stay.state),
        "sub_code": stay.sub_code if ended else status.get("sub_code"),
        "reason": stay.reason if ended else status.get("reason"),
        "machine": {"id": stay.machine_id, "region": stay.region},
        "restarted_from": stay.previous,
    }


def _parse_state(value: Any) -> BotState | None:
    try:
        return BotState(value)
    except ValueError:
        return None
