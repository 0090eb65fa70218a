"""The outbox over a real store, with a scripted sink: order, acknowledgement, retries,
dead letters, disabling, and restarting from the cursor.

The sink here is a script, not a peer: the real sinks are tested against Mosquitto and HTTP
receivers in their own files; this file is about what the outbox does with their answers.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from vcmon.alerts.model import AlertEvent, Changes, Kind, Measurements, Severity, Status, Target
from vcmon.alerts.store import Store
from vcmon.delivery.outbox import Backoff, Dispatcher
from vcmon.delivery.sinks.base import Gone, Reject, Retry, SinkError

TARGET = Target("a", "UBND xã A", "127.0.0.1", "Cô Tô", "commune")
FAST = Backoff(base=0.001, cap=0.01)


def event(seq: int) -> AlertEvent:
    return AlertEvent(
        id=f"e{seq}", seq=seq, alert_id=f"a{seq}", status=Status.FIRING, kind=Kind.ENDPOINT_DOWN,
        severity=Severity.CRITICAL, instance="t", target=TARGET, affected=(),
        measurements=Measurements(), started_at=1.0, ended_at=None, at=1.0,
    )  # fmt: skip


class ScriptedSink:
    """Answers each send with the next scripted outcome (None: acknowledged)."""

    def __init__(self, name: str, script: list[SinkError | None] | None = None) -> None:
        self.name = name
        self.script = list(script or [])
        self.delivered: list[str] = []
        self.attempts = 0
        self.starts = 0
        self.closed = False
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        self.starts += 1

    async def send(self, event: Mapping[str, Any]) -> None:
        self.attempts += 1
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.delivered.append(str(event["id"]))
        self.arrived.set()

    async def close(self) -> None:
        self.closed = True


async def until(check: Any, within: float = 5.0) -> None:
    """Poll ``check`` (state in the store and the sink) until true, failing after ``within``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "state.db")


def write(store: Store, *seqs: int) -> None:
    store.apply(Changes(events=tuple(event(s) for s in seqs)))


