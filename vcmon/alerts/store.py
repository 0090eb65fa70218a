"""Durable alert state in SQLite: health states, open alerts, silences, the event log, and
each sink's delivery cursor.

A decision's ``Changes`` are written in one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``,
explicit, on a connection in autocommit mode), in WAL mode with ``synchronous=FULL``: the
commit is fsynced before ``apply`` returns, so a decision is on disk before anything is sent.
After a crash at any instant, SIGKILL included, a decision is either all there or not at all:
no delivered alert re-fires after a restart and no pending resolve is lost.

The event log (``events``, keyed by ``seq``, strictly increasing) is what every sink reads;
``sink_cursors`` holds the last seq each sink is done with and ``dead_letters`` the events a
sink gave up on (schema 2). ``PRAGMA user_version`` is the schema version; ``Store.open``
upgrades older files step by step (``_MIGRATIONS``) and refuses newer ones.

One connection, used on the thread that opened it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

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
from vcmon.config.alerts import Matchers

SCHEMA_VERSION: Final = 2
BUSY_TIMEOUT_MS: Final = 5000  # a CLI reading while the daemon commits waits, never fails

_T = TypeVar("_T")

# The statements that take a file from schema ``n - 1`` to ``n``; never edit a released step.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE health (endpoint_id TEXT PRIMARY KEY, body TEXT NOT NULL)",
        """CREATE TABLE alerts (
            alert_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            target_id TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            notified INTEGER NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX alerts_open ON alerts (ended_at)",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            alert_id TEXT NOT NULL,
            status TEXT NOT NULL,
            kind TEXT NOT NULL,
            target_id TEXT NOT NULL,
            at REAL NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE TABLE silences (id TEXT PRIMARY KEY, ends_at REAL NOT NULL, body TEXT NOT NULL)",
    ),
    2: (
        "CREATE TABLE IF NOT EXISTS sink_cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
        """CREATE TABLE IF NOT EXISTS dead_letters (
            sink TEXT NOT NULL,
            seq INTEGER NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (sink, seq)
        )""",
        # firing_events() looks up each open alert's newest firing at start.
        "CREATE INDEX IF NOT EXISTS events_alert ON events (alert_id, seq)",
    ),
}

