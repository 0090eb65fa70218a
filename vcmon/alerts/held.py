"""Decisions made while the state file could not be written, held in memory, in order, until
it can be written again.

The engine has moved on when a write fails (a round was folded in, an alert fired), so its
``Changes`` must not be lost: they wait here and are written in the order they were made.
The queue is bounded. Past ``max_decisions`` held decisions, all of them are merged into one
that writes exactly the same rows (the newest health of each endpoint, the newest version
of each alert and silence, every close, every event in order): nothing is lost by merging.
Only events can grow without bound; past ``max_events`` the oldest held events are dropped
and counted (``dropped_events``), so a disk that stays full for days costs bounded memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Final

from vcmon.alerts.model import Alert, AlertEvent, Changes, HealthRecord, Silence

MAX_DECISIONS: Final = 10_000
MAX_EVENTS: Final = 50_000


def merge(decisions: Iterable[Changes]) -> Changes:
    """One Changes that writes what the ``decisions`` write one after another.

    Exact because the engine never opens again an alert it closed (alert ids are unique), and
    the store keeps an alert's first end and the newest of every other row."""
    health: dict[str, HealthRecord] = {}
    upserted: dict[str, Alert] = {}
    closed: dict[str, float] = {}
    silences: dict[str, Silence] = {}
    events: list[AlertEvent] = []
    for c in decisions:
        health.update((h.endpoint_id, h) for h in c.health)
        upserted.update((a.alert_id, a) for a in c.upserted)
        for alert_id, ended_at in c.closed:
            closed.setdefault(alert_id, ended_at)
        events.extend(c.events)
        silences.update((s.id, s) for s in c.silences)
    return Changes(
        health=tuple(health.values()),
        upserted=tuple(upserted.values()),
        closed=tuple(closed.items()),
        events=tuple(events),
        silences=tuple(silences.values()),
    )


class HeldQueue:
    """Decisions waiting to be written, oldest first; see the module docstring."""

    def __init__(self, max_decisions: int = MAX_DECISIONS, max_events: int = MAX_EVENTS) -> None:
        if max_decisions < 1 or max_events < 0:
            raise ValueError("max_decisions must be ≥ 1 and max_events ≥ 0")
        self.max_decisions = max_decisions
        self.max_events = max_events
        self._items: deque[Changes] = deque()
        self.events = 0  # events held
        self.dropped_events = 0  # oldest events dropped because more than max_events waited
        self.merges = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Changes]:
        return iter(self._items)

    def push(self, changes: Changes) -> int:
        """Hold ``changes`` after the others; how many events had to be dropped for it."""
        if changes.empty():
            return 0
        self._items.append(changes)
        self.events += len(changes.events)
        if len(self._items) > self.max_decisions:
            merged = merge(self._items)
            self._items.clear()
            self._items.append(merged)
            self.merges += 1
        return self._drop_oldest_events(self.events - self.max_events)

    def head(self, n: int) -> list[Changes]:
        """The ``n`` oldest held decisions (fewer if fewer are held)."""
        return [c for _, c in zip(range(n), self._items, strict=False)]

    def pop(self, n: int) -> list[Changes]:
        """Remove and return the ``n`` oldest held decisions (once written)."""
        out = [self._items.popleft() for _ in range(min(n, len(self._items)))]
        self.events -= sum(len(c.events) for c in out)
        return out

    def _drop_oldest_events(self, excess: int) -> int:
        dropped = 0
        for i, c in enumerate(self._items):
            if excess <= dropped:
                break
            cut = min(len(c.events), excess - dropped)
            if cut:
                # The rows stay: an alert whose firing was dropped is still recorded as is.
                self._items[i] = replace(c, events=c.events[cut:])
                dropped += cut
        self.events -= dropped
        self.dropped_events += dropped
        return dropped
