"""Table tests of weekly maintenance windows: ranges, matching, time zones, next change.

The reference week is Monday 2027-01-11 … Sunday 2027-01-17; DST cases use Europe/Berlin
on 2027-03-28 (clock jumps 02:00 → 03:00) and 2027-10-31 (03:00 → 02:00).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from vcmon.alerts.model import Target
from vcmon.alerts.windows import active_windows, in_range, is_open, next_change
from vcmon.config.alerts import MaintenanceWindow, WeeklyRange

HCM = "Asia/Ho_Chi_Minh"
BERLIN = "Europe/Berlin"
DAY_OF = {"mon": 11, "tue": 12, "wed": 13, "thu": 14, "fri": 15, "sat": 16, "sun": 17}

DONG_TIEN = Target(
    "co-to-dong-tien",
    "UBND xã Đồng Tiến",
    "127.10.8.12",
    "Cô Tô",
    "commune",
    {"unit_type": "xã", "link": "microwave"},
)
HONG_GAI = Target(
    "ha-long-hong-gai",
    "UBND phường Hồng Gai",
    "127.10.1.12",
    "Hạ Long",
    "commune",
    {"unit_type": "phường", "link": "fibre"},
)


def rng(spec: str) -> WeeklyRange:
    """'sat,sun 22:00-02:00', or '22:00-02:00' for every day."""
    *days, times = spec.split(" ")
    start, end = times.split("-")
    data: dict[str, Any] = {"start": start, "end": end}
    if days:
        data["days"] = days[0].split(",")
    return WeeklyRange.model_validate(data)


def window(*specs: str, name: str = "w", **match: Any) -> MaintenanceWindow:
    return MaintenanceWindow.model_validate(
        {"name": name, "match": match or {"district": "Cô Tô"}, "weekly": [rng(s) for s in specs]}
    )


def wall(text: str) -> dt.datetime:
    """'sat 22:00' or 'sat 23:59:59.999999' in the reference week, naive."""
    day, clock = text.split(" ")
    return dt.datetime.combine(dt.date(2027, 1, DAY_OF[day]), dt.time.fromisoformat(clock))


def at(text: str, tz: str = HCM) -> float:
    """Epoch time of 'YYYY-MM-DD HH:MM[:SS]' on the wall clock of ``tz``."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


IN_RANGE = [
    # every day, office hours: start inclusive, end exclusive
    ("09:00-17:00", "wed 09:00", True),
    ("09:00-17:00", "wed 08:59:59", False),
    ("09:00-17:00", "wed 16:59:59.999999", True),
    ("09:00-17:00", "wed 17:00", False),
    ("09:00-17:00", "sun 12:00", True),
    # day lists
    ("mon,wed 12:00-13:00", "mon 12:30", True),
    ("mon,wed 12:00-13:00", "tue 12:30", False),
    ("mon,wed 12:00-13:00", "wed 12:00", True),
    ("mon,wed 12:00-13:00", "sun 12:30", False),
    # past midnight: Saturday evening and Sunday morning
    ("sat 22:00-02:00", "sat 21:59", False),
    ("sat 22:00-02:00", "sat 22:00", True),
    ("sat 22:00-02:00", "sat 23:59:59", True),
    ("sat 22:00-02:00", "sun 00:00", True),
    ("sat 22:00-02:00", "sun 01:00", True),
    ("sat 22:00-02:00", "sun 01:59:59", True),
    ("sat 22:00-02:00", "sun 02:00", False),
    ("sat 22:00-02:00", "sat 01:00", False),  # Friday night is not listed
    ("sat 22:00-02:00", "sun 22:30", False),
    ("sat 22:00-02:00", "mon 01:00", False),
    # the morning part belongs to the day after each listed day
    ("fri,sat 23:00-01:00", "sat 00:30", True),
    ("fri,sat 23:00-01:00", "sun 00:30", True),
    ("fri,sat 23:00-01:00", "fri 00:30", False),
    ("fri,sat 23:00-01:00", "sat 23:30", True),
    # sunday into monday: the week wraps
    ("sun 23:00-01:00", "mon 00:30", True),
    ("sun 23:00-01:00", "sun 00:30", False),
    # an end of 00:00 is midnight after the start
    ("sun 23:00-00:00", "sun 23:59", True),
    ("sun 23:00-00:00", "mon 00:00", False),
    # 24:00 is the end of the day, the last instant included
    ("sun 22:00-24:00", "sun 21:59", False),
    ("sun 22:00-24:00", "sun 22:00", True),
    ("sun 22:00-24:00", "sun 23:59:59.999999", True),
    ("sun 22:00-24:00", "mon 00:00", False),
    ("fri 00:00-24:00", "thu 23:59:59", False),
    ("fri 00:00-24:00", "fri 00:00", True),
    ("fri 00:00-24:00", "fri 12:00", True),
    ("fri 00:00-24:00", "sat 00:00", False),
]


