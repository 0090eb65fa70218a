"""Grouping for human sinks: many alert events become few notifications, as Alertmanager does.

Events are grouped by labels (district and kind by default). A new group waits ``wait``
seconds to gather its siblings, then sends one notification; later changes in that group go
out at most every ``interval`` seconds (each still gathered for ``wait``); a group that is
still firing, with nothing new, is repeated every ``repeat`` seconds unless every alert in it
is acknowledged. A group whose alerts have all resolved, once notified, is forgotten.

Pure and synchronous: the caller passes the time and sends what ``due`` returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from vcmon.config.fields import NonNegativeSeconds

GroupField = Literal["district", "kind", "severity", "level", "endpoint", "instance"]


class GroupPolicy(BaseModel):
    """``group:`` of a human sink. Alertmanager's defaults: 30 s, 5 min, 4 h."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: tuple[GroupField, ...] = ("district", "kind")
    wait: NonNegativeSeconds = (
        30.0  # a new group gathers its siblings this long before the first send
    )
    interval: NonNegativeSeconds = 300.0  # at least this long between two notifications of a group
    repeat: NonNegativeSeconds = 14400.0  # re-send a group still firing; 0 never

    @model_validator(mode="after")
    def _check(self) -> GroupPolicy:
        if len(set(self.by)) != len(self.by):
            raise ValueError(f"by: {list(self.by)} names a field twice")
        if self.repeat and self.repeat < self.interval:
            raise ValueError(
                f"repeat ({self.repeat:g} s) must not be below interval ({self.interval:g} s)"
            )
        return self


def resolve_group(group: GroupPolicy | bool | None, default: bool) -> GroupPolicy | None:
    """A sink's ``group:`` setting as a policy: true is the defaults, false is none, and
    unset is the defaults when ``default`` (sinks read by people)."""
    if isinstance(group, GroupPolicy):
        return group
    return GroupPolicy() if (default if group is None else group) else None


