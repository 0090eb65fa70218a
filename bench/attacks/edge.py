"""What once made memory and disk disagree (bodies the state file could not take), and regular
expressions that froze the event loop, against real daemons on loopback."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.attacks.common import (
    FAST,
    FIRE,
    INVENTORY,
    ROOMS,
    Daemon,
    Row,
    latencies,
    run_vcmon,
    running,
    short,
    start_daemon,
    wait_until,
)
from bench.common import percentile

CONFIG = FAST + "alerts:\n" + FIRE + "endpoints:\n" + ROOMS
GOOD = '"matchers": {"district": "D0"}, "duration": "1h", "created_by": "a", "comment": "c"'
NINES = "9" * 400


def _with(member: str) -> bytes:
    """A good silence as raw JSON with one member put over its own (a later member wins), so
    escapes such as \\ud800 reach the server as a hostile client sends them."""
    return ("{" + GOOD + ", " + member + "}").encode()


BODIES: list[tuple[str, bytes]] = [
    ("edge: silence comment with a lone surrogate", _with('"comment": "\\ud800"')),
    ("edge: silence starts_at 9999-12-31T23:00:00Z", _with('"starts_at": "9999-12-31T23:00:00Z"')),
    ("edge: silence duration of 400 digits (text)", _with(f'"duration": "{NINES}s"')),
    ("edge: silence duration of 400 digits (number)", _with(f'"duration": {NINES}')),
    ("edge: 100,000-deep JSON body", b"[" * 100_000 + b"]" * 100_000),
    ("edge: ack comment with a lone surrogate", b'{"comment": "\\ud800"}'),
]


def _listing(d: Daemon) -> tuple[int, str]:
    resp = d.get("/api/v1/silences?expired=1")
    return resp.status_code, resp.text


def attacks(tmp: Path, duration: float, notes: dict[str, Any]) -> list[Row]:
    """Each hostile body: 400 naming the field, the silence list unchanged, also after a
    restart on the same state file."""
    rows: list[Row] = []
    with running(tmp, CONFIG) as d:
        alert = wait_until(lambda: d.get("/api/v1/alerts").json()["alerts"], 20, "an alert")[0]
        before = _listing(d)
        for name, body in BODIES:
            path = "/api/v1/silences"
            if name.startswith("edge: ack"):
                path = f"/api/v1/alerts/{alert['alert_id']}/ack"
            resp = d.request(
                "POST", path, content=body, headers={"Content-Type": "application/json"}
            )
            after = _listing(d)
            acked = any(a["acknowledged"] for a in d.get("/api/v1/alerts").json()["alerts"])
            error = resp.json().get("error", "") if resp.status_code < 500 else resp.text
            held = resp.status_code == 400 and after == before and not acked
            kept = "alert not acknowledged" if not acked else "alert ACKNOWLEDGED"
            if path == "/api/v1/silences":
                kept = f"silence list {'unchanged' if after == before else 'CHANGED'}, {after[0]}"
            rows.append((name, held, f"{resp.status_code} {short(error, 64)!r}; {kept}"))
    # A row no API accepts any more, as an older vcmon could store it: year 9999 + 30 days.
    (db_path,) = (tmp / "vcmon-state").glob("*.db")
    starts = 253402297200.0  # 9999-12-31T23:00:00Z
    old: dict[str, Any] = {
        "id": "from-9999",
        "matchers": {"district": "D0"},
        "starts_at": starts,
        "ends_at": starts + 30 * 86400,
        "created_by": "old",
        "comment": "",
        "created_at": 0.0,
    }
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute(
            "INSERT INTO silences (id, ends_at, body) VALUES (?, ?, ?)",
            (old["id"], old["ends_at"], json.dumps(old)),
        )
    with running(tmp, CONFIG) as d:  # the same state file: no stored row can break a listing
        again = _listing(d)
        status = d.get("/api/v1/status").status_code
    listed = [s["id"] for s in json.loads(again[1])["silences"]] if again[0] == 200 else []
    rows.append(
        (
            "edge: stored silence past year 9999, listed after a restart",
            again[0] == 200 and listed == ["from-9999"] and status == 200,
            f"GET /api/v1/silences {again[0]} ({len(listed)} listed), status {status}",
        )
    )
    return rows


# ── regular expressions ─────────────────────────────────────────────────────────────────────

ISSUE_PATTERN = "(.*.*.*.*.*.*)*Z"
CATASTROPHIC = [
    "(a+)+$",
    "(a|aa)+b",
    "(a|a?)+b",
    "(x+x+)+y",
    "(.*a){20}",
    "^(([a-z])+.)+[A-Z]([a-z])+$",
    "(\\w+\\s?)+$",
]
REFUSED = ["(a)\\1", "(?=a)a", "a" * 300]
# Some island rooms of the province have a 2 s timeout: rounds every 3 s fit them all.
PROVINCE = (
    "defaults: {interval: 3.0, count: 2, spacing: 0.05, timeout: 0.5}\n"
    f"inventory: {INVENTORY}\nalerts:\n{FIRE}"
)


def _silence(d: Daemon, pattern: str) -> int:
    doc = {
        "matchers": {"endpoint": "~" + pattern},
        "duration": "1h",
        "created_by": "bench",
        "comment": "regex",
    }
    return d.request("POST", "/api/v1/silences", json=doc).status_code


def _ms(d: Daemon, path: str, n: int, q: float) -> float:
    return percentile(latencies(d, path, n), q) * 1000


def _loop_figures(d: Daemon) -> tuple[float, float, float]:
    """/api/v1/alerts median, /-/healthy p99 (ms: how long the loop can be blocked) and probe
    rounds skipped while measuring."""
    skipped0 = d.metric("vcmon_rounds_skipped_total")
    alerts = _ms(d, "/api/v1/alerts", 21, 50)
    healthy = _ms(d, "/-/healthy", 50, 99)
    return alerts, healthy, d.metric("vcmon_rounds_skipped_total") - skipped0


def regex_attacks(tmp: Path, duration: float, notes: dict[str, Any]) -> list[Row]:
    """Catastrophic patterns as silence matchers over the province's 232 open alerts, and as a
    maintenance window's match for `vcmon check` and `vcmon run`."""
    rows: list[Row] = []
    with running(tmp, PROVINCE, name="regex") as d:
        wait_until(lambda: len(d.get("/api/v1/alerts").json()["alerts"]) >= 231, 30, "alerts")
        base = _loop_figures(d)
        notes["baseline_ms"] = {"alerts_p50": round(base[0], 1), "healthy_p99": round(base[1], 1)}
        skipped0 = d.metric("vcmon_rounds_skipped_total")
        status = _silence(d, ISSUE_PATTERN)
        alerts, healthy, skipped = _loop_figures(d)
        rows.append(
            (
                f"regex: silence endpoint ~{ISSUE_PATTERN}, 232 alerts open",
                healthy < 50 and alerts < 50 + base[0] and skipped == 0,
                f"{status}; /api/v1/alerts p50 {alerts:.0f} ms ({base[0]:.0f} before), "
                f"/-/healthy p99 {healthy:.0f} ms, rounds skipped {skipped:.0f}",
            )
        )
        statuses = [_silence(d, p) for p in CATASTROPHIC]
        alerts, healthy, skipped = _loop_figures(d)
        rows.append(
            (
                f"regex: {len(CATASTROPHIC)} more, (a+)+$ (a|aa)+b (x+x+)+y (.*a){{20}} …",
                healthy < 50 and alerts < 50 + base[0] and skipped == 0,
                f"{statuses.count(201)} taken; /api/v1/alerts p50 {alerts:.0f} ms, "
                f"/-/healthy p99 {healthy:.0f} ms, rounds skipped {skipped:.0f}",
            )
        )
        refused = [_silence(d, p) for p in REFUSED]
        rows.append(
            (
                "regex: backreference, lookahead, 300-character pattern",
                refused == [400] * len(REFUSED),
                f"{', '.join(map(str, refused))} (RE2 cannot run them / too long)",
            )
        )
        total = d.metric("vcmon_rounds_skipped_total") - skipped0
        notes["rounds_skipped"] = total
    rows += _maintenance(tmp, notes)
    return rows