@pytest.mark.parametrize(("spec", "local", "inside"), IN_RANGE)
def test_in_range(spec: str, local: str, inside: bool) -> None:
    assert in_range(rng(spec), wall(local)) is inside


def test_in_range_reads_the_wall_clock_of_an_aware_time() -> None:
    saturday_night = dt.datetime(2027, 1, 16, 23, 0, tzinfo=ZoneInfo(HCM))
    assert in_range(rng("sat 22:00-02:00"), saturday_night)
    assert not in_range(rng("sat 22:00-02:00"), saturday_night.astimezone(dt.UTC))


def test_unquoted_yaml_times_and_24_00_parse() -> None:
    # YAML 1.1 reads 22:00 as 1320; the policy turns it back into a time of day.
    parsed = WeeklyRange.model_validate({"days": ["Sunday"], "start": 1320, "end": "24:00"})
    assert parsed.days == ("sun",)
    assert parsed.start == dt.time(22, 0)
    assert parsed.end == dt.time.max


# Cô Tô's Sunday microwave maintenance, 22:00–23:30 local (15:00–16:30 UTC).
CO_TO_SUNDAY = window("sun 22:00-23:30", name="viba Cô Tô")

ACTIVE = [
    ("before", [CO_TO_SUNDAY], DONG_TIEN, "2027-01-17 14:59:59", HCM, []),
    ("at the start", [CO_TO_SUNDAY], DONG_TIEN, "2027-01-17 15:00", HCM, ["viba Cô Tô"]),
    ("inside", [CO_TO_SUNDAY], DONG_TIEN, "2027-01-17 16:29:59", HCM, ["viba Cô Tô"]),
    ("at the end", [CO_TO_SUNDAY], DONG_TIEN, "2027-01-17 16:30", HCM, []),
    ("another district", [CO_TO_SUNDAY], HONG_GAI, "2027-01-17 15:30", HCM, []),
    ("read in UTC it is 15:30", [CO_TO_SUNDAY], DONG_TIEN, "2027-01-17 15:30", "UTC", []),
    ("UTC evening", [CO_TO_SUNDAY], DONG_TIEN, "2027-01-17 22:30", "UTC", ["viba Cô Tô"]),
    (
        "by label",
        [window("22:00-23:00", name="viba", labels={"link": "microwave"})],
        DONG_TIEN,
        "2027-01-13 15:30",
        HCM,
        ["viba"],
    ),
    (
        "label does not fit",
        [window("22:00-23:00", name="viba", labels={"link": "microwave"})],
        HONG_GAI,
        "2027-01-13 15:30",
        HCM,
        [],
    ),
    (
        "by endpoint regex",
        [window("22:00-23:00", name="re", endpoint="~co-to-.*")],
        DONG_TIEN,
        "2027-01-13 15:30",
        HCM,
        ["re"],
    ),
    (
        "two open, in config order",
        [window("21:00-23:00", name="b"), window("22:00-23:00", name="a", level="commune")],
        DONG_TIEN,
        "2027-01-13 15:30",
        HCM,
        ["b", "a"],
    ),
    (
        "one of two open",
        [window("21:00-22:00", name="b"), window("22:00-23:00", name="a", level="commune")],
        DONG_TIEN,
        "2027-01-13 15:30",
        HCM,
        ["a"],
    ),
    ("no windows", [], DONG_TIEN, "2027-01-13 15:30", HCM, []),
]


