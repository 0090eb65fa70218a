"""The console sink: one plain line per event when not on a terminal, a headline per group."""

from __future__ import annotations

import io
import re
from typing import Any

from vcmon.delivery.grouping import GroupPolicy, Notification
from vcmon.delivery.sinks.console import ConsoleConfig, ConsoleSink, format_line

TIME = r"\d\d:\d\d:\d\d"


def ev(seq: int, status: str = "firing", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"e{seq}", "seq": seq, "alert_id": f"a{seq}", "status": status,
        "kind": "endpoint_down", "severity": "critical",
        "endpoint": {"id": f"xa-{seq}", "district": "Cô Tô"},
        "summary": f"UBND xã {seq}: mất kết nối", **extra,
    }  # fmt: skip


async def test_a_line_per_event_without_colour_off_a_terminal() -> None:
    out = io.StringIO()
    sink = ConsoleSink(ConsoleConfig(), stream=out)
    await sink.send(ev(1, affected=["c1", "c2"]))
    line = out.getvalue()
    assert re.fullmatch(
        TIME + r" FIRING   critical endpoint_down xa-1: UBND xã 1: mất kết nối \[2 affected\]\n",
        line,
    )
    assert "\033" not in line


def test_colour_by_severity_and_green_on_resolve() -> None:
    assert format_line(ev(1), colour=True).startswith("\033[1;31m")
    assert format_line(ev(1, "resolved"), colour=True).startswith("\033[32m")
    assert format_line(ev(1, severity="warning"), colour=True).startswith("\033[33m")


async def test_a_group_is_a_headline_then_its_alerts() -> None:
    out = io.StringIO()
    sink = ConsoleSink(ConsoleConfig(group=GroupPolicy()), stream=out)
    note = Notification(
        id="grp-1", group=(("district", "Cô Tô"), ("kind", "endpoint_down")),
        changes=(ev(1), ev(2, "resolved")), firing=(ev(3),), seqs=(1, 2), due_at=0.0,
    )  # fmt: skip
    await sink.send_group(note)
    lines = out.getvalue().splitlines()
    assert lines[0] == "── Cô Tô · endpoint_down: 2 changed, 1 still firing"
    assert [line.split()[1] for line in lines[1:]] == ["FIRING", "RESOLVED", "FIRING"]
    out.truncate(0)
    out.seek(0)
    await sink.send_group(Notification("grp-2", note.group, (), (ev(3),), (), 0.0))
    assert out.getvalue().splitlines()[0] == "── Cô Tô · endpoint_down: still firing"


def test_the_console_groups_only_when_told() -> None:
    assert ConsoleConfig().grouping() is None
    assert ConsoleConfig(group=False).grouping() is None
    assert ConsoleConfig(group=True).grouping() == GroupPolicy()
    assert ConsoleConfig(group=GroupPolicy(wait=5)).grouping() == GroupPolicy(wait=5)
