"""The state file against real faults: a full tmpfs, a read-only bind mount, an empty file,
permissions; the held queue's bound; API writes whose commit fails leave memory untouched."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.alert_harness import Durable, obs
from vcmon.alerts.held import HeldQueue, merge
from vcmon.alerts.model import (
    Alert,
    AlertEvent,
    Changes,
    HealthRecord,
    Kind,
    Severity,
    Silence,
    Status,
    Target,
)
from vcmon.alerts.runtime import AlertRuntime
from vcmon.alerts.store import Store, StoreError, StoreUnavailable, UnwritableValue
from vcmon.clock import FakeClock
from vcmon.config import load_config
from vcmon.config.alerts import Matchers

T = Target("a", "A", "127.0.0.1", "D", "commune")


def _alert(aid: str, **kw: Any) -> Alert:
    return Alert(aid, Kind.ENDPOINT_DOWN, Severity.CRITICAL, T, 1.0, **kw)


def _event(seq: int, aid: str, status: Status = Status.FIRING) -> AlertEvent:
    return AlertEvent(f"e-{seq}", seq, aid, status, Kind.ENDPOINT_DOWN, Severity.CRITICAL, "t",
                      T, (), _alert(aid).measurements, 1.0, None, float(seq))  # fmt: skip


def _health(state: str, since: float) -> HealthRecord:
    return HealthRecord("a", state, state == "up", False, (state == "up",), since)


def _silence(sid: str, ends_at: float) -> Silence:
    return Silence(sid, Matchers(), 0.0, ends_at, "t", "", 0.0)


# -- the held queue, pure --------------------------------------------------------------------

DECISIONS = [
    Changes(health=(_health("down", 1),), upserted=(_alert("x"),), events=(_event(1, "x"),)),
    Changes(silences=(_silence("s", 100),)),
    Changes(upserted=(_alert("x", notified=True),), events=(_event(2, "x"),)),
    Changes(
        health=(_health("up", 5),), closed=(("x", 5.0),), events=(_event(3, "x", Status.RESOLVED),)
    ),
    Changes(upserted=(_alert("y"),), closed=(("y", 6.0),), silences=(_silence("s", 6),)),
    Changes(closed=(("x", 9.0),)),  # a repeated close keeps the first end
]


def _durable(decisions: list[Changes]) -> Durable:
    d = Durable()
    for c in decisions:
        d.apply(c)
    return d


@pytest.mark.parametrize("cut", range(len(DECISIONS) + 1))
def test_merging_held_decisions_writes_the_same_rows(tmp_path: Path, cut: int) -> None:
    head, tail = DECISIONS[:cut], DECISIONS[cut:]
    merged = [merge(head), *tail] if head else tail
    assert _durable(merged) == _durable(DECISIONS)
    with Store.open(tmp_path / "one.db") as one, Store.open(tmp_path / "two.db") as two:
        for c in DECISIONS:
            one.apply(c)
        two.apply_all(merged)
        rows = "SELECT * FROM {} ORDER BY 1"
        for table in ("health", "alerts", "events", "silences"):
            assert (one._db.execute(rows.format(table)).fetchall()
                    == two._db.execute(rows.format(table)).fetchall()), table  # fmt: skip


@pytest.mark.parametrize(
    ("max_decisions", "max_events", "held", "events", "dropped", "first_seq"),
    [
        (100, 100, 6, 3, 0, 1),  # within both bounds: as pushed
        (2, 100, 2, 3, 0, 1),  # past max_decisions: merged, nothing lost
        (1, 100, 1, 3, 0, 1),
        (100, 2, 6, 2, 1, 2),  # past max_events: the oldest event goes, counted
        (2, 0, 2, 0, 3, None),
    ],
)
def test_the_held_queue_is_bounded(
    max_decisions: int, max_events: int, held: int, events: int, dropped: int,
    first_seq: int | None,
) -> None:  # fmt: skip
    q = HeldQueue(max_decisions, max_events)
    for c in [*DECISIONS, Changes()]:
        q.push(c)
    assert (len(q), q.events, q.dropped_events) == (held, events, dropped)
    seqs = [e.seq for c in q for e in c.events]
    assert seqs == sorted(seqs)
    assert (seqs[0] if seqs else None) == first_seq
    assert sum(len(c.events) for c in q.pop(len(q))) == events
    assert q.events == 0


# -- a runtime on a real file ----------------------------------------------------------------

CONFIG = """\
alerts: {{state_file: {state}}}
endpoints:
  - {{id: a, name: A, address: 127.0.0.1, district: D, level: commune}}
  - {{id: b, name: B, address: 127.0.0.2, district: E, level: commune}}
