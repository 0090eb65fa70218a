"""The SQLite store: round trips, one transaction per decision, reopening, bad files, and
a writer killed with SIGKILL mid-stream."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vcmon.alerts.model import (
    Alert,
    AlertEvent,
    Changes,
    HealthRecord,
    Kind,
    Measurements,
    Severity,
    Silence,
    Status,
    Target,
)
from vcmon.alerts.policy import Matchers
from vcmon.alerts.store import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    alert_from_json,
    alert_to_json,
    silence_from_json,
    silence_to_json,
)

from .helpers import wait_for

TARGET = Target("co-to", "UBND huyện Cô Tô", "127.0.0.1", "Cô Tô", "district", {"link": "viba"})


def alert(alert_id: str = "a1", **changes: object) -> Alert:
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
        detail={"total": 3, "child_level": "commune"},
    )
    return base.with_(**changes)


def event(seq: int, alert_id: str = "a1", status: Status = Status.FIRING) -> AlertEvent:
    return AlertEvent(
        id=f"e-{seq}",
        seq=seq,
        alert_id=alert_id,
        status=status,
        kind=Kind.GROUP_DOWN,
        severity=Severity.CRITICAL,
        instance="test",
        target=TARGET,
        affected=("c1",),
        measurements=Measurements(),
        started_at=1000.0,
        ended_at=None,
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


def test_values_round_trip_exactly() -> None:
    assert alert_from_json(alert_to_json(alert())) == alert()
    assert alert_from_json(alert_to_json(alert(notified_severity=None))) == alert(
        notified_severity=None
    )
    assert silence_from_json(silence_to_json(SILENCE)) == SILENCE


def test_apply_then_reopen_gives_the_same_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "state" / "vcmon.db"
    with Store.open(path) as store:
        epoch = store.epoch
        store.apply(
            Changes(
                health=(HEALTH,),
                upserted=(alert(),),
                events=(event(1),),
                silences=(SILENCE,),
            )
        )
        first = store.load(2000.0)
    with Store.open(path) as store:
        again = store.load(2000.0)
        assert store.epoch == epoch
    assert again == first
    assert again.seq == 1
    assert again.alerts == (alert(),)
    assert again.health == {"co-to": HEALTH}
    assert again.silences == (SILENCE,)


def test_closed_alerts_and_ended_silences_are_not_restored(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        store.apply(Changes(upserted=(alert(), alert("a2")), silences=(SILENCE,)))
        store.apply(Changes(closed=(("a1", 1500.0),), events=(event(1, status=Status.RESOLVED),)))
        snap = store.load(6000.0)
        assert [a.alert_id for a in snap.alerts] == ["a2"]
        assert snap.silences == ()
        assert store.silences(6000.0, include_expired=True) == [SILENCE]
        assert {a.alert_id for a in store.alerts(include_ended=True)} == {"a1", "a2"}


def test_a_failing_decision_writes_nothing(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        store.apply(Changes(events=(event(1),)))
        bad = Changes(health=(HEALTH,), upserted=(alert("a9"),), events=(event(2), event(2, "a9")))
        with pytest.raises(sqlite3.IntegrityError):
            store.apply(bad)
        snap = store.load(0.0)
        assert snap.seq == 1
        assert snap.health == {}
        assert snap.alerts == ()


def test_wal_mode_and_distinct_epochs(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a.db") as a, Store.open(tmp_path / "b.db") as b:
        assert a.epoch != b.epoch
    db = sqlite3.connect(tmp_path / "a.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_events_page_by_seq(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        store.apply(Changes(events=tuple(event(i) for i in range(1, 8))))
        assert [e["seq"] for e in store.events(0, 3)] == [1, 2, 3]
        assert [e["seq"] for e in store.events(3, 100)] == [4, 5, 6, 7]
        doc = store.events(6)[0]
        assert doc["id"] == "e-7"
        assert doc["endpoint"]["name"] == "UBND huyện Cô Tô"


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match=r"junk\.db is not a usable vcmon database"):
        Store.open(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Store.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=r"new\.db was written by a newer vcmon"):
        Store.open(path)


def test_sigkill_mid_stream_loses_no_committed_decision(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    writer = textwrap.dedent(
        f"""
        import sys
        from tests.test_alert_store import alert, event
        from vcmon.alerts.model import Changes
        from vcmon.alerts.store import Store
        store = Store.open({str(path)!r})
        seq = 0
        while True:
            seq += 1
            store.apply(Changes(upserted=(alert(f"a{{seq}}"),), events=(event(seq, f"a{{seq}}"),)))
            print(seq, flush=True)
        """
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True, cwd=root
    )
    assert proc.stdout is not None
    printed: list[int] = []

    def enough() -> bool:
        line = proc.stdout.readline() if proc.stdout else ""
        if line:
            printed.append(int(line))
        return len(printed) >= 20

    wait_for(enough, 30, "20 committed decisions", poll=0.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store.open(path) as store:
        events = store.events(0, 100_000)
        seqs = [e["seq"] for e in events]
        alert_ids = {a.alert_id for a in store.alerts(limit=100_000)}
    assert set(printed) <= set(seqs)  # every commit it reported is there
    assert seqs == list(range(1, len(seqs) + 1))  # and nothing half-written
    assert {e["alert_id"] for e in events} <= alert_ids
