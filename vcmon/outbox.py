"""Delivery from the durable event log to each sink: own cursor, in order, at least once.

One ``Dispatcher`` per sink reads the events after its cursor and sends them one by one;
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from vcmon.alerts.store import Store
from vcmon.logs import event
from vcmon.sinks.base import Gone, Reject, Retry, Sink, SinkError

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
    pending: int = 0
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
    ) -> None:
        self.sink = sink
        self.store = store
        self.route = route
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.clock = clock
        self.stats = SinkStats()
        self.on_latency = on_latency
        self._wake = asyncio.Event()
        self._started = False

    def notify(self) -> None:
        """New events were written; called from the loop thread after each commit."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever (until cancelled or the target is gone)."""
        name = self.sink.name
        cursor = self.store.cursor(name)
        if cursor is None:
            # A new sink starts with what happens from now on, not years of history.
            cursor = self.store.last_seq()
            self.store.advance(name, cursor)
        saved = cursor
        try:
            while True:
                self._wake.clear()
                # Re-read: `vcmon outbox retry` may have moved it back from another process.
                cursor = saved = self.store.cursor(name) or 0
                batch = self.store.entries(cursor, BATCH)
                self.stats.pending = max(0, self.store.last_seq() - cursor)
                if not batch:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RECHECK):
                            await self._wake.wait()
                    continue
                last_save = time.monotonic()
                for decided, doc in batch:
                    outcome = await self._deliver(doc, decided) if self.route(doc) else None
                    if isinstance(outcome, Gone):
                        self.stats.disabled = outcome.reason
                        event(log, logging.ERROR, "sink_disabled", sink=name,
                              reason=outcome.reason, detail=outcome.detail)  # fmt: skip
                        return
                    cursor = int(doc["seq"])
                    self.stats.pending = max(0, self.stats.pending - 1)
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
            if self._started:
                await self.sink.close()

    async def _deliver(self, doc: Mapping[str, Any], decided: float) -> SinkError | None:
        """Send until acknowledged; the error that ended trying (Reject, Gone), or None."""
        attempt = 0
        while True:
            try:
                if not self._started:
                    await self.sink.start()
                    self._started = True
                await self.sink.send(doc)
            except Retry as exc:
                self._failed(exc, attempt)
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
            self._succeeded(decided)
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
