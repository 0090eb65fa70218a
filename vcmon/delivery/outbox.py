"""Delivery from the durable event log to each sink: own cursor, in order, at least once.

One ``Dispatcher`` per sink reads the events after its cursor and sends them one by one, or,
for a sink with a group policy, as grouped notifications (:mod:`vcmon.delivery.grouping`);
the cursor moves only once the receiver acknowledged (``send`` returned). A failed send is
retried with exponential backoff and full jitter, honouring the receiver's Retry-After; a
refused event goes to the dead letters and delivery goes on; a target that answered 410 is
disabled. Each dispatcher waits on its own, so a sink that is down never holds up another,
nor the probing.

A state file that cannot be read or written does not stop a dispatcher: a cursor that could
not be saved is kept in memory and saved later (nothing is sent twice for it), reads are
tried again every STORE_RETRY seconds, and an ``urgent`` event (the state_store_failing
alert, which cannot be written) is sent meanwhile, and not again when the log reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from vcmon.alerts.model import AlertEvent
from vcmon.alerts.store import Store, StoreError
from vcmon.delivery.grouping import Grouper, GroupPolicy, Notification
from vcmon.delivery.sinks.base import Gone, GroupSink, Reject, Retry, Sink, SinkError
from vcmon.logs import event

log = logging.getLogger(__name__)

BATCH: Final = 200  # events read from the log at a time
RECHECK: Final = 5.0  # s between looks at the cursor when no event wakes the dispatcher
# The cursor is written at the end of a batch or every SAVE_EVERY s within one, not after
# every event: each write is an fsync. A crash re-sends at most that much, and receivers
# dedupe by event id (delivery is at least once).
SAVE_EVERY: Final = 0.5
STORE_RETRY: Final = 1.0  # s between attempts to read a state file that failed


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


Route = Callable[[AlertEvent], bool]


def _everything(event: AlertEvent) -> bool:
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
        self._saved: int | None = None  # the cursor as last written; None before the start
        self._fed = 0  # grouped: read from the log up to here
        self._seeded = False
        self._buried: list[tuple[Sequence[int], str, float]] = []  # dead letters to write
        self._urgent: deque[AlertEvent] = deque()
        self._sent_direct: set[str] = set()  # ids of urgent events sent, skipped in the log
        self.store_error: str | None = None

    def notify(self) -> None:
        """New events were written; called from the loop thread after each commit."""
        self._wake.set()
        self.idle.clear()

    def urgent(self, doc: AlertEvent) -> None:
        """Send ``doc`` now, though it is not in the log (it cannot be written yet)."""
        if self.route(doc) and self.stats.disabled is None:
            self._urgent.append(doc)
            self.notify()

    async def run(self) -> None:
        """Deliver forever (until cancelled or the target is gone); a failing state file
        is waited out, never the end of delivery."""
        try:
            grouper = Grouper(self.group) if self.group is not None else None
            while True:
                try:
                    self._start_cursor()
                    if grouper is None:
                        await self._one_by_one()
                    else:
                        await self._grouped(grouper)
                    return
                except StoreError as exc:
                    self._store_failed(exc)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(STORE_RETRY):
                            await self._wake.wait()
                    self._wake.clear()
                    await self._send_urgent()
        finally:
            if self._started:
                await self.sink.close()

    def _start_cursor(self) -> None:
        if self._saved is not None:
            return
        name = self.sink.name
        stored = self.store.cursor(name)
        if stored is None:
            # A new sink starts with what happens from now on, not years of history; after a
            # wait for a file that could not be opened, from when it opened (what was decided
            # meanwhile, held and then written, is for this sink too).
            stored = self.store.opened_seq if self.store_error else self.store.last_seq()
            self.store.advance(name, stored)
        self._position = self._fed = self._saved = stored

    def _save(self, seq: int) -> bool:
        """Write the dead letters and the cursor; on failure keep them to write later."""
        name = self.sink.name
        try:
            while self._buried:
                seqs, reason, at = self._buried[0]
                self.store.bury(name, seqs, reason, at)
                self._buried.pop(0)
            self.store.advance(name, seq)
        except StoreError as exc:
            self._store_failed(exc)
            return False
        self._saved = seq
        self._store_ok()
        return True

    def _store_failed(self, exc: StoreError) -> None:
        if self.store_error is None:
            event(log, logging.WARNING, "state_store_failing", sink=self.sink.name,
                  error=str(exc))  # fmt: skip
        self.store_error = str(exc)

    def _store_ok(self) -> None:
        if self.store_error is not None:
            event(log, logging.INFO, "state_store_recovered", sink=self.sink.name)
            self.store_error = None

    async def _send_urgent(self) -> None:
        while self._urgent:
            doc = self._urgent[0]
            outcome = await self._deliver(self._sender(doc), self.clock())
            self._urgent.popleft()
            if outcome is None and self.group is None:
                self._sent_direct.add(doc.id)

    def _sent_already(self, doc: AlertEvent) -> bool:
        """True for an urgent event sent before the log reached it (once)."""
        ident = doc.id
        if ident in self._sent_direct:
            self._sent_direct.discard(ident)
            return True
        return False

    async def _one_by_one(self) -> None:
        name = self.sink.name
        try:
            while True:
                self._wake.clear()
                await self._send_urgent()
                # Re-read: `vcmon outbox retry` may have moved it back from another process.
                stored = self.store.cursor(name) or 0
                if stored != self._saved:
                    self._position = self._saved = stored
                elif self._position != self._saved:
                    self._save(self._position)  # a save that failed before
                batch = self.store.entries(self._position, BATCH)
                self._store_ok()
                self._count_pending()
                if not batch:
                    self.idle.set()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RECHECK):
                            await self._wake.wait()
                    continue
                last_save = time.monotonic()
                for doc in batch:
                    outcome = None
                    if self.route(doc) and not self._sent_already(doc):
                        outcome = await self._deliver(self._sender(doc), doc.at)
                    if isinstance(outcome, Gone):
                        self._disable(outcome)
                        return
                    self._position = doc.seq
                    self._count_pending()
                    if isinstance(outcome, Reject):
                        self._buried.append(((self._position,), outcome.reason, self.clock()))
                        self._save(self._position)
                    elif time.monotonic() - last_save >= SAVE_EVERY:
                        self._save(self._position)
                        last_save = time.monotonic()
                if self._position != self._saved:
                    self._save(self._position)
        finally:
            if self._position != self._saved:  # stopped mid-batch: keep what was acknowledged
                self._save(self._position)

    async def _grouped(self, grouper: Grouper) -> None:
        name = self.sink.name
        self._grouper = grouper
        saved = self._saved or 0
        if not self._seeded:
            now = self.clock()
            for doc in self.store.open_events():
                # Notified before the restart; an acknowledged one stays unrepeated.
                if doc.seq <= saved and self.route(doc):
                    grouper.seed(doc.to_json(), now)
            self._seeded = True
        while True:
            self._wake.clear()
            await self._send_urgent()
            cursor = self.store.cursor(name) or 0
            if cursor < (self._saved or 0):  # moved back by `vcmon outbox retry`: read again
                self._fed = cursor
                self._saved = cursor
            batch = self.store.entries(self._fed, BATCH)
            self._store_ok()
            now = self.clock()
            for doc in batch:
                if self.route(doc):
                    # The wait runs from the decision: one read after a restart or a long
                    # retry of another group is not held back again.
                    grouper.add(doc.to_json(), doc.seq, min(now, doc.at))
                self._fed = self._position = doc.seq
            self._count_pending()
            for note in grouper.due(now):
                outcome = await self._deliver(self._group_sender(note), note.due_at)
                if isinstance(outcome, Gone):
                    self._disable(outcome)
                    return
                if isinstance(outcome, Reject):
                    self._buried.append((note.seqs, outcome.reason, self.clock()))
                grouper.sent(note, self.clock())
            # Done up to just before the oldest event still waiting in a group.
            low = grouper.low_water()
            done = self._fed if low is None else min(self._fed, low - 1)
            if done != self._saved or self._buried:
                self._save(done)
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
        try:
            owed = max(0, self.store.last_seq() - self._position)
        except StoreError:
            return  # keep the last count while the file cannot be read
        if self._grouper is not None:
            overdue, self.stats.held = self._grouper.waiting(self.clock())
            owed += overdue
        self.stats.pending = owed

    def _sender(self, doc: AlertEvent) -> Callable[[], Awaitable[None]]:
        # Sinks take the contract's JSON object: what goes on the wire stays as it was.
        body = doc.to_json()
        return lambda: self.sink.send(body)

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
