"""The outbox for a sink with a group policy, over a real store and an injected clock: events
wait in their group, the cursor stays behind what is unsent, a restart loses nothing, and a
refused notification dead-letters every event it carried."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from vcmon.alerts.model import (
    Alert,
    AlertEvent,
    Changes,
    Kind,
    Measurements,
    Severity,
    Status,
    Target,
)
from vcmon.alerts.store import Store
from vcmon.clock import FakeClock
from vcmon.delivery.grouping import GroupPolicy, Notification
from vcmon.delivery.outbox import Backoff, Dispatcher
from vcmon.delivery.sinks.base import Reject, Retry, SinkError

from .test_outbox import ScriptedSink, until

FAST = Backoff(base=0.001, cap=0.01)
POLICY = GroupPolicy(wait=30, interval=300, repeat=3600)
CO_TO = Target("a", "UBND xã A", "127.0.0.1", "Cô Tô", "commune")
VAN_DON = Target("v", "UBND xã V", "127.0.0.2", "Vân Đồn", "commune")


T0 = 1_800_000_000.0


class GroupingSink(ScriptedSink):
    """A scripted sink that also takes grouped notifications."""

    def __init__(self, name: str, script: list[SinkError | None] | None = None) -> None:
        super().__init__(name, script)
        self.notes: list[Notification] = []

    async def send_group(self, notification: Notification) -> None:
        self.attempts += 1
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.notes.append(notification)

    def seen(self) -> list[list[str]]:
        return [[str(e["id"]) for e in n.changes] for n in self.notes]


def event(seq: int, target: Target = CO_TO, at: float = T0) -> AlertEvent:
    return AlertEvent(
        id=f"e{seq}", seq=seq, alert_id=f"a{seq}", status=Status.FIRING,
        kind=Kind.ENDPOINT_DOWN, severity=Severity.CRITICAL, instance="t", target=target,
        affected=(), measurements=Measurements(), started_at=at, ended_at=None, at=at,
    )  # fmt: skip


def write(store: Store, *events: AlertEvent) -> None:
    """The events, with their alerts opened (firing) or closed (resolved) as the engine does."""
    opened = tuple(
        Alert(e.alert_id, e.kind, e.severity, e.target, e.started_at, notified=True)
        for e in events
        if e.status is Status.FIRING
    )
    closed = tuple((e.alert_id, e.at) for e in events if e.status is Status.RESOLVED)
    store.apply(Changes(upserted=opened, closed=closed, events=events))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "state.db")
    s.advance("g", 0)
    return s


class Running:
    """A dispatcher's run() as a task, cancelled on exit."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Dispatcher:
        self.task = asyncio.create_task(self.dispatcher.run())
        return self.dispatcher

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def settled(d: Dispatcher) -> None:
    """Wake ``d`` and wait until it has dealt with everything and waits again."""
    d.notify()
    await until(d.idle.is_set)


def dispatcher(sink: GroupingSink, store: Store, clock: FakeClock) -> Dispatcher:
    return Dispatcher(sink, store, backoff=FAST, clock=clock.time, group=POLICY)


async def test_a_group_waits_then_goes_out_as_one(store: Store) -> None:
    clock, sink = FakeClock(T0), GroupingSink("g")
    async with Running(dispatcher(sink, store, clock)) as d:
        write(store, event(1), event(2), event(3, VAN_DON))
        await settled(d)
        assert d.stats.held == 3
        assert d.stats.pending == 0  # held on purpose, not owed
        assert sink.notes == []
        assert store.cursor("g") == 0  # nothing sent: nothing done
        clock.now += 30
        d.notify()
        await until(lambda: len(sink.notes) == 2)
        await until(lambda: store.cursor("g") == 3)
    assert sink.seen() == [["e1", "e2"], ["e3"]]
    assert [dict(n.group)["district"] for n in sink.notes] == ["Cô Tô", "Vân Đồn"]
    assert d.stats.sent == 2


async def test_the_cursor_stays_before_the_oldest_unsent_event(store: Store) -> None:
    clock, sink = FakeClock(T0), GroupingSink("g")
    async with Running(dispatcher(sink, store, clock)) as d:
        write(store, event(1))
        d.notify()
        await until(lambda: d.stats.held == 1)
        clock.now += 20
        write(store, event(2, VAN_DON, at=clock.now))
        d.notify()
        await until(lambda: d.stats.held == 2)
        clock.now += 10  # Cô Tô's wait is over, Vân Đồn's is not
        d.notify()
        await until(lambda: len(sink.notes) == 1)
        await until(lambda: d.stats.held == 1)
        assert store.cursor("g") == 1
        clock.now += 20
        d.notify()
        await until(lambda: store.cursor("g") == 2)
    assert sink.seen() == [["e1"], ["e2"]]


async def test_stopped_before_the_send_the_restart_sends_it(store: Store) -> None:
    clock = FakeClock(T0)
    first = GroupingSink("g")
    async with Running(dispatcher(first, store, clock)) as d:
        write(store, event(1), event(2))
        d.notify()
        await until(lambda: d.stats.held == 2)
    assert first.notes == []
    clock.now += 60
    second = GroupingSink("g")
    async with Running(dispatcher(second, store, clock)):
        await until(lambda: store.cursor("g") == 2)
    assert second.seen() == [["e1", "e2"]]


