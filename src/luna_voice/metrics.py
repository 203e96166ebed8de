"""Prometheus metrics (``GET /metrics``), fed by the events bots already publish for captions.

One registry per service (tests run several services in one process). Turn outcomes and latencies are recorded
when a turn ends; bot counts by state are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from luna_voice.conversation.events import LateUsage, MutedChanged, TurnChanged
from luna_voice.events import Event, StateChanged

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)


class _BotStates(Collector):
    def __init__(self, states: Callable[[], Iterable[str]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("luna_bots", "Bots known to this process, by state", labels=["state"])
        counts: dict[str, int] = {}
        for state in self._states():
            counts[state] = counts.get(state, 0) + 1
        for state, n in sorted(counts.items()):
            gauge.add_metric([state], n)
        yield gauge


class Metrics:
    def __init__(self, bot_states: Callable[[], Iterable[str]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_BotStates(bot_states))
        self.turns = Counter(
            "luna_turns", "Turns by final state and reason", ["state", "reason"], registry=self.registry
        )
        self.latency = Histogram(
            "luna_reply_latency_seconds",
            "End of the person's speech to the first sample of Luna's answer played into the room",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "luna_stage_seconds",
            "End of speech to each stage of a turn",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.usage = Counter("luna_usage", "Provider usage by unit", ["unit"], registry=self.registry)
        self.cost = Counter("luna_cost_usd", "Provider cost of finished turns in USD", registry=self.registry)
        self.ended = Counter("luna_bots_ended", "Bots that ended, by sub-code", ["sub_code"], registry=self.registry)
        self.muted = Counter(
            "luna_muted_by_host", "Times someone else (a host, a preset change) muted Luna", registry=self.registry
        )
        self.rejoins = Counter(
            "luna_bot_rejoins", "Crashed pages (or browsers) replaced while Luna rejoined", registry=self.registry
        )

    def observe(self, event: Event) -> None:
        """Called with every event a bot publishes."""
        if isinstance(event, TurnChanged) and event.state.terminal:
            self._turn(event.turn)
        elif isinstance(event, LateUsage):  # a cancelled call's usage, after its turn ended
            self._usage(event.usage, event.cost_usd)
        elif isinstance(event, StateChanged) and event.state in ("ended", "failed"):
            self.ended.labels(event.sub_code or "unknown").inc()
        elif isinstance(event, MutedChanged) and event.muted:
            self.muted.inc()
        elif isinstance(event, StateChanged) and (event.state, event.sub_code) == ("reconnecting", "crashed"):
            self.rejoins.inc()  # the lifecycle announces each rejoin as reconnecting/crashed

    def _turn(self, turn: Mapping[str, Any]) -> None:
        self.turns.labels(turn["state"], turn["reason"] or "none").inc()
        latency = turn["latency"]
        if "first_audio_played_ms" in latency:
            self.latency.observe(latency["first_audio_played_ms"] / 1000)
        for key, ms in latency.items():
            self.stages.labels(key.removesuffix("_ms")).observe(max(0.0, ms / 1000))
        self._usage(turn["usage"], turn["cost_usd"])

    def _usage(self, usage: dict[str, float], cost_usd: float) -> None:
        for unit, amount in usage.items():
            if amount > 0:
                self.usage.labels(unit).inc(amount)
        if cost_usd > 0:
            self.cost.inc(cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