"""


def _runtime(tmp_path: Path, state: Path, clock: FakeClock) -> AlertRuntime:
    path = tmp_path / "vcmon.yaml"
    path.write_text(CONFIG.format(state=state), encoding="utf-8")
    return AlertRuntime.open(load_config(path, env={}), clock)


def _rounds(rt: AlertRuntime, clock: FakeClock, n: int, ok: bool, ids: str = "ab") -> None:
    for _ in range(n):
        for eid in ids:
            rt.commit(rt.engine.observe(eid, obs(clock.now, ok=ok), clock.now + 1))
        clock.advance(10)
        rt.step()


def _memory(rt: AlertRuntime) -> tuple[Any, ...]:
    e = rt.engine
    return (dict(e.alerts), dict(e.silences), e.seq, len(rt.held))


def _log(store: Store) -> list[tuple[int, str, str, str]]:
    return [(d["seq"], d["id"], d["status"], d["kind"]) for d in store.events(0, 10_000)]


def test_a_silence_that_cannot_be_stored_changes_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    rt = _runtime(tmp_path, tmp_path / "s.db", clock)
    try:
        _rounds(rt, clock, 6, ok=False)
        before, log = _memory(rt), _log(rt.store)
        with pytest.raises(UnwritableValue, match="nothing was written"):
            rt.add_silence(Matchers(), 3600, "ops", "\ud800")
        assert _memory(rt) == before
        assert _log(rt.store) == log
        with pytest.raises(StoreError):
            rt.ack(next(iter(rt.engine.alerts.values())).alert_id, "ops", "\udfff")
        assert _memory(rt) == before
        assert _log(rt.store) == log
        assert rt.store_state().ok  # the file is fine: nothing to report
    finally:
        rt.close()


def test_expire_and_ack_that_cannot_be_committed_change_nothing(tmp_path: Path) -> None:
    """Another process holds the write lock: the commit fails, memory stays as it was, and
    the same request succeeds once the lock is gone (nothing decided meanwhile is lost)."""
    import sqlite3

    clock = FakeClock()
    rt = _runtime(tmp_path, tmp_path / "s.db", clock)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        rt.store._db.execute("PRAGMA busy_timeout=50")
        silence = rt.add_silence(Matchers(), 3600, "ops", "planned work")
        _rounds(rt, clock, 6, ok=False)
        assert rt.engine.alerts
        assert not any(a.notified for a in rt.engine.alerts.values())
        before, log = _memory(rt), _log(rt.store)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked"):
            rt.expire_silence(silence.id)
        assert _memory(rt) == before
        assert _log(rt.store) == log
        assert rt.suppressed_by(next(iter(rt.engine.alerts.values()))) == f"silence {silence.id}"
        other.execute("ROLLBACK")
        assert rt.expire_silence(silence.id) is not None
        fired = {a.alert_id for a in rt.engine.alerts.values() if a.notified}
        assert fired
        assert fired == {r["alert_id"] for r in rt.store.events(0) if r["status"] == "firing"}
        before, log = _memory(rt), _log(rt.store)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError):
            rt.ack(next(iter(fired)), "ops", "on it")
        assert _memory(rt) == before
        assert _log(rt.store) == log
        other.execute("ROLLBACK")
        assert rt.ack(next(iter(fired)), "ops", "on it") is not None
        assert _log(rt.store)[-1][2] == "acknowledged"
    finally:
        other.close()
        rt.close()


@contextlib.contextmanager
def _tmpfs(where: Path, size: str = "4m") -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "vcmon-test",
                    str(where)], check=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@contextlib.contextmanager
def _read_only(where: Path) -> Iterator[None]:
    subprocess.run(["mount", "--bind", str(where), str(where)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(where)], check=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def _fail_writes(rt: AlertRuntime, clock: FakeClock) -> None:
    """Decide until a write fails (SQLite reuses WAL pages already on disk for a while)."""
    for _ in range(200):
        _rounds(rt, clock, 1, ok=True)
        _rounds(rt, clock, 4, ok=False, ids="a")
        if not rt.store_state().ok:
            return
        _rounds(rt, clock, 3, ok=True, ids="a")
    raise AssertionError("no write failed on a full file system")


def test_a_full_disk_holds_decisions_and_writes_them_in_order_once_freed(
    tmp_path: Path, require_root: None
) -> None:
    clock = FakeClock()
    with _tmpfs(tmp_path / "fs") as fs:
        rt = _runtime(tmp_path, fs / "state" / "s.db", clock)
        changes = rt.changes.subscribe()
        try:
            filler = _fill(fs)
            _fail_writes(rt, clock)
            decided_before = rt.engine.seq
            _rounds(rt, clock, 5, ok=False, ids="b")  # probing goes on: b goes down
            _rounds(rt, clock, 5, ok=True, ids="a")
            st = rt.store_state()
            assert not st.ok
            assert st.pending_changes > 0
            assert st.pending_events > 0
            assert "full" in (st.error or "")
            assert rt.store.write_failures > 0
            assert rt.engine.seq > decided_before  # decided, not yet written
            urgent = [e.to_json() for e in changes.take().urgent]
            assert [d["kind"] for d in urgent] == ["state_store_failing"]
            assert rt.store.last_seq() < rt.engine.seq
            with pytest.raises(StoreError):  # nothing a person asks for is held
                rt.add_silence(Matchers(), 60, "ops", "")
            filler.unlink()
            rt.step()
            assert changes.take().written  # delivery is told once the held events are written
            assert rt.store_state().ok
            assert not rt.held
            log = _log(rt.store)
            seqs = [row[0] for row in log]
            assert seqs == list(range(1, len(seqs) + 1))  # contiguous: nothing lost, no dup
            assert seqs[-1] == rt.engine.seq
            assert len({row[1] for row in log}) == len(log)
            # The urgent firing is in the log with the same id, then its resolve.
            store_events = [(r[1], r[2]) for r in log if r[3] == "state_store_failing"]
            assert store_events[0] == (urgent[0]["id"], "firing")
            assert store_events[-1][1] == "resolved"
        finally:
            rt.close()


def test_a_read_only_mount_while_running_and_a_restart_under_it(
    tmp_path: Path, require_root: None
) -> None:
    """Descriptors opened before the remount stay writable (Linux), so a running daemon goes
    on writing; the restart is what meets the read-only directory, and it must not reset."""
    clock = FakeClock()
    state = tmp_path / "state"
    rt = _runtime(tmp_path, state / "s.db", clock)
    try:
        _rounds(rt, clock, 1, ok=True)
        with _read_only(state):
            _rounds(rt, clock, 6, ok=False)  # must not raise
            assert rt.store_state().ok
            assert rt.store.last_seq() == rt.engine.seq > 0
            rt.close()
            open_before = {a.alert_id for a in rt.engine.alerts.values()}
            rt = _runtime(tmp_path, state / "s.db", clock)  # the restart
            st = rt.store_state()
            assert not st.ok
            assert "read-only" in (st.error or ""), st
            assert "not a usable" not in (st.error or "")
            _rounds(rt, clock, 2, ok=False)  # probing goes on, decided from nothing
            assert rt.store_state().pending_changes > 0
        rt.step()  # the file opens: its own state wins over what was decided without it
        assert rt.store_state().ok
        assert rt.store_state().dropped_events > 0
        assert open_before <= {a.alert_id for a in rt.engine.alerts.values()}
        seqs = [row[0] for row in _log(rt.store)]
        assert seqs == list(range(1, rt.engine.seq + 1))
        assert {a.alert_id for a in rt.store.alerts()} == {
            a.alert_id for a in rt.engine.alerts.values()
        }
    finally:
        rt.close()


def test_a_read_only_directory_at_start_keeps_probing_and_opens_later(
    tmp_path: Path, require_root: None
) -> None:
    clock = FakeClock()
    state = tmp_path / "state"
    state.mkdir()
    with _read_only(state):
        rt = _runtime(tmp_path, state / "s.db", clock)
        try:
            st = rt.store_state()
            assert not st.ok
            assert re.search(r"cannot create the state file .*s\.db: the file system is "
                             r"read-only; give the user vcmon runs as", st.error or "")  # fmt: skip
            assert "move it away" not in (st.error or "")
            _rounds(rt, clock, 6, ok=False)
            assert rt.store_state().pending_events > 0
        except BaseException:
            rt.close()
            raise
    try:
        rt.step()
        assert rt.store_state().ok
        log = _log(rt.store)
        assert [r[0] for r in log] == list(range(1, rt.engine.seq + 1))
        assert {"endpoint_down", "state_store_failing"} <= {r[3] for r in log}
        assert oct((state / "s.db").stat().st_mode & 0o777) == "0o600"
    finally:
        rt.close()


def test_an_empty_state_file_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "s.db").touch()
    with pytest.raises(StoreError, match=r"is empty \(0 bytes\); it may have been truncated"):
        _runtime(tmp_path, tmp_path / "s.db", FakeClock())


def test_permission_denied_says_so(require_root: None) -> None:
    """As an unprivileged user (a child process), a directory it cannot write."""
    tmp_path = Path(tempfile.mkdtemp(prefix="vcmon-perm-"))  # pytest's own is 0700 to root
    tmp_path.chmod(0o755)
    try:
        _permission_denied_says_so(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _permission_denied_says_so(tmp_path: Path) -> None:
    Store.open(tmp_path / "old.db").close()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        messages = []
        os.setgid(65534)
        os.setuid(65534)
        for name in ("new.db", "old.db"):
            try:
                Store.open(tmp_path / name)
                messages.append("opened")
            except StoreUnavailable as exc:
                messages.append(str(exc))
            except BaseException as exc:
                messages.append(f"{type(exc).__name__}: {exc}")
        os.write(write, "\n".join(messages).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        new, old = f.read().split("\n")
    os.waitpid(pid, 0)
    expected = (
        rf"cannot create the state file {re.escape(str(tmp_path))}/new\.db: permission denied "
        r"\(directory .*\); give the user vcmon runs as \(uid 65534\) write access to .* or "
        r"set alerts\.state_file"
    )
    assert re.fullmatch(expected, new), new
    assert old.startswith(f"cannot write the state file {tmp_path}/old.db: permission denied")


def test_state_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Store.open(tmp_path / "state" / "s.db") as store:
            store.check_writable(1.0)
            modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "state").iterdir()}
        assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
        assert modes["s.db"] == 0o600
        assert set(modes.values()) == {0o600}, modes
    finally:
        os.umask(old)


# -- the real daemon -------------------------------------------------------------------------


def test_the_daemon_starts_on_a_read_only_state_directory_and_recovers(
    tmp_path: Path, require_root: None
) -> None:
    import sys

    import httpx

    from tests.support.helpers import free_port, wait_for

    port = free_port()
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "vcmon.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        "defaults: {interval: 1.0, count: 2, spacing: 0.05, timeout: 0.5}\n"
        f"alerts: {{state_file: {state / 's.db'}}}\n"
        "sinks:\n  - {type: console}\n"
        "endpoints:\n  - {id: a, name: A, address: 127.0.0.1, district: D, level: commune}\n",
        encoding="utf-8",
    )
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "daemon.log"

    def log() -> str:
        return log_path.read_text(encoding="utf-8", errors="replace")

    def metric(name: str) -> float:
        for line in httpx.get(base + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} missing")

    with _read_only(state), log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vcmon", "run", "-c", str(config)], stdout=out, stderr=out
        )
    try:
        with _read_only(state):

            def failing() -> httpx.Response | None:
                r = httpx.get(base + "/-/ready", timeout=5)
                return r if r.status_code == 503 and "state store is failing" in r.text else None

            ready = wait_for(failing, 15, "ready saying the state store fails")
            assert "read-only" in ready.text
            doc = httpx.get(base + "/api/v1/status", timeout=5).json()["state_store"]
            assert doc["ok"] is False
            assert "cannot create the state file" in doc["error"]
            assert metric("vcmon_state_store_ok") == 0.0
            assert metric("vcmon_state_store_write_failures_total") >= 1
            wait_for(lambda: metric("vcmon_state_store_pending_changes") >= 1, 10, "held")
            # Probing goes on, and the console got the alert the file could not take.
            rounds = 'vcmon_rounds_total{district="D",endpoint="a",level="commune",probe="icmp"}'
            wait_for(lambda: metric(rounds) >= 2, 10, "rounds")
            wait_for(lambda: "FIRING   critical state_store_failing" in log(), 10, "console")
            assert proc.poll() is None
        wait_for(lambda: httpx.get(base + "/-/ready", timeout=5).status_code == 200, 15, "ready")
        doc = httpx.get(base + "/api/v1/status", timeout=5).json()["state_store"]
        assert doc == doc | {"ok": True, "error": None, "pending_changes": 0}
        wait_for(lambda: "RESOLVED critical state_store_failing" in log(), 10, "resolve")
        assert log().count("FIRING   critical state_store_failing") == 1  # not again from the log
        assert "event=state_store_recovered" in log()
        assert "Traceback" not in log()
    finally:
        proc.terminate()
        proc.wait(10)
    with Store.open(state / "s.db") as store:
        kinds = [(d["kind"], d["status"]) for d in store.events(0)]
    assert kinds == [("state_store_failing", "firing"), ("state_store_failing", "resolved")]