def group_labels(event: Mapping[str, Any], by: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The (field, value) pairs that put ``event`` in its group."""
    endpoint = event.get("endpoint") or {}
    values = {
        "district": endpoint.get("district"),
        "level": endpoint.get("level"),
        "endpoint": endpoint.get("id"),
        "kind": event.get("kind"),
        "severity": event.get("severity"),
        "instance": event.get("instance"),
    }
    return tuple((name, str(values.get(name) or "")) for name in by)


@dataclass(frozen=True)
class Notification:
    """One message about one group.

    ``changes`` holds the newest event of each alert that changed since the group's last
    notification, in log order; ``firing`` the newest event of each alert still open in the
    group that did not change. A repeat has no changes.
    """

    id: str  # stable for the same content: the receiver's idempotency key
    group: tuple[tuple[str, str], ...]
    changes: tuple[Mapping[str, Any], ...]
    firing: tuple[Mapping[str, Any], ...]
    seqs: tuple[int, ...]  # the log entries this notification carries
    due_at: float  # when it became due (latency is measured from here)

    @property
    def repeat(self) -> bool:
        """Sent because the group is still firing, not because anything changed."""
        return not self.changes

    def to_json(self) -> dict[str, Any]:
        """The notification as a JSON object (vcmon's webhook body carries this)."""
        return {
            "id": self.id,
            "group": dict(self.group),
            "repeat": self.repeat,
            "changes": [dict(e) for e in self.changes],
            "firing": [dict(e) for e in self.firing],
        }


def _open(event: Mapping[str, Any]) -> bool:
    return event.get("status") != "resolved"


@dataclass
class _Group:
    labels: tuple[tuple[str, str], ...]
    open: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # alert id → newest
    pending: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # changed, unsent
    seqs: list[int] = field(default_factory=list)  # log entries of the pending changes
    gathering_since: float | None = None  # when the first pending change arrived
    last_sent: float | None = None

    def due_at(self, policy: GroupPolicy) -> float | None:
        if self.gathering_since is not None:
            ready = self.gathering_since + policy.wait
            if self.last_sent is not None:
                ready = max(ready, self.last_sent + policy.interval)
            return ready
        if policy.repeat and self.last_sent is not None and self._repeatable():
            return self.last_sent + policy.repeat
        return None

    def _repeatable(self) -> bool:
        return any(e.get("status") == "firing" for e in self.open.values())


class Grouper:
    """The groups of one sink."""

    def __init__(self, policy: GroupPolicy) -> None:
        self.policy = policy
        self._groups: dict[tuple[tuple[str, str], ...], _Group] = {}

    def seed(self, event: Mapping[str, Any], now: float) -> None:
        """An alert open before a restart, already notified: repeated from ``now`` on."""
        group = self._group(event)
        group.open[str(event["alert_id"])] = event
        if group.last_sent is None:
            group.last_sent = now

    def add(self, event: Mapping[str, Any], seq: int, now: float) -> None:
        """A new event from the log."""
        group = self._group(event)
        alert_id = str(event["alert_id"])
        group.pending[alert_id] = event
        group.seqs.append(seq)
        if group.gathering_since is None:
            group.gathering_since = now
        if _open(event):
            group.open[alert_id] = event
        else:
            group.open.pop(alert_id, None)

    def due(self, now: float) -> list[Notification]:
        """The notifications to send now, oldest group first."""
        out = []
        for group in self._groups.values():
            at = group.due_at(self.policy)
            if at is None or at > now:
                continue
            changes = tuple(sorted(group.pending.values(), key=lambda e: int(e.get("seq", 0))))
            changed = set(group.pending)
            firing = tuple(e for a, e in group.open.items() if a not in changed)
            if not changes:
                firing = tuple(e for e in firing if e.get("status") == "firing")
            out.append(
                Notification(
                    id=self._id(group, changes, at),
                    group=group.labels,
                    changes=changes,
                    firing=firing,
                    seqs=tuple(group.seqs),
                    due_at=at,
                )
            )
        return out

    def sent(self, notification: Notification, now: float) -> None:
        """``notification`` was delivered (or given up on): its changes are done."""
        group = self._groups.get(notification.group)
        if group is None:
            return
        carried = set(notification.seqs)
        group.seqs = [s for s in group.seqs if s not in carried]
        # Only what was sent: an alert that changed again during the send stays pending.
        for event in notification.changes:
            alert_id = str(event["alert_id"])
            if group.pending.get(alert_id) is event:
                del group.pending[alert_id]
        group.last_sent = now
        group.gathering_since = now if group.pending else None
        if not group.open and not group.pending:
            del self._groups[notification.group]

    def next_at(self) -> float | None:
        """When the next notification falls due, if any is waiting."""
        times = [t for g in self._groups.values() if (t := g.due_at(self.policy)) is not None]
        return min(times, default=None)

    def waiting(self, now: float) -> tuple[int, int]:
        """Log entries in groups: (due by ``now`` but not sent, held back on purpose)."""
        overdue = held = 0
        for group in self._groups.values():
            at = group.due_at(self.policy)
            if group.seqs and at is not None and at <= now:
                overdue += len(group.seqs)
            else:
                held += len(group.seqs)
        return overdue, held

    def low_water(self) -> int | None:
        """The oldest log entry not yet carried by a sent notification."""
        return min((min(g.seqs) for g in self._groups.values() if g.seqs), default=None)

    def _group(self, event: Mapping[str, Any]) -> _Group:
        labels = group_labels(event, self.policy.by)
        group = self._groups.get(labels)
        if group is None:
            group = self._groups[labels] = _Group(labels)
        return group

    @staticmethod
    def _id(group: _Group, changes: tuple[Mapping[str, Any], ...], at: float) -> str:
        # The same content gets the same id when sent again, so a receiver can drop a resend.
        what = [str(e.get("id")) for e in changes] or [f"repeat-{at:.0f}"]
        text = "\x1f".join([*(f"{k}={v}" for k, v in group.labels), *what])
        return "grp-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