_UPSERT_HEALTH: Final = """
INSERT INTO health (endpoint_id, body) VALUES (?, ?)
ON CONFLICT (endpoint_id) DO UPDATE SET body = excluded.body
"""
# An upserted alert is one the engine holds open, so its row is open too (ended_at NULL).
_UPSERT_ALERT: Final = """
INSERT INTO alerts (alert_id, kind, target_id, started_at, ended_at, notified, body)
VALUES (?, ?, ?, ?, NULL, ?, ?)
ON CONFLICT (alert_id) DO UPDATE SET
    kind = excluded.kind, target_id = excluded.target_id, started_at = excluded.started_at,
    ended_at = NULL, notified = excluded.notified, body = excluded.body
"""
# No row to update is fine: the engine drops the upsert of an alert opened and closed within
# one decision. An alert ends once; a repeated close keeps the first end.
_CLOSE_ALERT: Final = "UPDATE alerts SET ended_at = ? WHERE alert_id = ? AND ended_at IS NULL"
_INSERT_EVENT: Final = """
INSERT INTO events (seq, id, alert_id, status, kind, target_id, at, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_UPSERT_SILENCE: Final = """
INSERT INTO silences (id, ends_at, body) VALUES (?, ?, ?)
ON CONFLICT (id) DO UPDATE SET ends_at = excluded.ends_at, body = excluded.body
"""


class StoreError(Exception):
    """The state file cannot be used; the message names it and says why."""


class StoreUnavailable(StoreError):
    """The state file cannot be opened now for a reason outside it (permissions, a full or
    read-only file system): the daemon keeps probing and tries again."""


class UnwritableValue(StoreError):
    """A value of a decision cannot be stored (text that is not valid Unicode, a number out
    of SQLite's range); nothing was written."""


# SQLite's primary result codes that say the environment, not the file, is at fault.
_SQLITE_ENVIRONMENT: Final = {
    3: "permission denied",  # SQLITE_PERM
    5: "the file is locked by another process",  # SQLITE_BUSY
    8: "the file or its directory is read-only",  # SQLITE_READONLY
    10: "an I/O error",  # SQLITE_IOERR
    13: "the disk is full",  # SQLITE_FULL
    14: "permission denied or no such directory",  # SQLITE_CANTOPEN
}
_OS_PERMISSION: Final = {errno.EACCES, errno.EPERM, errno.EROFS}


# -- values to JSON and back -------------------------------------------------------------------


def target_to_json(t: Target) -> dict[str, Any]:
    """A target with its labels (the event contract's form leaves them out)."""
    return t.to_json() | {"labels": dict(t.labels)}


def target_from_json(d: dict[str, Any]) -> Target:
    """The inverse of target_to_json."""
    return Target(
        id=d["id"],
        name=d["name"],
        address=d["address"],
        district=d["district"],
        level=d["level"],
        labels=dict(d.get("labels", {})),
    )


def alert_to_json(a: Alert) -> dict[str, Any]:
    """Everything of an alert, JSON-ready; ``detail`` values must be JSON values (a tuple
    in it comes back a list)."""
    return {
        "alert_id": a.alert_id,
        "kind": a.kind.value,
        "severity": a.severity.value,
        "target": target_to_json(a.target),
        "started_at": a.started_at,
        "affected": list(a.affected),
        "measurements": dataclasses.asdict(a.measurements),
        "notified": a.notified,
        "notified_severity": (
            a.notified_severity.value if a.notified_severity is not None else None
        ),
        "detail": dict(a.detail),
    }


def alert_from_json(d: dict[str, Any]) -> Alert:
    """The inverse of alert_to_json."""
    notified_severity = d.get("notified_severity")
    return Alert(
        alert_id=d["alert_id"],
        kind=Kind(d["kind"]),
        severity=Severity(d["severity"]),
        target=target_from_json(d["target"]),
        started_at=d["started_at"],
        affected=tuple(d["affected"]),
        measurements=Measurements(**d["measurements"]),
        notified=bool(d["notified"]),
        notified_severity=Severity(notified_severity) if notified_severity is not None else None,
        detail=dict(d["detail"]),
    )


def silence_to_json(s: Silence) -> dict[str, Any]:
    """Everything of a silence, JSON-ready."""
    return {
        "id": s.id,
        "matchers": s.matchers.model_dump(mode="json", by_alias=True),
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
        flapping=bool(d["flapping"]),
        history=tuple(d["history"]),
        since=d["since"],
    )


def event_to_json(e: AlertEvent) -> dict[str, Any]:
    """An event as stored: the contract's object, its endpoint with the labels (routing
    reads them from the event, not from a config that may have changed since)."""
    doc = e.to_json()
    doc["endpoint"] = target_to_json(e.target)
    return doc


def _time(text: str) -> float:
    moment = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return moment.timestamp()


def event_from_json(d: dict[str, Any], at: float) -> AlertEvent:
    """The inverse of event_to_json, ``at`` from its row; rows written before the labels
    were stored have none."""
    ended = d.get("ended_at")
    return AlertEvent(
        id=d["id"],
        seq=int(d["seq"]),
        alert_id=d["alert_id"],
        status=Status(d["status"]),
        kind=Kind(d["kind"]),
        severity=Severity(d["severity"]),
        instance=d.get("instance", ""),
        target=target_from_json(d["endpoint"]),
        affected=tuple(d.get("affected") or ()),
        measurements=Measurements(**d.get("measurements") or {}),
        started_at=_time(d["started_at"]),
        ended_at=_time(ended) if ended else None,
        at=at,
        summary=d.get("summary", ""),
        description=d.get("description", ""),
    )


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _alert_row(a: Alert) -> tuple[Any, ...]:
    return (a.alert_id, a.kind.value, a.target.id, a.started_at, int(a.notified),
            _dumps(alert_to_json(a)))  # fmt: skip


def _event_row(e: AlertEvent) -> tuple[Any, ...]:
    return (e.seq, e.id, e.alert_id, e.status.value, e.kind.value, e.target.id, e.at,
            _dumps(event_to_json(e)))  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class _Rows:
    """The rows of one Changes, encoded before its transaction begins, so a value that does
    not encode fails the call without ever taking the write lock."""

    health: list[tuple[Any, ...]]
    alerts: list[tuple[Any, ...]]
    closed: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    silences: list[tuple[Any, ...]]

    @classmethod
    def of(cls, c: Changes) -> _Rows:
        return cls(
            health=[(h.endpoint_id, _dumps(health_to_json(h))) for h in c.health],
            alerts=[_alert_row(a) for a in c.upserted],
            closed=[(ended_at, alert_id) for alert_id, ended_at in c.closed],
            events=[_event_row(e) for e in c.events],
            silences=[(s.id, s.ends_at, _dumps(silence_to_json(s))) for s in c.silences],
        )


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """``begin`` … COMMIT, or ROLLBACK on any error (a failed COMMIT included)."""
    db.execute(begin)
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (busy, I/O) may leave the transaction open, and every later BEGIN
        # would fail; SQLite may also have rolled back already, hence the check.
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _prepare(db: sqlite3.Connection, path: Path) -> str:
    """Configure the connection, create or upgrade the schema; the database's epoch."""
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # The first read of the file: one that is not SQLite fails here, untouched.
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(
            f"the state file {path} cannot be put in WAL mode (journal mode is {mode}); "
            "keep it on a local file system"
        )
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    # IMMEDIATE: of two processes creating or upgrading the file at once, the second waits
    # and then sees the first one's schema.
    with _transaction(db):
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the state file {path} was written by a newer vcmon (schema {version}, this "
                f"one reads up to {SCHEMA_VERSION}); upgrade vcmon or move the file away"
            )
        if version < 0:
            raise StoreError(f"the state file {path} is not a usable vcmon database")
        if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(
                f"the state file {path} is an SQLite database of something else, not a "
                "usable vcmon database; choose another alerts.state_file"
            )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                db.execute(statement)
        if version == 0:
            db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (secrets.token_hex(4),))
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # A file SQLite could only open read-only (a read-only mount, a file without write
        # permission) fails here, at the start, not at the first decision.
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', ?)",
                   (repr(time.time()),))  # fmt: skip
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None:
            raise StoreError(f"the state file {path} is not a usable vcmon database (no epoch)")
        return str(row[0])


