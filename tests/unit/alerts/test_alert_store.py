"""The SQLite store: exact round trips, one transaction per decision, reopening, bad files,
and a writer killed with SIGKILL mid-stream."""

from __future__ import annotations

import json
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcmon.alerts.model import (
    Alert,
    AlertEvent,
    Changes,
    HealthRecord,
    Kind,
    Measurements,
    Severity,
    Silence,
    Snapshot,
    Status,
    Target,
)
from vcmon.alerts.store import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    StoreUnavailable,
    alert_from_json,
    alert_to_json,
    health_from_json,
    health_to_json,
    silence_from_json,
    silence_to_json,
    target_from_json,
    target_to_json,
)
from vcmon.config.alerts import Matchers

ROOT = Path(__file__).resolve().parents[3]
TARGET = Target("co-to", "UBND huyện Cô Tô", "127.0.0.1", "Cô Tô", "district", {"link": "viba"})


def alert(alert_id: str = "a1", **changes: Any) -> Alert:
    base = Alert(
        alert_id=alert_id,
        kind=Kind.GROUP_DOWN,
        severity=Severity.CRITICAL,
        target=TARGET,
        started_at=1000.5,
        affected=("c1", "c2"),
        measurements=Measurements(rtt_ms=1.5, jitter_ms=None, loss_pct=100.0, mos=None),
        notified=True,
        notified_severity=Severity.CRITICAL,
        detail={"total": 3, "child_level": "commune", "failing_since": 990.25},
    )
    return base.with_(**changes)


def event(
    seq: int, alert_id: str = "a1", status: Status = Status.FIRING, id: str | None = None
) -> AlertEvent:
    return AlertEvent(
        id=id or f"e-{seq}",
        seq=seq,
        alert_id=alert_id,
        status=status,
        kind=Kind.GROUP_DOWN,
        severity=Severity.CRITICAL,
        instance="test",
        target=TARGET,
        affected=("c1",),
        measurements=Measurements(loss_pct=100.0),
        started_at=1000.0,
        ended_at=None if status is Status.FIRING else 1500.0,
        at=1000.0 + seq,
        summary="Huyện Cô Tô: mất kết nối",
    )


SILENCE = Silence(
    id="s1",
    matchers=Matchers.model_validate({"district": "~Cô.*", "labels": {"link": "viba"}}),
    starts_at=1000.0,
    ends_at=5000.0,
    created_by="trực ban",
    comment="bảo trì",
    created_at=999.0,
)
HEALTH = HealthRecord("co-to", "down", False, False, (True, False, False), 1000.0)


def through_json(doc: dict[str, Any]) -> dict[str, Any]:
    """What a body column gives back: the document after JSON text, as the store writes it."""
    back: dict[str, Any] = json.loads(json.dumps(doc, ensure_ascii=False))
    return back


def everything(store: Store, now: float = 2000.0) -> tuple[Any, ...]:
    """All a store holds, for comparing before and after."""
    return (
        store.load(now),
        store.events(0, 10_000),
        store.alerts(include_ended=True, limit=10_000),
        store.silences(now, include_expired=True),
    )


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        alert(),
        alert(notified=False, notified_severity=None, detail={}, affected=()),
        alert(
            kind=Kind.MOS_LOW,
            severity=Severity.WARNING,
            target=Target("x", "x", "127.0.0.1", "d", "commune"),
            measurements=Measurements(),
            detail={"value": 3.41, "threshold": None, "metric": "mos", "nested": {"a": [1, 2]}},
        ),
    ],
)
def test_alerts_round_trip_exactly(value: Alert) -> None:
    back = alert_from_json(through_json(alert_to_json(value)))
    assert back == value
    assert type(back.affected) is tuple
    assert type(back.kind) is Kind
    assert type(back.severity) is Severity


def test_other_values_round_trip_exactly() -> None:
    assert target_from_json(through_json(target_to_json(TARGET))) == TARGET
    assert silence_from_json(through_json(silence_to_json(SILENCE))) == SILENCE
    full = Matchers(endpoint="x", district="~D.*", level="commune", kind="mos_low",
                    severity="warning", labels={"a": "b"})  # fmt: skip
    wide = replace(SILENCE, matchers=full)
    assert silence_from_json(through_json(silence_to_json(wide))) == wide
    for confirmed in (None, True, False):
        rec = HealthRecord("co-to", "up", confirmed, True, (), 1.25)
        back = health_from_json(through_json(health_to_json(rec)))
        assert back == rec
        assert back.confirmed_up is confirmed
    assert health_from_json(through_json(health_to_json(HEALTH))) == HEALTH


