"""Who may do what: anonymous and read-role writes, expiry and acks against a daemon with a web
config (bcrypt users made here), 200 acks in a row by one writer, password guessing, and a
0.0.0.0 listen without a web config (reached through 127.0.0.1 only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
import httpx
import yaml

from bench.attacks.common import FAST, FIRE, ROOMS, Daemon, Row, run_vcmon, running, wait_until

PASSWORDS = {"lan": "lan-bench-secret", "ops": "ops-bench-secret", "viewer": "viewer-bench"}
LAN = ("lan", PASSWORDS["lan"])
OPS = ("ops", PASSWORDS["ops"])
VIEWER = ("viewer", PASSWORDS["viewer"])
CONFIG = FAST + "alerts:\n" + FIRE + "endpoints:\n" + ROOMS
MUTE_ALL = {"matchers": {"endpoint": "~.*"}, "duration": "30d", "comment": "shh"}


def web_config() -> str:
    """Users at bcrypt cost 10 (what htpasswd -B makes); lan and ops write, viewer reads."""
    hashed = {
        name: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=10)).decode()
        for name, pw in PASSWORDS.items()
    }
    doc = {
        "basic_auth_users": hashed,
        "vcmon": {"roles": {"lan": "write", "ops": "write", "viewer": "read"}},
    }
    return yaml.safe_dump(doc)


def _silences(d: Daemon) -> list[dict[str, Any]]:
    return list(d.get("/api/v1/silences", auth=VIEWER).json()["silences"])


def _open_alerts(d: Daemon) -> list[dict[str, Any]]:
    return list(d.get("/api/v1/alerts", auth=VIEWER).json()["alerts"])


def _writes(d: Daemon) -> list[Row]:
    rows: list[Row] = []
    anon = d.request("POST", "/api/v1/silences", json=MUTE_ALL, auth=None)
    stored = len(_silences(d))
    rows.append(
        (
            "auth: anonymous POST silence {endpoint: ~.*} 30d",
            anon.status_code == 401 and stored == 0,
            f"{anon.status_code}, {stored} silences stored",
        )
    )
    reader = d.request("POST", "/api/v1/silences", json=MUTE_ALL, auth=VIEWER)
    stored = len(_silences(d))
    rows.append(
        (
            "auth: the same by a read-role user",
            reader.status_code == 403 and stored == 0,
            f"{reader.status_code}, {stored} silences stored",
        )
    )

    own = {"matchers": {"district": "D0"}, "duration": "1h", "comment": "thay thiết bị"}
    made = d.request("POST", "/api/v1/silences", json=own, auth=LAN).json()
    expire = d.request("DELETE", f"/api/v1/silences/{made['id']}", auth=None)
    kept = [s["id"] for s in _silences(d)] == [made["id"]]
    rows.append(
        (
            "auth: anonymous expiry of lan's silence",
            expire.status_code == 401 and kept,
            f"{expire.status_code}, silence {'still in force' if kept else 'GONE'}",
        )
    )

    alert = wait_until(lambda: _open_alerts(d), 20, "an open alert")[0]
    ack = d.request("POST", f"/api/v1/alerts/{alert['alert_id']}/ack", json={"by": "x"}, auth=None)
    after = {a["alert_id"]: a for a in _open_alerts(d)}[alert["alert_id"]]
    rows.append(
        (
            "auth: anonymous ack",
            ack.status_code == 401 and after["acknowledged"] is None,
            f"{ack.status_code}, alert acknowledged: {after['acknowledged'] is not None}",
        )
    )

    posing = d.request("POST", "/api/v1/silences", json={**own, "created_by": "Hùng"}, auth=LAN)
    rows.append(
        (
            "auth: writer names someone else as created_by",
            posing.status_code == 400 and made["created_by"] == "lan",
            f"{posing.status_code}; recorded created_by={made['created_by']!r}",
        )
    )
    return rows


def _ack_flood(d: Daemon) -> Row:
    """200 acks in a row by one writer on one keep-alive connection."""
    alert_id = _open_alerts(d)[0]["alert_id"]
    codes: list[int] = []
    with httpx.Client(base_url=d.base, auth=OPS, timeout=10) as client:
        for _ in range(200):
            codes.append(client.post(f"/api/v1/alerts/{alert_id}/ack", json={}).status_code)
    first_429 = codes.index(429) if 429 in codes else len(codes)
    accepted = codes.count(200)
    return (
        "auth: 200 acks in a row by one writer",
        0 < first_429 <= 25 and accepted <= 25,
        f"{accepted} accepted, then 429 ×{codes.count(429)} (first at #{first_429 + 1})",
    )


def _guessing(d: Daemon) -> Row:
    """30 wrong passwords for ops from one client: after a burst, refused without bcrypt work.
    (A password this client already proved is remembered and still works.)"""
    codes = [d.get("/metrics", auth=("ops", f"guess-{i}")).status_code for i in range(30)]
    return (
        "auth: 30 password guesses from one client",
        codes.count(401) <= 5,
        f"{codes.count(401)} checked (401), {codes.count(429)} refused unchecked (429)",
    )


def _open_listen(tmp: Path) -> list[Row]:
    """A 0.0.0.0 listen with no web config: reads work, writes are refused, check says so."""
    with running(tmp, CONFIG, host="0.0.0.0", name="open") as d:
        resp = d.request("POST", "/api/v1/silences", json=MUTE_ALL)
        ack = d.request("POST", "/api/v1/alerts/abc/ack", json={})
        stored = len(d.get("/api/v1/silences").json()["silences"])
        metrics = d.get("/metrics").status_code
        error = resp.json().get("error", "")
    checked = run_vcmon("check", "-c", str(tmp / "open.yaml"))
    warned = "web_config_file" in checked.err + checked.out
    return [
        (
            "auth: 0.0.0.0 listen, no web config: anonymous write",
            resp.status_code == 403
            and ack.status_code == 403
            and stored == 0
            and "web_config_file" in error,
            f"silence {resp.status_code}, ack {ack.status_code}, {stored} stored, reads {metrics};"
            f" names web_config_file: {'web_config_file' in error}",
        ),
        (
            "auth: vcmon check on that config",
            warned and checked.code == 0,
            f"exit {checked.code}, warns about web_config_file: {warned}",
        ),
    ]


def attacks(tmp: Path, duration: float, notes: dict[str, Any]) -> list[Row]:
    """Every authentication row."""
    with running(tmp, CONFIG, web=web_config(), auth=VIEWER) as d:
        rows = [*_writes(d), _ack_flood(d), _guessing(d)]
        notes["log_lines"] = len(d.log_text().splitlines())
    return rows + _open_listen(tmp)
