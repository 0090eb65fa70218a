"""Metric families of the contract (docs/architecture.md, Metrics).

The per-endpoint families are described here and rendered by vcmon.http.exposition as rounds land;
the daemon-wide ones live in a prometheus_client registry, rendered at scrape time.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vcmon import __version__
from vcmon.config import Endpoint
from vcmon.states import State

BASE_LABELS = ("endpoint", "probe", "district", "level")
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")

# Scheduler lag is judged against a 50 ms budget, so resolution is fine below it.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class Family:
    """One per-endpoint metric family: its name, type, help text and labels after the base."""

    name: str
    type: str  # "gauge", "counter" or "histogram"
    help: str
    extra: tuple[str, ...] = ()


# The per-endpoint families in exposition order; vcmon.http.exposition renders them (no copy of
# names or help texts elsewhere). Dashboards and rules in exporters/ depend on every word.
UP = Family("vcmon_up", "gauge", "1 if the last round got at least one answer")
RTT = Family("vcmon_rtt_seconds", "histogram", "Round-trip time of every answered attempt")
ROUND_RTT = Family(
    "vcmon_round_rtt_seconds",
    "gauge",
    "Round-trip time of the last round by statistic; NaN when nothing answered",
    ("stat",),
)
JITTER = Family(
    "vcmon_jitter_seconds",
    "gauge",
    "Mean absolute difference of consecutive RTTs in the last round (IPDV, RFC 5481)",
)
LOSS = Family("vcmon_loss_ratio", "gauge", "1 - received/sent in the last round")
MOS = Family(
    "vcmon_mos",
    "gauge",
    "Estimated MOS (simplified E-model) of the last round; for probes whose RTT is a media "
    "round trip only",
)
SENT = Family("vcmon_packets_sent", "counter", "Probe attempts sent (echo requests for ICMP)")
RECEIVED = Family("vcmon_packets_received", "counter", "Answers received within the timeout")
LATE = Family("vcmon_packets_late", "counter", "Answers that arrived after their timeout")
DUPLICATE = Family("vcmon_packets_duplicate", "counter", "Duplicate answers")
ERRORS = Family(
    "vcmon_packets_error",
    "counter",
    "Attempts answered by an error (an ICMP error for ICMP) or not sent, by reason",
    ("reason",),
)
ROUNDS = Family("vcmon_rounds", "counter", "Probe rounds completed")
FAILURES = Family(
    "vcmon_round_failures",
    "counter",
    "Rounds that could not probe at all (e.g. name resolution failed)",
)
STATE = Family("vcmon_endpoint_state", "gauge", "1 for the current health state", ("state",))
LAST_ROUND = Family("vcmon_last_round_timestamp_seconds", "gauge", "When the last round started")
# Its extra labels are name, address, site, parent and one label_<key> per free label.
INFO = Family("vcmon_endpoint_info", "gauge", "Inventory fields of each endpoint; always 1")
ENDPOINT_FAMILIES: tuple[Family, ...] = (
    UP, RTT, ROUND_RTT, JITTER, LOSS, MOS, SENT, RECEIVED, LATE, DUPLICATE, ERRORS, ROUNDS,
    FAILURES, STATE, LAST_ROUND, INFO,
)  # fmt: skip
STATES = tuple(s.value for s in State)
ROUND_STATS = ("min", "avg", "median", "max")


def info_fields(ep: Endpoint) -> dict[str, str]:
    """The inventory fields vcmon_endpoint_info carries for ``ep``, by label name."""
    fields = {"name": ep.name, "address": ep.address, "site": ep.site or "",
              "parent": ",".join(ep.parent)}  # fmt: skip
    fields.update({f"label_{_LABEL_NAME.sub('_', k)}": v for k, v in ep.labels.items()})
    return fields


class IcmpCollector(Collector):
    """``vcmon_icmp_packets_ignored_total{reason}``: the engine's daemon-wide counters."""

    def __init__(self, counters: Callable[[], Mapping[str, int]]) -> None:
        self._counters = counters

    def describe(self) -> list[Metric]:
        return []  # the engine may not exist yet at registration

    def collect(self) -> Iterator[Metric]:
        ignored = CounterMetricFamily(
            "vcmon_icmp_packets_ignored",
            "ICMP packets the engine received but could not use, by reason",
            labels=("reason",),
        )
        for reason, count in sorted(self._counters().items()):
            ignored.add_metric([reason], count)
        yield ignored


