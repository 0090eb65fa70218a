"""Wires the configured sinks to the event log: a dispatcher per sink, its route, its metrics."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel

from vcmon.alerts.feed import Subscription
from vcmon.alerts.model import AlertEvent, matches
from vcmon.alerts.store import Store, StoreError
from vcmon.config import Config
from vcmon.config.alerts import Matchers
from vcmon.delivery.outbox import Backoff, Dispatcher, Route
from vcmon.delivery.sinks.base import (
    AckReceiver,
    AckSource,
    Maintained,
    Seedable,
    SinkError,
    StatusPublisher,
)
from vcmon.delivery.sinks.registry import build_sinks, grouping_of

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def route(matchers: Matchers) -> Route:
    """The events a sink with ``match: matchers`` wants (every event when it is empty); the
    labels are the event's own, as they were when it was decided."""
    if matchers.empty():
        return lambda ev: True

    def wanted(ev: AlertEvent) -> bool:
        return matches(matchers, ev.target, ev.kind.value, ev.severity.value)

    return wanted


class Delivery:
    """The dispatchers of one daemon and the metrics about them."""

    def __init__(
        self, config: Config, store: Store, registry: CollectorRegistry, *,
        changes: Subscription | None = None, acks: AckReceiver | None = None,
    ) -> None:  # fmt: skip
        """``changes``: the runtime's committed changes, followed by an upkeep task;
        ``acks``: where acks taken by a sink (MQTT) go."""
        self.latency = Histogram(
            "vcmon_notification_latency_seconds",
            "From the decision to the receiver's acknowledgement",
            ("sink",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        configs: Sequence[BaseModel] = config.sinks
        sinks = build_sinks(configs, config.instance)
        match_of = {getattr(c, "name", ""): getattr(c, "match", Matchers()) for c in configs}
        group_of = {getattr(c, "name", ""): grouping_of(c) for c in configs}
        self.dispatchers = [
            Dispatcher(
                sink,
                store,
                route=route(match_of.get(sink.name, Matchers())),
                on_latency=lambda name, seconds: self.latency.labels(name).observe(seconds),
                group=group_of.get(sink.name),
            )
            for sink in sinks
        ]
        registry.register(DeliveryCollector(self.dispatchers))
        # Endpoint status docs waiting to be published (the newest per endpoint), per sink.
        self._statuses: dict[str, dict[str, dict[str, Any]]] = {}
        self._status_wake: dict[str, asyncio.Event] = {}
        self.acks = acks
        try:
            firing = store.firing_events()
        except StoreError:  # not open yet: sinks start without what was open before
            firing = []
        # Sinks with upkeep of their own (Alertmanager's re-posting), seeded from the log.
        self.upkeep: list[Callable[[], Coroutine[Any, Any, None]]] = []
        if changes is not None:
            self.upkeep.append(functools.partial(self.follow, changes))
        for sink in sinks:
            if isinstance(sink, Seedable):
                sink.seed([ev.to_json() for ev in firing])
            if isinstance(sink, Maintained):
                self.upkeep.append(sink.maintain)
            if isinstance(sink, StatusPublisher):
                self._statuses[sink.name] = {}
                self._status_wake[sink.name] = asyncio.Event()
                self.upkeep.append(functools.partial(self._publish_statuses, sink))

    async def follow(self, changes: Subscription) -> None:
        """Hand committed changes to the dispatchers and status publishers, until cancelled."""
        async for update in changes:
            for ev in update.urgent:
                self.urgent(ev)
            for endpoint_id, doc in update.statuses.items():
                self.status_changed(endpoint_id, doc)
            if update.written:
                self.notify()

    def status_changed(self, endpoint_id: str, doc: dict[str, Any]) -> None:
        """An endpoint's state changed: sinks that keep a status (MQTT) publish it."""
        for name, pending in self._statuses.items():
            pending[endpoint_id] = doc
            self._status_wake[name].set()

    async def _publish_statuses(self, sink: StatusPublisher) -> None:
        """Publish status docs as they change, newest only; a broker away delays, loses none."""
        name = getattr(sink, "name", "")
        pending, wake = self._statuses[name], self._status_wake[name]
        if self.acks is not None and isinstance(sink, AckSource):
            await sink.subscribe_acks(self.acks.ack_from)
        backoff = Backoff()
        attempt = 0
        while True:
            await wake.wait()
            wake.clear()
            while pending:
                endpoint_id, doc = next(iter(pending.items()))
                try:
                    await sink.publish_status(endpoint_id, doc)
                except SinkError:
                    attempt += 1
                    await asyncio.sleep(backoff.delay(attempt, random.Random()))  # a backoff
                    continue
                attempt = 0
                if pending.get(endpoint_id) is doc:  # not replaced meanwhile
                    del pending[endpoint_id]

    def count_acks(self, counter: Any) -> None:
        """Sinks that take acks (MQTT) count them in ``counter``."""
        for d in self.dispatchers:
            if isinstance(d.sink, AckSource):
                d.sink.count_acks(counter)

    def failing(self) -> dict[str, float | None]:
        """Each sink's failing-since wall time, None while it delivers."""
        return {d.sink.name: d.stats.failing_since for d in self.dispatchers}

    def notify(self) -> None:
        """New events are in the log."""
        for d in self.dispatchers:
            d.notify()

    def urgent(self, doc: AlertEvent) -> None:
        """An event that cannot be written (state_store_failing): every sink whose route
        takes it sends it now."""
        for d in self.dispatchers:
            d.urgent(doc)


class DeliveryCollector(Collector):
    """Per-sink counters and gauges, read from the dispatchers at scrape time."""

    def __init__(self, dispatchers: Sequence[Dispatcher]) -> None:
        self._dispatchers = dispatchers

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "vcmon_notifications", "Send attempts by result (sent, or why not)",
            labels=("sink", "result"),
        )  # fmt: skip
        dead = CounterMetricFamily(
            "vcmon_dead_letters", "Events a sink refused for good", labels=("sink",)
        )
        pending = GaugeMetricFamily(
            "vcmon_outbox_pending",
            "Events written and owed to the sink now: not yet acknowledged, and not held back "
            "on purpose by a group's wait or interval",
            labels=("sink",),
        )
        connected = GaugeMetricFamily(
            "vcmon_sink_connected", "1 while the last send succeeded", labels=("sink",)
        )
        disabled = GaugeMetricFamily(
            "vcmon_sink_disabled", "1 once the target asked never to be called again (410)",
            labels=("sink",),
        )  # fmt: skip
        for d in self._dispatchers:
            name, st = d.sink.name, d.stats
            sent.add_metric((name, "sent"), st.sent)
            for reason, n in sorted(st.failed.items()):
                sent.add_metric((name, reason), n)
            dead.add_metric((name,), st.dead)
            pending.add_metric((name,), st.pending)
            connected.add_metric((name,), 1.0 if st.connected else 0.0)
            disabled.add_metric((name,), 1.0 if st.disabled else 0.0)
        yield from (sent, dead, pending, connected, disabled)
