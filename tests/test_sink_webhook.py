"""The webhook sink against a real HTTP receiver on loopback, and through the outbox for the
fault cases: 500 five times then 200, 410, 400, Retry-After, a receiver that never answers."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest

from vcmon.alerts.model import AlertEvent, Changes, Kind, Measurements, Severity, Status, Target
from vcmon.alerts.store import Store
from vcmon.outbox import Backoff, Dispatcher
from vcmon.sinks.base import Gone, Reject, Retry
from vcmon.sinks.webhook import (
    WebhookConfig,
    WebhookSink,
    body_for,
    retry_after,
    verify_signature,
)

from .receivers import Receiver, receiving

OLD = "whsec_" + base64.b64encode(b"old secret, 32 bytes long......!").decode()
NEW = "whsec_" + base64.b64encode(b"new secret, 32 bytes long......!").decode()
TARGET = Target("co-to", "UBND huyện Cô Tô", "127.0.0.1", "Cô Tô", "district")
FAST = Backoff(base=0.001, cap=0.01)


def event(seq: int = 1, status: Status = Status.FIRING) -> dict[str, Any]:
    return AlertEvent(
        id=f"ev-{seq}", seq=seq, alert_id="a1", status=status, kind=Kind.GROUP_DOWN,
        severity=Severity.CRITICAL, instance="lab", target=TARGET, affected=("c1",),
        measurements=Measurements(loss_pct=100.0), started_at=time.time() - 60,
        ended_at=time.time() if status is Status.RESOLVED else None, at=time.time(),
        summary="Huyện Cô Tô: mất kết nối", description="…",
    ).to_json()  # fmt: skip


def sink(url: str, **config: Any) -> WebhookSink:
    return WebhookSink(WebhookConfig(type="webhook", url=url, **config))


async def until(check: Any, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_signed_with_every_secret_and_verifiable() -> None:
    with receiving() as r:
        s = sink(f"{r.url}/hook", secrets=(OLD, NEW))
        await s.send(event())
        await s.close()
        (got,) = r.received
    assert got.headers["webhook-id"] == "ev-1"
    assert len(got.headers["webhook-signature"].split()) == 2
    for secret in (OLD, NEW):  # a receiver rotating secrets accepts either
        assert verify_signature(secret, got.headers, got.body, time.time())
    assert not verify_signature(OLD, got.headers, got.body + b" ", time.time())
    assert not verify_signature(OLD, got.headers, got.body, time.time() + 3600)
    doc = got.json()
    assert doc["type"] == "vcmon.alert.firing"
    assert doc["data"]["id"] == "ev-1"


def test_bodies() -> None:
    am = body_for("alertmanager", event(2, Status.RESOLVED), time.time())
    import json

    doc = json.loads(am)
    assert doc["version"] == "4"
    assert doc["status"] == "resolved"
    assert doc["alerts"][0]["labels"]["alertname"] == "group_down"
    assert doc["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    tg = json.loads(body_for("telegram", event(), time.time(), chat_id="-100"))
    assert tg["chat_id"] == "-100"
    assert "<b>Huyện Cô Tô: mất kết nối</b>" in tg["text"]
    assert json.loads(body_for("slack", event(), time.time()))["text"].startswith("🔴 *Huyện")


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [(500, Retry, "http_500"), (503, Retry, "http_503"), (408, Retry, "http_408"),
     (429, Retry, "http_429"), (410, Gone, "http_410"), (400, Reject, "http_400"),
     (404, Reject, "http_404")],
)  # fmt: skip
async def test_status_mapping(status: int, error: type[Exception], reason: str) -> None:
    with receiving(script=[status]) as r:
        s = sink(r.url)
        with pytest.raises(error) as caught:
            await s.send(event())
        await s.close()
    assert getattr(caught.value, "reason", None) == reason


async def test_retry_after_is_read() -> None:
    with receiving(script=[429], retry_after="7") as r:
        s = sink(r.url)
        with pytest.raises(Retry) as caught:
            await s.send(event())
        await s.close()
    assert caught.value.after == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after("999999") == 3600.0


async def test_unreachable_and_hanging_receivers_are_retries() -> None:
    r = Receiver()  # never started: nothing listens
    s = sink(r.url, timeout=1.0)
    with pytest.raises(Retry) as caught:
        await s.send(event())
    assert caught.value.reason == "connect"
    await s.close()
    with receiving() as r:
        r.hold()
        s = sink(r.url, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Retry) as caught:
            await s.send(event())
        assert caught.value.reason == "timeout"
        assert time.monotonic() - started < 3
        await s.close()


def test_bad_secrets_are_config_errors() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        WebhookConfig(type="webhook", url="http://127.0.0.1:1/", secrets=("plain",))
    with pytest.raises(ValueError, match="secret_env"):
        WebhookConfig(type="webhook", url="http://127.0.0.1:1/", secret_env="VCMON_NOPE_X")


# -- through the outbox -------------------------------------------------------------------------


def write(store: Store, *seqs: int) -> None:
    store.apply(Changes(events=tuple(_ev(s) for s in seqs)))


def _ev(seq: int) -> AlertEvent:
    return AlertEvent(
        id=f"ev-{seq}", seq=seq, alert_id=f"a{seq}", status=Status.FIRING,
        kind=Kind.ENDPOINT_DOWN, severity=Severity.CRITICAL, instance="lab", target=TARGET,
        affected=(), measurements=Measurements(), started_at=1.0, ended_at=None, at=1.0,
    )  # fmt: skip


async def run_dispatcher(d: Dispatcher, check: Any, within: float = 10.0) -> None:
    task = asyncio.create_task(d.run())
    try:
        await until(check, within)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_500_five_times_then_200_is_delivered_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.advance("webhook", 0)
    write(store, 1, 2)
    with receiving(script=[500] * 5) as r:
        d = Dispatcher(sink(r.url, secrets=(NEW,)), store, backoff=FAST)
        await run_dispatcher(d, lambda: len(r.received) == 2)
        assert r.ids() == ["ev-1", "ev-2"]
        assert r.answered == [500] * 5 + [200, 200]
    assert d.stats.failed == {"http_500": 5}
    assert d.stats.sent == 2


async def test_410_disables_the_target_and_is_counted(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s.db")
    store.advance("webhook", 0)
    write(store, 1, 2)
    with receiving(script=[410]) as r:
        d = Dispatcher(sink(r.url), store, backoff=FAST)
        await asyncio.wait_for(d.run(), 10)  # returns: disabled
    assert d.stats.disabled == "http_410"
    assert d.stats.failed == {"http_410": 1}
    assert r.received == []


async def test_a_receiver_that_never_answers_keeps_memory_bounded_and_loses_nothing(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "s.db")
    store.advance("webhook", 0)
    write(store, *range(1, 501))  # a backlog much bigger than one read
    with receiving() as r:
        r.hold()
        d = Dispatcher(sink(r.url, timeout=0.2), store, backoff=FAST)
        task = asyncio.create_task(d.run())
        await until(lambda: d.stats.failed.get("timeout", 0) >= 3)
        assert store.cursor("webhook") == 0  # nothing skipped
        assert d.stats.pending == 500
        r.release()  # it comes back
        await until(lambda: len(r.received) == 500, 30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert r.ids() == [f"ev-{i}" for i in range(1, 501)]