_text = st.text(max_size=12)
_float = st.floats(allow_nan=False, allow_infinity=False)
_opt_float = st.none() | _float
_json_scalar = st.none() | st.booleans() | st.integers() | _float | _text


@settings(max_examples=60, deadline=None)
@given(
    target=st.builds(
        Target, _text, _text, _text, _text, _text, st.dictionaries(_text, _text, max_size=3)
    ),
    kind=st.sampled_from(Kind),
    severity=st.sampled_from(Severity),
    notified_severity=st.none() | st.sampled_from(Severity),
    started_at=_float,
    affected=st.lists(_text, max_size=4).map(tuple),
    measurements=st.builds(Measurements, _opt_float, _opt_float, _opt_float, _opt_float),
    detail=st.dictionaries(_text, _json_scalar, max_size=4),
)
def test_any_alert_round_trips(
    target: Target,
    kind: Kind,
    severity: Severity,
    notified_severity: Severity | None,
    started_at: float,
    affected: tuple[str, ...],
    measurements: Measurements,
    detail: dict[str, Any],
) -> None:
    value = Alert("a", kind, severity, target, started_at, affected, measurements,
                  notified_severity is not None, notified_severity, detail)  # fmt: skip
    assert alert_from_json(through_json(alert_to_json(value))) == value


# -- writing and reading back ----------------------------------------------------------------


def test_apply_then_reopen_gives_the_same_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "state" / "vcmon.db"  # the directory does not exist yet
    other = HealthRecord("c1", "unreachable", None, False, (False,), 1001.0)
    with Store.open(path) as store:
        store.apply(
            Changes(
                health=(HEALTH, other),
                upserted=(alert(), alert("a2", started_at=900.0)),
                events=(event(1), event(2, "a2")),
                silences=(SILENCE,),
            )
        )
        first = store.load(2000.0)
    assert first == Snapshot(
        epoch=first.epoch,
        seq=2,
        health={"co-to": HEALTH, "c1": other},
        alerts=(alert("a2", started_at=900.0), alert()),  # oldest first
        silences=(SILENCE,),
    )
    with Store.open(path) as store:
        assert store.load(2000.0) == first


