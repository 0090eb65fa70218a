"""The Alertmanager sink against a real Alertmanager (Debian's package) on a free port."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.helpers import free_port, wait_for
from vcmon.alerts.model import AlertEvent, Kind, Measurements, Severity, Status, Target
from vcmon.delivery.sinks.alertmanager import AlertmanagerConfig, AlertmanagerSink
from vcmon.delivery.sinks.base import Reject, Retry

TARGET = Target("co-to", "UBND huyện Cô Tô", "127.0.0.1", "Cô Tô", "district")


def event(status: Status, seq: int = 1, alert_id: str = "a1") -> dict[str, Any]:
    return AlertEvent(
        id=f"e{seq}", seq=seq, alert_id=alert_id, status=status, kind=Kind.GROUP_DOWN,
        severity=Severity.CRITICAL, instance="lab", target=TARGET, affected=("c1", "c2"),
        measurements=Measurements(), started_at=time.time() - 60,
        ended_at=time.time() if status is Status.RESOLVED else None, at=1.0,
        summary="Huyện Cô Tô: mất kết nối", description="…",
    ).to_json()  # fmt: skip


def active(url: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = httpx.get(
        f"{url}/api/v2/alerts", params={"active": "true"}
    ).json()
    return alerts


async def test_firing_then_resolved(alertmanager: str) -> None:
    sink = AlertmanagerSink(AlertmanagerConfig(type="alertmanager", url=alertmanager))
    await sink.start()
    try:
        await sink.send(event(Status.FIRING))
        alerts = wait_for(lambda: active(alertmanager), 10, "the alert in Alertmanager")
        labels = alerts[0]["labels"]
        assert labels["alertname"] == "group_down"
        assert labels["endpoint"] == "co-to"
        assert labels["severity"] == "critical"
        assert alerts[0]["annotations"]["summary"] == "Huyện Cô Tô: mất kết nối"
        assert sink.firing.keys() == {"a1"}
        await sink.send(event(Status.RESOLVED, seq=2))
        wait_for(lambda: not active(alertmanager), 10, "the resolve in Alertmanager")
        assert sink.firing == {}
    finally:
        await sink.close()


async def test_seeded_alerts_are_reposted(alertmanager: str) -> None:
    sink = AlertmanagerSink(
        AlertmanagerConfig(type="alertmanager", url=alertmanager, repost_interval=0.2)
    )
    sink.seed([event(Status.FIRING, alert_id="old")])
    import asyncio

    task = asyncio.create_task(sink.maintain())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not any(a["labels"]["alert_id"] == "old" for a in active(alertmanager)):
            assert loop.time() < deadline, "the seeded alert was never re-posted"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await sink.close()


async def test_unreachable_alertmanager_is_a_retry() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    sink = AlertmanagerSink(AlertmanagerConfig(type="alertmanager", url=url, timeout=1))
    with pytest.raises(Retry) as caught:
        await sink.send(event(Status.FIRING))
    assert caught.value.reason == "connect"
    await sink.close()


async def test_a_malformed_alert_is_rejected(alertmanager: str) -> None:
    sink = AlertmanagerSink(AlertmanagerConfig(type="alertmanager", url=alertmanager))
    bad = event(Status.FIRING) | {"started_at": "not a time"}
    with pytest.raises(Reject) as caught:
        await sink.send(bad)
    assert caught.value.reason == "http_400"
    await sink.close()


async def test_alerts_test_reports_each_receiver(alertmanager: str, tmp_path: Path) -> None:
    from vcmon.cli.outbox import send_test
    from vcmon.config import load_config

    dead = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "vcmon.yaml"
    path.write_text(
        f"sinks:\n  - {{type: alertmanager, name: am, url: '{alertmanager}'}}\n"
        f"  - {{type: alertmanager, name: gone, url: '{dead}', timeout: 1}}\n"
        "endpoints:\n  - {id: a, name: A, address: 127.0.0.1, district: X, level: commune}\n",
        encoding="utf-8",
    )
    results = {r.sink: r for r in await send_test(load_config(path, env={}))}
    assert results["am"].ok
    assert results["am"].detail == "acknowledged"
    assert not results["gone"].ok
    assert results["gone"].detail.startswith("connect")
    # The test alert was resolved right after it fired: nothing is left active.
    assert not [a for a in active(alertmanager) if a["labels"]["alertname"] == "test"]


def test_alerts_test_command_exit_status(
    alertmanager: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vcmon import cli

    path = tmp_path / "vcmon.yaml"
    body = "endpoints:\n  - {id: a, name: A, address: 127.0.0.1, district: X, level: commune}\n"
    path.write_text(f"sinks: [{{type: alertmanager, url: '{alertmanager}'}}]\n" + body, "utf-8")
    assert cli.main(["alerts", "test", "-c", str(path)]) == 0
    assert "acknowledged" in capsys.readouterr().out
    dead = f"http://127.0.0.1:{free_port()}"
    path.write_text(f"sinks: [{{type: alertmanager, url: '{dead}', timeout: 1}}]\n" + body, "utf-8")
    assert cli.main(["alerts", "test", "-c", str(path)]) == 1
    assert "connect" in capsys.readouterr().out
    assert cli.main(["alerts", "test", "-c", str(path), "--sink", "nope"]) == 2


def test_one_mapping_for_posted_alerts_and_the_webhook_form() -> None:
    import json

    from vcmon.delivery.sinks.alertmanager import alert_body, fingerprint
    from vcmon.delivery.sinks.webhook_bodies import body_for

    ev = event(Status.FIRING)
    posted = alert_body(ev)
    hooked = json.loads(body_for("alertmanager", ev, 0.0))["alerts"][0]
    assert posted["labels"] == hooked["labels"] | {"alert_id": "a1"}
    assert posted["annotations"] == hooked["annotations"] | {"affected": "c1,c2"}
    assert posted["startsAt"] == hooked["startsAt"]
    assert hooked["fingerprint"] == fingerprint("a1")
    assert len(fingerprint("a1")) == 16
    # An empty label is no label in Alertmanager: left out of both.
    bare = ev | {"instance": ""}
    assert "instance" not in alert_body(bare)["labels"]
