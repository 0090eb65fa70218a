"""Delivery end to end: the daemon on the lab, a real Mosquitto, a real Alertmanager and an HTTP
receiver; a scenario's outage and its resolve arrive on each, and survive a broker outage
and a SIGKILL of the daemon."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from tests.conftest import ProvinceLab, ProvinceLabFactory
from tests.support.mosquitto import Mosquitto, missing
from tests.support.receivers import Receiver, receiving
from vcmon.delivery.sinks.webhook import verify_signature

from .test_alert_lab import CLEAN, INVENTORY, healthy, running, until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


class Collector:
    """Every event published under vcmon/events/#, in arrival order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def ids(self) -> list[str]:
        return [str(e["id"]) for e in self.events]

    def of(self, kind: str, status: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind and e["status"] == status]


@asynccontextmanager
async def subscribed(broker: Mosquitto) -> AsyncIterator[Collector]:
    """A subscriber (QoS 1) that reconnects at once whenever the broker comes back."""
    out = Collector()

    async def listen() -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                    await client.subscribe("vcmon/events/#", qos=1)
                    async for message in client.messages:
                        out.events.append(json.loads(bytes(message.payload)))
            except aiomqtt.MqttError:
                # The broker is away: try again soon, sooner than the sink's backoff would.
                await asyncio.sleep(0.02)

    task = asyncio.create_task(listen())
    try:
        yield out
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def am_alerts(url: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    return alerts


SECRET = "whsec_" + base64.b64encode(b"lab webhook secret, 32 bytes....").decode()


def with_sinks(
    env: ProvinceLab,
    broker: Mosquitto,
    alertmanager: str,
    hook: Receiver | None = None,
    chat: Receiver | None = None,
) -> None:
    text = env.config_path.read_text(encoding="utf-8")
    text += (
        "sinks:\n"
        f"  - {{type: mqtt, port: {broker.port}}}\n"
        f"  - {{type: alertmanager, url: '{alertmanager}', repost_interval: 2}}\n"
    )
    if hook is not None:
        text += f"  - {{type: webhook, url: '{hook.url}/vcmon', secrets: ['{SECRET}']}}\n"
    if chat is not None:  # for people: grouped, with short timings for the test
        text += (
            f"  - {{type: webhook, name: chat, url: '{chat.url}/hooks/noc', body: slack,\n"
            "      group: {wait: 1, interval: 2}}\n"
        )
    env.config_path.write_text(text, encoding="utf-8")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    with Mosquitto(tmp_path / "broker") as b:
        yield b


async def test_outage_and_resolve_arrive_on_mqtt_alertmanager_and_a_webhook(
    province_lab: ProvinceLabFactory, broker: Mosquitto, alertmanager: str
) -> None:
    env = province_lab(INVENTORY, profiles=CLEAN, seed=11)
    with receiving() as hook, receiving() as chat:
        with_sinks(env, broker, alertmanager, hook, chat)
        await outage_on_all_three(env, broker, alertmanager, hook, chat)


async def outage_on_all_three(
    env: ProvinceLab,
    broker: Mosquitto,
    alertmanager: str,
    hook: Receiver,
    chat: Receiver | None = None,
) -> None:
    async with subscribed(broker) as mqtt, running(env) as daemon:
        await healthy(daemon, env)
        play = asyncio.create_task(env.play("steps:\n  - {at: 0, uplink: co-to, for: 8}\n"))
        await until(lambda: mqtt.of("group_down", "firing"), 15, "the firing on MQTT", daemon)
        fired = mqtt.of("group_down", "firing")[0]

        def in_alertmanager() -> bool:
            return any(
                a["labels"]["alert_id"] == fired["alert_id"] for a in am_alerts(alertmanager)
            )

        await until(in_alertmanager, 10, "the firing in Alertmanager", daemon)
        await play
        await until(lambda: mqtt.of("group_down", "resolved"), 15, "the resolve on MQTT", daemon)
        await until(
            lambda: not [a for a in am_alerts(alertmanager)
                         if a["labels"]["alert_id"] == fired["alert_id"]
                         and a["status"]["state"] == "active"],
            15, "the resolve in Alertmanager", daemon,
        )  # fmt: skip
        resolved = mqtt.of("group_down", "resolved")[0]
        await until(lambda: len(hook.received) >= 2, 15, "both on the webhook", daemon)
        if chat is not None:
            await until(lambda: len(chat.received) >= 2, 15, "both in the chat", daemon)
    if chat is not None:  # one message per change of the group, for people
        texts = [r.json()["text"] for r in chat.received]
        assert [t.split("\n")[0] for t in texts] == [
            "*Cô Tô · group_down* :red_circle: 1",
            "*Cô Tô · group_down* :white_check_mark: 1",
        ]
        assert all(r.headers["webhook-id"].startswith("grp-") for r in chat.received)
    assert resolved["alert_id"] == fired["alert_id"]
    assert hook.ids() == [fired["id"], resolved["id"]]
    for got in hook.received:
        assert verify_signature(SECRET, got.headers, got.body, time.time())
    assert [r.json()["type"] for r in hook.received] == ["vcmon.alert.firing",
                                                         "vcmon.alert.resolved"]  # fmt: skip
    assert sorted(fired["affected"]) == ["co-to-co-to", "co-to-dong-tien", "co-to-thanh-lan"]
    assert len(set(mqtt.ids())) == len(mqtt.ids()) == 2


async def test_broker_down_for_a_minute_loses_nothing(
    province_lab: ProvinceLabFactory, broker: Mosquitto, alertmanager: str
) -> None:
    env = province_lab(INVENTORY, profiles=CLEAN, seed=12)
    with_sinks(env, broker, alertmanager)
    async with running(env) as daemon:
        await healthy(daemon, env)
        broker.stop()  # the broker goes away before the outage and stays away 60 s
        stopped = time.monotonic()
        await env.play("steps:\n  - {at: 0, uplink: co-to, for: 8}\n")
        store_events = await until(lambda: len(daemon.events()) >= 2, 20, "both decided", daemon)
        assert store_events
        # Alertmanager is unaffected by the broker: it already has both.
        await until(
            lambda: not [a for a in am_alerts(alertmanager) if a["status"]["state"] == "active"],
            15, "Alertmanager resolved", daemon,
        )  # fmt: skip
        await until(lambda: time.monotonic() - stopped >= 60, 70, "a minute of broker outage")
        async with subscribed(broker) as mqtt:
            # A fresh broker has no session for us: what arrives is the sink's replay.
            broker.start()
            # The sink retries with backoff capped at 60 s, so it may take that long.
            await until(lambda: len(mqtt.ids()) >= 2, 75, "the events after the outage", daemon)
            decided = daemon.events()
    assert [e["id"] for e in decided] == sorted(set(mqtt.ids()), key=mqtt.ids().index)
    assert [e["status"] for e in mqtt.events] == ["firing", "resolved"]


async def test_sigkill_while_sends_are_in_flight(
    province_lab: ProvinceLabFactory, broker: Mosquitto, alertmanager: str
) -> None:
    env = province_lab(INVENTORY, profiles=CLEAN, seed=13)
    with_sinks(env, broker, alertmanager)
    async with subscribed(broker) as mqtt, running(env) as daemon:
        await healthy(daemon, env)
        broker.stop()  # sends pile up, retried
        await env.play("steps:\n  - {at: 0, uplink: co-to, for: 8}\n")
        await until(lambda: len(daemon.events()) >= 2, 20, "both decided", daemon)
        await daemon.kill()
        broker.start()
        await daemon.start()
        await until(lambda: len(set(mqtt.ids())) >= 2, 75, "delivery after the restart", daemon)
        decided = daemon.events()
    assert {e["id"] for e in decided} == set(mqtt.ids())
    assert [e["status"] for e in decided] == ["firing", "resolved"]
