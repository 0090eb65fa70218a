"""Runs every (endpoint, probe) pair's rounds on a fixed cadence, spread over the interval.

Knows no probe kind: it calls ``Probe.run_round`` and summarises with ``observe``. Round
starts fall on the shared grid (vcmon.measure.grid; the anchor and each pair's phase are
quantised to it), which the scheduler sets when it starts; whatever batches on the grid (the
ICMP engine sends, reads and ends rounds on it) follows it, so everything due at one grid
point shares one event-loop wake-up.

Why: at low rates an echo's CPU cost is the wake-ups around it, not its packets. After the
loop has slept some tens of ms, the first round it handles costs ~0.4–0.7 ms of CPU on our
machines (the interpreter's working set has left the caches), each further round in the same
wake-up ~0.09 ms. So the grid is as coarse as the load allows: by default the coarsest of
TICKS that divides the echo spacing and puts at most ROUNDS_PER_TICK round starts on a grid
point, which bounds how long the last of them waits (the scheduler lag).
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Protocol

from vcmon.clock import Clock, SystemClock
from vcmon.config import Endpoint
from vcmon.logs import event
from vcmon.measure.grid import Grid, grid_up
from vcmon.measure.probes.base import Probe, RoundResult, RoundSettings
from vcmon.measure.resolver import ResolveError, Resolver, ip_literal
from vcmon.measure.results import EndpointRecord, Results
from vcmon.measure.stats import Observation, observe

log = logging.getLogger(__name__)

TICKS: Final = (0.2, 0.1, 0.05, 0.04, 0.02, 0.01)  # s, coarsest first
ROUNDS_PER_TICK: Final = 50  # round starts sharing a grid point, on average, at most


class LagObserver(Protocol):
    """A histogram the scheduler feeds (prometheus_client's Histogram is one)."""

    def observe(self, amount: float, /) -> None: ...


class SkipCounter(Protocol):
    """A counter the scheduler adds to (prometheus_client's Counter is one)."""

    def inc(self, amount: float = 1, /) -> None: ...


class SchedulerMetrics(Protocol):
    """What the scheduler reports about itself; the daemon hands it vcmon.http.metrics'
    SelfMetrics, so measurement never imports the HTTP side."""

    @property
    def scheduler_lag(self) -> LagObserver: ...

    @property
    def rounds_skipped(self) -> SkipCounter: ...


_UNKNOWN = "?"  # not yet looked at; ip_literal never returns it


def phase(endpoint_id: str, interval: float) -> float:
    """Stable offset of an endpoint's rounds within the interval.

    A hash of the id, so an endpoint keeps its slot across restarts and inventory edits,
    and 231 endpoints land spread over the interval instead of all at second zero.
    """
    return (zlib.crc32(endpoint_id.encode()) / 2**32) * interval


def auto_tick(endpoints: Iterable[Endpoint]) -> float:
    """The grid for ``endpoints``: the coarsest of TICKS with at most ROUNDS_PER_TICK round
    starts per grid point that divides the most common echo spacing (rounds with another
    spacing send on their own timers, off the grid)."""
    rate = 0.0
    spacings: Counter[float] = Counter()
    for ep in endpoints:
        rate += 1.0 / ep.timing.interval
        if ep.timing.spacing > 0:
            spacings[ep.timing.spacing] += 1
    fitting = [t for t in TICKS if rate * t <= ROUNDS_PER_TICK * (1 + 1e-9)] or [TICKS[-1]]
    if spacings:
        spacing = spacings.most_common(1)[0][0]
        for tick in fitting:
            steps = spacing / tick
            if steps >= 1.0 - 1e-6 and abs(steps - round(steps)) < 1e-6:
                return tick
    return fitting[0]


def slot(endpoint_id: str, interval: float, tick: float) -> float:
    """The endpoint's phase rounded to the nearest grid point, within [0, interval).

    Moves a round start by at most half a tick, so rounds stay spread over the interval.
    """
    offset = phase(endpoint_id, interval)
    if tick <= 0.0:
        return offset
    offset = round(offset / tick) * tick
    return offset if offset < interval - tick * 1e-6 else 0.0


def slot_time(anchor: float, offset: float, interval: float, n: int, tick: float) -> float:
    """Loop time of round ``n`` (from 0) of an endpoint at ``offset``: on the grid.

    With an interval that is a whole number of ticks this is exact; otherwise each start is
    rounded up to the grid separately, so the cadence does not drift.
    """
    return grid_up(anchor + offset + n * interval, tick)


def rounds_missed(due: float, interval: float, now: float) -> int:
    """Rounds to skip so the next one is not already overdue (0 when ``due`` is ahead)."""
    return math.ceil((now - due) / interval) if now > due else 0


class Scheduler:
    """Owns one task per (endpoint, probe) record; each sleeps to its next slot, probes,
    records."""

    def __init__(
        self,
        results: Results,
        probes: Mapping[str, Probe],
        resolver: Resolver,
        self_metrics: SchedulerMetrics | None = None,
        clock: Clock | None = None,
        tick: float | None = None,
        on_round: Callable[[EndpointRecord, Observation], None] | None = None,
        grid: Grid | None = None,
    ) -> None:
        self._results = results
        self._probes = probes
        self._resolver = resolver
        self._metrics = self_metrics
        self._clock = clock or SystemClock()
        # The alert runtime: the engine decides (and writes) the state the record shows.
        self._on_round = on_round
        # The grid; None: auto_tick() of the inventory when run() starts. 0: exact phases.
        self.tick = tick
        self.grid = grid or Grid()  # shared with the probes' context: set when run() starts
        self._settings: dict[tuple[str, str], tuple[object, RoundSettings]] = {}
        # Sleepers by the grid point they wake at: one loop timer per grid point, not per
        # round (a timer, its context and its arguments would live ~10 s for each round).
        self._wheel: dict[float, list[asyncio.Future[None]]] = {}
        self._literals: dict[str, str | None] = {}
        # Raw lag samples for benchmarks; the histogram is what operators see.
        self.lag_samples: deque[float] = deque(maxlen=200_000)
        self.rounds_done = 0

    async def run(self) -> None:
        """Probe every endpoint until cancelled."""
        loop = asyncio.get_running_loop()
        records = [rec for rec in self._results if rec.probe in self._probes]
        unavailable = sorted({rec.probe for rec in self._results} - self._probes.keys())
        if unavailable:  # the daemon could not start them; their records stay unobserved
            event(log, logging.WARNING, "probes_unavailable", probes=",".join(unavailable))
        if self.tick is None:
            self.tick = auto_tick(rec.endpoint for rec in records)
        tick = self.tick
        self.grid.set(tick)  # the probes' sends, reads and deadlines on the same grid
        log.debug("scheduler grid %g s for %d records", tick, len(records))
        anchor = grid_up(loop.time(), tick)
        async with asyncio.TaskGroup() as tg:
            for rec in records:
                tg.create_task(
                    self._endpoint_loop(rec, anchor, tick),
                    name=f"probe:{rec.endpoint.id}:{rec.probe}",
                )

    async def _endpoint_loop(self, rec: EndpointRecord, anchor: float, tick: float) -> None:
        loop = asyncio.get_running_loop()
        ep = rec.endpoint
        interval = ep.timing.interval
        offset = slot(rec.slot_key, interval, tick)
        n = 0
        due = slot_time(anchor, offset, interval, n, tick)
        while True:
            if due > loop.time():
                await self._sleep_until(loop, due)
            lag = loop.time() - due
            self.lag_samples.append(lag)
            if self._metrics is not None:
                self._metrics.scheduler_lag.observe(lag)
            await self.run_once(rec)
            # Keep the cadence: the next slot is one interval on, skipping slots we overran.
            n += 1
            due = slot_time(anchor, offset, interval, n, tick)
            missed = rounds_missed(due, interval, loop.time())
            if missed:
                n += missed
                due = slot_time(anchor, offset, interval, n, tick)
                if self._metrics is not None:
                    self._metrics.rounds_skipped.inc(missed)

    def _sleep_until(self, loop: asyncio.AbstractEventLoop, when: float) -> asyncio.Future[None]:
        """A future done at loop time ``when`` exactly (asyncio.sleep would re-read the clock
        and land a few µs after the engine's tick)."""
        waiter: asyncio.Future[None] = loop.create_future()
        sleepers = self._wheel.get(when)
        if sleepers is None:
            sleepers = self._wheel[when] = []
            loop.call_at(when, self._wake, when)
        sleepers.append(waiter)
        return waiter

    def _wake(self, when: float) -> None:
        for waiter in self._wheel.pop(when, ()):
            if not waiter.done():  # not cancelled meanwhile
                waiter.set_result(None)

    def _round_settings(self, rec: EndpointRecord) -> RoundSettings:
        t = rec.endpoint.timing
        cached = self._settings.get(rec.key)
        if cached is None or cached[0] is not t:  # new endpoint, or reloaded with new timing
            cached = self._settings[rec.key] = (
                t,
                RoundSettings(count=t.count, spacing=t.spacing, timeout=t.timeout),
            )
        return cached[1]

    async def run_once(self, rec: EndpointRecord) -> None:
        """One round of one (endpoint, probe) pair, folded into its record."""
        ep: Endpoint = rec.endpoint
        probe = self._probes[rec.probe]
        started = self._clock.time()
        ip = self._literals.get(ep.address, _UNKNOWN)
        if ip is _UNKNOWN:  # first round of this address: is it an IP literal?
            ip = self._literals[ep.address] = ip_literal(ep.address)
        try:
            if ip is None:
                ip = await self._resolver.resolve(ep.address)
        except ResolveError as exc:
            result = RoundResult(echoes=(), failure=f"resolve: {exc}")
        else:
            rec.resolved = ip
            result = await probe.run_round(ip, self._round_settings(rec), rec.tally)
        obs = observe(result, started, probe.voice)
        rec.record(obs)
        if self._on_round is not None:
            self._on_round(rec, obs)
        self.rounds_done += 1