def _maintenance(tmp: Path, notes: dict[str, Any]) -> list[Row]:
    """The issue's pattern in a maintenance window's match: check, then run."""
    config = PROVINCE + (
        "  maintenance:\n    - name: regex bomb\n"
        f"      match: {{endpoint: '~{ISSUE_PATTERN}'}}\n"
        "      weekly: [{start: '00:00', end: '23:59'}]\n"
    )
    path = tmp / "maintenance.yaml"
    path.write_text("listen: 127.0.0.1:1\n" + config, encoding="utf-8")
    checked = run_vcmon("check", "-c", str(path), within=30)
    t0 = time.monotonic()
    try:
        daemon = start_daemon(tmp, config, name="maintenance", within=30)
    except (RuntimeError, TimeoutError) as exc:
        ready, started = float("nan"), f"did not start: {short(str(exc), 60)}"
    else:
        ready = time.monotonic() - t0
        rounds = daemon.metric("vcmon_rounds_skipped_total")
        daemon.stop()
        started = f"ready in {ready:.1f} s, rounds skipped {rounds:.0f}"
    notes["maintenance"] = {"check_exit": checked.code, "check_cpu_s": round(checked.cpu_s, 2)}
    return [
        (
            f"regex: maintenance match ~{ISSUE_PATTERN}: vcmon check",
            checked.code in (0, 2) and checked.cpu_s < 3 and "Traceback" not in checked.err,
            f"exit {checked.code} in {checked.cpu_s:.2f} s CPU ({checked.wall_s:.1f} s)",
        ),
        (f"regex: maintenance match ~{ISSUE_PATTERN}: vcmon run", ready < 20, started),
    ]