def test_upserts_replace_and_closed_alerts_are_not_restored(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        store.apply(Changes(health=(HEALTH,), upserted=(alert(notified=False), alert("a2"))))
        up = HealthRecord("co-to", "up", True, False, (False, True), 1200.0)
        store.apply(Changes(health=(up,), upserted=(alert(),)))
        assert store.load(0.0).health == {"co-to": up}
        assert store.alerts() == [alert(), alert("a2")]

        store.apply(Changes(closed=(("a1", 1500.0),), events=(event(1, status=Status.RESOLVED),)))
        store.apply(Changes(closed=(("never-stored", 1500.0),)))  # opened and closed at once
        assert [a.alert_id for a in store.load(0.0).alerts] == ["a2"]
        assert [a.alert_id for a in store.alerts()] == ["a2"]
        assert store.alerts(include_ended=True) == [alert("a2"), alert()]  # ties: by id, desc


def test_alert_listing_order_and_limit(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        opened = tuple(alert(f"a{i}", started_at=1000.0 + i) for i in range(4))
        store.apply(Changes(upserted=opened, closed=(("a3", 2000.0),)))
        assert [a.alert_id for a in store.alerts()] == ["a0", "a1", "a2"]
        assert [a.alert_id for a in store.alerts(limit=2)] == ["a0", "a1"]
        newest = store.alerts(include_ended=True, limit=2)
        assert [a.alert_id for a in newest] == ["a3", "a2"]
        with pytest.raises(ValueError, match="limit"):
            store.alerts(limit=-1)


def test_silences_end_at_ends_at(tmp_path: Path) -> None:
    later = replace(SILENCE, id="s2", ends_at=9000.0)
    with Store.open(tmp_path / "s.db") as store:
        store.apply(Changes(silences=(later, SILENCE)))
        assert store.silences(4999.0) == [SILENCE, later]  # by end
        assert store.silences(5000.0) == [later]  # ended exactly at ends_at, as Silence.active
        assert store.load(5000.0).silences == (later,)
        assert store.silences(9999.0, include_expired=True) == [SILENCE, later]
        expired = replace(SILENCE, ends_at=1500.0)
        store.apply(Changes(silences=(expired,)))  # expiring early rewrites it
        assert store.silences(2000.0) == [later]


def test_prune_keeps_what_is_open_owed_or_newest(tmp_path: Path) -> None:
    with Store.open(tmp_path / "p.db") as store:
        # a1 ended (events 1, 2), a2 still open (3), a3 ended (4, 5): events at 1000 + seq.
        store.apply(Changes(upserted=(alert("a1"), alert("a2"), alert("a3")),
                            events=(event(1, "a1"), event(2, "a1", Status.RESOLVED),
                                    event(3, "a2"), event(4, "a3")),
                            silences=(SILENCE,)))  # fmt: skip
        store.apply(Changes(closed=(("a1", 1002.0), ("a3", 1005.0)),
                            events=(event(5, "a3", Status.RESOLVED),)))  # fmt: skip
        store.advance("mqtt", 5)
        store.advance("hook", 3)  # behind: owes 4 and 5
        store.advance("gone", 0)  # a sink no longer configured does not hold anything back
        store.bury("mqtt", [1], "http_400", 1001.0)

        assert store.prune(1000.0, ["mqtt", "hook"]) == {"events": 0, "alerts": 0, "silences": 0}
        assert store.prune(9000.0, ["mqtt", "hook"]) == {"events": 1, "alerts": 2, "silences": 1}
        # 1: a dead letter; 3: a2 is open; 4 and 5: owed to hook (5 is the newest, too).
        assert [e.seq for e in store.entries()] == [1, 3, 4, 5]
        assert [a.alert_id for a in store.alerts(include_ended=True)] == ["a2"]
        assert store.silences(0.0, include_expired=True) == []

        store.advance("hook", 5)
        store.take_dead_letters("mqtt")
        assert store.prune(9000.0, ["mqtt", "hook"])["events"] == 2  # 1 and 4; 5 is the newest
        assert [e.seq for e in store.entries()] == [3, 5]
        assert store.last_seq() == 5


def test_events_page_by_seq_in_the_contract_form(tmp_path: Path) -> None:
    written = tuple(event(i) for i in range(1, 8))
    with Store.open(tmp_path / "s.db") as store:
        store.apply(Changes(upserted=(alert(),), events=written))
        assert store.events() == [e.to_json() for e in written]
        assert [e["seq"] for e in store.events(0, 3)] == [1, 2, 3]
        assert [e["seq"] for e in store.events(3, 3)] == [4, 5, 6]
        assert [e["seq"] for e in store.events(6, 3)] == [7]
        assert store.events(7) == []
        assert store.events(0, 0) == []
        assert store.events(6)[0]["endpoint"]["name"] == "UBND huyện Cô Tô"
        with pytest.raises(ValueError, match="limit"):
            store.events(0, -1)


# -- one transaction per decision ------------------------------------------------------------


def traced(store: Store) -> list[str]:
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    return statements


def test_a_decision_is_one_transaction_and_no_changes_is_none(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        statements = traced(store)
        store.apply(Changes())
        assert statements == []
        store.apply(
            Changes(health=(HEALTH,), upserted=(alert(),), events=(event(1), event(2)),
                    silences=(SILENCE,))
        )  # fmt: skip
        control = [s for s in statements if re.match(r"(BEGIN|COMMIT|ROLLBACK)\b", s)]
        assert control == ["BEGIN IMMEDIATE", "COMMIT"]


GOOD = Changes(health=(HEALTH,), upserted=(alert(),), events=(event(1), event(2)))


@pytest.mark.parametrize(
    ("events", "why"),
    [
        ((event(3), event(3, "a9")), "seq 3 is not after seq 3"),  # duplicate within
        ((event(3), event(2, "a9")), "seq 2 is not after seq 3"),  # going back
        ((event(2, "a9"),), "seq 2 is not after seq 2"),  # already written
        ((event(3), event(4, "a9", id="e-1")), "UNIQUE constraint failed: events.id"),
    ],
)
def test_a_failing_decision_writes_nothing(
    tmp_path: Path, events: tuple[AlertEvent, ...], why: str
) -> None:
    with Store.open(tmp_path / "s.db") as store:
        store.apply(GOOD)
        before = everything(store)
        up = HealthRecord("co-to", "up", True, False, (True,), 1600.0)
        bad = Changes(
            health=(up,),
            upserted=(alert("a9"),),
            closed=(("a1", 1600.0),),
            events=events,
            silences=(SILENCE,),
        )
        with pytest.raises(StoreError, match=re.escape(why)) as caught:
            store.apply(bad)
        assert str(tmp_path / "s.db") in str(caught.value)
        assert everything(store) == before
        store.apply(Changes(upserted=(alert("a9"),), events=(event(3, "a9"),)))  # still usable
        assert store.load(0.0).seq == 3
    with Store.open(tmp_path / "s.db") as store:
        assert [a.alert_id for a in store.alerts()] == ["a1", "a9"]


def test_a_value_that_does_not_encode_writes_nothing(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        before = everything(store)
        statements = traced(store)
        with pytest.raises(TypeError):
            store.apply(Changes(health=(HEALTH,), upserted=(alert(detail={"x": object()}),)))
        assert statements == []  # failed before taking the write lock
        assert everything(store) == before


# -- the file --------------------------------------------------------------------------------


def test_the_connection_is_durable_and_wal(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        db = store._db
        assert db.isolation_level is None
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    db = sqlite3.connect(tmp_path / "s.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept in the file
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_epoch_is_kept_and_differs_between_files(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a.db") as a, Store.open(tmp_path / "b.db") as b:
        first = a.epoch
        assert re.fullmatch(r"[0-9a-f]{8}", first)
        assert a.epoch != b.epoch
        assert a.load(0.0).epoch == first
    with Store.open(tmp_path / "a.db") as again:
        assert again.epoch == first


def test_an_empty_file_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()  # truncated, or made by a provisioning tool: never silently a new state
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))} is empty \(0 bytes\)") as e:
        Store.open(path)
    assert not isinstance(e.value, StoreUnavailable)  # refused, not retried
    assert path.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_a_missing_file_is_created_with_an_empty_state(tmp_path: Path) -> None:
    with Store.open(tmp_path / "new" / "s.db") as store:
        assert store.load(0.0) == Snapshot(epoch=store.epoch, seq=0)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))} is not a usable vcmon database"):
        Store.open(path)
    assert path.read_bytes() == b"this is not sqlite at all" * 100  # left as it was


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=rf"{re.escape(str(path))} was written by a newer vcmon"):
        Store.open(path)


