"""The runtime's committed changes as a coalescing async stream (vcmon.alerts.feed)."""

from __future__ import annotations

import asyncio

from vcmon.alerts.feed import URGENT_KEPT, Feed, Update
from vcmon.alerts.model import AlertEvent, Kind, Measurements, Severity, Status, Target

TARGET = Target("state", "state file", "", "", "")


def urgent(seq: int) -> AlertEvent:
    return AlertEvent(
        id=f"e{seq}", seq=seq, alert_id="s", status=Status.FIRING,
        kind=Kind.STATE_STORE_FAILING, severity=Severity.CRITICAL, instance="lab",
        target=TARGET, affected=(), measurements=Measurements(), started_at=0.0,
        ended_at=None, at=0.0,
    )  # fmt: skip


def test_writes_coalesce_statuses_keep_the_newest_urgent_events_keep_order() -> None:
    feed = Feed()
    sub = feed.subscribe(statuses=True)
    plain = feed.subscribe()
    assert feed.wants_statuses
    for _ in range(1000):
        feed.written()
    feed.status("a", {"state": "down"})
    feed.status("b", {"state": "up"})
    feed.status("a", {"state": "up"})
    feed.urgent(urgent(1))
    feed.urgent(urgent(2))
    got = sub.take()
    assert got.written
    assert got.statuses == {"a": {"state": "up"}, "b": {"state": "up"}}
    assert [e.seq for e in got.urgent] == [1, 2]
    assert sub.take().empty()
    assert plain.take() == Update(True, {}, [urgent(1), urgent(2)])  # no statuses asked


def test_the_buffer_is_bounded_the_oldest_urgent_events_go_first() -> None:
    feed = Feed()
    sub = feed.subscribe()
    assert not feed.wants_statuses
    for seq in range(URGENT_KEPT + 10):
        feed.urgent(urgent(seq))
    assert [e.seq for e in sub.take().urgent] == list(range(10, URGENT_KEPT + 10))


async def test_a_subscriber_wakes_on_publish_and_gets_all_that_came_meanwhile() -> None:
    feed = Feed()
    sub = feed.subscribe(statuses=True)
    got: list[Update] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for update in sub:
            got.append(update)
            first.set()
            if len(got) == 2:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # the consumer is waiting
    feed.written()
    feed.written()
    async with asyncio.timeout(5):
        await first.wait()
    feed.status("a", {"state": "down"})
    async with asyncio.timeout(5):
        await task
    assert got == [Update(written=True), Update(statuses={"a": {"state": "down"}})]