# -- opening -----------------------------------------------------------------------------------


def _connect(path: Path) -> tuple[sqlite3.Connection, str]:
    """Open or create the state file; what is created (directory, file, WAL and shared-memory
    files) is private to the user vcmon runs as, whatever the umask."""
    # Process-wide, but the daemon opens its store on the loop thread before anything else
    # creates files, and SQLite gives the WAL and -shm files the database file's mode.
    old = os.umask(0o077)
    try:
        return _connect_private(path)
    finally:
        os.umask(old)


def _connect_private(path: Path) -> tuple[sqlite3.Connection, str]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_failure(path, exc, path.parent) from None
    try:
        st = path.stat()
    except FileNotFoundError:
        new = True
    except OSError as exc:
        raise _os_failure(path, exc, path) from None
    else:
        new = False
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"cannot open the state file {path}: it is not a regular file")
        if st.st_size == 0:
            # SQLite would take it for an empty database and every alert would fire again
            # under a new id: a state file does not become empty on its own.
            raise StoreError(
                f"the state file {path} is empty (0 bytes); it may have been truncated; "
                "move it away to start afresh or restore a backup"
            )
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise _sqlite_failure(path, exc, new) from None
    try:
        epoch = _prepare(db, path)
    except sqlite3.Error as exc:
        db.close()
        if new:
            _remove_if_empty(path)  # a 0-byte leftover would be refused at the next start
        raise _sqlite_failure(path, exc, new) from None
    except BaseException:
        db.close()
        raise
    if new:
        with contextlib.suppress(OSError):
            path.chmod(0o600)
    return db, epoch


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size != 0:
            return  # something was written after all: not ours to remove
        for leftover in (path, *(Path(f"{path}{x}") for x in ("-wal", "-shm", "-journal"))):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _advice(path: Path, new: bool, why: str) -> str:
    doing = "create" if new else "write"
    where = path.parent if new else f"{path} and {path.parent}"
    return (
        f"cannot {doing} the state file {path}: {why}; give the user vcmon runs as "
        f"(uid {os.geteuid()}) write access to {where} or set alerts.state_file"
    )