@pytest.mark.parametrize(
    ("windows", "target", "utc", "tz", "names"),
    [case[1:] for case in ACTIVE],
    ids=[case[0] for case in ACTIVE],
)
def test_active_windows(
    windows: list[MaintenanceWindow], target: Target, utc: str, tz: str, names: list[str]
) -> None:
    assert [w.name for w in active_windows(windows, target, at(utc, "UTC"), tz)] == names


def test_district_pseudo_target_matches_by_district() -> None:
    district = Target("district:co-to", "Cô Tô", "", "Cô Tô", "district")
    assert active_windows([CO_TO_SUNDAY], district, at("2027-01-17 22:30"), HCM) == [CO_TO_SUNDAY]


DST = [
    # 2027-03-28: 02:30 never shows on the clock; the window opens at the jump to 03:00.
    ("sun 02:30-04:00", "2027-03-28 00:59:59", False),
    ("sun 02:30-04:00", "2027-03-28 01:00", True),
    ("sun 02:30-04:00", "2027-03-28 01:59:59", True),
    ("sun 02:30-04:00", "2027-03-28 02:00", False),
    # 2027-10-31: the clock shows 02:00–03:00 twice, so 01:00–02:30 is open twice.
    ("sun 01:00-02:30", "2027-10-30 22:59:59", False),
    ("sun 01:00-02:30", "2027-10-30 23:00", True),
    ("sun 01:00-02:30", "2027-10-31 00:29:59", True),
    ("sun 01:00-02:30", "2027-10-31 00:30", False),
    ("sun 01:00-02:30", "2027-10-31 01:00", True),
    ("sun 01:00-02:30", "2027-10-31 01:29:59", True),
    ("sun 01:00-02:30", "2027-10-31 01:30", False),
    # an ordinary summer evening is two hours ahead of UTC, a winter one one hour
    ("sun 22:00-23:30", "2027-07-18 19:59", False),
    ("sun 22:00-23:30", "2027-07-18 20:00", True),
    ("sun 22:00-23:30", "2027-01-17 20:59", False),
    ("sun 22:00-23:30", "2027-01-17 21:00", True),
    ("sun 22:00-23:30", "2027-01-17 22:30", False),
]


@pytest.mark.parametrize(("spec", "utc", "inside"), DST)
def test_window_in_a_zone_with_daylight_saving(spec: str, utc: str, inside: bool) -> None:
    assert is_open(window(spec), at(utc, "UTC"), BERLIN) is inside


NEXT = [
    # (windows, now, tz, expected next change), times on the wall clock of tz
    ("before it opens", ["sun 22:00-23:30"], "2027-01-15 15:00", HCM, "2027-01-17 22:00"),
    ("at the opening", ["sun 22:00-23:30"], "2027-01-17 22:00", HCM, "2027-01-17 23:30"),
    ("inside", ["sun 22:00-23:30"], "2027-01-17 23:00", HCM, "2027-01-17 23:30"),
    ("at the close", ["sun 22:00-23:30"], "2027-01-17 23:30", HCM, "2027-01-24 22:00"),
    ("past midnight", ["sat 22:00-02:00"], "2027-01-16 23:00", HCM, "2027-01-17 02:00"),
    ("until 24:00", ["sun 22:00-24:00"], "2027-01-17 23:00", HCM, "2027-01-18 00:00"),
    ("every day", ["09:00-17:00"], "2027-01-13 17:00", HCM, "2027-01-14 09:00"),
    ("in UTC", ["sun 22:00-23:30"], "2027-01-15 15:00", "UTC", "2027-01-17 22:00"),
    (
        "two ranges that meet at midnight are one",
        ["sat 22:00-24:00", "sun 00:00-02:00"],
        "2027-01-16 23:00",
        HCM,
        "2027-01-17 02:00",
    ),
    (
        "the earlier of two ranges",
        ["wed 03:00-04:00", "tue 23:00-01:00"],
        "2027-01-12 12:00",
        HCM,
        "2027-01-12 23:00",
    ),
    ("spring jump opens it", ["sun 02:30-04:00"], "2027-03-28 00:00", BERLIN, "2027-03-28 03:00"),
    ("then it closes", ["sun 02:30-04:00"], "2027-03-28 03:00", BERLIN, "2027-03-28 04:00"),
    ("in summer time", ["sun 22:00-23:30"], "2027-07-16 12:00", BERLIN, "2027-07-18 22:00"),
]


