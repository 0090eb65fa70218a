"""Storage faults under a running daemon: the state file on a real tmpfs filled to 100 %, a
read-only bind mount of the state directory at start (both need root), and a state file
truncated to 0 bytes."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.attacks.common import (
    FAST,
    FIRE,
    ROOMS,
    Daemon,
    Row,
    free_port,
    is_root,
    run_vcmon,
    running,
    short,
    skipped,
    start_daemon,
    wait_until,
)


def _config(state_file: Path, extra_rooms: int = 0) -> str:
    rooms = "".join(
        f"  - {{id: extra-{i}, name: Phòng thêm {i}, address: 127.0.{2 + i // 200}.{1 + i % 200},"
        f" district: X{i % 3}, level: commune}}\n"
        for i in range(extra_rooms)
    )
    return (
        FAST + f"alerts:\n  state_file: {state_file}\n" + FIRE + "sinks:\n  - {type: console}\n"
        "endpoints:\n" + ROOMS + rooms
    )


@contextlib.contextmanager
def _mounted(args: list[str], where: Path) -> Iterator[Path]:
    subprocess.run(["mount", *args, str(where)], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, capture_output=True)


def _store(d: Daemon) -> dict[str, Any]:
    return dict(d.get("/api/v1/status").json()["state_store"])


def _rounds(d: Daemon) -> float:
    return d.metric("vcmon_rounds_total")


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def _full_disk(tmp: Path, notes: dict[str, Any]) -> list[Row]:
    fs = tmp / "fs"
    fs.mkdir()
    state = fs / "state" / "vcmon.db"
    with _mounted(["-t", "tmpfs", "-o", "size=4m,mode=0700", "vcmon-bench"], fs):
        with running(tmp, _config(state), name="full") as d:
            filler = _fill(fs)
            # New rooms fire on their first round: decisions to write, 40 more per reload,
            # until SQLite has used the space its files already held.
            added = 0
            while _store(d)["ok"] and added < 400:
                added += 40
                reloads = d.log_count("event=config_reloaded")
                d.reload(_config(state, added))
                wait_until(lambda: d.log_count("event=config_reloaded") > reloads, 10, "reload")  # noqa: B023
                wait_until(
                    lambda: len(d.get("/api/v1/alerts").json()["alerts"]) >= 4 + added,  # noqa: B023
                    15,
                    "the new rooms' alerts",
                )
            failing = _store(d)
            rounds0 = _rounds(d)
            d.reload(_config(state, added + 40))  # decided while the disk is full
            wait_until(lambda: _rounds(d) >= rounds0 + 3 * (4 + added), 15, "rounds go on")
            wait_until(
                lambda: _store(d)["pending_events"] > failing["pending_events"],
                15,
                "the new rooms' events held",
            )
            held = _store(d)
            rounds = _rounds(d) - rounds0
            ready = d.get("/-/ready")
            failures = d.metric("vcmon_state_store_write_failures_total")
            filler.unlink()
            wait_until(
                lambda: _store(d)["ok"] and _store(d)["pending_changes"] == 0,
                30,
                "the held decisions written",
            )
            dropped = d.metric("vcmon_state_store_dropped_events")
            console = d.log_count("state_store_failing")
            alive = d.running()
        with contextlib.closing(sqlite3.connect(state)) as db:
            seqs = [r[0] for r in db.execute("SELECT seq FROM events ORDER BY seq")]
            kinds = [
                r[0]
                for r in db.execute(
                    "SELECT status FROM events WHERE kind = ?", ("state_store_failing",)
                )
            ]
    notes["full_disk"] = {
        "failing": failing,
        "held": held,
        "write_failures": failures,
        "rooms_added": added + 40,
        "console_lines": console,
    }
    contiguous = seqs == list(range(1, len(seqs) + 1))
    return [
        (
            "storage: state file on a full tmpfs, while running",
            alive and not held["ok"] and ready.status_code == 503 and rounds > 0 and failures > 0,
            f"probing on (+{rounds:.0f} rounds), /-/ready {ready.status_code}, status ok "
            f"{held['ok']}, {failures:.0f} write failures, {held['pending_changes']} decisions / "
            f"{held['pending_events']} events held",
        ),
        (
            "storage: the disk freed",
            contiguous and dropped == 0 and kinds == ["firing", "resolved"],
            f"pending 0; {len(seqs)} events, seq 1..{seqs[-1] if seqs else 0} "
            f"{'without a gap' if contiguous else 'WITH GAPS'}, {dropped:.0f} dropped; "
            f"state_store_failing {' → '.join(kinds)}",
        ),
    ]


def _read_only_dir(tmp: Path, notes: dict[str, Any]) -> Row:
    ro = tmp / "ro"
    ro.mkdir()
    with _mounted(["--bind", str(ro)], ro):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        with running(tmp, _config(ro / "vcmon.db"), name="ro", wait="/-/healthy") as d:
            rounds0 = _rounds(d)
            wait_until(lambda: _rounds(d) >= rounds0 + 8, 15, "rounds go on")
            ready = d.get("/-/ready")
            error = str(_store(d)["error"])
            rounds = _rounds(d) - rounds0
            alive = d.running()
    notes["read_only_dir"] = error
    plain = "read-only" in error and "move it away" not in error
    return (
        "storage: read-only state directory at start",
        alive and plain and ready.status_code == 503,
        f"probing on (+{rounds:.0f} rounds), /-/ready {ready.status_code}: "
        f"{short(error.split('vcmon.db: ', 1)[-1], 80)!r}",
    )


def _read_only_while_running(tmp: Path, notes: dict[str, Any]) -> Row:
    """The state directory remounted read-only under a running daemon, which is then
    restarted under it; then the mount goes and the file is writable again."""
    state = tmp / "rw"
    state.mkdir()
    config = _config(state / "vcmon.db")
    with running(tmp, config, name="rw") as d:
        with _mounted(["--bind", str(state)], state):
            subprocess.run(["mount", "-o", "remount,ro,bind", str(state)], check=True)
            rounds0 = _rounds(d)
            d.reload(_config(state / "vcmon.db", 20))  # new decisions to write
            wait_until(lambda: _rounds(d) >= rounds0 + 3 * 24, 15, "rounds go on")
            first = d.running()
            d.stop()
            again = start_daemon(tmp, config, name="rw-restart", wait="/-/healthy")
            try:
                rounds0 = _rounds(again)
                wait_until(lambda: _rounds(again) >= rounds0 + 8, 15, "rounds go on")
                ready = again.get("/-/ready")
                error = str(_store(again)["error"])
            except BaseException:
                again.stop()
                raise
        try:
            recovered = wait_until(lambda: again.get("/-/ready").status_code == 200, 20, "ready")
            alive = again.running()
        finally:
            again.stop()
    notes["read_only_while_running"] = error
    return (
        "storage: state directory remounted read-only, then a restart",
        first and alive and ready.status_code == 503 and "read-only" in error and recovered,
        f"first daemon ran on; restarted under it: probing, /-/ready {ready.status_code} "
        f"({short(error.split('vcmon.db: ', 1)[-1], 40)!r}); writable again → ready 200",
    )


def _truncated(tmp: Path) -> Row:
    state = tmp / "trunc" / "vcmon.db"
    state.parent.mkdir(mode=0o700)
    state.touch(mode=0o600)  # a state file cut to 0 bytes
    config = tmp / "trunc.yaml"
    config.write_text(f"listen: 127.0.0.1:{free_port()}\n" + _config(state), encoding="utf-8")
    ran = run_vcmon("run", "-c", str(config), within=20)
    said = next((line for line in ran.err.splitlines() if "is empty" in line), ran.first_error)
    said = said[said.find("is empty") :]
    size = state.stat().st_size
    held = ran.code not in (0, -9) and "empty (0 bytes)" in said and size == 0
    return (
        "storage: state file truncated to 0 bytes",
        held and "Traceback" not in ran.err,
        f"exit {ran.code} in {ran.wall_s:.1f} s, file still {size} bytes: {short(said, 64)!r}",
    )


def attacks(tmp: Path, duration: float, notes: dict[str, Any]) -> list[Row]:
    """Full disk, read-only directory, truncated file."""
    if is_root():
        rows = [
            *_full_disk(tmp, notes),
            _read_only_dir(tmp, notes),
            _read_only_while_running(tmp, notes),
        ]
    else:
        rows = [
            skipped(f"storage: {what}", "needs root (tmpfs, bind mount)")
            for what in (
                "state file on a full tmpfs, while running",
                "the disk freed",
                "read-only state directory at start",
                "state directory remounted read-only, then a restart",
            )
        ]
    return [*rows, _truncated(tmp)]
