"""Recurring maintenance windows: weekly time ranges in a time zone. Pure.

A range whose end is not after its start runs past midnight: "sat 22:00–02:00" covers
Saturday 22:00 to Sunday 02:00. Start is inclusive, end exclusive; "24:00" is the end of
the day.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from functools import lru_cache

from vcmon.alerts.model import Target, matches
from vcmon.alerts.policy import DAYS, MaintenanceWindow, WeeklyRange

_HORIZON = dt.timedelta(days=8)


@lru_cache(maxsize=16)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _local(now: float, tz: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, _zone(tz))


def in_range(rng: WeeklyRange, local: dt.datetime) -> bool:
    """True when the local time ``local`` falls inside ``rng``."""
    t = local.time().replace(tzinfo=None)
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local.weekday() - 1) % 7]
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
    """The windows that match ``target`` and are open at ``now``."""
    if not windows:
        return []
    return [w for w in windows if matches(w.match, target) and is_open(w, now, tz)]


def _boundaries(rng: WeeklyRange, day: dt.date, zone: zoneinfo.ZoneInfo) -> list[float]:
    """Epoch times at which ``rng`` opens or closes on local date ``day`` (if it runs then)."""
    if DAYS[day.weekday()] not in rng.days:
        return []
    start = dt.datetime.combine(day, rng.start, zone)
    end_day = day if rng.start < rng.end else day + dt.timedelta(days=1)
    if rng.end == dt.time.max:
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone)
    else:
        end = dt.datetime.combine(end_day, rng.end, zone)
    return [start.timestamp(), end.timestamp()]


def next_change(windows: Sequence[MaintenanceWindow], now: float, tz: str) -> float | None:
    """The next epoch time after ``now`` at which any window opens or closes (within 8 days),
    so the engine re-evaluates exactly then; None without windows."""
    if not windows:
        return None
    zone = _zone(tz)
    today = _local(now, tz).date()
    best: float | None = None
    for offset in range(-1, _HORIZON.days + 1):
        day = today + dt.timedelta(days=offset)
        for window in windows:
            for rng in window.weekly:
                for t in _boundaries(rng, day, zone):
                    if t > now and (best is None or t < best):
                        best = t
    return best
