"""Invariants of the alert engine under random outages, silences and crashes (hypothesis).

- at most one open alert per alert_id, and per (target, kind);
- an alert's events are one or more firings, then at most one resolve, then nothing;
- every firing that was written is followed by exactly one resolve once everything is up;
- no endpoint raises an alert of its own while all its parents are down;
- all of this holds when the engine is killed between any two steps, including after it
  decided but before the decision was written.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.alert_harness import Harness, ep, obs
from vcmon.alerts.model import AlertEvent, Kind, Status

ENDPOINTS = [
    ep("root", district="Tỉnh", level="province"),
    ep("hub", ["root"], level="district"),
    ep("p2", ["root"], district="Vân Đồn", level="district"),
    ep("c1", ["hub"]),
    ep("c2", ["hub"]),
    ep("d", ["hub", "p2"]),
    ep("x"),
    ep("y"),
]
IDS = [e.id for e in ENDPOINTS]
PARENTS = {e.id: e.parent for e in ENDPOINTS}

round_action = st.tuples(
    st.just("round"), st.dictionaries(st.sampled_from(IDS), st.booleans(), min_size=1), st.just(1)
)
actions = st.one_of(
    round_action,
    round_action,
    round_action,
    st.tuples(st.just("outage"), st.sampled_from(IDS), st.integers(3, 8)),
    st.tuples(st.just("flap"), st.sampled_from(IDS), st.integers(1, 4)),
    st.tuples(st.just("slow"), st.sampled_from(IDS), st.integers(1, 5)),
    st.tuples(st.just("silence"), st.sampled_from([*IDS, "Cô Tô"]), st.integers(5, 120)),
    st.tuples(st.just("expire"), st.just(None), st.just(0)),
    st.tuples(st.just("wait"), st.just(None), st.integers(1, 60)),
    st.tuples(st.just("crash"), st.just(None), st.just(0)),
    st.tuples(st.just("lost"), st.sampled_from(IDS), st.booleans()),
)


def everyone(ok: bool) -> dict[str, bool]:
    return dict.fromkeys(IDS, ok)


def run(h: Harness, action: tuple[Any, ...], silences: list[str]) -> None:
    name, arg, n = action
    if name == "round":
        for _ in range(n):
            h.round(dict(arg))
    elif name == "outage":
        results = everyone(True) | {arg: False}
        h.rounds(n, results)
    elif name == "flap":
        for _ in range(n):
            h.rounds(2, everyone(True) | {arg: False})
            h.rounds(2, everyone(True))
    elif name == "slow":
        for _ in range(n):
            h.round({i: obs(h.now, rtt=0.4 if i == arg else 0.01) for i in IDS})
    elif name == "silence":
        key = "district" if arg == "Cô Tô" else "endpoint"
        silences.append(h.silence(float(n), **{key: arg}))
    elif name == "expire":
        if silences:
            h.expire(silences.pop())
    elif name == "wait":
        h.wait(float(n), step=5.0)
    elif name == "crash":
        h.restart()
    elif name == "lost":
        # Decided, then killed before the decision was written: it never happened.
        h.engine.observe(arg, obs(h.now, ok=n), h.now)
        h.restart()


def check_log(h: Harness) -> None:
    by_alert: dict[str, list[AlertEvent]] = defaultdict(list)
    for e in h.events:
        by_alert[e.alert_id].append(e)
    for alert_id, events in by_alert.items():
        statuses = [e.status for e in events]
        assert statuses[0] is Status.FIRING, (alert_id, statuses)
        if Status.RESOLVED in statuses:
            assert statuses.index(Status.RESOLVED) == len(statuses) - 1, (alert_id, statuses)
        assert len({(e.kind, e.target.id) for e in events}) == 1
    open_ids = [a.alert_id for a in h.engine.open_alerts()]
    assert len(open_ids) == len(set(open_ids))
    for alert_id in open_ids:  # an open alert has not been resolved
        assert all(e.status is Status.FIRING for e in by_alert.get(alert_id, []))


def check_no_child_alert_under_a_down_parent(h: Harness, since: int) -> None:
    for e in h.events[since:]:
        if e.status is not Status.FIRING or e.kind not in (Kind.ENDPOINT_DOWN, Kind.GROUP_DOWN):
            continue
        parents = [h.engine.nodes[p] for p in PARENTS[e.target.id]]
        if parents and e.severity:
            all_down = all(p.reach.failing and p.reach.confirmed_up is False for p in parents)
            assert not all_down, f"{e.target.id} alerted while all its parents were down"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(actions, min_size=1, max_size=25))
def test_invariants_hold_through_outages_silences_and_crashes(
    steps: list[tuple[Any, ...]],
) -> None:
    h = Harness(ENDPOINTS)
    silences: list[str] = []
    for action in steps:
        before = len(h.events)
        run(h, action, silences)
        check_log(h)
        check_no_child_alert_under_a_down_parent(h, before)
    # Everything recovers and every silence runs out: all that fired is resolved, once.
    h.wait(200.0, step=10.0)
    h.rounds(30, everyone(True))
    h.wait(5.0)
    check_log(h)
    assert h.engine.open_alerts() == []
    fired = {e.alert_id for e in h.events if e.status is Status.FIRING}
    resolved = [e.alert_id for e in h.events if e.status is Status.RESOLVED]
    assert sorted(resolved) == sorted(fired)
    seqs = [e.seq for e in h.events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len({e.id for e in h.events}) == len(seqs)