@pytest.mark.parametrize(
    ("specs", "now", "tz", "expected"),
    [case[1:] for case in NEXT],
    ids=[case[0] for case in NEXT],
)
def test_next_change(specs: list[str], now: str, tz: str, expected: str) -> None:
    assert next_change([window(*specs)], at(now, tz), tz) == at(expected, tz)


def test_next_change_over_the_repeated_hour() -> None:
    w = [window("sun 01:00-02:30")]
    # 01:00 CEST, 02:30 CEST, the jump back to 02:00 CET, 02:30 CET
    times = [
        "2027-10-30 22:00",
        "2027-10-30 23:00",
        "2027-10-31 00:30",
        "2027-10-31 01:00",
        "2027-10-31 01:30",
    ]
    for now, expected in itertools.pairwise(times):
        assert next_change(w, at(now, "UTC"), BERLIN) == at(expected, "UTC")


def test_next_change_of_several_windows_is_the_earliest() -> None:
    windows = [window("sun 22:00-23:30", name="a"), window("fri 18:00-19:00", name="b")]
    assert next_change(windows, at("2027-01-15 15:00"), HCM) == at("2027-01-15 18:00")
    assert next_change(windows, at("2027-01-15 18:30"), HCM) == at("2027-01-15 19:00")
    assert next_change(windows, at("2027-01-15 19:00"), HCM) == at("2027-01-17 22:00")


def test_next_change_from_a_fractional_now() -> None:
    now = at("2027-01-17 21:59:59") + 0.25
    assert next_change([CO_TO_SUNDAY], now, HCM) == at("2027-01-17 22:00")


@pytest.mark.parametrize(
    "windows",
    [[], [window("00:00-24:00")], [window("mon,tue,wed,thu,fri,sat,sun 00:00-24:00")]],
    ids=["none", "always open", "always open, days listed"],
)
def test_next_change_is_none_when_nothing_changes(windows: list[MaintenanceWindow]) -> None:
    assert next_change(windows, at("2027-01-15 15:00"), HCM) is None


BRUTE = [
    (["sat 22:00-02:00"], HCM, "2027-01-13 10:17"),
    (["mon,thu 08:30-09:15", "fri 23:45-00:15"], HCM, "2027-01-14 09:00"),
    (["sun 02:30-04:00", "sat 23:00-01:30"], BERLIN, "2027-03-26 12:00"),
    (["sun 01:00-02:30"], BERLIN, "2027-10-29 12:00"),
    (["22:00-02:00"], "America/New_York", "2027-03-13 12:00"),
]


@pytest.mark.parametrize(("specs", "tz", "start"), BRUTE)
def test_next_change_agrees_with_a_minute_by_minute_walk(
    specs: list[str], tz: str, start: str
) -> None:
    # Boundaries fall on whole minutes, so walking minute by minute finds every change.
    windows = [window(s, name=s) for s in specs]
    now = at(start, tz)
    for _ in range(6):
        state = [is_open(w, now, tz) for w in windows]
        t = math.floor(now / 60) * 60 + 60.0
        while [is_open(w, t, tz) for w in windows] == state:
            t += 60.0
        assert next_change(windows, now, tz) == t
        now = t