def test_another_programs_database_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"other\.db is an SQLite database of something else"):
        Store.open(path)
    db = sqlite3.connect(path)
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
    db.close()
    assert tables == ["customers"]


def test_a_path_that_cannot_be_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match=r"cannot open the state file .*dir\.db"):
        Store.open(tmp_path / "dir.db")
    (tmp_path / "plain").write_text("")
    with pytest.raises(StoreError, match=r"cannot open the state file .*plain/s\.db"):
        Store.open(tmp_path / "plain" / "s.db")


# The schema of the first release, as such files exist on disk.
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE health (endpoint_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    notified INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX alerts_open ON alerts (ended_at);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    alert_id TEXT NOT NULL,
    status TEXT NOT NULL,
    kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE silences (id TEXT PRIMARY KEY, ends_at REAL NOT NULL, body TEXT NOT NULL);
INSERT INTO meta VALUES ('epoch', '0badcafe');
PRAGMA user_version = 1;
"""


def test_a_schema_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.close()
    with Store.open(path) as store:
        store.apply(GOOD)
        store.advance("console", 2)
        assert store.epoch == "0badcafe"
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()
    with Store.open(path) as store:
        assert store.cursor("console") == 2
        assert store.cursor("never") is None
        assert store.load(0.0).seq == 2


def test_an_unreadable_record_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as store:
        store.apply(GOOD)
    db = sqlite3.connect(path)
    db.execute('UPDATE alerts SET body = \'{"alert_id": "a1"}\'')
    db.commit()
    db.close()
    with Store.open(path) as store, pytest.raises(StoreError, match=r"s\.db holds a record"):
        store.load(0.0)


# -- SIGKILL ---------------------------------------------------------------------------------

# Resumes after the last stored seq, like the daemon; one alert and its firing per decision.
WRITER = """
import sys
from vcmon.alerts.model import (
    Alert, AlertEvent, Changes, Kind, Measurements, Severity, Status, Target)
from vcmon.alerts.store import Store

target = Target("co-to", "Cô Tô", "127.0.0.1", "Cô Tô", "district", {"link": "viba"})
store = Store.open(sys.argv[1])
seq = store.load(0.0).seq
while True:
    seq += 1
    aid = f"a{seq}"
    a = Alert(aid, Kind.ENDPOINT_DOWN, Severity.CRITICAL, target, float(seq),
              notified=True, notified_severity=Severity.CRITICAL, detail={"n": seq})
    e = AlertEvent(f"{store.epoch}-{seq}", seq, aid, Status.FIRING, Kind.ENDPOINT_DOWN,
                   Severity.CRITICAL, "test", target, (), Measurements(), float(seq), None,
                   float(seq), summary="mất kết nối " * 20)
    store.apply(Changes(upserted=(a,), events=(e,)))
    print(seq, flush=True)
"""


def kill_writer_after(path: Path, lines: int, timeout: float = 30.0) -> list[int]:
    """Run WRITER until it has reported ``lines`` commits, SIGKILL it; every seq it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    out: queue.Queue[str | None] = queue.Queue()

    def pump(stream: Any) -> None:
        for line in stream:
            out.put(line)
        out.put(None)

    reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
    reader.start()
    printed: list[int] = []
    deadline = time.monotonic() + timeout
    while len(printed) < lines:
        try:
            line = out.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            line = None
        if line is None:  # ended, or no line by the deadline
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"writer gave {len(printed)} of {lines} lines (exit {proc.returncode}): "
                f"{proc.stderr.read()[-2000:]}"
            )
        printed.append(int(line))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=timeout) == -signal.SIGKILL
    reader.join(timeout)  # the lines still in the pipe were commits too
    while (line := out.get_nowait()) is not None:
        printed.append(int(line))
    proc.stderr.close()
    return printed


