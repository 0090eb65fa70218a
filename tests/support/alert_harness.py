"""Drives the alert engine with rounds on a fake clock, without sockets or a database.

``Harness`` keeps the durable part in memory exactly as the store does (``Durable``), so a
test can "crash" the engine at any step and restart it from what was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vcmon.alerts.engine import AlertEngine
from vcmon.alerts.model import Alert, AlertEvent, Changes, HealthRecord, Silence, Snapshot
from vcmon.config import Endpoint, Level, Timing
from vcmon.config.alerts import AlertsConfig, Matchers
from vcmon.measure.stats import Observation
from vcmon.states import State

START = 1_800_000_000.0  # Friday 2027-01-15, 15:00 in Asia/Ho_Chi_Minh
INTERVAL = 10.0


def ep(
    id: str,
    parent: Sequence[str] = (),
    district: str = "Cô Tô",
    level: str = "commune",
    labels: Mapping[str, str] | None = None,
    alerts: Mapping[str, Any] | None = None,
) -> Endpoint:
    """An endpoint on loopback with the default timing."""
    data: dict[str, Any] = {
        "id": id,
        "name": f"UBND xã {id}",
        "address": "127.0.0.1",
        "district": district,
        "level": Level(level),
        "parent": tuple(parent),
        "labels": dict(labels or {}),
        "timing": Timing(interval=INTERVAL),
    }
    if alerts is not None:
        data["alerts"] = alerts
    return Endpoint.model_validate(data)


def obs(at: float, *, ok: bool = True, rtt: float = 0.010, lost: int = 0, count: int = 5,
        jitter: float = 0.0) -> Observation:  # fmt: skip
    """A round of ``count`` echoes: all lost when not ``ok``, else ``lost`` of them."""
    if not ok:
        return Observation(started_at=at, sent=count, received=0, rtts=())
    n = count - lost
    rtts = tuple(rtt + (jitter if i % 2 else 0.0) for i in range(n))
    return Observation(started_at=at, sent=count, received=n, rtts=rtts)


@dataclass
class Durable:
    """What the store would hold: applied Changes, nothing else."""

    epoch: str = "test"
    seq: int = 0
    health: dict[str, HealthRecord] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)
    silences: dict[str, Silence] = field(default_factory=dict)
    events: list[AlertEvent] = field(default_factory=list)

    def apply(self, changes: Changes) -> None:
        for rec in changes.health:
            self.health[rec.endpoint_id] = rec
        for alert in changes.upserted:
            self.alerts[alert.alert_id] = alert
        for alert_id, _ in changes.closed:
            self.alerts.pop(alert_id, None)
        for event in changes.events:
            assert event.seq == self.seq + 1, "event seqs must be contiguous"
            self.seq = event.seq
            self.events.append(event)
        for silence in changes.silences:
            self.silences[silence.id] = silence

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(
            epoch=self.epoch,
            seq=self.seq,
            health=dict(self.health),
            alerts=tuple(self.alerts.values()),
            silences=tuple(s for s in self.silences.values() if s.ends_at > now),
        )


class Harness:
    """An engine, a fake clock and the events it wrote."""

    def __init__(
        self, endpoints: Sequence[Endpoint], config: Mapping[str, Any] | None = None
    ) -> None:
        self.endpoints = list(endpoints)
        self.config = AlertsConfig.model_validate(dict(config or {}))
        self.now = START
        self.durable = Durable()
        self.engine = self._start()
        self._silence_ids = 0

    def _start(self) -> AlertEngine:
        engine = AlertEngine(
            self.endpoints,
            self.config,
            instance="test",
            snapshot=self.durable.snapshot(self.now),
            now=self.now,
        )
        self.durable.apply(engine.take_startup_changes())
        return engine

    def restart(self) -> None:
        """Lose everything not written, as a SIGKILL would, and start again."""
        self.engine = self._start()

    def apply(self, changes: Changes | None) -> None:
        if changes is not None:
            self.durable.apply(changes)

    def round(self, results: Mapping[str, bool | Observation], spread: float = 0.1) -> None:
        """One round of each endpoint in ``results`` (in that order), then the clock moves on
        to the next interval."""
        start = self.now
        for i, (eid, result) in enumerate(results.items()):
            at = start + i * spread
            self.now = at + 1.0  # the round ends a second after it starts
            o = result if isinstance(result, Observation) else obs(at, ok=result)
            self.apply(self.engine.observe(eid, o, self.now))
            self.tick()
        self.now = start + INTERVAL
        self.tick()

    def rounds(self, n: int, results: Mapping[str, bool | Observation]) -> None:
        for _ in range(n):
            self.round(results)

    def tick(self, advance: float = 0.0) -> None:
        self.now += advance
        self.apply(self.engine.tick(self.now))

    def wait(self, seconds: float, step: float = 1.0) -> None:
        """Let time pass with ticks every ``step`` seconds and no rounds."""
        end = self.now + seconds
        while self.now < end:
            self.tick(min(step, end - self.now))

    def silence(self, duration: float, **matchers: Any) -> str:
        self._silence_ids += 1
        sid = f"s{self._silence_ids}"
        silence = Silence(
            id=sid,
            matchers=Matchers.model_validate(matchers),
            starts_at=self.now,
            ends_at=self.now + duration,
            created_by="test",
            comment="",
            created_at=self.now,
        )
        self.apply(self.engine.add_silence(silence, self.now))
        return sid

    def expire(self, sid: str) -> None:
        self.apply(self.engine.expire_silence(sid, self.now))

    @property
    def events(self) -> list[AlertEvent]:
        return self.durable.events

    def log(self, since: int = 0) -> list[tuple[str, str, str]]:
        """(status, kind, target) of every event from index ``since``."""
        return [(e.status.value, e.kind.value, e.target.id) for e in self.events[since:]]

    def state(self, eid: str) -> State | None:
        return self.engine.nodes[eid].state

    def open(self) -> set[tuple[str, str]]:
        return {(a.target.id, a.kind.value) for a in self.engine.open_alerts()}


def statuses(events: Iterable[AlertEvent]) -> list[str]:
    return [e.status.value for e in events]
