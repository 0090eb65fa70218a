"""Delivery from the durable event log to each sink: own cursor, in order, at least once.

One ``Dispatcher`` per sink reads the events after its cursor and sends them one by one, or,
for a sink with a group policy, as grouped notifications (:mod:`vcmon.alerts.grouping`);
the cursor moves only once the receiver acknowledged (``send`` returned). A failed send is
retried with exponential backoff and full jitter, honouring the receiver's Retry-After; a
refused event goes to the dead letters and delivery goes on; a target that answered 410 is
disabled. Each dispatcher waits on its own, so a sink that is down never holds up another,
nor the probing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from vcmon.alerts.grouping import Grouper, GroupPolicy, Notification
from vcmon.alerts.store import Store
from vcmon.logs import event
from vcmon.sinks.base import Gone, GroupSink, Reject, Retry, Sink, SinkError

log = logging.getLogger(__name__)

BATCH: Final = 200  # events read from the log at a time
RECHECK: Final = 5.0  # s between looks at the cursor when no event wakes the dispatcher
# The cursor is written at the end of a batch or every SAVE_EVERY s within one, not after
# every event: each write is an fsync. A crash re-sends at most that much, and receivers
# dedupe by event id (delivery is at least once).
SAVE_EVERY: Final = 0.5


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``n`` (from 0): full jitter over min(cap, base × 2ⁿ)."""

    base: float = 0.5
    cap: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt`` + 1."""
        return rng.uniform(0.0, min(self.cap, self.base * 2.0**attempt))


@dataclass(slots=True)
class SinkStats:
    """What the metrics report about one sink."""

    sent: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by reason
    dead: int = 0
    pending: int = 0  # owed now: not held back on purpose by a group's wait or interval
    held: int = 0  # held back on purpose in groups (a grouped sink)
    connected: bool = False
    disabled: str | None = None
    failing_since: float | None = None  # wall time of the first failure of the current run


Route = Callable[[Mapping[str, Any]], bool]


def _everything(event: Mapping[str, Any]) -> bool:
    return True


class Dispatcher:
    """Sends the event log to one sink until cancelled."""

    def __init__(
        self,
        sink: Sink,
        store: Store,
        *,
        route: Route = _everything,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        on_latency: Callable[[str, float], None] | None = None,
        group: GroupPolicy | None = None,
    ) -> None:
        if group is not None and not isinstance(sink, GroupSink):
            raise TypeError(f"sink {sink.name} cannot send grouped notifications")
        self.sink = sink
        self.group = group
        self.store = store
        self.route = route
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.clock = clock
        self.stats = SinkStats()
        self.on_latency = on_latency
        self._wake = asyncio.Event()
        # Set while waiting with nothing left to do, cleared by notify(): "all that was
        # written before notify() has been dealt with" can be waited on.
        self.idle = asyncio.Event()
        self._started = False
        # Where delivery stands, for the pending count: done up to `_position` (one by one)
        # or read up to it (grouped, with `_grouper` holding what waits).
        self._position = 0
        self._grouper: Grouper | None = None

    def notify(self) -> None:
        """New events were written; called from the loop thread after each commit."""
        self._wake.set()
        self.idle.clear()

    async def run(self) -> None:
        """Deliver forever (until cancelled or the target is gone)."""
        name = self.sink.name
        if self.store.cursor(name) is None:
            # A new sink starts with what happens from now on, not years of history.
            self.store.advance(name, self.store.last_seq())
        try:
            if self.group is None:
                await self._one_by_one()
            else:
                await self._grouped(Grouper(self.group))
        finally:
            if self._started:
                await self.sink.close()

    async def _one_by_one(self) -> None:
        name = self.sink.name
        cursor = saved = self.store.cursor(name) or 0
        try:
            while True:
                self._wake.clear()
                # Re-read: `vcmon outbox retry` may have moved it back from another process.
                cursor = saved = self._position = self.store.cursor(name) or 0
                batch = self.store.entries(cursor, BATCH)
                self._count_pending()
                if not batch:
                    self.idle.set()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RECHECK):
                            await self._wake.wait()
                    continue
                last_save = time.monotonic()
                for decided, doc in batch:
                    outcome = None
                    if self.route(doc):
                        outcome = await self._deliver(self._sender(doc), decided)
                    if isinstance(outcome, Gone):
                        self._disable(outcome)
                        return
                    cursor = self._position = int(doc["seq"])
                    self._count_pending()
                    if isinstance(outcome, Reject):
                        self.store.advance(name, cursor, outcome.reason, self.clock())
                        saved = cursor
                    elif time.monotonic() - last_save >= SAVE_EVERY:
                        self.store.advance(name, cursor)
                        saved, last_save = cursor, time.monotonic()
                if cursor != saved:
                    self.store.advance(name, cursor)
                    saved = cursor
        finally:
            if cursor != saved:  # stopped mid-batch: keep what was acknowledged
                self.store.advance(name, cursor)

    async def _grouped(self, grouper: Grouper) -> None:
        name = self.sink.name
        self._grouper = grouper
        fed = saved = self.store.cursor(name) or 0
        now = self.clock()
        for doc in self.store.open_events():
            # Notified before the restart; an acknowledged one stays unrepeated.
            if int(doc["seq"]) <= fed and self.route(doc):
                grouper.seed(doc, now)
        while True:
            self._wake.clear()
            cursor = self.store.cursor(name) or 0
            if cursor < saved:  # moved back by `vcmon outbox retry`: read those again
                fed = cursor
            batch = self.store.entries(fed, BATCH)
            now = self.clock()
            for decided, doc in batch:
                if self.route(doc):
                    # The wait runs from the decision: one read after a restart or a long
                    # retry of another group is not held back again.
                    grouper.add(doc, int(doc["seq"]), min(now, decided))
                fed = self._position = int(doc["seq"])
            self._count_pending()
            for note in grouper.due(now):
                outcome = await self._deliver(self._group_sender(note), note.due_at)
                if isinstance(outcome, Gone):
                    self._disable(outcome)
                    return
                if isinstance(outcome, Reject):
                    self.store.bury(name, note.seqs, outcome.reason, self.clock())
                grouper.sent(note, self.clock())
            # Done up to just before the oldest event still waiting in a group.
            low = grouper.low_water()
            done = fed if low is None else min(fed, low - 1)
            if done != saved:
                self.store.advance(name, done)
            saved = done
            self._count_pending()
            if len(batch) == BATCH:
                continue
            timeout = RECHECK
            if (at := grouper.next_at()) is not None:
                timeout = min(RECHECK, max(0.0, at - self.clock()))
            if timeout > 0:  # else another notification is due already
                self.idle.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _count_pending(self) -> None:
        """What the sink owes now: the log past its position, and, grouped, what waits in a
        group that is due; what a group holds back on purpose is ``held``, not pending."""
        owed = max(0, self.store.last_seq() - self._position)
        if self._grouper is not None:
            overdue, self.stats.held = self._grouper.waiting(self.clock())
            owed += overdue
        self.stats.pending = owed

    def _sender(self, doc: Mapping[str, Any]) -> Callable[[], Awaitable[None]]:
        return lambda: self.sink.send(doc)

    def _group_sender(self, note: Notification) -> Callable[[], Awaitable[None]]:
        sink = self.sink
        assert isinstance(sink, GroupSink)
        return lambda: sink.send_group(note)

    def _disable(self, gone: Gone) -> None:
        self.stats.disabled = gone.reason
        event(log, logging.ERROR, "sink_disabled", sink=self.sink.name,
              reason=gone.reason, detail=gone.detail)  # fmt: skip

    async def _deliver(self, send: Callable[[], Awaitable[None]], since: float) -> SinkError | None:
        """Send until acknowledged; the error that ended trying (Reject, Gone), or None.
        Latency is measured from ``since``."""
        attempt = 0
        while True:
            try:
                if not self._started:
                    await self.sink.start()
                    self._started = True
                await send()
            except Retry as exc:
                self._failed(exc, attempt)
                self._count_pending()  # a stuck sink's backlog shows while it grows
                delay = self.backoff.delay(attempt, self.rng)
                if exc.after is not None:
                    delay = max(delay, exc.after)
                attempt += 1
                await asyncio.sleep(delay)  # a backoff, not a synchronisation
                continue
            except (Reject, Gone) as exc:
                self._failed(exc, attempt)
                self.stats.dead += isinstance(exc, Reject)
                return exc
            self._succeeded(since)
            return None

    def _failed(self, exc: SinkError, attempt: int) -> None:
        stats = self.stats
        stats.failed[exc.reason] = stats.failed.get(exc.reason, 0) + 1
        if isinstance(exc, Retry) and exc.reason in ("connect", "disconnected"):
            stats.connected = False
            self._started = False
        if stats.failing_since is None:
            stats.failing_since = self.clock()
        if attempt == 0:  # one line per failing run, not one per retry
            event(log, logging.WARNING, "sink_send_failed", sink=self.sink.name,
                  reason=exc.reason, detail=exc.detail)  # fmt: skip

    def _succeeded(self, decided: float) -> None:
        stats = self.stats
        if stats.failing_since is not None:
            event(log, logging.INFO, "sink_recovered", sink=self.sink.name,
                  failed_for=f"{self.clock() - stats.failing_since:.1f}s")  # fmt: skip
        stats.sent += 1
        stats.connected = True
        stats.failing_since = None
        if self.on_latency is not None:
            self.on_latency(self.sink.name, max(0.0, self.clock() - decided))