async def test_notified_alerts_are_not_sent_again_after_a_restart_but_repeated(
    store: Store,
) -> None:
    clock = FakeClock(T0)
    first = GroupingSink("g")
    async with Running(dispatcher(first, store, clock)) as d:
        write(store, event(1))
        d.notify()
        await until(lambda: d.stats.held == 1)
        clock.now += 30
        d.notify()
        await until(lambda: store.cursor("g") == 1)
    second = GroupingSink("g")
    async with Running(dispatcher(second, store, clock)) as d2:
        await settled(d2)
        assert second.notes == []
        clock.now += POLICY.repeat
        d2.notify()
        await until(lambda: len(second.notes) == 1)
    (repeat,) = second.notes
    assert repeat.repeat
    assert [e["id"] for e in repeat.firing] == ["e1"]


async def test_an_acknowledged_alert_is_not_repeated_after_a_restart(store: Store) -> None:
    clock = FakeClock(T0)
    first = GroupingSink("g")
    async with Running(dispatcher(first, store, clock)) as d:
        write(store, event(1))
        clock.now += 30
        await settled(d)
        write(store, replace(event(1), id="e2", seq=2, status=Status.ACKNOWLEDGED, at=clock.now))
        clock.now += 300
        await settled(d)
        assert store.cursor("g") == 2
    assert first.seen() == [["e1"], ["e2"]]
    second = GroupingSink("g")
    async with Running(dispatcher(second, store, clock)) as d2:
        await settled(d2)  # seeded from the log at the restart's time
        clock.now += 10 * POLICY.repeat
        await settled(d2)
    assert second.notes == []


async def test_retried_until_acknowledged_then_latency_from_when_due(store: Store) -> None:
    clock, sink = FakeClock(T0), GroupingSink("g", [Retry("http_500")] * 3)
    latencies: list[float] = []
    d = Dispatcher(sink, store, backoff=FAST, clock=clock.time, group=POLICY,
                   on_latency=lambda _, s: latencies.append(s))  # fmt: skip
    async with Running(d):
        write(store, event(1))
        d.notify()
        await until(lambda: d.stats.held == 1)
        clock.now += 31  # one second past due
        d.notify()
        await until(lambda: store.cursor("g") == 1)
    assert sink.seen() == [["e1"]]
    assert sink.attempts == 4
    assert latencies == [1.0]
    assert d.stats.failed == {"http_500": 3}


async def test_a_refused_notification_dead_letters_each_event(store: Store) -> None:
    clock, sink = FakeClock(T0), GroupingSink("g", [Reject("http_400", "bad chat id")])
    async with Running(dispatcher(sink, store, clock)) as d:
        write(store, event(1), event(2))
        d.notify()
        await until(lambda: d.stats.held == 2)
        clock.now += 30
        d.notify()
        await until(lambda: store.cursor("g") == 2)
    assert sink.notes == []
    assert [(seq, reason) for _, seq, reason, _ in store.dead_letters("g")] == [
        (1, "http_400"),
        (2, "http_400"),
    ]


async def test_a_resolve_in_the_same_group_follows_after_the_interval(store: Store) -> None:
    clock, sink = FakeClock(T0), GroupingSink("g")
    async with Running(dispatcher(sink, store, clock)) as d:
        write(store, event(1))
        d.notify()
        await until(lambda: d.stats.held == 1)
        clock.now += 30
        d.notify()
        await until(lambda: len(sink.notes) == 1)
        write(
            store,
            replace(event(1), id="e2", seq=2, status=Status.RESOLVED, ended_at=T0 + 30, at=T0 + 30),
        )
        d.notify()
        await until(lambda: d.stats.held == 1)
        clock.now += 299
        await settled(d)
        assert store.cursor("g") == 1
        assert len(sink.notes) == 1
        clock.now += 1
        d.notify()
        await until(lambda: store.cursor("g") == 2)
    assert sink.seen() == [["e1"], ["e2"]]
    assert sink.notes[1].changes[0]["status"] == "resolved"


async def test_what_a_stuck_sink_owes_shows_as_pending_and_grows(store: Store) -> None:
    clock, sink = FakeClock(T0), GroupingSink("g", [Retry("http_503")] * 10_000)
    d = Dispatcher(sink, store, backoff=Backoff(base=0.001, cap=0.002), clock=clock.time,
                   group=POLICY)  # fmt: skip
    async with Running(d):
        write(store, event(1), event(2))
        await settled(d)
        assert (d.stats.pending, d.stats.held) == (0, 2)
        clock.now += 30  # due: the receiver answers 503 from now on
        d.notify()
        await until(lambda: d.stats.pending == 2)
        write(store, event(3, VAN_DON, at=clock.now))  # arrives while it is stuck
        d.notify()
        await until(lambda: d.stats.pending == 3)
        sink.script.clear()  # the receiver is back
        await until(lambda: store.cursor("g") == 2)
        await settled(d)
        assert (d.stats.pending, d.stats.held) == (0, 1)  # Vân Đồn's group waits on purpose
    assert sink.seen() == [["e1", "e2"]]


def test_a_sink_without_send_group_cannot_be_grouped(store: Store) -> None:
    with pytest.raises(TypeError, match="cannot send grouped notifications"):
        Dispatcher(ScriptedSink("s"), store, group=POLICY)


async def test_routes_apply_before_grouping(store: Store) -> None:
    clock, sink = FakeClock(T0), GroupingSink("g")
    d = Dispatcher(sink, store, backoff=FAST, clock=clock.time, group=POLICY,
                   route=lambda ev: ev.target.district == "Vân Đồn")  # fmt: skip
    async with Running(d):
        write(store, event(1), event(2, VAN_DON))
        d.notify()
        await until(lambda: d.stats.held == 1)
        clock.now += 30
        d.notify()
        await until(lambda: store.cursor("g") == 2)
    assert sink.seen() == [["e2"]]
