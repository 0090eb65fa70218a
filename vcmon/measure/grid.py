"""The shared time grid: round starts, sends, reads and deadlines fall on points ``tick`` apart.

Every due thing at one grid point shares one event-loop wake-up (see the scheduler's module
docstring for why that is what an attempt costs at low rates). The scheduler picks the tick
when it starts and sets it on the shared ``Grid``; anything that batches on the grid (the ICMP
engine) follows it, so no probe kind is known to the scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

SLACK: Final = 1e-6  # in ticks: a time this close to a grid point is on it (float noise)


def grid_up(t: float, tick: float) -> float:
    """The first grid point at or after ``t`` (``t`` itself without a grid, ``tick`` 0)."""
    if tick <= 0.0:
        return t
    return math.ceil(t / tick - SLACK) * tick


def grid_after(t: float, tick: float) -> float:
    """The first grid point strictly after ``t``."""
    return (math.floor(t / tick + SLACK) + 1) * tick


def send_time(start: float, i: int, spacing: float, tick: float) -> float:
    """Loop time at which attempt ``i`` (from 0) of a round started at ``start`` is due.

    The first goes at once. When the spacing is a whole number of ticks the others fall on
    the grid, counted from the grid point the round started on (the scheduler starts rounds
    on one), so the round adds no wake-ups of its own and its spacing stays exact. Any other
    spacing is kept as configured, off the grid.
    """
    if i == 0:
        return start
    steps = spacing / tick if tick > 0.0 else 0.0
    if steps < 1.0 - SLACK or abs(steps - round(steps)) > SLACK:
        return start + i * spacing
    return (math.floor(start / tick + SLACK) + i * round(steps)) * tick


def send_times(start: float, count: int, spacing: float, tick: float) -> list[float]:
    """send_time() of each attempt of a round."""
    return [send_time(start, i, spacing, tick) for i in range(count)]


class Grid:
    """The grid in use, shared by the scheduler (which sets it) and whoever batches on it."""

    def __init__(self, tick: float | None = None) -> None:
        self._tick = tick
        self._followers: list[Callable[[float], None]] = []

    @property
    def tick(self) -> float | None:
        """Seconds between grid points; None until the scheduler has chosen, 0 for none."""
        return self._tick

    def set(self, tick: float) -> None:
        """Adopt ``tick`` and tell every follower."""
        self._tick = tick
        for follow in self._followers:
            follow(tick)

    def follow(self, on_tick: Callable[[float], None]) -> None:
        """Call ``on_tick`` with the grid now (if chosen) and whenever it changes."""
        self._followers.append(on_tick)
        if self._tick is not None:
            on_tick(self._tick)