def test_sigkill_mid_stream_loses_no_committed_decision(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    reported: list[int] = []
    for _ in range(3):  # each writer resumes from what the last one left
        reported += kill_writer_after(path, 20)
        with Store.open(path) as store:
            events = store.events(0, 100_000)
            alerts = store.alerts(limit=100_000)
            snapshot = store.load(0.0)
        seqs = [e["seq"] for e in events]
        assert set(reported) <= set(seqs)  # every commit it reported is there
        assert seqs == list(range(1, len(seqs) + 1))  # no gap, no seq written twice
        assert snapshot.seq == seqs[-1]
        # Nothing half-written: each decision's alert and event are both there or both not.
        assert {e["alert_id"] for e in events} == {a.alert_id for a in alerts}
        assert all(a.detail == {"n": int(a.alert_id[1:])} for a in alerts)
    assert len(reported) >= 60


def test_the_runtime_prunes_by_the_configured_retention_every_six_hours(tmp_path: Path) -> None:
    from vcmon.alerts.runtime import DAY, PRUNE_EVERY, AlertRuntime
    from vcmon.clock import FakeClock
    from vcmon.config import load_config

    path = tmp_path / "vcmon.yaml"
    path.write_text(
        "alerts: {retention_days: 30, state_file: state.db}\n"
        "endpoints:\n  - {id: a, name: A, address: 127.0.0.1, district: D, level: province}\n",
        encoding="utf-8",
    )
    clock = FakeClock(100 * DAY)
    runtime = AlertRuntime.open(load_config(path, env={}), clock)
    try:
        store = runtime.store
        old = replace(event(1, "a1", Status.RESOLVED), at=clock.now - 31 * DAY)
        store.apply(Changes(upserted=(alert("a1"),), events=(old, event(2, "a2"))))
        store.apply(Changes(closed=(("a1", clock.now - 31 * DAY),)))
        runtime.sink_status = lambda: {"console": None}
        store.advance("console", 2)
        runtime.prune(clock.now)
        assert [e.seq for e in store.entries()] == [2]
        assert store.alerts(include_ended=True) == []
        store.apply(Changes(upserted=(alert("a3"),), closed=(("a3", clock.now - 40 * DAY),)))
        clock.advance(PRUNE_EVERY - 1)
        runtime.prune(clock.now)  # too soon
        assert len(store.alerts(include_ended=True)) == 1
        clock.advance(1)
        runtime.prune(clock.now)
        assert store.alerts(include_ended=True) == []
    finally:
        runtime.close()


def test_events_come_back_typed_with_their_labels_and_old_rows_without_labels_load(
    tmp_path: Path,
) -> None:
    from vcmon.alerts.store import event_to_json

    labelled = replace(event(1, "a1"), target=replace(event(1, "a1").target, labels={"isp": "x"}))
    with Store.open(tmp_path / "s.db") as store:
        store.apply(Changes(upserted=(alert("a1"),), events=(labelled,)))
        # A row written before labels were stored: the contract's object alone.
        old = event(2, "a2")
        store._db.execute(
            "INSERT INTO events (seq, id, alert_id, status, kind, target_id, at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (2, old.id, old.alert_id, old.status.value, old.kind.value, old.target.id, old.at,
             json.dumps(old.to_json())),
        )  # fmt: skip
        got = store.entries()
        unlabelled = replace(old, target=replace(old.target, labels={}))
        assert got == [labelled, unlabelled]  # decoded exactly, `at` from the row
        assert got[0].target.labels == {"isp": "x"}
        assert got[1].target.labels == {}
        assert event_to_json(labelled)["endpoint"]["labels"] == {"isp": "x"}
        # The contract's form (what sinks send) is unchanged: no labels in it.
        assert store.events() == [labelled.to_json(), old.to_json()]
