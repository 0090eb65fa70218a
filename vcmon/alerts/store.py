"""Durable alert state in SQLite: health states, open alerts, silences, the event log.

WAL mode with ``synchronous=FULL``: a decision's ``Changes`` are one transaction, on disk
before anything is sent, so after a crash at any instant (SIGKILL included) either all of a
decision is there or none of it. The event log (``events``, ordered by ``seq``) is what the
sinks read, each with its own cursor.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Final

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
    Target,
)
from vcmon.alerts.policy import Matchers

SCHEMA_VERSION: Final = 2

_SCHEMA: Final = """
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
CREATE TABLE silences (
    id TEXT PRIMARY KEY,
    ends_at REAL NOT NULL,
    body TEXT NOT NULL
);
"""

# Schema 2: per-sink delivery state.
_OUTBOX: Final = """
CREATE TABLE IF NOT EXISTS sink_cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    sink TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (sink, seq)
);
"""


class StoreError(Exception):
    """The state file cannot be used; the message names it and says why."""


# -- values to JSON and back -------------------------------------------------------------------


def target_to_json(t: Target) -> dict[str, Any]:
    """A target with its labels (the event contract's form leaves them out)."""
    return t.to_json() | {"labels": dict(t.labels)}


def target_from_json(d: dict[str, Any]) -> Target:
    """The inverse of target_to_json."""
    return Target(d["id"], d["name"], d["address"], d["district"], d["level"], d.get("labels", {}))


def alert_to_json(a: Alert) -> dict[str, Any]:
    """Everything of an alert, JSON-ready."""
    return {
        "alert_id": a.alert_id,
        "kind": a.kind.value,
        "severity": a.severity.value,
        "target": target_to_json(a.target),
        "started_at": a.started_at,
        "affected": list(a.affected),
        "measurements": {
            k: getattr(a.measurements, k) for k in ("rtt_ms", "jitter_ms", "loss_pct", "mos")
        },
        "notified": a.notified,
        "notified_severity": a.notified_severity.value if a.notified_severity else None,
        "detail": dict(a.detail),
    }


def alert_from_json(d: dict[str, Any]) -> Alert:
    """The inverse of alert_to_json."""
    notified = d.get("notified_severity")
    return Alert(
        alert_id=d["alert_id"],
        kind=Kind(d["kind"]),
        severity=Severity(d["severity"]),
        target=target_from_json(d["target"]),
        started_at=d["started_at"],
        affected=tuple(d["affected"]),
        measurements=Measurements(**d["measurements"]),
        notified=d["notified"],
        notified_severity=Severity(notified) if notified else None,
        detail=d["detail"],
    )


def silence_to_json(s: Silence) -> dict[str, Any]:
    """Everything of a silence, JSON-ready."""
    return {
        "id": s.id,
        "matchers": s.matchers.model_dump(exclude_defaults=True),
        "starts_at": s.starts_at,
        "ends_at": s.ends_at,
        "created_by": s.created_by,
        "comment": s.comment,
        "created_at": s.created_at,
    }


def silence_from_json(d: dict[str, Any]) -> Silence:
    """The inverse of silence_to_json."""
    return Silence(
        id=d["id"],
        matchers=Matchers.model_validate(d["matchers"]),
        starts_at=d["starts_at"],
        ends_at=d["ends_at"],
        created_by=d["created_by"],
        comment=d["comment"],
        created_at=d["created_at"],
    )


def health_to_json(h: HealthRecord) -> dict[str, Any]:
    """A health record, JSON-ready."""
    return {
        "endpoint_id": h.endpoint_id,
        "state": h.state,
        "confirmed_up": h.confirmed_up,
        "flapping": h.flapping,
        "history": list(h.history),
        "since": h.since,
    }


def health_from_json(d: dict[str, Any]) -> HealthRecord:
    """The inverse of health_to_json."""
    return HealthRecord(
        endpoint_id=d["endpoint_id"],
        state=d["state"],
        confirmed_up=d["confirmed_up"],
        flapping=d["flapping"],
        history=tuple(d["history"]),
        since=d["since"],
    )


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _alert_row(a: Alert) -> tuple[Any, ...]:
    return (a.alert_id, a.kind.value, a.target.id, a.started_at, int(a.notified),
            _dumps(alert_to_json(a)))  # fmt: skip


def _event_row(e: AlertEvent) -> tuple[Any, ...]:
    return (e.seq, e.id, e.alert_id, e.status.value, e.kind.value, e.target.id, e.at,
            _dumps(e.to_json()))  # fmt: skip


# -- the store ---------------------------------------------------------------------------------


class Store:
    """One SQLite database; every method runs on the caller's thread."""

    def __init__(self, path: Path, db: sqlite3.Connection, epoch: str) -> None:
        self.path = path
        self._db = db
        self.epoch = epoch

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open ``path``, creating it (and its directory) with the schema when missing."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state file {path}: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                epoch = secrets.token_hex(4)
                db.executescript(
                    "BEGIN IMMEDIATE;"
                    + _SCHEMA
                    + _OUTBOX
                    + f"PRAGMA user_version={SCHEMA_VERSION};"
                    f"INSERT INTO meta VALUES ('epoch', '{epoch}'); COMMIT;"
                )
            elif version < SCHEMA_VERSION:
                db.executescript(
                    "BEGIN IMMEDIATE;" + _OUTBOX + f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                )
            elif version > SCHEMA_VERSION:
                raise StoreError(
                    f"the state file {path} was written by a newer vcmon (schema {version}, "
                    f"this one reads up to {SCHEMA_VERSION}); upgrade vcmon or move the file"
                )
            epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(
                f"the state file {path} is not a usable vcmon database ({exc}); "
                "move it away to start with an empty state"
            ) from None
        except StoreError:
            db.close()
            raise
        return cls(path, db, str(epoch))

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def load(self, now: float) -> Snapshot:
        """Everything the engine restores from: health, open alerts, silences not yet ended."""
        db = self._db
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        health = {
            row[0]: health_from_json(json.loads(row[1]))
            for row in db.execute("SELECT endpoint_id, body FROM health")
        }
        alerts = tuple(
            alert_from_json(json.loads(row[0]))
            for row in db.execute(
                "SELECT body FROM alerts WHERE ended_at IS NULL ORDER BY started_at"
            )
        )
        return Snapshot(
            epoch=self.epoch,
            seq=int(seq),
            health=health,
            alerts=alerts,
            silences=tuple(self.silences(now)),
        )

    def apply(self, changes: Changes) -> None:
        """Write one decision in one transaction; all of it or, on error, none of it."""
        if changes.empty():
            return
        db = self._db
        with _transaction(db):
            db.executemany(
                "INSERT OR REPLACE INTO health VALUES (?, ?)",
                [(h.endpoint_id, _dumps(health_to_json(h))) for h in changes.health],
            )
            db.executemany(
                "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, NULL, ?, ?)",
                [_alert_row(a) for a in changes.upserted],
            )
            db.executemany(
                "UPDATE alerts SET ended_at = ? WHERE alert_id = ?",
                [(ended, alert_id) for alert_id, ended in changes.closed],
            )
            db.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [_event_row(e) for e in changes.events],
            )
            db.executemany(
                "INSERT OR REPLACE INTO silences VALUES (?, ?, ?)",
                [(s.id, s.ends_at, _dumps(silence_to_json(s))) for s in changes.silences],
            )

    def events(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events with seq > ``after_seq``, oldest first, in the contract's JSON form."""
        rows = self._db.execute(
            "SELECT body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        )
        return [json.loads(row[0]) for row in rows]

    def last_seq(self) -> int:
        """Seq of the newest event (0 when there is none)."""
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def cursor(self, sink: str) -> int | None:
        """Seq of the last event ``sink`` is done with, or None for a sink never seen."""
        row = self._db.execute("SELECT seq FROM sink_cursors WHERE sink = ?", (sink,)).fetchone()
        return None if row is None else int(row[0])

    def advance(self, sink: str, seq: int, dead_letter: str | None = None, at: float = 0.0) -> None:
        """Mark ``sink`` done up to ``seq``; with ``dead_letter``, record why it gave up on it."""
        with _transaction(self._db):
            self._db.execute("INSERT OR REPLACE INTO sink_cursors VALUES (?, ?)", (sink, seq))
            if dead_letter is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?)",
                    (sink, seq, dead_letter, at),
                )

    def dead_letters(self, sink: str | None = None) -> list[tuple[str, int, str, float]]:
        """(sink, seq, reason, at) of events a sink gave up on, oldest first."""
        sql = "SELECT sink, seq, reason, at FROM dead_letters"
        args: tuple[str, ...] = ()
        if sink is not None:
            sql, args = sql + " WHERE sink = ?", (sink,)
        return [
            (r[0], int(r[1]), r[2], float(r[3]))
            for r in self._db.execute(sql + " ORDER BY seq", args)
        ]

    def take_dead_letters(self, sink: str) -> list[dict[str, Any]]:
        """Remove ``sink``'s dead letters and return their events, for a retry."""
        with _transaction(self._db):
            rows = self._db.execute(
                "SELECT e.body FROM dead_letters d JOIN events e ON e.seq = d.seq "
                "WHERE d.sink = ? ORDER BY d.seq",
                (sink,),
            ).fetchall()
            self._db.execute("DELETE FROM dead_letters WHERE sink = ?", (sink,))
        return [json.loads(r[0]) for r in rows]

    def entries(self, after_seq: int = 0, limit: int = 1000) -> list[tuple[float, dict[str, Any]]]:
        """(when decided, event JSON) of events with seq > ``after_seq``, oldest first."""
        rows = self._db.execute(
            "SELECT at, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        )
        return [(float(row[0]), json.loads(row[1])) for row in rows]

    def alerts(self, *, include_ended: bool = False, limit: int = 1000) -> list[Alert]:
        """Open alerts, oldest first; with ``include_ended`` also ended ones, newest first."""
        sql = (
            "SELECT body FROM alerts ORDER BY started_at DESC LIMIT ?"
            if include_ended
            else "SELECT body FROM alerts WHERE ended_at IS NULL ORDER BY started_at LIMIT ?"
        )
        return [alert_from_json(json.loads(row[0])) for row in self._db.execute(sql, (limit,))]

    def silences(self, now: float, *, include_expired: bool = False) -> list[Silence]:
        """Silences not yet ended at ``now`` (or all, with ``include_expired``), by end."""
        sql = "SELECT body FROM silences" + ("" if include_expired else " WHERE ends_at > ?")
        args: tuple[float, ...] = () if include_expired else (now,)
        rows = self._db.execute(sql + " ORDER BY ends_at", args)
        return [silence_from_json(json.loads(row[0])) for row in rows]


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    else:
        if db.in_transaction:
            db.execute("COMMIT")
