"""Committed changes, published to delivery as an async stream (not callback slots).

The runtime publishes three things once they are decided or written: "events were written"
(a wake-up: the dispatchers read the log themselves), an endpoint's new status document
(MQTT retains it) and an urgent event that cannot be written (``state_store_failing``).
Each subscriber has a bounded buffer that coalesces: any number of writes is one wake-up,
an endpoint's status is its newest document, and urgent events (rare) are kept in order up
to ``URGENT_KEPT``. Publishing never blocks and never fails, so a slow consumer can hold up
neither the engine nor the probing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from vcmon.alerts.model import AlertEvent

URGENT_KEPT: Final = 64  # urgent events buffered per subscriber; the oldest go first


@dataclass(slots=True)
class Update:
    """What was committed since a subscriber last looked."""

    written: bool = False  # events were written to the log
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # endpoint id → newest
    urgent: list[AlertEvent] = field(default_factory=list)  # not written, send now

    def empty(self) -> bool:
        """True when nothing happened."""
        return not (self.written or self.statuses or self.urgent)


class Subscription:
    """One consumer's view of the feed; ``async for update in subscription``."""

    def __init__(self, statuses: bool) -> None:
        self.statuses = statuses  # wants endpoint status documents
        self._written = False
        self._status: dict[str, dict[str, Any]] = {}
        self._urgent: deque[AlertEvent] = deque(maxlen=URGENT_KEPT)
        self._ready = asyncio.Event()

    def _publish(self, written: bool, status: tuple[str, dict[str, Any]] | None,
                 urgent: AlertEvent | None) -> None:  # fmt: skip
        self._written |= written
        if status is not None and self.statuses:
            self._status[status[0]] = status[1]
        if urgent is not None:
            self._urgent.append(urgent)
        self._ready.set()

    def take(self) -> Update:
        """Everything published since the last take (empty if nothing), without waiting."""
        update = Update(self._written, self._status, list(self._urgent))
        self._written, self._status = False, {}
        self._urgent.clear()
        self._ready.clear()
        return update

    async def next(self) -> Update:
        """Wait for something to be published, then take it all."""
        while True:
            await self._ready.wait()
            update = self.take()
            if not update.empty():
                return update

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Update:
        return await self.next()


class Feed:
    """The runtime's committed changes; each subscriber gets every one (coalesced)."""

    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []

    def subscribe(self, *, statuses: bool = False) -> Subscription:
        """A new subscription; with ``statuses`` it also gets endpoint status documents."""
        sub = Subscription(statuses)
        self._subscribers.append(sub)
        return sub

    @property
    def wants_statuses(self) -> bool:
        """True when some subscriber takes status documents (else none is built)."""
        return any(s.statuses for s in self._subscribers)

    def written(self) -> None:
        """Events were written to the log."""
        for sub in self._subscribers:
            sub._publish(True, None, None)

    def status(self, endpoint_id: str, doc: dict[str, Any]) -> None:
        """An endpoint's state changed: ``doc`` is its status document now."""
        for sub in self._subscribers:
            sub._publish(False, (endpoint_id, doc), None)

    def urgent(self, event: AlertEvent) -> None:
        """An event that must go out though it cannot be written yet."""
        for sub in self._subscribers:
            sub._publish(False, None, event)
