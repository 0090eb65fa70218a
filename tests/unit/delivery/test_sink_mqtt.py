"""The MQTT sink against a real Mosquitto on a free loopback port (tests/support/mosquitto.py).

Every wait is on a condition with a deadline: a watcher client collects what the broker
delivers, and a marker it publishes to itself proves that everything retained came before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import ValidationError

from tests.support.mosquitto import HOST, OPENSSL, Mosquitto, Proxy, missing
from vcmon.alerts.model import AlertEvent, Kind, Measurements, Severity, Status, Target
from vcmon.delivery.sinks.base import Retry
from vcmon.delivery.sinks.mqtt import AckSignatures, MqttSink, TokenBucket, sign_ack
from vcmon.delivery.sinks.mqtt_config import MqttConfig

TARGET = Target("Cô Tô", "UBND huyện Cô Tô", "127.0.0.1", "Cô Tô", "district")
WAIT = 10.0  # s: a deadline, not a delay; conditions are met in milliseconds


def event(status: Status, seq: int = 1, alert_id: str = "a1b2c3") -> dict[str, Any]:
    return AlertEvent(
        id=f"e{seq}", seq=seq, alert_id=alert_id, status=status, kind=Kind.GROUP_DOWN,
        severity=Severity.CRITICAL, instance="lab", target=TARGET, affected=("c1", "c2"),
        measurements=Measurements(rtt_ms=12.5), started_at=time.time() - 60,
        ended_at=time.time() if status is Status.RESOLVED else None, at=1.0,
        summary="Huyện Cô Tô: mất kết nối", description="…",
    ).to_json()  # fmt: skip


def _require_broker() -> None:
    reason = missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain broker, anonymous access."""
    _require_broker()
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
async def sinks() -> AsyncIterator[Callable[..., MqttSink]]:
    """Build sinks (``port=…`` and any config key); each is closed after the test."""
    made: list[MqttSink] = []

    def make(instance: str = "lab", **config: Any) -> MqttSink:
        sink = MqttSink(MqttConfig(**config), instance)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        await sink.close()


class Watcher:
    """A subscriber that keeps every message the broker delivers."""

    _markers = itertools.count()

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        async for message in self.client.messages:
            async with self._changed:
                self.messages.append(message)
                self._changed.notify_all()

    async def wait(self, what: str, condition: Callable[[list[aiomqtt.Message]], bool]) -> None:
        """Until ``condition(messages)`` holds."""
        try:
            async with asyncio.timeout(WAIT), self._changed:
                await self._changed.wait_for(lambda: condition(self.messages))
        except TimeoutError:
            seen = [(m.topic.value, _payload(m)[:80]) for m in self.messages]
            raise AssertionError(f"timed out waiting for {what}; got {seen}") from None

    async def settle(self) -> None:
        """Until everything the broker queued for us so far (retained included) arrived."""
        topic = f"test/marker/{next(self._markers)}"
        await self.client.subscribe(topic, qos=1)
        await self.client.publish(topic, b"", qos=1)
        await self.wait(topic, lambda ms: any(m.topic.value == topic for m in ms))

    def on(self, topic: str) -> list[aiomqtt.Message]:
        """Messages that arrived on ``topic``, oldest first."""
        return [m for m in self.messages if m.topic.value == topic]

    def docs(self, topic: str) -> list[Any]:
        """The JSON payloads on ``topic`` (None for a zero-length one)."""
        return [json.loads(p) if (p := _payload(m)) else None for m in self.on(topic)]


def _payload(message: aiomqtt.Message) -> bytes:
    assert isinstance(message.payload, bytes)
    return message.payload


