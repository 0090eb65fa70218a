"""Grouping for human sinks, decided purely: tables of events in time and the notifications
they must turn into."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from vcmon.delivery.grouping import Grouper, GroupPolicy, Notification, group_labels

AM = GroupPolicy()  # Alertmanager's timings: wait 30 s, interval 5 min, repeat 4 h
H4 = 14400


def ev(
    seq: int, alert: str, status: str = "firing", district: str = "Cô Tô",
    kind: str = "endpoint_down", severity: str = "critical",
) -> dict[str, Any]:  # fmt: skip
    return {
        "id": f"ev-{seq}", "seq": seq, "alert_id": alert, "status": status, "kind": kind,
        "severity": severity, "instance": "lab",
        "endpoint": {"id": alert, "district": district, "level": "commune"},
    }  # fmt: skip


Step = tuple[float, dict[str, Any]]


def simulate(policy: GroupPolicy, steps: list[Step], end: float) -> list[tuple[Any, ...]]:
    """Feed ``steps`` at their times and send whatever falls due, until ``end``; each sent
    notification as (time, district, changes as alert:status, still-firing alerts)."""
    grouper = Grouper(policy)
    out: list[tuple[Any, ...]] = []
    i = 0
    while True:
        next_step = steps[i][0] if i < len(steps) else math.inf
        next_due = grouper.next_at()
        now = min(next_step, math.inf if next_due is None else next_due)
        if now > end:
            return out
        while i < len(steps) and steps[i][0] <= now:
            grouper.add(steps[i][1], int(steps[i][1]["seq"]), now)
            i += 1
        for n in grouper.due(now):
            changes = [f"{e['alert_id']}:{e['status']}" for e in n.changes]
            district = dict(n.group).get("district", "")
            out.append((now, district, changes, [e["alert_id"] for e in n.firing]))
            grouper.sent(n, now)


CASES: list[tuple[str, GroupPolicy, list[Step], float, list[tuple[Any, ...]]]] = [
    ("one alert waits for its siblings, then goes out alone",
     AM, [(0, ev(1, "a"))], 1000,
     [(30, "Cô Tô", ["a:firing"], [])]),
    ("siblings within the wait go out together",
     AM, [(0, ev(1, "a")), (10, ev(2, "b")), (29, ev(3, "c"))], 1000,
     [(30, "Cô Tô", ["a:firing", "b:firing", "c:firing"], [])]),
    ("another district is another group",
     AM, [(0, ev(1, "a")), (5, ev(2, "x", district="Vân Đồn"))], 1000,
     [(30, "Cô Tô", ["a:firing"], []), (35, "Vân Đồn", ["x:firing"], [])]),
    ("another kind is another group",
     AM, [(0, ev(1, "a")), (0, ev(2, "a2", kind="loss_high"))], 100,
     [(30, "Cô Tô", ["a:firing"], []), (30, "Cô Tô", ["a2:firing"], [])]),
    ("a resolve waits for the interval since the last send, then the group is forgotten",
     AM, [(0, ev(1, "a")), (100, ev(2, "a", "resolved"))], 3 * H4,
     [(30, "Cô Tô", ["a:firing"], []), (330, "Cô Tô", ["a:resolved"], [])]),
    ("fired and resolved within the wait: one notification that says so",
     AM, [(0, ev(1, "a")), (10, ev(2, "a", "resolved"))], 3 * H4,
     [(30, "Cô Tô", ["a:resolved"], [])]),
    ("a change in a quiet group still gathers for the wait",
     AM, [(0, ev(1, "a")), (1000, ev(2, "b"))], 2000,
     [(30, "Cô Tô", ["a:firing"], []), (1030, "Cô Tô", ["b:firing"], ["a"])]),
    ("a group still firing is repeated with what still fires",
     AM, [(0, ev(1, "a"))], 30 + 2 * H4,
     [(30, "Cô Tô", ["a:firing"], []), (30 + H4, "Cô Tô", [], ["a"]),
      (30 + 2 * H4, "Cô Tô", [], ["a"])]),
    ("repeat 0 never repeats",
     GroupPolicy(repeat=0), [(0, ev(1, "a"))], 10 * H4,
     [(30, "Cô Tô", ["a:firing"], [])]),
    ("an acknowledged group is not repeated",
     AM, [(0, ev(1, "a")), (100, ev(2, "a", "acknowledged"))], 3 * H4,
     [(30, "Cô Tô", ["a:firing"], []), (330, "Cô Tô", ["a:acknowledged"], [])]),
    ("an expired acknowledgement fires again and repeats again",
     AM, [(0, ev(1, "a")), (100, ev(2, "a", "acknowledged")), (1000, ev(3, "a"))], 1030 + H4,
     [(30, "Cô Tô", ["a:firing"], []), (330, "Cô Tô", ["a:acknowledged"], []),
      (1030, "Cô Tô", ["a:firing"], []), (1030 + H4, "Cô Tô", [], ["a"])]),
    ("only the unacknowledged are repeated",
     AM, [(0, ev(1, "a")), (0, ev(2, "b")), (100, ev(3, "a", "acknowledged"))], 330 + H4,
     [(30, "Cô Tô", ["a:firing", "b:firing"], []), (330, "Cô Tô", ["a:acknowledged"], ["b"]),
      (330 + H4, "Cô Tô", [], ["b"])]),
    ("by nothing: one group for everything",
     GroupPolicy(by=()), [(0, ev(1, "a")), (1, ev(2, "x", district="Vân Đồn", kind="mos_low"))],
     100, [(30, "", ["a:firing", "x:firing"], [])]),
    ("wait 0 and interval 0: every change goes out at once",
     GroupPolicy(wait=0, interval=0, repeat=0), [(0, ev(1, "a")), (5, ev(2, "a", "resolved"))],
     100, [(0, "Cô Tô", ["a:firing"], []), (5, "Cô Tô", ["a:resolved"], [])]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "steps", "end", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_grouping(
    policy: GroupPolicy, steps: list[Step], end: float, expected: list[tuple[Any, ...]]
) -> None:
    assert simulate(policy, steps, end) == expected


def test_low_water_is_the_oldest_entry_not_yet_sent() -> None:
    g = Grouper(AM)
    assert g.low_water() is None
    g.add(ev(5, "a"), 5, now=0)
    g.add(ev(7, "x", district="Vân Đồn"), 7, now=20)
    assert g.low_water() == 5
    (first,) = g.due(30)
    g.sent(first, 30)
    assert g.low_water() == 7
    (second,) = g.due(50)
    g.sent(second, 50)
    assert g.low_water() is None


def test_a_change_during_the_send_stays_pending() -> None:
    g = Grouper(AM)
    g.add(ev(1, "a"), 1, now=0)
    (n,) = g.due(30)
    g.add(ev(2, "a", "resolved"), 2, now=31)  # arrives while n is on its way
    g.sent(n, 32)
    assert g.low_water() == 2
    assert g.next_at() == 32 + 300
    (later,) = g.due(332)
    assert [e["status"] for e in later.changes] == ["resolved"]


def test_a_failed_notification_is_offered_again_with_what_came_since() -> None:
    g = Grouper(AM)
    g.add(ev(1, "a"), 1, now=0)
    (n,) = g.due(30)  # not sent: the receiver is down
    g.add(ev(2, "b"), 2, now=40)
    (again,) = g.due(45)
    assert [e["alert_id"] for e in again.changes] == ["a", "b"]
    assert again.seqs == (1, 2)
    assert again.id != n.id


def test_seeded_alerts_repeat_from_the_restart_not_at_once() -> None:
    g = Grouper(AM)
    g.seed(ev(1, "a"), now=1000)
    assert g.due(1001) == []
    assert g.next_at() == 1000 + H4
    (n,) = g.due(1000 + H4)
    assert n.repeat
    assert [e["alert_id"] for e in n.firing] == ["a"]


def test_ids_are_stable_for_the_same_content() -> None:
    def first(seq: int) -> Notification:
        g = Grouper(AM)
        g.add(ev(seq, "a"), seq, now=0)
        return g.due(30)[0]

    assert first(1).id == first(1).id
    assert first(1).id != first(2).id
    assert first(1).id.startswith("grp-")


def test_notification_json() -> None:
    g = Grouper(AM)
    g.add(ev(1, "a"), 1, now=0)
    doc = g.due(30)[0].to_json()
    assert doc["group"] == {"district": "Cô Tô", "kind": "endpoint_down"}
    assert doc["repeat"] is False
    assert [e["id"] for e in doc["changes"]] == ["ev-1"]
    assert doc["firing"] == []


def test_group_labels() -> None:
    e = ev(1, "a", severity="warning")
    by = ("district", "kind", "severity", "level", "endpoint", "instance")
    assert dict(group_labels(e, by)) == {
        "district": "Cô Tô", "kind": "endpoint_down", "severity": "warning",
        "level": "commune", "endpoint": "a", "instance": "lab",
    }  # fmt: skip
    assert group_labels({"alert_id": "x"}, ("district",)) == (("district", ""),)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"by": ["district", "district"]}, "names a field twice"),
        ({"by": ["room"]}, "Input should be 'district'"),
        ({"wait": -1}, "expected a number of seconds ≥ 0, got -1"),
        ({"interval": True}, "expected a number, got true"),
        ({"repeat": 60}, "repeat (60 s) must not be below interval (300 s)"),
        ({"wiat": 5}, "Extra inputs are not permitted"),
    ],
)
def test_policy_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        GroupPolicy.model_validate(settings)
    assert message in str(caught.value)
