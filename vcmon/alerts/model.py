"""What the alert engine decides and records: alerts, their events, silences.

Plain frozen values, so decisions can be compared in tests, stored as JSON and replayed.
The event's JSON form is the contract in docs/architecture.md, Alert events.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vcmon.config.alerts import Matchers
from vcmon.config.patterns import full_match


class Kind(enum.StrEnum):
    """Alert kinds (docs/architecture.md, Alert events)."""

    ENDPOINT_DOWN = "endpoint_down"
    GROUP_DOWN = "group_down"  # a parent is down; ``affected`` are its unreachable children
    DISTRICT_DOWN = "district_down"  # a share of a district failing at once, no shared parent
    FLAPPING = "flapping"
    LOSS_HIGH = "loss_high"
    LATENCY_HIGH = "latency_high"
    JITTER_HIGH = "jitter_high"
    MOS_LOW = "mos_low"
    SINK_FAILING = "sink_failing"  # a sink could not deliver for longer than allowed
    STATE_STORE_FAILING = "state_store_failing"  # the state file cannot be written


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


class Status(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"
    ACKNOWLEDGED = "acknowledged"  # someone on call took it; the alert still fires


@dataclass(frozen=True, slots=True)
class Target:
    """What an alert is about: an endpoint, or a district for ``district_down``."""

    id: str
    name: str
    address: str
    district: str
    level: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``endpoint`` object of the event contract."""
        return {
            "id": self.id,
            "name": self.name,
            "address": self.address,
            "district": self.district,
            "level": self.level,
        }


@dataclass(frozen=True, slots=True)
class Measurements:
    """The figures of the round that decided, in the units people read."""

    rtt_ms: float | None = None
    jitter_ms: float | None = None
    loss_pct: float | None = None
    mos: float | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert over its life: opened when its condition starts, closed when it ends.

    ``notified`` is True once its firing event was written to the event log; only then does
    its end produce a resolve (a silenced alert that clears is never announced).
    """

    alert_id: str
    kind: Kind
    severity: Severity
    target: Target
    started_at: float
    affected: tuple[str, ...] = ()
    measurements: Measurements = Measurements()
    notified: bool = False
    notified_severity: Severity | None = None  # severity of the last firing sent
    detail: Mapping[str, Any] = field(default_factory=dict)  # for messages: counts, values

    def with_(self, **changes: Any) -> Alert:
        """A copy with ``changes``."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One firing or resolved event, as written to the event log and sent by every sink."""

    id: str
    seq: int
    alert_id: str
    status: Status
    kind: Kind
    severity: Severity
    instance: str
    target: Target
    affected: tuple[str, ...]
    measurements: Measurements
    started_at: float
    ended_at: float | None
    at: float  # when the engine decided it
    summary: str = ""
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        """The contract's JSON object (docs/architecture.md, Alert events)."""
        return {
            "id": self.id,
            "alert_id": self.alert_id,
            "status": self.status.value,
            "kind": self.kind.value,
            "severity": self.severity.value,
            "instance": self.instance,
            "seq": self.seq,
            "endpoint": self.target.to_json(),
            "affected": list(self.affected),
            "measurements": asdict(self.measurements),
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at) if self.ended_at is not None else None,
            "summary": self.summary,
            "description": self.description,
        }


def rfc3339(ts: float) -> str:
    """UTC timestamp with millisecond precision, e.g. 2026-11-28T06:00:00.123Z."""
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes the firing of matching alerts from ``starts_at`` until ``ends_at``."""

    id: str
    matchers: Matchers
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    created_at: float

    def active(self, now: float) -> bool:
        """True while it mutes."""
        return self.starts_at <= now < self.ends_at


def _matches(pattern: str | None, value: str) -> bool:
    if pattern is None:
        return True
    if pattern.startswith("~"):
        return full_match(pattern[1:], value)
    return pattern == value


def matches(
    matchers: Matchers, target: Target, kind: str | None = None, severity: str | None = None
) -> bool:
    """True when every field ``matchers`` sets matches; kind and severity only when given
    (a maintenance window asks about an endpoint, a silence about an alert)."""
    if not (
        _matches(matchers.endpoint, target.id)
        and _matches(matchers.district, target.district)
        and _matches(matchers.level, target.level)
    ):
        return False
    if matchers.kind is not None and (kind is None or not _matches(matchers.kind, kind)):
        return False
    if matchers.severity is not None and (
        severity is None or not _matches(matchers.severity, severity)
    ):
        return False
    return all(_matches(v, target.labels.get(k, "")) for k, v in matchers.labels.items())


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """The durable part of one endpoint's health: what must survive a restart."""

    endpoint_id: str
    state: str  # the effective vcmon.alerts.health.State value
    confirmed_up: bool | None  # reachability after hysteresis; None until first decided
    flapping: bool
    history: tuple[bool, ...]  # raw round results (True: answered), oldest first
    since: float  # when ``state`` began (epoch seconds)


@dataclass(frozen=True, slots=True)
class Changes:
    """What one decision changed; the store writes it in one transaction."""

    health: tuple[HealthRecord, ...] = ()
    upserted: tuple[Alert, ...] = ()  # opened or changed alerts
    closed: tuple[tuple[str, float], ...] = ()  # (alert_id, ended_at) of alerts that ended
    events: tuple[AlertEvent, ...] = ()  # in seq order
    silences: tuple[Silence, ...] = ()  # created or changed (expired) silences

    def empty(self) -> bool:
        """True when there is nothing to write."""
        return not (self.health or self.upserted or self.closed or self.events or self.silences)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything durable, as the store loads it and the engine restores from it."""

    epoch: str  # random id of this database, so event ids stay unique if it is recreated
    seq: int  # seq of the last event written; the next is seq + 1
    health: Mapping[str, HealthRecord] = field(default_factory=dict)
    alerts: tuple[Alert, ...] = ()  # open alerts
    silences: tuple[Silence, ...] = ()  # silences that have not ended