def _os_failure(path: Path, exc: OSError, at: Path) -> StoreError:
    if exc.errno in _OS_PERMISSION:
        return StoreUnavailable(_advice(path, True, f"{(exc.strerror or str(exc)).lower()} ({at})"))
    if exc.errno == errno.ENOSPC:
        return StoreUnavailable(f"cannot create the state file {path}: the disk is full")
    return StoreError(f"cannot open the state file {path}: {exc.strerror} ({at})")


def _sqlite_failure(path: Path, exc: sqlite3.Error, new: bool) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    why = _SQLITE_ENVIRONMENT.get(code & 0xFF) if isinstance(code, int) else None
    if why is None:
        return StoreError(
            f"the state file {path} is not a usable vcmon database ({exc}); "
            "move it away to start with an empty state"
        )
    if code is not None and code & 0xFF in (13, 10, 5):  # full, I/O, busy: not permissions
        return StoreUnavailable(f"cannot open the state file {path}: {why} ({exc})")
    return StoreUnavailable(_advice(path, new, _diagnose(path, new) or why))


def _diagnose(path: Path, new: bool) -> str | None:
    """Why SQLite could not open or write ``path``, in the words of the file system."""
    with contextlib.suppress(OSError):
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return "the file system is read-only"
    # SQLite needs to create the -wal and -shm files next to the database.
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"permission denied (directory {path.parent})"
    if not new and not os.access(path, os.R_OK | os.W_OK):
        return "permission denied (the file)"
    return None


# -- the store ---------------------------------------------------------------------------------