class AlertCollector(Collector):
    """``vcmon_alerts_firing{severity}``: open alerts, read from the engine at scrape time."""

    SEVERITIES = ("critical", "warning")

    def __init__(self, firing: Callable[[], Mapping[str, int]]) -> None:
        self._firing = firing

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        counts = self._firing()
        gauge = GaugeMetricFamily(
            "vcmon_alerts_firing",
            "Open alerts by severity (silenced and in-maintenance ones included)",
            labels=("severity",),
        )
        for severity in self.SEVERITIES:
            gauge.add_metric((severity,), counts.get(severity, 0))
        yield gauge


class StoreCollector(Collector):
    """The state file's health, read from the alert runtime at scrape time."""

    def __init__(self, state: Callable[[], Any]) -> None:
        self._state = state  # () -> vcmon.alerts.runtime.StoreState

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        st = self._state()
        yield GaugeMetricFamily(
            "vcmon_state_store_ok", "1 while the state file is written as decisions are made",
            value=1.0 if st.ok else 0.0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "vcmon_state_store_write_failures",
            "Writes to the state file that failed (and attempts to open it)",
            value=st.write_failures,
        )
        yield GaugeMetricFamily(
            "vcmon_state_store_pending_changes",
            "Decisions held in memory because the state file could not be written",
            value=st.pending_changes,
        )
        yield CounterMetricFamily(
            "vcmon_state_store_dropped_events",
            "Held events dropped because more than the queue's bound waited",
            value=st.dropped_events,
        )


class HttpCollector(Collector):
    """The HTTP server's bounds at work: refusals and drops by reason, open connections."""

    def __init__(self, stats: Callable[[], tuple[Mapping[str, int], int]]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        counters, open_now = self._stats()
        rejected = CounterMetricFamily(
            "vcmon_http_connections_rejected",
            "HTTP connections refused or dropped by a bound, by reason",
            labels=("reason",),
        )
        for reason, count in counters.items():
            if reason != "accept_error":
                rejected.add_metric((reason,), count)
        yield rejected
        yield CounterMetricFamily(
            "vcmon_http_accept_errors",
            "Failed accept() calls on the listen socket (out of descriptors or memory)",
            value=counters.get("accept_error", 0),
        )
        yield GaugeMetricFamily(
            "vcmon_http_connections_open", "HTTP connections being served", value=open_now
        )


class SelfMetrics:
    """The daemon's own health series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        build = Gauge("vcmon_build_info", "vcmon version", ("version", "python"), registry=registry)
        build.labels(__version__, platform.python_version()).set(1)
        self.config_reload_ok = Gauge(
            "vcmon_config_last_reload_successful",
            "1 if the last config (re)load succeeded",
            registry=registry,
        )
        self.config_reload_time = Gauge(
            "vcmon_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully",
            registry=registry,
        )
        self.scheduler_lag = Histogram(
            "vcmon_scheduler_lag_seconds",
            "How late rounds started against their schedule",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.rounds_skipped = Counter(
            "vcmon_rounds_skipped",
            "Rounds skipped because the previous one overran its interval",
            registry=registry,
        )
        self.acks = Counter(
            "vcmon_acks",
            "Acknowledgements received, by where they came from and what became of them",
            ("source", "result"),
            registry=registry,
        )


def build_registry(
    counters: Callable[[], Mapping[str, int]],
) -> tuple[CollectorRegistry, SelfMetrics]:
    """A registry of the daemon-wide series: the engine's counters and the self metrics.

    Per-endpoint series are not in it: vcmon.http.exposition keeps them rendered."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IcmpCollector(counters))
    return registry, SelfMetrics(registry)