async def run_until(dispatcher: Dispatcher, check: Any) -> None:
    task = asyncio.create_task(dispatcher.run())
    try:
        await until(check)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_new_sink_starts_from_now_and_delivers_in_order(store: Store) -> None:
    write(store, 1, 2)  # history before the sink existed
    sink = ScriptedSink("s")
    d = Dispatcher(sink, store, backoff=FAST)
    task = asyncio.create_task(d.run())
    await until(lambda: store.cursor("s") == 2)
    write(store, 3, 4, 5)
    d.notify()
    await until(lambda: len(sink.delivered) == 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.delivered == ["e3", "e4", "e5"]
    assert store.cursor("s") == 5
    assert sink.closed


async def test_retries_until_acknowledged_without_skipping(store: Store) -> None:
    store.advance("s", 0)
    write(store, 1, 2)
    sink = ScriptedSink("s", [Retry("http_500")] * 5)
    d = Dispatcher(sink, store, backoff=FAST, rng=random.Random(1))
    await run_until(d, lambda: len(sink.delivered) == 2)
    assert sink.delivered == ["e1", "e2"]
    assert sink.attempts == 7
    assert d.stats.failed == {"http_500": 5}
    assert d.stats.failing_since is None


async def test_retry_after_is_honoured(store: Store) -> None:
    store.advance("s", 0)
    write(store, 1)
    sink = ScriptedSink("s", [Retry("http_429", after=0.2)])
    d = Dispatcher(sink, store, backoff=FAST)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_until(d, lambda: sink.delivered)
    assert loop.time() - started >= 0.2


async def test_rejected_event_is_dead_lettered_and_delivery_goes_on(store: Store) -> None:
    store.advance("s", 0)
    write(store, 1, 2, 3)
    sink = ScriptedSink("s", [None, Reject("http_400")])
    d = Dispatcher(sink, store, backoff=FAST)
    await run_until(d, lambda: len(sink.delivered) == 2)
    assert sink.delivered == ["e1", "e3"]
    assert [(s, q, r) for s, q, r, _ in store.dead_letters()] == [("s", 2, "http_400")]
    assert d.stats.dead == 1


async def test_gone_disables_the_sink_and_keeps_the_cursor(store: Store) -> None:
    store.advance("s", 0)
    write(store, 1, 2)
    sink = ScriptedSink("s", [Gone("http_410")])
    d = Dispatcher(sink, store, backoff=FAST)
    await asyncio.wait_for(d.run(), 5)  # returns by itself
    assert d.stats.disabled == "http_410"
    assert sink.delivered == []
    assert store.cursor("s") == 0


async def test_a_down_sink_does_not_hold_up_another(store: Store) -> None:
    store.advance("down", 0)
    store.advance("up", 0)
    write(store, 1, 2)
    down = ScriptedSink("down", [Retry("connect")] * 10_000)
    up = ScriptedSink("up")
    tasks = [asyncio.create_task(Dispatcher(s, store, backoff=FAST).run()) for s in (down, up)]
    await until(lambda: len(up.delivered) == 2)
    assert down.delivered == []
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert store.cursor("down") == 0


async def test_restart_resumes_from_the_cursor(store: Store) -> None:
    store.advance("s", 0)
    write(store, 1, 2, 3)
    first = ScriptedSink("s")
    await run_until(Dispatcher(first, store, backoff=FAST), lambda: len(first.delivered) == 3)
    write(store, 4)
    second = ScriptedSink("s")
    await run_until(Dispatcher(second, store, backoff=FAST), lambda: second.delivered)
    assert second.delivered == ["e4"]


async def test_routes_skip_what_a_sink_does_not_want(store: Store) -> None:
    store.advance("s", 0)
    write(store, 1, 2, 3, 4)
    sink = ScriptedSink("s")
    d = Dispatcher(sink, store, backoff=FAST, route=lambda ev: ev.seq % 2 == 0)
    await run_until(d, lambda: store.cursor("s") == 4)
    assert sink.delivered == ["e2", "e4"]


async def test_a_stuck_sinks_backlog_shows_growing(store: Store) -> None:
    store.advance("s", 0)
    write(store, 1, 2)
    sink = ScriptedSink("s", [Retry("http_503")] * 10_000)
    d = Dispatcher(sink, store, backoff=Backoff(base=0.001, cap=0.002))
    task = asyncio.create_task(d.run())
    try:
        await until(lambda: d.stats.pending == 2 and sink.attempts > 1)
        write(store, 3)  # while the first event is still being retried
        d.notify()
        await until(lambda: d.stats.pending == 3)
        sink.script.clear()
        await until(lambda: store.cursor("s") == 3)
        assert d.stats.pending == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sink.delivered == ["e1", "e2", "e3"]


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(base=1.0, cap=8.0)
    rng = random.Random(3)
    delays = [max(b.delay(n, rng) for _ in range(200)) for n in range(6)]
    assert delays[0] <= 1.0
    assert delays[2] > 2.0
    assert all(d <= 8.0 for d in delays)


async def test_outbox_retry_requeues_dead_letters_for_a_running_dispatcher(
    tmp_path: Path,
) -> None:
    from vcmon.cli.outbox import backlog, retry_dead_letters
    from vcmon.config import load_config

    path = tmp_path / "vcmon.yaml"
    path.write_text(
        "alerts: {state_file: state.db}\nsinks: [{type: console, name: s}]\nendpoints:\n"
        "  - {id: a, name: A, address: 127.0.0.1, district: X, level: commune}\n",
        encoding="utf-8",
    )
    config = load_config(path, env={})
    store = Store.open(tmp_path / "state.db")
    store.advance("s", 0)
    write(store, 1, 2, 3)
    sink = ScriptedSink("s", [Reject("http_400")])
    d = Dispatcher(sink, store, backoff=FAST)
    task = asyncio.create_task(d.run())
    try:
        await until(lambda: store.cursor("s") == 3)
        assert sink.delivered == ["e2", "e3"]
        last, [entry] = backlog(config)
        assert (last, entry.sink, entry.cursor, entry.pending) == (3, "s", 3, [])
        assert [seq for seq, _, _ in entry.dead] == [1]
        assert retry_dead_letters(config) == {"s": 1}
        d.notify()
        await until(lambda: len(sink.delivered) == 5)
        assert sink.delivered == ["e2", "e3", "e1", "e2", "e3"]  # in order; dupes are by id
        assert store.dead_letters() == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_outbox_command_lists_backlog_and_dead_letters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vcmon import cli

    path = tmp_path / "vcmon.yaml"
    path.write_text(
        "alerts: {state_file: state.db}\nsinks: [{type: console, name: s}]\nendpoints:\n"
        "  - {id: a, name: A, address: 127.0.0.1, district: X, level: commune}\n",
        encoding="utf-8",
    )
    with Store.open(tmp_path / "state.db") as store:
        store.advance("s", 0)
        write(store, 1, 2)
        store.advance("s", 1, "http_400", 1_800_000_000.0)
    assert cli.main(["outbox", "-c", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "s pending #2 firing endpoint_down a" in shown
    assert "s dead letter #1: http_400" in shown
    assert cli.main(["outbox", "-c", str(path), "retry", "--sink", "s"]) == 0
    assert "s: 1 dead letters requeued" in capsys.readouterr().out
    with Store.open(tmp_path / "state.db") as store:
        assert store.cursor("s") == 0


def test_every_registered_sink_type_is_in_the_config_schema() -> None:
    from typing import get_args

    from vcmon.delivery.sinks.registry import SINKS, SinkConfig

    union = get_args(get_args(SinkConfig)[0])
    assert {cfg for cfg, _ in SINKS.values()} == set(union)