class Store:
    """One SQLite database; every method runs on the thread that opened it.

    A store that could not be opened (``Store.unopened``) raises StoreUnavailable from every
    call until ``reopen`` succeeds, so whoever holds it keeps the same object throughout.
    """

    def __init__(self, path: Path, db: sqlite3.Connection | None = None, epoch: str = "") -> None:
        self.path = path
        self.epoch = epoch
        self._conn = db
        self._why = f"the state file {path} is not open"
        self.write_failures = 0  # failed write transactions and failed opens
        self.opened_seq = 0  # seq of the newest event when the file was opened

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open ``path``, creating it (and its directory) with the schema when missing.

        StoreUnavailable when the environment is at fault (permissions, a full or read-only
        disk), StoreError when the file itself is not a usable vcmon database."""
        store = cls(Path(path))
        store.reopen()
        return store

    @classmethod
    def unopened(cls, path: str | Path, why: StoreError) -> Store:
        """A store not open yet, because of ``why``; ``reopen`` tries again."""
        store = cls(Path(path))
        store._why = str(why)
        store.write_failures = 1  # the attempt that failed
        return store

    @property
    def is_open(self) -> bool:
        """True once a connection is open (it may still fail to write)."""
        return self._conn is not None

    def reopen(self) -> None:
        """Open the file if this store is not open yet; raises as ``open`` does."""
        if self._conn is not None:
            return
        try:
            self._conn, self.epoch = _connect(self.path)
        except StoreError as exc:
            self._why = str(exc)
            self.write_failures += 1
            raise
        self.opened_seq = self.last_seq()

    def unopen(self, why: StoreError) -> None:
        """Close, and be an unopened store again (one whose contents could not be used)."""
        self.close()
        self._conn, self._why = None, str(why)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(self._why)
        return self._conn

    def close(self) -> None:
        """Close the database (a second close does nothing)."""
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the engine's state --------------------------------------------------------------------

    def load(self, now: float) -> Snapshot:
        """Everything the engine restores from: health, open alerts, silences not ended at
        ``now``."""
        db = self._db
        # One read transaction: a consistent view even if another process writes meanwhile.
        with self._failing("read"), _transaction(db, "BEGIN"):
            seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
            health_rows = db.execute("SELECT body FROM health ORDER BY endpoint_id").fetchall()
            alert_rows = db.execute(
                "SELECT body FROM alerts WHERE ended_at IS NULL ORDER BY started_at, alert_id"
            ).fetchall()
            silences = self._silences(now, include_expired=False)
        health = (self._decode(body, health_from_json) for (body,) in health_rows)
        return Snapshot(
            epoch=self.epoch,
            seq=seq,
            health={h.endpoint_id: h for h in health},
            alerts=tuple(self._decode(body, alert_from_json) for (body,) in alert_rows),
            silences=tuple(silences),
        )

    def apply(self, changes: Changes) -> None:
        """Write one decision in one transaction: all of it, or on any error none of it."""
        self.apply_all((changes,))

    def apply_all(self, decisions: Iterable[Changes]) -> None:
        """Write several decisions, in order, in one transaction: the same as applying each
        in turn, with one fsync; on any error none of them is written."""
        try:
            batch = [(c, _Rows.of(c)) for c in decisions if not c.empty()]
        except (ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
            raise self._unwritable(exc) from None
        if not batch:
            return
        db = self._db
        try:
            with self._failing("write"), _transaction(db):
                for changes, rows in batch:
                    self._write(db, changes, rows)
        except (ValueError, OverflowError) as exc:  # a lone surrogate, an integer > 64 bits
            raise self._unwritable(exc) from None

    def _unwritable(self, exc: Exception) -> UnwritableValue:
        return UnwritableValue(
            f"cannot write to the state file {self.path}: a value cannot be stored "
            f"({type(exc).__name__}: {exc}); nothing was written"
        )

    def _write(self, db: sqlite3.Connection, changes: Changes, rows: _Rows) -> None:
        db.executemany(_UPSERT_HEALTH, rows.health)
        db.executemany(_UPSERT_ALERT, rows.alerts)
        db.executemany(_CLOSE_ALERT, rows.closed)
        if rows.events:
            last = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
            for event in changes.events:
                if event.seq <= last:
                    raise StoreError(
                        f"event seq {event.seq} is not after seq {last} already in the "
                        f"state file {self.path}; is another vcmon writing to it?"
                    )
                last = event.seq
            db.executemany(_INSERT_EVENT, rows.events)
        db.executemany(_UPSERT_SILENCE, rows.silences)

    def check_writable(self, now: float) -> None:
        """Write one small row, to learn whether writing works again; StoreError if not."""
        db = self._db
        with self._failing("write"), _transaction(db):
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('written_at', ?)",
                       (repr(now),))  # fmt: skip

    def events(self, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events with seq > ``after_seq``, in seq order, in the contract's JSON form."""
        return [e.to_json() for e in self.entries(after_seq, limit)]

    def entries(self, after_seq: int = 0, limit: int = 1000) -> list[AlertEvent]:
        """Events with seq > ``after_seq``, in seq order, decoded (``at``: when decided)."""
        _check_limit(limit)
        with self._failing("read"):
            rows = self._db.execute(
                "SELECT at, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [self._event(body, at) for at, body in rows]

    def last_seq(self) -> int:
        """Seq of the newest event (0 when there is none)."""
        with self._failing("read"):
            row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(row[0])

    def firing_events(self) -> list[AlertEvent]:
        """The newest firing event of every open alert that was announced, oldest first."""
        with self._failing("read"):
            rows = self._db.execute(
                "SELECT e.at, e.body FROM events e JOIN alerts a ON a.alert_id = e.alert_id "
                "WHERE a.ended_at IS NULL AND e.seq = (SELECT MAX(seq) FROM events "
                "WHERE alert_id = e.alert_id AND status = 'firing') ORDER BY e.seq"
            ).fetchall()
        return [self._event(body, at) for at, body in rows]

    def open_events(self) -> list[AlertEvent]:
        """The newest event of every open alert that was announced (firing or acknowledged),
        oldest first."""
        with self._failing("read"):
            rows = self._db.execute(
                "SELECT e.at, e.body FROM events e JOIN alerts a ON a.alert_id = e.alert_id "
                "WHERE a.ended_at IS NULL AND e.seq = (SELECT MAX(seq) FROM events "
                "WHERE alert_id = e.alert_id) ORDER BY e.seq"
            ).fetchall()
        return [self._event(body, at) for at, body in rows]

    def alerts(self, *, include_ended: bool = False, limit: int = 1000) -> list[Alert]:
        """Open alerts, oldest first; with ``include_ended`` ended ones too, newest first."""
        _check_limit(limit)
        sql = (
            "SELECT body FROM alerts ORDER BY started_at DESC, alert_id DESC LIMIT ?"
            if include_ended
            else "SELECT body FROM alerts WHERE ended_at IS NULL "
            "ORDER BY started_at, alert_id LIMIT ?"
        )
        with self._failing("read"):
            rows = self._db.execute(sql, (limit,)).fetchall()
        return [self._decode(body, alert_from_json) for (body,) in rows]

    def ended_alerts(self, since: float, limit: int = 1000) -> list[tuple[Alert, float]]:
        """Alerts that ended at or after ``since``, each with its end, the latest end first."""
        _check_limit(limit)
        with self._failing("read"):
            rows = self._db.execute(
                "SELECT body, ended_at FROM alerts WHERE ended_at >= ? "
                "ORDER BY ended_at DESC, alert_id LIMIT ?",
                (since, limit),
            ).fetchall()
        return [(self._decode(body, alert_from_json), float(ended)) for body, ended in rows]

    def silences(self, now: float, *, include_expired: bool = False) -> list[Silence]:
        """Silences not ended at ``now`` (or all, with ``include_expired``), by end."""
        with self._failing("read"):
            return self._silences(now, include_expired=include_expired)

    def _silences(self, now: float, *, include_expired: bool) -> list[Silence]:
        if include_expired:
            rows = self._db.execute("SELECT body FROM silences ORDER BY ends_at, id")
        else:
            rows = self._db.execute(
                "SELECT body FROM silences WHERE ends_at > ? ORDER BY ends_at, id", (now,)
            )
        return [self._decode(body, silence_from_json) for (body,) in rows.fetchall()]

    # -- delivery ----------------------------------------------------------------------------

    def cursor(self, sink: str) -> int | None:
        """Seq of the last event ``sink`` is done with, or None for a sink never seen."""
        with self._failing("read"):
            row = self._db.execute(
                "SELECT seq FROM sink_cursors WHERE sink = ?", (sink,)
            ).fetchone()
        return None if row is None else int(row[0])

    def advance(self, sink: str, seq: int, dead_letter: str | None = None, at: float = 0.0) -> None:
        """Mark ``sink`` done up to ``seq``; with ``dead_letter``, record why it gave up on it."""
        db = self._db
        with self._failing("write"), _transaction(db):
            db.execute("INSERT OR REPLACE INTO sink_cursors VALUES (?, ?)", (sink, seq))
            if dead_letter is not None:
                db.execute(
                    "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?)",
                    (sink, seq, dead_letter, at),
                )

    def prune(self, before: float, sinks: Iterable[str]) -> dict[str, int]:
        """Delete what ended before ``before``: alerts, their events, expired silences.

        Kept whatever their age: events of open alerts, events ``sinks`` have not delivered
        or gave up on (dead letters), and the newest event, whose seq the next one follows.
        Returns how many rows of each kind went.
        """
        db = self._db
        with self._failing("write"), _transaction(db):
            newest = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
            names = list(sinks)
            owed = newest
            if names:
                marks = ",".join("?" * len(names))
                row = db.execute(
                    f"SELECT MIN(seq) FROM sink_cursors WHERE sink IN ({marks})", names
                ).fetchone()
                owed = newest if row[0] is None else min(newest, int(row[0]))
            events = db.execute(
                "DELETE FROM events WHERE at < ? AND seq <= ? AND seq < ? "
                "AND alert_id NOT IN (SELECT alert_id FROM alerts WHERE ended_at IS NULL) "
                "AND seq NOT IN (SELECT seq FROM dead_letters)",
                (before, owed, newest),
            ).rowcount
            alerts = db.execute(
                "DELETE FROM alerts WHERE ended_at IS NOT NULL AND ended_at < ?", (before,)
            ).rowcount
            silences = db.execute("DELETE FROM silences WHERE ends_at < ?", (before,)).rowcount
        return {"events": events, "alerts": alerts, "silences": silences}

    def bury(self, sink: str, seqs: Iterable[int], reason: str, at: float) -> None:
        """Record dead letters of ``sink`` without moving its cursor (a refused grouped
        notification carries events the cursor may not have reached)."""
        db = self._db
        with self._failing("write"), _transaction(db):
            db.executemany(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?)",
                [(sink, seq, reason, at) for seq in seqs],
            )

    def dead_letters(self, sink: str | None = None) -> list[tuple[str, int, str, float]]:
        """(sink, seq, reason, at) of events a sink gave up on, oldest first."""
        sql = "SELECT sink, seq, reason, at FROM dead_letters"
        args: tuple[str, ...] = ()
        if sink is not None:
            sql, args = sql + " WHERE sink = ?", (sink,)
        with self._failing("read"):
            rows = self._db.execute(sql + " ORDER BY seq, sink", args).fetchall()
        return [(str(r[0]), int(r[1]), str(r[2]), float(r[3])) for r in rows]

    def take_dead_letters(self, sink: str) -> list[dict[str, Any]]:
        """Remove ``sink``'s dead letters and return their events, for a retry."""
        db = self._db
        with self._failing("write"), _transaction(db):
            rows = db.execute(
                "SELECT e.at, e.body FROM dead_letters d JOIN events e ON e.seq = d.seq "
                "WHERE d.sink = ? ORDER BY d.seq",
                (sink,),
            ).fetchall()
            db.execute("DELETE FROM dead_letters WHERE sink = ?", (sink,))
        return [self._event(body, at).to_json() for at, body in rows]

    # -- errors --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """Turn database errors into StoreError naming the file; misuse (a closed store, a
        bad statement) stays a sqlite3.ProgrammingError."""
        try:
            yield
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.Error as exc:
            if doing == "write":
                self.write_failures += 1
            raise StoreError(f"cannot {doing} the state file {self.path}: {exc}") from exc

    def _event(self, body: str, at: float) -> AlertEvent:
        return self._decode(body, lambda d: event_from_json(_json_object(d), float(at)))

    def _decode(self, body: str, decode: Callable[[dict[str, Any]], _T]) -> _T:
        try:
            return decode(json.loads(body))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"the state file {self.path} holds a record this vcmon cannot read "
                f"({type(exc).__name__}: {exc}); move the file away to start with an empty state"
            ) from exc


def _check_limit(limit: int) -> None:
    if limit < 0:  # SQLite reads a negative LIMIT as none at all
        raise ValueError(f"limit must be ≥ 0, got {limit}")


def _json_object(doc: object) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
    return doc
