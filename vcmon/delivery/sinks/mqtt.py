"""The MQTT sink: events, the active set, status and the monitor's birth and will (topics:
docs/architecture.md, "MQTT topics").

One connection per sink. ``start`` opens it and announces the monitor online; a lost
connection is noticed at once (the reader task ends), the next ``send``, ``start`` or
``publish_status`` opens a new one and republishes everything retained that this process owns
(birth, last status per endpoint), so a broker restarted without persistence is whole again.
The client id is fixed and the session persistent, so acks sent while vcmon was away are
delivered when it returns. ``maintain`` (run by the daemon from its start) keeps the connection
open even while nothing is sent, so acks are taken at once.

Acks are trusted only as far as the broker's ACL allows (deploy/mosquitto/): a retained ack is
never taken (it would be replayed at every reconnect) and is cleared from the broker, and a
token bucket bounds how many acks per minute reach the alert store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from vcmon.alerts.model import rfc3339
from vcmon.delivery.outbox import Backoff
from vcmon.delivery.sinks.base import (
    AckCallback,
    AckSource,
    Maintained,
    Retry,
    Sink,
    StatusPublisher,
)
from vcmon.delivery.sinks.mqtt_config import MqttConfig, _TlsContext
from vcmon.logs import event as log_event
from vcmon.text import slugify

log = logging.getLogger(__name__)

# How long the broker keeps the session (the ack subscription and acks queued for it) after
# the connection goes; MQTT 5 drops it at once unless told, 3.1.1 keeps it until reused.
SESSION_EXPIRY: Final = 86400
# CONNACK codes of a broker that does not speak the version asked for: 3.1.1's 1, and 0x84
# (paho maps a 3.1.1-style refusal of a v5 CONNECT to it).
_PROTOCOL_REFUSED: Final = frozenset({1, 0x84})

_SAFE_SEGMENT: Final = re.compile(r"[A-Za-z0-9_.:-]+")

# What became of an ack taken from the broker (vcmon_acks_total{source="mqtt",result}).
ACK_RESULTS: Final = (
    "accepted", "retained", "rate_limited", "invalid", "unknown_alert", "bad_signature",
    "not_stored",
)  # fmt: skip
# What the ack callback may answer; anything else (None included) counts as accepted.
_CALLBACK_RESULTS: Final = frozenset({"accepted", "invalid", "unknown_alert", "not_stored"})
MAX_ACK_BYTES: Final = 4096  # an ack is a few fields; more is not an ack


ACK_SIG_WINDOW: Final = 300.0  # s: a signed ack's ts may be this far from our clock
ACK_SIG_REMEMBERED: Final = 10_000  # signatures kept to refuse replays (acks are rate-limited)


def ack_message(alert_id: str, payload: Mapping[str, Any]) -> bytes:
    """What an ack's signature covers: ``vcmon-ack-v1``, the alert id of its topic and the
    payload without ``sig`` as compact JSON with sorted keys, one per line."""
    body = {k: v for k, v in payload.items() if k != "sig"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"vcmon-ack-v1\n{alert_id}\n{text}".encode()


def sign_ack(key: bytes, alert_id: str, payload: Mapping[str, Any]) -> str:
    """The ``sig`` of an ack: HMAC-SHA256 of ``ack_message``, in lower-case hex."""
    return hmac.new(key, ack_message(alert_id, payload), hashlib.sha256).hexdigest()


class AckSignatures:
    """Checks signed acks: a ``ts`` within ``ACK_SIG_WINDOW`` of now, a matching ``sig``, and
    no signature seen before within the window (a replay)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._seen: dict[str, float] = {}  # sig → its ts

    def check(self, alert_id: str, payload: Mapping[str, Any], now: float) -> str | None:
        """Why the ack is refused, or None when it is good (its signature is remembered)."""
        sig, ts = payload.get("sig"), payload.get("ts")
        if not isinstance(sig, str):
            return "unsigned: sig is missing"
        if not isinstance(ts, int) or isinstance(ts, bool):
            return "ts: expected whole seconds since the epoch"
        if abs(now - ts) > ACK_SIG_WINDOW:
            return f"ts is {ts - now:+.0f} s from this host's clock, beyond ±{ACK_SIG_WINDOW:g} s"
        expected = sign_ack(self._key, alert_id, payload)
        if not hmac.compare_digest(sig.encode(), expected.encode()):
            return "sig does not match"
        self._seen = {s: t for s, t in self._seen.items() if abs(now - t) <= ACK_SIG_WINDOW}
        if sig in self._seen:
            return "replayed: this signature was used already"
        if len(self._seen) >= ACK_SIG_REMEMBERED:
            return "too many signed acks in the window to tell a replay"  # fail closed
        self._seen[sig] = ts
        return None


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` spends one if there is one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        """Spend a token: True if one was there, False (nothing spent) if the bucket is dry."""
        now = self._clock()
        # A clock that steps back neither drains the bucket nor earns it tokens twice.
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def _segment(text: object) -> str:
    """One topic level: an id already safe stays as it is (so topics match the JSON's ids and
    kinds), anything else is slugged; never ``+ # /``."""
    value = str(text)
    if _SAFE_SEGMENT.fullmatch(value):
        return value
    return slugify(value) or "_"


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it unannotated


def _dumps(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _describe(exc: aiomqtt.MqttError) -> str:
    if isinstance(exc, aiomqtt.MqttCodeError) and exc.rc is not None:
        return f"refused: {exc}" if isinstance(exc, MqttConnectError) else str(exc)
    return str(exc) or type(exc).__name__


def _refused_protocol(exc: aiomqtt.MqttError) -> bool:
    if not isinstance(exc, MqttConnectError):
        return False
    return getattr(exc.rc, "value", exc.rc) in _PROTOCOL_REFUSED


@dataclass(slots=True)
class _Link:
    """One open connection and the task that reads it; ``lost`` is set when it ends."""

    client: aiomqtt.Client
    version: aiomqtt.ProtocolVersion
    lost: asyncio.Event
    reader: asyncio.Task[None] | None = None


class MqttSink(Sink, Maintained, StatusPublisher, AckSource):
    """Publishes events, the active set, status docs and the monitor's presence."""

    def __init__(
        self, config: MqttConfig, instance: str, wall: Callable[[], float] = time.time
    ) -> None:
        self.name = config.name
        self.config = config
        self.instance = instance
        self.client_id = config.client_id or f"vcmon-{instance}"
        prefix = config.prefix
        self.monitor_topic = f"{prefix}/monitor/{_segment(instance)}"
        self.since: str | None = None  # this process's session start, fixed at first start
        self.version: aiomqtt.ProtocolVersion | None = {
            "auto": None,
            "5": aiomqtt.ProtocolVersion.V5,
            "3.1.1": aiomqtt.ProtocolVersion.V311,
        }[config.protocol]
        self._status: dict[str, bytes] = {}  # topic → last doc, republished on connect
        self._ack_callback: AckCallback | None = None
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()
        self._tls: _TlsContext | None = None
        self._expiry_warned = False
        self.acks: Counter[str] = Counter()  # by result (ACK_RESULTS)
        self._ack_metric: Any = None  # a prometheus Counter labelled (source, result), if bound
        self._ack_bucket = TokenBucket(
            config.ack_per_minute / 60.0, config.ack_burst, time.monotonic
        )
        self._ack_limited = 0  # acks dropped in the current rate-limited run (0: none)
        self._retained_logged = False
        self._wall = wall  # for signed acks' ts
        key = config.ack_secret
        self._signatures = AckSignatures(key) if key is not None else None
        self._clearing: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """True while a connection is open and not known to be lost."""
        return self._link is not None and not self._link.lost.is_set()

    def topic(self, *segments: object) -> str:
        """``<prefix>/<segment>/…``, each segment made a safe topic level."""
        return "/".join([self.config.prefix, *(_segment(s) for s in segments)])

    def _presence(self, online: bool) -> bytes:
        return _dumps({"online": online, "since": self.since})

    # -- connection ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect unless connected, then republish; Retry("connect", …) when that fails."""
        async with self._connecting:
            if self.connected:
                return
            await self._drop()
            if self.since is None:
                self.since = rfc3339(time.time())
            self._link = await self._connect()
            log_event(log, logging.INFO, "mqtt_connected", sink=self.name,
                      broker=f"{self.config.host}:{self.config.port}",
                      protocol="5" if self._link.version is aiomqtt.ProtocolVersion.V5
                      else "3.1.1")  # fmt: skip
            await self._republish(self._link)

    async def maintain(self) -> None:
        """Keep a connection open from the daemon's start until cancelled, so acks are taken
        while nothing is sent; a lost one is opened again with backoff."""
        backoff, rng, attempt = Backoff(), random.Random(), 0
        while True:
            if not self.connected:
                try:
                    await self.start()
                except Retry as exc:
                    if attempt == 0:  # one line per failing run
                        log_event(log, logging.WARNING, "mqtt_connect_failed", sink=self.name,
                                  reason=exc.reason, detail=exc.detail)  # fmt: skip
                    await asyncio.sleep(backoff.delay(attempt, rng))  # a backoff
                    attempt += 1
                    continue
            attempt = 0
            link = self._link
            if link is not None:
                await link.lost.wait()

    async def _connect(self) -> _Link:
        if self.config.tls is not None and self._tls is None:
            try:
                self._tls = self.config.tls.context()
            except (OSError, ssl.SSLError) as exc:
                raise Retry("connect", f"TLS files: {exc}") from None
        versions = (
            [self.version]
            if self.version is not None
            else [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311]
        )
        for version in versions:
            client = self._client(version)
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                # aiomqtt leaves the socket of a refused or timed-out connect open.
                client._client._sock_close()
                if self._tls is not None and self._tls.last is not None:
                    self._tls.last.close()
                    self._tls.last = None
                if version is not versions[-1] and _refused_protocol(exc):
                    continue  # "auto": this broker predates MQTT 5
                raise Retry("connect", _describe(exc)) from None
            if self.config.protocol == "auto":
                self.version = version  # the broker will not change its mind while we live
            link = _Link(client, version, asyncio.Event())
            link.reader = asyncio.create_task(self._read(link), name=f"mqtt-read-{self.name}")
            return link
        raise AssertionError("unreachable: the last version either connects or raises")

    def _client(self, version: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        cfg = self.config
        v5 = version is aiomqtt.ProtocolVersion.V5
        properties: Properties | None = None
        if v5:
            properties = _properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.secret,
            identifier=self.client_id,
            protocol=version,
            will=aiomqtt.Will(self.monitor_topic, self._presence(False), qos=1, retain=True),
            clean_session=None if v5 else False,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=cfg.keepalive,
            timeout=cfg.timeout,
            tls_context=self._tls,
            tls_insecure=cfg.tls.insecure if cfg.tls is not None and cfg.tls.insecure else None,
        )

    async def _read(self, link: _Link) -> None:
        """Deliver acks until the connection ends, then mark it lost."""
        try:
            async for message in link.client.messages:
                self._on_message(message)
        except aiomqtt.MqttError as exc:
            if not link.lost.is_set():
                log_event(log, logging.WARNING, "mqtt_disconnected", sink=self.name,
                          detail=str(exc.__cause__ or exc))  # fmt: skip
        finally:
            link.lost.set()

    async def _drop(self) -> None:
        """Forget the current connection, closing it if it is still open."""
        link, self._link = self._link, None
        if link is None:
            return
        was_lost = link.lost.is_set()
        link.lost.set()
        if link.reader is not None:
            link.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.reader
        if not was_lost:
            with contextlib.suppress(aiomqtt.MqttError):
                await link.client.__aexit__(None, None, None)

    async def _ensure(self) -> _Link:
        if not self.connected:
            await self.start()
        assert self._link is not None
        return self._link

    async def _publish(
        self,
        link: _Link,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        properties: Properties | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement, or Retry when the link fails."""
        if link.lost.is_set():
            raise Retry("disconnected", "connection lost")
        publish = asyncio.ensure_future(
            link.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        )
        # aiomqtt waits for PUBACK until its timeout even when the connection is already gone.
        lost = asyncio.ensure_future(link.lost.wait())
        try:
            await asyncio.wait({publish, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not publish.done():
                publish.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await publish
        if publish.cancelled():
            if self._link is link:
                await self._drop()
            raise Retry("disconnected", "connection lost before the broker acknowledged")
        exc = publish.exception()
        if exc is None:
            return
        if self._link is link:
            await self._drop()
        if isinstance(exc, aiomqtt.MqttError):
            reason = "timeout" if "timed out" in str(exc) else "disconnected"
            raise Retry(reason, _describe(exc)) from None
        raise exc

    async def republish(self) -> None:
        """Birth, the last status doc of each endpoint, the ack subscription; done on connect."""
        if not self.connected:
            await self.start()
            return
        assert self._link is not None
        await self._republish(self._link)

    async def _republish(self, link: _Link) -> None:
        await self._publish(link, self.monitor_topic, self._presence(True), qos=1, retain=True)
        for topic, payload in list(self._status.items()):
            await self._publish(link, topic, payload, qos=self.config.qos, retain=True)
        if self._ack_callback is not None:
            await self._subscribe_acks(link)

    async def close(self) -> None:
        """Announce offline (retained) and disconnect cleanly, so the will is not sent."""
        for task in list(self._clearing):
            task.cancel()
        async with self._connecting:
            link = self._link
            if link is not None and not link.lost.is_set():
                with contextlib.suppress(Retry):
                    await self._publish(
                        link, self.monitor_topic, self._presence(False), qos=1, retain=True
                    )
            await self._drop()

    # -- publishing ---------------------------------------------------------------------------

    def _properties(self, link: _Link, event: Mapping[str, Any], expire: bool) -> Properties | None:
        if link.version is not aiomqtt.ProtocolVersion.V5:
            if expire and self.config.message_expiry is not None and not self._expiry_warned:
                self._expiry_warned = True
                log_event(log, logging.WARNING, "mqtt_message_expiry_ignored", sink=self.name,
                          detail="the broker speaks MQTT 3.1.1")  # fmt: skip
            return None
        props = _properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1
        props.ContentType = "application/json"
        props.UserProperty = [
            ("kind", str(event.get("kind", ""))),
            ("severity", str(event.get("severity", ""))),
            ("alert_id", str(event.get("alert_id", ""))),
        ]
        # Only events expire: the active set and status are state, valid until replaced.
        if expire and self.config.message_expiry is not None:
            props.MessageExpiryInterval = self.config.message_expiry
        return props

    async def send(self, event: Mapping[str, Any]) -> None:
        """Publish the event and update the active set; return once the broker acknowledged."""
        link = await self._ensure()
        payload = _dumps(event)
        endpoint = (event.get("endpoint") or {}).get("id", "")
        qos = self.config.qos
        await self._publish(
            link,
            self.topic("events", event["kind"], endpoint),
            payload,
            qos=qos,
            retain=False,
            properties=self._properties(link, event, expire=True),
        )
        active = self.topic("active", event["alert_id"])
        if event["status"] == "resolved":
            await self._publish(link, active, b"", qos=qos, retain=True)
        else:  # firing, or acknowledged (it still fires)
            props = self._properties(link, event, expire=False)
            await self._publish(link, active, payload, qos=qos, retain=True, properties=props)

    async def publish_status(self, endpoint_id: str, doc: Mapping[str, Any]) -> None:
        """Retain ``doc`` as the endpoint's current state; kept and republished on reconnect."""
        topic = self.topic("status", endpoint_id)
        payload = _dumps(doc)
        self._status[topic] = payload
        if not self.connected:
            await self.start()  # its republish carries this doc
            return
        assert self._link is not None
        await self._publish(self._link, topic, payload, qos=self.config.qos, retain=True)

    # -- acknowledgements ---------------------------------------------------------------------

    async def subscribe_acks(self, callback: AckCallback) -> None:
        """Call ``callback(alert_id, payload)`` for each JSON object on ``<prefix>/ack/+``."""
        self._ack_callback = callback
        if self.connected:
            assert self._link is not None
            await self._subscribe_acks(self._link)

    def count_acks(self, counter: Any) -> None:
        """Also count acks in ``counter``, a prometheus Counter labelled (source, result);
        every result is shown from the start, at 0."""
        self._ack_metric = counter
        for result in ACK_RESULTS:
            counter.labels("mqtt", result)

    def _count(self, result: str) -> None:
        self.acks[result] += 1
        if self._ack_metric is not None:
            self._ack_metric.labels("mqtt", result).inc()

    async def _subscribe_acks(self, link: _Link) -> None:
        ack_filter = f"{self.config.prefix}/ack/+"
        try:
            if link.version is aiomqtt.ProtocolVersion.V5:
                # The publisher's retain flag as it was, so a retained ack is known even live;
                # never our own messages (the empty ones that clear a retained ack).
                options = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True)
                granted = await link.client.subscribe(ack_filter, options=options)
            else:
                granted = await link.client.subscribe(ack_filter, qos=1)
        except aiomqtt.MqttError as exc:
            if self._link is link:
                await self._drop()
            raise Retry("disconnected", _describe(exc)) from None
        if any(getattr(code, "value", code) >= 0x80 for code in granted):
            log_event(log, logging.WARNING, "mqtt_ack_subscribe_refused", sink=self.name,
                      topic=ack_filter, detail="refused by the broker's ACL")  # fmt: skip

    def _on_message(self, message: aiomqtt.Message) -> None:
        callback = self._ack_callback
        ack_filter = f"{self.config.prefix}/ack/+"
        if callback is None or not message.topic.matches(ack_filter) or not message.payload:
            return  # an empty payload clears a retained ack: nothing to do
        alert_id = message.topic.value.rsplit("/", 1)[-1]
        if message.retain:
            self._retained(message.topic.value, alert_id)
            return
        if not self._ack_bucket.take():
            self._rate_limited(alert_id)
            return
        if self._ack_limited:
            log_event(log, logging.INFO, "ack_rate_limit_ended", sink=self.name,
                      dropped=self._ack_limited)  # fmt: skip
            self._ack_limited = 0
        payload = self._parse(message.payload, alert_id)
        if payload is None:
            self._count("invalid")
            return
        if self._signatures is not None:
            refused = self._signatures.check(alert_id, payload, self._wall())
            if refused is not None:
                self._count("bad_signature")
                log_event(log, logging.WARNING, "ack_bad_signature", sink=self.name,
                          alert_id=alert_id, detail=refused)  # fmt: skip
                return
            payload = {k: v for k, v in payload.items() if k != "sig"}
        try:
            result = callback(alert_id, payload)
        except Exception as exc:  # one bad ack must not stop the connection's reader
            log_event(log, logging.ERROR, "mqtt_ack_failed", sink=self.name,
                      alert_id=alert_id, detail=repr(exc))  # fmt: skip
            self._count("invalid")
            return
        self._count(result if isinstance(result, str) and result in _CALLBACK_RESULTS
                    else "accepted")  # fmt: skip

    def _parse(self, raw: object, alert_id: str) -> dict[str, Any] | None:
        """The ack's JSON object, or None (logged) when it is not one."""
        detail = None
        payload: object = None
        if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_ACK_BYTES:
            detail = f"expected a JSON object of at most {MAX_ACK_BYTES} bytes"
        else:
            try:
                payload = json.loads(bytes(raw))
            except (ValueError, TypeError, RecursionError) as exc:
                detail = str(exc)
            else:
                if not isinstance(payload, dict):
                    detail = "expected a JSON object"
        if detail is not None or not isinstance(payload, dict):
            log_event(log, logging.WARNING, "mqtt_ack_invalid", sink=self.name,
                      alert_id=alert_id, detail=detail)  # fmt: skip
            return None
        return payload

    def _retained(self, topic: str, alert_id: str) -> None:
        """A retained ack: never taken, since the broker would replay it at every reconnect;
        cleared, so it is not offered again."""
        self._count("retained")
        if not self._retained_logged:  # once: a flood must not flood the log
            self._retained_logged = True
            log_event(log, logging.WARNING, "ack_retained_ignored", sink=self.name,
                      alert_id=alert_id, topic=topic,
                      detail="acks must not be retained; cleared it from the broker")  # fmt: skip
        task = asyncio.create_task(self._clear(topic), name=f"mqtt-clear-{self.name}")
        self._clearing.add(task)
        task.add_done_callback(self._clearing.discard)

    async def _clear(self, topic: str) -> None:
        link = self._link
        if link is None:
            return  # the next connection's subscription offers it again, and it is cleared then
        try:
            await self._publish(link, topic, b"", qos=1, retain=True)
        except Retry as exc:  # the connection went: the next subscription offers it again
            log_event(log, logging.DEBUG, "ack_retained_clear_deferred", sink=self.name,
                      topic=topic, detail=exc.detail)  # fmt: skip

    def _rate_limited(self, alert_id: str) -> None:
        self._count("rate_limited")
        if not self._ack_limited:  # once per run of dropped acks
            cfg = self.config
            log_event(log, logging.WARNING, "ack_rate_limited", sink=self.name, alert_id=alert_id,
                      limit=f"{cfg.ack_per_minute:g}/min burst {cfg.ack_burst}")  # fmt: skip
        self._ack_limited += 1