@contextlib.asynccontextmanager
async def watching(port: int, *topics: str) -> AsyncIterator[Watcher]:
    """A fresh MQTT 5 subscriber to ``topics`` at QoS 2, so it sees the QoS each was sent at."""
    async with aiomqtt.Client(HOST, port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        watcher = Watcher(client)
        task = asyncio.create_task(watcher.run())
        try:
            for topic in topics:
                await client.subscribe(topic, qos=2)
            yield watcher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def until(what: str, condition: Callable[[], bool]) -> None:
    """Poll a state of the code under test that announces no change (e.g. ``connected``)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # a poll interval, bounded by the deadline above


def user_properties(message: aiomqtt.Message) -> dict[str, str]:
    props = message.properties
    return dict(getattr(props, "UserProperty", []) or []) if props is not None else {}


EVENTS = "vcmon/events/group_down/co-to"  # the kind as is, the endpoint id slugged
ACTIVE = "vcmon/active/a1b2c3"
MONITOR = "vcmon/monitor/lab"


# ---------------------------------------------------------------------------------------------
# Configuration


def test_config_defaults_and_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = MqttConfig()
    assert (cfg.host, cfg.port, cfg.prefix, cfg.qos, cfg.keepalive, cfg.protocol) == (
        "127.0.0.1", 1883, "vcmon", 1, 30, "auto"
    )  # fmt: skip
    assert MqttSink(cfg, "hn-01").client_id == "vcmon-hn-01"
    assert MqttConfig.model_validate({"protocol": 5}).protocol == "5"  # as YAML reads it
    cases: list[tuple[dict[str, Any], str]] = [
        ({"qos": 3}, "QoS of 0, 1 or 2"),
        ({"qos": True}, "expected a number"),
        ({"prefix": "a/#"}, r"without \+ or #"),
        ({"prefix": "a//b"}, "none empty"),
        ({"protocol": "3.1.1", "message_expiry": 60}, "needs MQTT 5"),
        ({"password": "x"}, "needs a username"),
        ({"username": "u", "password": "x", "password_env": "X"}, "give one of"),
        ({"tls": {"cert_file": __file__}}, "go together"),
        ({"tls": {"ca_file": str(tmp_path / "nope.crt")}}, "no such file"),
        ({"hots": "x"}, "Extra inputs"),
        ({"ack_per_minute": 0}, "acks per minute from above 0"),
        ({"ack_burst": 0}, "burst from 1"),
        ({"ack_burst": True}, "expected a number"),
    ]
    for bad, words in cases:
        with pytest.raises(ValidationError, match=words):
            MqttConfig.model_validate(bad)

    monkeypatch.delenv("VCMON_TEST_MQTT_PW", raising=False)
    with pytest.raises(ValidationError, match="variable VCMON_TEST_MQTT_PW is not set"):
        MqttConfig(username="u", password_env="VCMON_TEST_MQTT_PW")
    monkeypatch.setenv("VCMON_TEST_MQTT_PW", "from-env")
    from_env = MqttConfig(username="u", password_env="VCMON_TEST_MQTT_PW")
    assert from_env.secret == "from-env"
    missing_file = tmp_path / "pw"
    with pytest.raises(ValidationError, match=f"cannot read {missing_file}"):
        MqttConfig(username="u", password_file=str(missing_file))
    missing_file.write_text("from-file\n", encoding="utf-8")
    from_file = MqttConfig(username="u", password_file=str(missing_file))
    assert from_file.secret == "from-file"
    literal = MqttConfig.model_validate({"username": "u", "password": "literal-pw"})
    assert literal.secret == "literal-pw"
    for cfg in (from_env, from_file, literal):
        assert cfg.secret is not None
        assert cfg.secret not in repr(cfg)
        assert cfg.secret not in str(cfg.model_dump())


def test_topic_segments_are_slugged() -> None:
    sink = MqttSink(MqttConfig(prefix="site/vcmon"), "Trạm #1/+")
    assert sink.monitor_topic == "site/vcmon/monitor/tram-1"
    assert sink.topic("events", "loss_high", "Cô Tô / Đồng Tiến") == (
        "site/vcmon/events/loss_high/co-to-dong-tien"
    )
    # Ids that are already safe topic levels stay as the JSON has them.
    assert sink.topic("status", "HN.cam-01") == "site/vcmon/status/HN.cam-01"
    assert sink.topic("active", "district:co-to") == "site/vcmon/active/district:co-to"
    assert sink.topic("status", "#") == "site/vcmon/status/_"


# ---------------------------------------------------------------------------------------------
# Publishing


async def test_events_and_the_active_set(broker: Mosquitto, sinks: Callable[..., MqttSink]) -> None:
    sink = sinks(port=broker.port)
    await sink.start()
    firing, resolved = event(Status.FIRING, 1), event(Status.RESOLVED, 2)
    async with watching(broker.port, "vcmon/events/#", "vcmon/active/#") as live:
        await sink.send(firing)
        await live.wait("the firing event", lambda ms: len(ms) >= 2)
        (ev,) = live.on(EVENTS)
        assert (ev.qos, ev.retain) == (1, False)
        assert json.loads(_payload(ev)) == firing
        assert user_properties(ev) == {
            "kind": "group_down", "severity": "critical", "alert_id": "a1b2c3"
        }  # fmt: skip
        assert live.docs(ACTIVE) == [firing]

    async with watching(broker.port, "vcmon/active/#", "vcmon/events/#") as fresh:
        await fresh.settle()
        (active,) = fresh.on(ACTIVE)
        assert active.retain
        assert json.loads(_payload(active)) == firing
        assert fresh.on(EVENTS) == []  # events are not retained

    async with watching(broker.port, "vcmon/events/#", "vcmon/active/#") as live:
        await sink.send(resolved)
        await live.wait("the resolve", lambda ms: None in live.docs(ACTIVE))
        assert live.docs(EVENTS) == [resolved]
        # The retained firing on subscribing, then the zero-length retained clear.
        assert live.docs(ACTIVE) == [firing, None]

    async with watching(broker.port, "vcmon/active/#") as fresh:
        await fresh.settle()
        assert fresh.on(ACTIVE) == []


async def test_acknowledged_event_stays_in_the_active_set(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    sink = sinks(port=broker.port)
    acked = {**event(Status.FIRING, 1), "status": "acknowledged"}
    await sink.send(acked)  # send connects by itself
    async with watching(broker.port, "vcmon/active/#") as fresh:
        await fresh.settle()
        assert fresh.docs(ACTIVE) == [acked]


async def test_qos_and_message_expiry_follow_the_config(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    sink = sinks(port=broker.port, qos=2, message_expiry=600)
    async with watching(broker.port, "vcmon/#") as live:
        await sink.send(event(Status.FIRING))
        await live.wait("event and active", lambda ms: len(live.on(ACTIVE)) == 1)
        (ev,) = live.on(EVENTS)
        assert ev.qos == 2
        assert 0 < getattr(ev.properties, "MessageExpiryInterval", 0) <= 600
        # The active set is state: it must not expire while the alert fires.
        assert not hasattr(live.on(ACTIVE)[0].properties, "MessageExpiryInterval")


async def test_birth_is_retained_and_close_announces_offline(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    sink = sinks(port=broker.port)
    await sink.start()
    assert sink.connected
    async with watching(broker.port, MONITOR) as fresh:
        await fresh.settle()
        (birth,) = fresh.on(MONITOR)
        assert birth.retain
        assert json.loads(_payload(birth)) == {"online": True, "since": sink.since}
        await sink.close()
        assert not sink.connected
        await fresh.wait("offline", lambda ms: len(fresh.on(MONITOR)) == 2)
        assert fresh.docs(MONITOR)[-1] == {"online": False, "since": sink.since}
    async with watching(broker.port, MONITOR) as fresh:
        await fresh.settle()
        assert fresh.docs(MONITOR) == [{"online": False, "since": sink.since}]


async def test_status_docs_are_retained_per_endpoint(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    sink = sinks(port=broker.port)
    await sink.publish_status("Cô Tô", {"up": True, "rtt_ms": 30.1})
    await sink.publish_status("Cô Tô", {"up": False, "rtt_ms": None})
    await sink.publish_status("hn-01", {"up": True, "rtt_ms": 2.0})
    async with watching(broker.port, "vcmon/status/#") as fresh:
        await fresh.settle()
        assert fresh.docs("vcmon/status/co-to") == [{"up": False, "rtt_ms": None}]
        assert fresh.docs("vcmon/status/hn-01") == [{"up": True, "rtt_ms": 2.0}]


# ---------------------------------------------------------------------------------------------
# Connection loss, the will, reconnection


async def test_will_fires_when_the_connection_is_cut_and_reconnect_republishes(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    async with Proxy(broker.port) as proxy, watching(broker.port, MONITOR) as live:
        sink = sinks(port=proxy.port)
        await sink.start()
        await live.wait(
            "birth", lambda ms: live.docs(MONITOR) == [{"online": True, "since": sink.since}]
        )
        proxy.cut()
        await live.wait("the will", lambda ms: len(live.on(MONITOR)) == 2)
        will = live.on(MONITOR)[1]
        assert json.loads(_payload(will)) == {"online": False, "since": sink.since}
        await until("the sink notices", lambda: not sink.connected)

        since = sink.since
        await sink.send(event(Status.FIRING))  # reconnects by itself
        assert sink.connected
        await live.wait("birth again", lambda ms: len(live.on(MONITOR)) == 3)
        assert live.docs(MONITOR)[2] == {"online": True, "since": since}


async def test_send_waits_for_the_broker_acknowledgement(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    async with Proxy(broker.port) as proxy:
        sink = sinks(port=proxy.port)
        await sink.start()
        proxy.holding = True  # the PUBLISH never reaches the broker, so no PUBACK comes back
        sending = asyncio.create_task(sink.send(event(Status.FIRING)))
        async with asyncio.timeout(WAIT):
            await proxy.held_some.wait()
        assert not sending.done()
        proxy.cut()
        with pytest.raises(Retry) as caught:
            await sending
        assert caught.value.reason == "disconnected"
        assert not sink.connected


async def test_will_fires_when_the_process_is_killed(broker: Mosquitto) -> None:
    script = (
        "import asyncio, sys\n"
        "from vcmon.delivery.sinks.mqtt import MqttConfig, MqttSink\n"
        "async def main() -> None:\n"
        "    sink = MqttSink(MqttConfig(port=int(sys.argv[1])), 'lab')\n"
        "    await sink.start()\n"
        "    print(sink.since, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    async with watching(broker.port, MONITOR) as live:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(broker.port), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):  # a cold interpreter imports pydantic and paho
                since = (await proc.stdout.readline()).decode().strip()
            assert since, "the child exited before connecting"
            await live.wait("birth", lambda ms: len(live.on(MONITOR)) == 1)
            proc.send_signal(signal.SIGKILL)
            await live.wait("the will", lambda ms: len(live.on(MONITOR)) == 2)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        assert live.docs(MONITOR) == [
            {"online": True, "since": since},
            {"online": False, "since": since},
        ]


async def test_broker_restart_send_retries_then_everything_is_republished(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    sink = sinks(port=broker.port)
    firing = event(Status.FIRING)
    await sink.publish_status("hn-01", {"up": True})
    await sink.publish_status("co-to", {"up": False})
    broker.stop()
    await until("the sink notices", lambda: not sink.connected)
    with pytest.raises(Retry) as caught:
        await sink.send(firing)
    assert caught.value.reason in ("connect", "disconnected")
    with pytest.raises(Retry, match="connect"):
        await sink.start()

    broker.start()  # same port, and no persistence: the broker lost every retained message
    await sink.start()
    await sink.send(firing)
    async with watching(broker.port, "vcmon/#") as fresh:
        await fresh.settle()
        assert fresh.docs("vcmon/status/hn-01") == [{"up": True}]
        assert fresh.docs("vcmon/status/co-to") == [{"up": False}]
        assert fresh.docs(MONITOR) == [{"online": True, "since": sink.since}]
        assert fresh.docs(ACTIVE) == [firing]


# ---------------------------------------------------------------------------------------------
# Authentication, TLS, protocol versions


async def test_password_auth(
    tmp_path: Path, sinks: Callable[..., MqttSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_broker()
    with Mosquitto(tmp_path / "auth", users={"vcmon": "s3cret", "other": "x"}) as broker:
        monkeypatch.setenv("VCMON_TEST_MQTT_PW", "s3cret")
        good = sinks(port=broker.port, username="vcmon", password_env="VCMON_TEST_MQTT_PW")
        await good.start()
        await good.send(event(Status.FIRING))
        assert good.connected

        bad = sinks("other-lab", port=broker.port, username="vcmon", password="wrong")
        with pytest.raises(Retry) as caught:
            await bad.start()
        assert caught.value.reason == "connect"
        assert "refused" in caught.value.detail
        assert "password" in caught.value.detail.lower() or "authori" in caught.value.detail
        assert not bad.connected

        anonymous = sinks("anon-lab", port=broker.port)
        with pytest.raises(Retry, match="connect"):
            await anonymous.start()


async def test_tls_with_a_private_ca(tmp_path: Path, sinks: Callable[..., MqttSink]) -> None:
    _require_broker()
    with Mosquitto(tmp_path / "tls", tls=True) as broker:
        sink = sinks(port=broker.port, tls={"ca_file": broker.ca_file})
        await sink.start()
        await sink.send(event(Status.FIRING))

        untrusted = sinks("untrusted", port=broker.port, tls={})  # the system CAs only
        with pytest.raises(Retry) as caught:
            await untrusted.start()
        assert caught.value.reason == "connect"
        assert "certificate verify failed" in caught.value.detail

        # Refused connections close before any CONNACK, so only the timeout ends the wait.
        plain = sinks("plain", port=broker.port, timeout=0.5)
        with pytest.raises(Retry, match="connect"):
            await plain.start()


async def test_tls_insecure_skips_only_the_host_name_check(
    tmp_path: Path, sinks: Callable[..., MqttSink]
) -> None:
    _require_broker()
    with Mosquitto(tmp_path / "tls", tls=True, server_name="DNS:broker.invalid") as broker:
        strict = sinks(port=broker.port, tls={"ca_file": broker.ca_file})
        with pytest.raises(Retry) as caught:
            await strict.start()
        assert "127.0.0.1" in caught.value.detail  # the name it expected and did not find

        insecure = sinks(
            "insecure", port=broker.port, tls={"ca_file": broker.ca_file, "insecure": True}
        )
        await insecure.start()
        await insecure.send(event(Status.FIRING))

        untrusted = sinks("untrusted", port=broker.port, tls={"insecure": True})
        with pytest.raises(Retry, match="certificate verify failed"):
            await untrusted.start()


async def test_tls_with_a_client_certificate(
    tmp_path: Path, sinks: Callable[..., MqttSink]
) -> None:
    _require_broker()
    with Mosquitto(tmp_path / "mtls", tls=True, require_certificate=True) as broker:
        cert, key = broker.client_cert
        tls = {"ca_file": broker.ca_file, "cert_file": cert, "key_file": key}
        sink = sinks(port=broker.port, tls=tls)
        await sink.start()
        await sink.send(event(Status.FIRING))

        without = sinks("no-cert", port=broker.port, tls={"ca_file": broker.ca_file}, timeout=0.5)
        with pytest.raises(Retry, match="connect"):
            await without.start()


async def test_auto_falls_back_to_311_when_mqtt5_is_refused(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    async with Proxy(broker.port, refuse_v5=True) as proxy:
        sink = sinks(port=proxy.port, message_expiry=60)
        async with watching(broker.port, "vcmon/events/#") as live:
            await sink.start()
            await sink.send(event(Status.FIRING))
            await live.wait("the event", lambda ms: len(ms) == 1)
            assert user_properties(live.messages[0]) == {}  # 3.1.1 has none
        assert proxy.versions == [5, 4]
        assert sink.version is aiomqtt.ProtocolVersion.V311

        proxy.cut()
        await until("the sink notices", lambda: not sink.connected)
        await sink.start()
        assert proxy.versions == [5, 4, 4]  # it remembers what this broker speaks

        strict = sinks("strict", port=proxy.port, protocol="5")
        with pytest.raises(Retry) as caught:
            await strict.start()
        assert "protocol" in caught.value.detail.lower()


async def test_protocol_311_explicitly(broker: Mosquitto, sinks: Callable[..., MqttSink]) -> None:
    async with Proxy(broker.port) as proxy:
        sink = sinks(port=proxy.port, protocol="3.1.1")
        async with watching(broker.port, "vcmon/#") as live:
            await sink.send(event(Status.FIRING))
            await live.wait("event and active", lambda ms: len(live.on(ACTIVE)) == 1)
        assert proxy.versions == [4]


# ---------------------------------------------------------------------------------------------
# Acknowledgements


async def test_acks_reach_the_callback_even_when_sent_while_away(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    got: list[tuple[str, dict[str, Any]]] = []
    arrived = asyncio.Event()

    def on_ack(alert_id: str, payload: dict[str, Any]) -> None:
        got.append((alert_id, payload))
        arrived.set()

    async def next_ack(what: str) -> None:
        try:
            async with asyncio.timeout(WAIT):
                await arrived.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None
        arrived.clear()

    async with Proxy(broker.port) as proxy:
        sink = sinks(port=proxy.port)
        await sink.start()
        await sink.subscribe_acks(on_ack)
        async with aiomqtt.Client(HOST, broker.port) as operator:
            await operator.publish("vcmon/ack/a1b2c3", b"not json", qos=1)
            await operator.publish("vcmon/ack/a1b2c3", b'{"by": "lan"}', qos=1)
            await next_ack("the first ack")
            assert got == [("a1b2c3", {"by": "lan"})]  # the invalid one was skipped

            proxy.cut()
            await until("the sink notices", lambda: not sink.connected)
            await operator.publish("vcmon/ack/ffee00", b'{"by": "minh"}', qos=1)
            await sink.start()  # the broker kept the session and the ack queued for it
            await next_ack("the ack sent while away")
            assert got[-1] == ("ffee00", {"by": "minh"})


class Acks:
    """An ack callback that records what it is given and answers ``result``."""

    def __init__(self, result: str = "accepted") -> None:
        self.result = result
        self.got: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, alert_id: str, payload: dict[str, Any]) -> str:
        self.got.append((alert_id, payload))
        return self.result

    def ids(self) -> list[str]:
        return [alert_id for alert_id, _ in self.got]


@contextlib.asynccontextmanager
async def maintained(sink: MqttSink) -> AsyncIterator[None]:
    """The sink's ``maintain`` running, as the daemon runs it from its start."""
    task = asyncio.create_task(sink.maintain())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def logged(caplog: pytest.LogCaptureFixture, name: str) -> int:
    return sum(r.getMessage() == name for r in caplog.records)


@pytest.mark.parametrize(
    ("rate", "burst", "steps"),
    [
        # (clock, took?) in turn
        (1.0, 2, [(0.0, True), (0.0, True), (0.0, False), (0.5, False), (1.0, True)]),
        (1.0, 2, [(0.0, True), (0.0, True), (100.0, True), (100.0, True), (100.0, False)]),
        (1.0, 1, [(10.0, True), (5.0, False), (10.5, False), (11.0, True)]),  # steps back
        (10 / 60, 20, [(0.0, True)] * 20 + [(0.0, False), (5.9, False), (6.0, True)]),
    ],
)
def test_token_bucket(rate: float, burst: int, steps: list[tuple[float, bool]]) -> None:
    now = [steps[0][0]]
    bucket = TokenBucket(rate, burst, lambda: now[0])
    for i, (at, took) in enumerate(steps):
        now[0] = at
        assert bucket.take() is took, f"step {i} at {at}"


async def test_maintain_connects_at_start_and_after_a_loss(
    broker: Mosquitto, sinks: Callable[..., MqttSink]
) -> None:
    acks = Acks()
    async with Proxy(broker.port) as proxy, aiomqtt.Client(HOST, broker.port) as operator:
        sink = sinks(port=proxy.port)
        async with maintained(sink):
            await sink.subscribe_acks(acks)
            await until("connected with nothing sent", lambda: sink.connected)
            await operator.publish("vcmon/ack/a1", b'{"by": "lan"}', qos=1)
            await until("the ack", lambda: acks.ids() == ["a1"])

            proxy.cut()  # nothing is sent afterwards: only maintain can bring the link back
            await operator.publish("vcmon/ack/b2", b'{"by": "minh"}', qos=1)
            await until("the ack sent while away", lambda: acks.ids() == ["a1", "b2"])
    assert sink.acks == {"accepted": 2}


async def test_ack_results_are_counted(
    broker: Mosquitto, sinks: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    acks = Acks("unknown_alert")
    sink = sinks(port=broker.port)
    await sink.subscribe_acks(acks)
    await sink.start()
    async with aiomqtt.Client(HOST, broker.port) as operator:
        for payload in (b"not json", b"[1]", b"{" * 5000, b'{"by": "lan"}'):
            await operator.publish("vcmon/ack/a1", payload, qos=1)
        await until("the valid ack", lambda: acks.ids() == ["a1"])
    assert sink.acks == {"invalid": 3, "unknown_alert": 1}
    assert logged(caplog, "mqtt_ack_invalid") == 3


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_retained_ack_is_ignored_cleared_and_never_replayed(
    broker: Mosquitto,
    sinks: Callable[..., MqttSink],
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    acks = Acks()
    async with Proxy(broker.port) as proxy, aiomqtt.Client(HOST, broker.port) as operator:
        # Retained before vcmon first subscribes: the broker offers it at every subscription.
        await operator.publish("vcmon/ack/a1", b'{"by": "lan"}', qos=1, retain=True)
        sink = sinks(port=proxy.port, protocol=protocol)
        await sink.subscribe_acks(acks)
        await sink.start()
        await until("the retained ack seen", lambda: sink.acks["retained"] == 1)
        await until("the retained ack cleared", lambda: not sink._clearing)
        async with watching(broker.port, "vcmon/ack/#") as fresh:
            await fresh.settle()
            assert fresh.on("vcmon/ack/a1") == []  # the broker forgot it

        if protocol == "5":  # MQTT 5 shows the publisher's retain flag on live messages too
            await operator.publish("vcmon/ack/c3", b'{"by": "lan"}', qos=1, retain=True)
            await until("the live retained ack seen", lambda: sink.acks["retained"] == 2)
            await until("the live retained ack cleared", lambda: not sink._clearing)

        proxy.cut()
        await until("the sink notices", lambda: not sink.connected)
        await sink.start()  # subscribes again: a retained ack left would be offered now
        await operator.publish("vcmon/ack/b2", b'{"by": "minh"}', qos=1)
        await until("the plain ack", lambda: acks.ids() == ["b2"])
    assert sink.acks["accepted"] == 1
    assert sink.acks["retained"] == (2 if protocol == "5" else 1)
    assert logged(caplog, "ack_retained_ignored") == 1


async def test_acks_are_rate_limited(
    broker: Mosquitto, sinks: Callable[..., MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    acks = Acks()
    sink = sinks(port=broker.port, ack_per_minute=0.001, ack_burst=3)  # no refill in a test
    await sink.subscribe_acks(acks)
    await sink.start()
    async with aiomqtt.Client(HOST, broker.port) as operator:
        for i in range(8):
            await operator.publish(f"vcmon/ack/a{i}", b'{"by": "flood"}', qos=1)
        await until("every ack counted", lambda: sum(sink.acks.values()) == 8)
    assert acks.ids() == ["a0", "a1", "a2"]
    assert sink.acks == {"accepted": 3, "rate_limited": 5}
    assert logged(caplog, "ack_rate_limited") == 1  # once for the run, not per ack


ACL = Path(__file__).parents[3] / "deploy" / "mosquitto" / "acl"


def test_the_shipped_mosquitto_config_refuses_anonymous_clients() -> None:
    conf = (ACL.parent / "mosquitto.conf").read_text(encoding="utf-8").splitlines()
    for line in ("allow_anonymous false", "acl_file /etc/mosquitto/vcmon/acl"):
        assert line in conf
    assert any(line.startswith("password_file ") for line in conf)


async def test_only_oncall_can_ack_through_the_shipped_acl(
    tmp_path: Path, sinks: Callable[..., MqttSink]
) -> None:
    _require_broker()
    users = {"vcmon": "vcmon-pw", "oncall": "oncall-pw", "viewer": "viewer-pw"}
    with Mosquitto(tmp_path / "broker", users=users, acl_file=ACL) as broker:
        acks = Acks()
        sink = sinks(port=broker.port, username="vcmon", password="vcmon-pw")
        async with maintained(sink):
            await sink.subscribe_acks(acks)
            await until("connected", lambda: sink.connected)

            with pytest.raises(aiomqtt.MqttError):  # anonymous: not even a connection
                async with aiomqtt.Client(HOST, broker.port) as anonymous:
                    await anonymous.publish("vcmon/ack/a0", b'{"by": "anon"}', qos=1)
            # A user the ACL gives no write on vcmon/ack/: the broker drops the publish.
            async with aiomqtt.Client(
                HOST, broker.port, username="viewer", password="viewer-pw"
            ) as viewer:
                await viewer.publish("vcmon/ack/a1", b'{"by": "viewer"}', qos=1)
            async with aiomqtt.Client(
                HOST, broker.port, username="oncall", password="oncall-pw"
            ) as oncall:
                await oncall.publish("vcmon/ack/a2", b'{"by": "lan"}', qos=1)
                # The broker handles publishes in order: a1 would have come before a2.
                await until("oncall's ack", lambda: "a2" in acks.ids())
                assert acks.ids() == ["a2"]

                await oncall.publish("vcmon/ack/a3", b'{"by": "lan"}', qos=1, retain=True)
                await until("the retained ack seen", lambda: sink.acks["retained"] == 1)
                await until("the retained ack cleared", lambda: not sink._clearing)
                await sink.close()  # the daemon's sink reconnects: nothing is replayed
                await sink.start()
                await oncall.publish("vcmon/ack/a4", b'{"by": "lan"}', qos=1)
                await until("the next ack", lambda: "a4" in acks.ids())
        assert acks.ids() == ["a2", "a4"]
        assert sink.acks == {"accepted": 2, "retained": 1}


# ---------------------------------------------------------------------------------------------
# Signed acks (a shared secret, for brokers without ACLs)

KEY = b"a shared ack secret, 32 bytes.."
NOW = 1_800_000_000


def signed(alert_id: str = "a1", key: bytes = KEY, **payload: Any) -> dict[str, Any]:
    doc = {"by": "lan", "ts": NOW, **payload}
    return {**doc, "sig": sign_ack(key, alert_id, doc)}


@pytest.mark.parametrize(
    ("alert_id", "payload", "now", "refused"),
    [
        ("a1", signed(), NOW, None),
        ("a1", signed(comment="Đổi thiết bị", duration="1h"), NOW + 300, None),
        ("a1", signed(), NOW - 300, None),
        ("a1", {"by": "lan", "ts": NOW}, NOW, "unsigned"),
        ("a1", {**signed(), "ts": str(NOW)}, NOW, "whole seconds"),
        ("a1", {**signed(), "ts": True}, NOW, "whole seconds"),
        ("a1", signed(), NOW + 301, "beyond ±300 s"),
        ("a1", signed(), NOW - 301, "beyond ±300 s"),
        ("a1", {**signed(), "by": "mallory"}, NOW, "does not match"),  # changed after signing
        ("b2", signed("a1"), NOW, "does not match"),  # another alert's ack
        ("a1", signed(key=b"another secret, 32 bytes......."), NOW, "does not match"),
        ("a1", {**signed(), "sig": "ü" * 64}, NOW, "does not match"),
    ],
)
def test_ack_signatures(
    alert_id: str, payload: dict[str, Any], now: float, refused: str | None
) -> None:
    reason = AckSignatures(KEY).check(alert_id, payload, now)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused in reason


def test_a_signed_ack_is_taken_once() -> None:
    signatures, ack = AckSignatures(KEY), signed()
    assert signatures.check("a1", ack, NOW) is None
    reason = signatures.check("a1", ack, NOW + 10)
    assert reason is not None
    assert "replayed" in reason
    reason = signatures.check("a1", ack, NOW + 400)  # remembered no longer, but too old
    assert reason is not None
    assert "beyond" in reason


def test_the_signature_is_what_openssl_makes_from_the_documented_form() -> None:
    if OPENSSL is None:
        pytest.skip("openssl is missing")
    ack = signed(comment="Đổi thiết bị")
    body = f'{{"by":"lan","comment":"Đổi thiết bị","ts":{NOW}}}'
    done = subprocess.run(
        [OPENSSL, "dgst", "-sha256", "-hmac", KEY.decode(), "-hex"],
        input=f"vcmon-ack-v1\na1\n{body}".encode(), capture_output=True, check=True,
    )  # fmt: skip
    assert done.stdout.decode().split()[-1] == ack["sig"]


def test_ack_secret_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VCMON_TEST_ACK_KEY", raising=False)
    with pytest.raises(ValidationError, match="VCMON_TEST_ACK_KEY is not set"):
        MqttConfig(ack_secret_env="VCMON_TEST_ACK_KEY")
    monkeypatch.setenv("VCMON_TEST_ACK_KEY", "short-Pl4nted")
    with pytest.raises(ValidationError, match="holds 13 bytes, at least 16") as info:
        MqttConfig(ack_secret_env="VCMON_TEST_ACK_KEY")
    assert "Pl4nted" not in str(info.value)
    monkeypatch.setenv("VCMON_TEST_ACK_KEY", KEY.decode())
    assert MqttConfig(ack_secret_env="VCMON_TEST_ACK_KEY").ack_secret == KEY
    key_file = tmp_path / "ack.key"
    key_file.write_text(KEY.decode() + "\n", encoding="utf-8")
    assert MqttConfig(ack_secret_file=str(key_file)).ack_secret == KEY
    with pytest.raises(ValidationError, match="not both"):
        MqttConfig(ack_secret_file=str(key_file), ack_secret_env="VCMON_TEST_ACK_KEY")
    assert MqttConfig().ack_secret is None


async def test_with_a_secret_only_signed_acks_are_taken(
    broker: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("VCMON_TEST_ACK_KEY", KEY.decode())
    config = MqttConfig(port=broker.port, ack_secret_env="VCMON_TEST_ACK_KEY")
    sink = MqttSink(config, "lab", wall=lambda: NOW + 1)
    acks = Acks()
    try:
        await sink.subscribe_acks(acks)
        await sink.start()
        async with aiomqtt.Client(HOST, broker.port) as operator:
            good = json.dumps(signed("a2")).encode()
            for alert_id, payload in (("a1", b'{"by": "lan"}'), ("a2", good), ("a2", good)):
                await operator.publish(f"vcmon/ack/{alert_id}", payload, qos=1)
            await until("every ack counted", lambda: sum(sink.acks.values()) == 3)
    finally:
        await sink.close()
    assert acks.got == [("a2", {"by": "lan", "ts": NOW})]  # the sig is not passed on
    assert sink.acks == {"accepted": 1, "bad_signature": 2}  # unsigned, then the replay
    assert logged(caplog, "ack_bad_signature") == 2
