"""The grid that rounds, sends and reads share: pure phase and grid logic as table tests, and
the scheduler starting real (fake-probe) rounds on it."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from vcmon.config import Endpoint, Level, Timing
from vcmon.measure.grid import Grid, grid_after, grid_up, send_time, send_times
from vcmon.measure.probes.base import ProbeContext, RoundResult, RoundSettings, Tally
from vcmon.measure.probes.icmp import ENGINE, IcmpEngine, IcmpProbe
from vcmon.measure.resolver import Resolver
from vcmon.measure.results import Results
from vcmon.measure.scheduler import (
    ROUNDS_PER_TICK,
    TICKS,
    Scheduler,
    auto_tick,
    phase,
    rounds_missed,
    slot,
    slot_time,
)


def room(i: int, **timing: float) -> Endpoint:
    return Endpoint(id=f"room-{i}", name=f"room {i}", address=f"127.0.0.{i % 250 + 1}",
                    district="d", level=Level.COMMUNE,
                    timing=Timing.model_validate(timing))  # fmt: skip


# -- grid arithmetic (vcmon.measure.grid) -----------------------------------------------


@pytest.mark.parametrize(
    ("t", "tick", "up", "after"),
    [
        (10.0, 0.2, 10.0, 10.2),  # on a grid point: up stays, after moves on
        (10.01, 0.2, 10.2, 10.2),
        (10.19, 0.2, 10.2, 10.2),
        (10.2 - 1e-10, 0.2, 10.2, 10.4),  # float noise below a point counts as on it
        (10.2 + 1e-10, 0.2, 10.2, 10.4),  # and above it too
        (0.0, 0.05, 0.0, 0.05),
        (1234.5678, 0.02, 1234.58, 1234.58),
        (5.3, 0.0, 5.3, None),  # no grid: times stay as they are
    ],
)
def test_grid_up_and_after(t: float, tick: float, up: float, after: float | None) -> None:
    assert grid_up(t, tick) == pytest.approx(up, abs=1e-9)
    if after is not None:
        assert grid_after(t, tick) == pytest.approx(after, abs=1e-9)


@pytest.mark.parametrize(
    ("start", "count", "spacing", "tick", "expected"),
    [
        # a spacing of whole ticks: on the grid, counted from the point the round started on
        (100.0003, 5, 0.2, 0.1, [100.0003, 100.2, 100.4, 100.6, 100.8]),
        (100.0003, 3, 0.2, 0.05, [100.0003, 100.2, 100.4]),
        (100.0503, 3, 0.2, 0.02, [100.0503, 100.24, 100.44]),
        # one tick apart is whole ticks too
        (7.0, 3, 0.1, 0.1, [7.0, 7.1, 7.2]),
        # any other spacing is kept exactly, off the grid
        (100.0003, 3, 0.25, 0.1, [100.0003, 100.2503, 100.5003]),
        (100.0003, 3, 0.05, 0.1, [100.0003, 100.0503, 100.1003]),  # finer than the grid
        (100.0003, 3, 0.0, 0.1, [100.0003] * 3),  # a burst stays a burst
        # no grid at all
        (100.0003, 3, 0.2, 0.0, [100.0003, 100.2003, 100.4003]),
        (5.0, 1, 0.2, 0.1, [5.0]),
    ],
)
def test_send_times(
    start: float, count: int, spacing: float, tick: float, expected: list[float]
) -> None:
    got = send_times(start, count, spacing, tick)
    assert got == pytest.approx(expected, abs=1e-9)
    assert [send_time(start, i, spacing, tick) for i in range(count)] == got


def test_grid_points_are_the_same_floats_everywhere() -> None:
    # Timers at the same point must compare equal so asyncio runs them in one iteration and
    # the scheduler's wheel finds its slot: every path computes k × tick.
    tick = 0.1
    due = slot_time(1000.0, 0.3, 10.0, 7, tick)
    assert send_time(due + 0.0004, 2, 0.2, tick) == grid_up(due + 0.4, tick)
    assert grid_after(due + 0.0004, tick) == grid_up(due + 0.05, tick)


# -- phases and round starts ----------------------------------------------------------------


def test_phase_is_a_stable_hash_within_the_interval() -> None:
    phases = [phase(f"room-{i}", 10.0) for i in range(231)]
    assert phases == [phase(f"room-{i}", 10.0) for i in range(231)]
    assert all(0.0 <= p < 10.0 for p in phases)
    assert len({round(p, 6) for p in phases}) == 231
    # spread over the interval: every second of it has rounds starting
    assert {math.floor(p) for p in phases} == set(range(10))


@pytest.mark.parametrize(("interval", "tick"), [(10.0, 0.2), (10.0, 0.05), (1.0, 0.3), (7.5, 0.1)])
def test_slot_is_the_phase_rounded_to_the_grid(interval: float, tick: float) -> None:
    for i in range(500):
        p, s = phase(f"ep{i}", interval), slot(f"ep{i}", interval, tick)
        assert 0.0 <= s < interval
        assert s / tick == pytest.approx(round(s / tick), abs=1e-9)
        # at most half a tick away, going round the end of the interval
        assert min(abs(s - p), interval - abs(s - p)) <= tick / 2 + 1e-9


def test_slot_without_a_grid_is_the_phase() -> None:
    assert slot("x", 10.0, 0.0) == phase("x", 10.0)


@pytest.mark.parametrize(
    ("anchor", "offset", "interval", "n", "tick", "expected"),
    [
        (1000.0, 0.4, 10.0, 0, 0.2, 1000.4),
        (1000.0, 0.4, 10.0, 3, 0.2, 1030.4),
        # an interval of no whole number of ticks: each start rounded up, no drift
        (1000.0, 0.0, 1.05, 1, 0.1, 1001.1),
        (1000.0, 0.0, 1.05, 2, 0.1, 1002.1),
        (1000.0, 0.0, 1.05, 20, 0.1, 1021.0),
        (1000.0, 0.123, 10.0, 2, 0.0, 1020.123),  # no grid
    ],
)
def test_slot_time(
    anchor: float, offset: float, interval: float, n: int, tick: float, expected: float
) -> None:
    assert slot_time(anchor, offset, interval, n, tick) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("due", "interval", "now", "missed"),
    [
        (100.0, 10.0, 99.0, 0),  # ahead
        (100.0, 10.0, 100.0, 0),  # exactly due
        (100.0, 10.0, 100.5, 1),  # overran into it: skip one
        (100.0, 10.0, 110.0, 1),
        (100.0, 10.0, 110.1, 2),
    ],
)
def test_rounds_missed(due: float, interval: float, now: float, missed: int) -> None:
    assert rounds_missed(due, interval, now) == missed
    assert due + missed * interval >= now


@pytest.mark.parametrize(
    ("endpoints", "timing", "expected"),
    [
        # the coarsest grid for few endpoints: 23 round starts/s, 4.6 per point
        (231, {}, 0.2),
        (2500, {}, 0.2),  # 250 rounds/s: 50 per point
        (5000, {}, 0.1),
        (10000, {}, 0.05),
        (20000, {}, 0.02),  # 0.025 would not divide as many spacings
        (10**6, {}, 0.01),  # beyond the finest: the finest
        # the grid divides the (most common) spacing
        (231, {"spacing": 0.25}, 0.05),
        (231, {"spacing": 0.3}, 0.1),
        (231, {"spacing": 0.05}, 0.05),
        (231, {"spacing": 0.03}, 0.01),
        (231, {"spacing": 0.013}, 0.2),  # nothing divides it: by rate alone
        (231, {"interval": 1.0, "timeout": 0.1}, 0.2),  # 231 rounds/s: 46 per point
        (231, {"interval": 1.0, "timeout": 0.1, "spacing": 0.1}, 0.1),
        (600, {"interval": 1.0, "count": 2, "timeout": 0.5}, 0.05),
    ],
)
def test_auto_tick(endpoints: int, timing: dict[str, float], expected: float) -> None:
    assert auto_tick([room(0, **timing)] * endpoints) == expected
    assert expected in TICKS


def test_auto_tick_follows_the_most_common_spacing() -> None:
    rooms = [room(i) for i in range(200)] + [room(1000 + i, spacing=0.25) for i in range(31)]
    assert auto_tick(rooms) == 0.2
    assert auto_tick([]) == TICKS[0]
    assert 10000 / 10.0 * auto_tick([room(0)] * 10000) <= ROUNDS_PER_TICK


# -- the scheduler on the grid --------------------------------------------------------------


class FakeProbe:
    """Answers every round at once and notes when each started."""

    name = "icmp"
    voice = True

    def __init__(self) -> None:
        self.starts: dict[str, list[float]] = {}

    async def run_round(self, address: str, settings: RoundSettings, tally: Tally) -> RoundResult:
        self.starts.setdefault(address, []).append(asyncio.get_running_loop().time())
        return RoundResult(())


async def test_rounds_start_on_grid_points_at_their_cadence() -> None:
    rooms = [room(i, interval=0.5, count=1, timeout=0.1) for i in range(12)]
    probe = FakeProbe()
    ctx = ProbeContext()
    spare = IcmpProbe.create(ctx)  # its engine never started: it only follows the grid
    scheduler = Scheduler(
        Results(rooms), {"icmp": probe, "spare": spare}, Resolver(), tick=0.05, grid=ctx.grid
    )
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(1.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spare.engine.tick == 0.05  # the engine's sends and reads share the scheduler's grid
    assert len(probe.starts) == 12
    for address, starts in probe.starts.items():
        assert len(starts) >= 2, address
        for t in starts:  # a grid point, give or take how late the loop woke
            assert -1e-6 < t / 0.05 - round(t / 0.05) < 0.4, (address, t)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps == pytest.approx([0.5] * len(gaps), abs=0.01), address
    # 12 rooms but few distinct grid points: round starts share their wake-ups
    assert len({round(t / 0.05) for s in probe.starts.values() for t in s}) < 12 * 2
    assert max(scheduler.lag_samples) < 0.05


async def test_auto_grid_is_chosen_at_run_and_given_to_the_engine() -> None:
    rooms = [room(i, interval=0.5, count=1, timeout=0.1) for i in range(5)]
    ctx = ProbeContext()
    scheduler = Scheduler(
        Results(rooms), {"icmp": FakeProbe(), "spare": IcmpProbe.create(ctx)}, Resolver(),
        grid=ctx.grid,
    )  # fmt: skip
    assert scheduler.tick is None
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scheduler.tick == auto_tick(rooms) == 0.2
    engine = ctx.existing(ENGINE, IcmpEngine)
    assert engine is not None
    assert engine.tick == 0.2
    assert ctx.grid.tick == 0.2


def test_grid_followers_get_the_tick_now_and_on_change() -> None:
    grid = Grid()
    seen: list[float] = []
    grid.follow(seen.append)
    assert seen == []
    assert grid.tick is None
    grid.set(0.1)
    late: list[float] = []
    grid.follow(late.append)
    grid.set(0.05)
    assert (seen, late) == ([0.1, 0.05], [0.1, 0.05])
