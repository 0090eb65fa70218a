"""Acks over MQTT: a real Mosquitto on a free loopback port with generated passwords and the
ACL shipped in deploy/mosquitto/acl; a real `vcmon run` whose MQTT sink takes acks."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt

from bench.attacks.common import (
    FAST,
    FIRE,
    ROOMS,
    ROOT,
    Daemon,
    Row,
    free_port,
    short,
    skipped,
    start_daemon,
    wait_until,
)

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto",) if Path(p).is_file()), None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
ACL = ROOT / "deploy" / "mosquitto" / "acl"
HOST = "127.0.0.1"
USERS = {"vcmon": "vcmon-bench-pw", "oncall": "oncall-bench-pw", "viewer": "viewer-bench-pw"}
UNKNOWN = "0000000000000000"  # an alert id that never exists: a marker the daemon counts


@contextlib.contextmanager
def broker(tmp: Path) -> Iterator[int]:
    """Mosquitto on 127.0.0.1:<free port>: no anonymous clients, the shipped ACL; its port."""
    assert MOSQUITTO is not None
    assert MOSQUITTO_PASSWD is not None
    passwd = tmp / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        flags = ("-b", "-c") if i == 0 else ("-b",)
        subprocess.run(
            [MOSQUITTO_PASSWD, *flags, str(passwd), user, password], check=True, capture_output=True
        )
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\npersistence false\nallow_anonymous false\n"
        f"password_file {passwd}\nacl_file {ACL}\nlog_dest file {tmp / 'mosquitto.log'}\n"
        # As root it would switch to the user mosquitto, who cannot read this directory.
        f"user {getpass.getuser()}\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        with socket.create_connection((HOST, port), timeout=1):
            return True

    try:
        wait_until(lambda: _quiet(listening), 10, "mosquitto listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _quiet(check: Any) -> bool:
    try:
        return bool(check())
    except OSError:
        return False


def publish(
    port: int,
    topic: str,
    payload: bytes,
    *,
    user: str | None = "oncall",
    retain: bool = False,
    times: int = 1,
) -> None:
    """Publish (QoS 1) as ``user`` (None: anonymous); aiomqtt.MqttError if refused."""

    async def go() -> None:
        password = USERS[user] if user else None
        async with aiomqtt.Client(HOST, port, username=user, password=password) as client:
            for _ in range(times):
                await client.publish(topic, payload, qos=1, retain=retain)

    asyncio.run(go())


def _acks(d: Daemon, result: str) -> float:
    return d.metric("vcmon_acks_total", source="mqtt", result=result)


def _acked(d: Daemon) -> dict[str, Any]:
    return {a["alert_id"]: a["acknowledged"] for a in d.get("/api/v1/alerts").json()["alerts"]}


def _config(port: int) -> str:
    # The MQTT sink takes only critical events and the bench's alerts are warnings: it never
    # sends one, so an ack it takes shows it subscribed at start, not at its first send.
    return (
        FAST + "alerts:\n" + FIRE + "sinks:\n  - {type: console}\n"
        f"  - {{type: mqtt, host: {HOST}, port: {port}, username: vcmon,"
        " password_file: mqtt-password, match: {severity: critical}}\n"
        "endpoints:\n" + ROOMS
    )


def _start(tmp: Path, port: int) -> Daemon:
    d = start_daemon(tmp, _config(port), name="mqtt")
    wait_until(lambda: "event=mqtt_connected" in d.log_text(), 20, "the MQTT sink connected")
    return d


def attacks(tmp: Path, duration: float, notes: dict[str, Any]) -> list[Row]:
    """Early ack, anonymous and unprivileged acks, a retained ack across a restart, a flood."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        reason = "mosquitto not installed"
        return [
            skipped(f"mqtt: {what}", reason)
            for what in ("ack before the first send", "anonymous ack", "retained ack", "ack flood")
        ]
    (tmp / "mqtt-password").write_text(USERS["vcmon"], encoding="utf-8")
    rows: list[Row] = []
    with broker(tmp) as port:
        d = _start(tmp, port)
        try:
            ids = wait_until(
                lambda: sorted(_acked(d)) if len(_acked(d)) >= 4 else None, 20, "four open alerts"
            )
            sent = d.metric("vcmon_notifications_total", sink="mqtt")
            publish(port, f"vcmon/ack/{ids[0]}", b'{"by": "lan"}')
            wait_until(lambda: _acks(d, "accepted") == 1, 10, "the early ack taken")
            by = (_acked(d)[ids[0]] or {}).get("by")
            rows.append(
                (
                    "mqtt: ack before vcmon sent anything on MQTT",
                    by == "lan" and sent == 0,
                    f"taken (accepted 1, acknowledged by {by}); {sent:.0f} MQTT "
                    "notifications sent before it",
                )
            )

            try:
                publish(port, f"vcmon/ack/{ids[1]}", b'{"by": "anon"}', user=None)
                anonymous = "CONNECTED and published"
            except aiomqtt.MqttError as exc:
                anonymous = f"refused by the broker: {short(str(exc), 50)}"
            publish(port, f"vcmon/ack/{ids[1]}", b'{"by": "viewer"}', user="viewer")
            # The broker passes publishes on in order: a marker after them proves them dropped.
            publish(port, f"vcmon/ack/{UNKNOWN}", b'{"by": "marker"}')
            wait_until(lambda: _acks(d, "unknown_alert") == 1, 10, "the marker ack")
            untouched = _acked(d)[ids[1]] is None and _acks(d, "accepted") == 1
            rows.append(
                (
                    "mqtt: anonymous client acks (shipped ACL)",
                    anonymous.startswith("refused") and untouched,
                    anonymous,
                )
            )
            rows.append(
                (
                    "mqtt: ack by a user the ACL gives no write",
                    untouched,
                    f"dropped by the broker; alert acknowledged: {not untouched}",
                )
            )

            publish(port, f"vcmon/ack/{ids[2]}", b'{"by": "lan"}', retain=True)
            wait_until(lambda: _acks(d, "retained") == 1, 10, "the retained ack seen")
            wait_until(lambda: "event=ack_retained_ignored" in d.log_text(), 10, "its log line")
            first = _acked(d)[ids[2]] is None
        finally:
            d.stop()
        d = _start(tmp, port)  # the same state file; the sink subscribes anew
        try:
            publish(port, f"vcmon/ack/{UNKNOWN}", b'{"by": "marker"}')
            wait_until(lambda: _acks(d, "unknown_alert") == 1, 10, "the marker ack")
            replayed = _acks(d, "retained") + _acks(d, "accepted")
            still = _acked(d)[ids[2]] is None
            rows.append(
                (
                    "mqtt: retained ack on vcmon/ack/<id>, then a restart",
                    first and still and replayed == 0,
                    f"ignored and cleared (retained 1, accepted 0); after the restart "
                    f"{replayed:.0f} replayed, alert acknowledged: {not still}",
                )
            )
            publish(port, f"vcmon/ack/{UNKNOWN}", b'{"by": "flood"}', times=100)
            wait_until(
                lambda: _acks(d, "unknown_alert") + _acks(d, "rate_limited") >= 101,
                20,
                "every ack of the flood counted",
            )
            taken, limited = _acks(d, "unknown_alert") - 1, _acks(d, "rate_limited")
            rows.append(
                (
                    "mqtt: 100 acks in a row by oncall",
                    limited >= 75,
                    f"{taken:.0f} handled, {limited:.0f} rate-limited",
                )
            )
            notes["log_lines"] = len(d.log_text().splitlines())
        finally:
            d.stop()
    return rows
