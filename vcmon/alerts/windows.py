"""Recurring maintenance windows: weekly time ranges on the wall clock of a time zone. Pure.

A range whose end is not after its start runs past midnight: "sat 22:00–02:00" covers
Saturday 22:00 to Sunday 02:00. Start is inclusive, end exclusive; "24:00" (``time.max``)
is the end of the day. Ranges are wall-clock times, so in a zone with daylight saving a
range opens when the clock first shows its start: at the jump if the start falls in the
skipped hour, and a range over the repeated hour may open twice.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Iterator, Sequence
from functools import lru_cache

from vcmon.alerts.model import Target, matches
from vcmon.config.alerts import DAYS, MaintenanceWindow, WeeklyRange

HORIZON = 8 * 86400.0  # s: every weekly range opens or closes within a week, plus slack
_MIDNIGHT = dt.time(0)


@lru_cache(maxsize=16)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _local(now: float, tz: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, _zone(tz))


def in_range(rng: WeeklyRange, local: dt.datetime) -> bool:
    """True when the wall-clock time of ``local`` falls inside ``rng``."""
    t = local.time()
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local.weekday() - 1) % 7]
    if rng.end == dt.time.max:  # 24:00: the last microsecond of the day is inside too
        return today in rng.days and t >= rng.start
    if rng.start < rng.end:
        return today in rng.days and rng.start <= t < rng.end
    # Past midnight: the evening part belongs to the listed day, the morning to the next.
    return (today in rng.days and t >= rng.start) or (yesterday in rng.days and t < rng.end)


def is_open(window: MaintenanceWindow, now: float, tz: str) -> bool:
    """True while ``window`` is open at epoch time ``now``."""
    local = _local(now, tz)
    return any(in_range(rng, local) for rng in window.weekly)


def active_windows(
    windows: Sequence[MaintenanceWindow], target: Target, now: float, tz: str
) -> list[MaintenanceWindow]:
    """The windows that match ``target`` and are open at epoch time ``now``."""
    if not windows:
        return []
    return [w for w in windows if matches(w.match, target) and is_open(w, now, tz)]


def _instants(day: dt.date, wall: dt.time, zone: zoneinfo.ZoneInfo) -> Iterator[float]:
    """Epoch times at which the clock shows ``wall`` on ``day``: one, or two in a repeated
    hour. A skipped wall time yields the instants either side of the jump; neither is a
    change, the jump itself is (see ``_transitions``)."""
    naive = dt.datetime.combine(day, wall)
    for fold in (0, 1):
        yield naive.replace(tzinfo=zone, fold=fold).timestamp()


def _transitions(start: float, end: float, zone: zoneinfo.ZoneInfo) -> Iterator[float]:
    """Epoch seconds in (start, end] at which the UTC offset of ``zone`` changes."""

    def offset(ts: float) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(ts, zone).utcoffset()

    # Offsets change at most once in half a day anywhere, so sampling at that step misses
    # none; bisection then finds the exact second.
    lo, last = float(math.floor(start)), float(math.floor(end))
    while lo < last:
        hi = min(lo + 43200.0, last)
        if offset(lo) != offset(hi):
            a, b = lo, hi
            while b - a > 1:
                mid = float(math.floor((a + b) / 2))
                a, b = (mid, b) if offset(mid) == offset(a) else (a, mid)
            yield b
        lo = hi


def next_change(windows: Sequence[MaintenanceWindow], now: float, tz: str) -> float | None:
    """The first epoch time after ``now`` at which any window opens or closes, within 8 days,
    so the engine re-evaluates exactly then; None when nothing changes in that time."""
    if not windows:
        return None
    zone = _zone(tz)
    limit = now + HORIZON
    today = _local(now, tz).date()
    candidates: set[float] = set(_transitions(now, limit, zone))
    for offset in range(-1, int(HORIZON // 86400) + 2):
        day = today + dt.timedelta(days=offset)
        for window in windows:
            for rng in window.weekly:
                # A range that starts on the day before a listed day can end on it.
                if DAYS[day.weekday()] in rng.days:
                    candidates.update(_instants(day, rng.start, zone))
                if rng.end == dt.time.max:
                    candidates.update(_instants(day, _MIDNIGHT, zone))
                else:
                    candidates.update(_instants(day, rng.end, zone))
    # Every real change is among the candidates; keep the first one where some window's
    # state differs from a second before (all boundaries are whole minutes apart).
    for t in sorted(c for c in candidates if now < c <= limit):
        if any(is_open(w, t, tz) != is_open(w, t - 1.0, tz) for w in windows):
            return t
    return None
