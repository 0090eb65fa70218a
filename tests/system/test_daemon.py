"""The daemon end to end on loopback: real sockets, real HTTP, real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import free_port, wait_for

ENDPOINTS = """
  - {id: tinh, name: Trung tâm tỉnh, address: 127.0.0.1, district: Tỉnh, level: province}
  - {id: ha-long, name: UBND TP Hạ Long, address: 127.0.0.2, district: Hạ Long, level: district,
     parent: tinh}
  - {id: v6, name: IPv6 room, address: "::1", district: Hạ Long, level: commune, parent: ha-long}
  - {id: by-name, name: Phòng họp localhost, address: localhost, district: Hạ Long,
     level: commune, parent: ha-long}
"""
EXTRA = """
  - {id: cam-pha, name: UBND TP Cẩm Phả, address: 127.0.0.3, district: Cẩm Phả, level: district,
     parent: tinh}
"""


def _config(port: int, endpoints: str) -> str:
    return (
        f"listen: 127.0.0.1:{port}\n"
        "defaults: {interval: 1.0, count: 3, spacing: 0.05, timeout: 0.5}\n"
        f"endpoints:{endpoints}"
    )


class Running:
    def __init__(self, proc: subprocess.Popen[str], port: int, path: Path) -> None:
        self.proc, self.port, self.path = proc, port, path
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, timeout=5)

    def metric(self, name: str, **labels: str) -> list[float]:
        text = self.get("/metrics").text
        return [
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]


@pytest.fixture
def daemon(tmp_path: Path, require_root: None) -> Iterator[Running]:
    port = free_port()
    path = tmp_path / "vcmon.yaml"
    path.write_text(_config(port, ENDPOINTS), encoding="utf-8")
    # Logs and console alerts to a file: an undrained pipe would block the daemon once full.
    with (tmp_path / "daemon.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vcmon", "run", "-c", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    run = Running(proc, port, path)
    try:
        wait_for(lambda: run.get("/-/ready").status_code == 200, 15, "daemon ready")
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_every_endpoint_measured_on_metrics(daemon: Running) -> None:
    for ep in ("tinh", "ha-long", "v6", "by-name"):
        assert daemon.metric("vcmon_up", endpoint=ep) == [1.0], ep
        (avg,) = daemon.metric("vcmon_round_rtt_seconds", endpoint=ep, stat="avg")
        assert 0 < avg < 0.01
        assert daemon.metric("vcmon_loss_ratio", endpoint=ep) == [0.0]
    (sent,) = daemon.metric("vcmon_packets_sent_total", endpoint="tinh")
    assert sent >= 3


def test_status_api_lists_identity_state_and_last_round(daemon: Running) -> None:
    doc = daemon.get("/api/v1/status").json()
    assert doc["ready"] is True
    by_id = {e["id"]: e for e in doc["endpoints"]}
    assert set(by_id) == {"tinh", "ha-long", "v6", "by-name"}
    room = by_id["by-name"]
    assert room["name"] == "Phòng họp localhost"
    assert room["resolved"] in {"127.0.0.1", "::1"}
    assert room["state"] == "up"
    assert room["last"]["received"] == 3
    assert room["last"]["rtt_ms"]["avg"] > 0
    assert daemon.get("/-/healthy").status_code == 200


def test_sigterm_stops_within_two_seconds(daemon: Running) -> None:
    start = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(5)
    assert time.monotonic() - start < 2.0
    assert code == 0
    stderr = (daemon.path.parent / "daemon.log").read_text(encoding="utf-8")
    assert "Traceback" not in stderr
    assert "event=stopped" in stderr


def test_sighup_reload_adds_endpoints_and_survives_a_broken_config(daemon: Running) -> None:
    daemon.path.write_text(_config(daemon.port, ENDPOINTS + EXTRA), encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.metric("vcmon_up", endpoint="cam-pha") == [1.0], 10, "new endpoint up")
    assert daemon.metric("vcmon_config_last_reload_successful") == [1.0]

    daemon.path.write_text("endpoints: [ {id: broken", encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: daemon.metric("vcmon_config_last_reload_successful") == [0.0], 10, "reload failure"
    )
    sent_before = daemon.metric("vcmon_packets_sent_total", endpoint="cam-pha")[0]
    wait_for(
        lambda: daemon.metric("vcmon_packets_sent_total", endpoint="cam-pha")[0] > sent_before,
        10,
        "probing to go on with the old config",
    )


def test_status_once_shows_the_live_province(
    daemon: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    from vcmon import cli

    def every_room_measured() -> bool:
        doc = daemon.get("/api/v1/status").json()
        return all(ep["last"] for ep in doc["endpoints"])

    wait_for(every_room_measured, 15, "a round of every endpoint")
    assert cli.main(["status", "--url", daemon.base, "--once", "--sort", "rtt"]) == 0
    shown = capsys.readouterr().out
    for ep in ("tinh", "ha-long", "v6", "by-name"):
        assert ep in shown
    assert "Hạ Long" in shown
    assert "up 4" in shown
    assert cli.main(["status", "-c", str(daemon.path), "--once", "--problems"]) == 0
    assert "tinh" not in capsys.readouterr().out  # all up: nothing to show


def test_status_of_a_daemon_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    from vcmon import cli

    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["status", "--url", url, "--once"]) == 1
    assert "is the daemon running?" in capsys.readouterr().err
