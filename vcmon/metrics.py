"""Prometheus exposition, built at scrape time from the current Results (DESIGN.md §3)."""

from __future__ import annotations

import math
import platform
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from vcmon import __version__
from vcmon.health import State
from vcmon.results import Results

BASE_LABELS = ("endpoint", "probe", "district", "level")
_STATES = tuple(s.value for s in State)
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")

# Scheduler lag is judged against a 50 ms budget, so resolution is fine below it.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


class EndpointCollector(Collector):
    """Per-endpoint series, read from Results at every scrape."""

    def __init__(self, results: Results, counters: Callable[[], Mapping[str, int]]) -> None:
        self._results = results
        self._engine_counters = counters

    def describe(self) -> list[Metric]:
        # Returning nothing keeps the registry from calling collect() at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "vcmon_up", "1 if the last round got at least one answer", labels=BASE_LABELS
        )
        rtt = HistogramMetricFamily(
            "vcmon_rtt_seconds", "Round-trip time of every answer", labels=BASE_LABELS
        )
        round_rtt = GaugeMetricFamily(
            "vcmon_round_rtt_seconds",
            "Round-trip time of the last round by statistic; NaN when nothing answered",
            labels=(*BASE_LABELS, "stat"),
        )
        jitter = GaugeMetricFamily(
            "vcmon_jitter_seconds",
            "Mean absolute difference of consecutive RTTs in the last round (IPDV, RFC 5481)",
            labels=BASE_LABELS,
        )
        loss = GaugeMetricFamily(
            "vcmon_loss_ratio", "1 - received/sent in the last round", labels=BASE_LABELS
        )
        mos = GaugeMetricFamily(
            "vcmon_mos", "Estimated MOS (simplified E-model) of the last round", labels=BASE_LABELS
        )
        sent = CounterMetricFamily("vcmon_packets_sent", "Echo requests sent", labels=BASE_LABELS)
        received = CounterMetricFamily(
            "vcmon_packets_received", "Echo replies received within the timeout", labels=BASE_LABELS
        )
        late = CounterMetricFamily(
            "vcmon_packets_late",
            "Echo replies that arrived after their timeout",
            labels=BASE_LABELS,
        )
        dup = CounterMetricFamily(
            "vcmon_packets_duplicate", "Duplicate echo replies", labels=BASE_LABELS
        )
        errors = CounterMetricFamily(
            "vcmon_packets_error",
            "Echo requests answered by an ICMP error or not sent, by reason",
            labels=(*BASE_LABELS, "reason"),
        )
        rounds = CounterMetricFamily("vcmon_rounds", "Probe rounds completed", labels=BASE_LABELS)
        failed = CounterMetricFamily(
            "vcmon_round_failures",
            "Rounds that could not probe at all (e.g. name resolution failed)",
            labels=BASE_LABELS,
        )
        state = GaugeMetricFamily(
            "vcmon_endpoint_state", "1 for the current health state", labels=(*BASE_LABELS, "state")
        )
        last_round = GaugeMetricFamily(
            "vcmon_last_round_timestamp_seconds", "When the last round started", labels=BASE_LABELS
        )
        info_rows: list[tuple[list[str], dict[str, str]]] = []

        for rec in self._results:
            ep = rec.endpoint
            base = [ep.id, ep.probe, ep.district, ep.level.value]
            fields = {"name": ep.name, "address": ep.address, "site": ep.site or "",
                      "parent": ",".join(ep.parent)}  # fmt: skip
            fields.update({f"label_{_LABEL_NAME.sub('_', k)}": v for k, v in ep.labels.items()})
            info_rows.append((base, fields))

            sent.add_metric(base, rec.sent)
            received.add_metric(base, rec.received)
            late.add_metric(base, rec.tally.late)
            dup.add_metric(base, rec.tally.duplicate)
            for reason, count in sorted(rec.tally.errors.items()):
                errors.add_metric([*base, reason], count)
            rounds.add_metric(base, rec.rounds)
            failed.add_metric(base, rec.failures)
            hist = rec.histogram
            rtt.add_metric(base, hist.cumulative(), hist.total)

            obs = rec.last
            if obs is None:
                continue
            up.add_metric(base, 1.0 if obs.up else 0.0)
            for name, value in (("min", obs.rtt_min), ("avg", obs.rtt_avg),
                                ("median", obs.rtt_median), ("max", obs.rtt_max)):  # fmt: skip
                round_rtt.add_metric([*base, name], _nan_if_none(value))
            jitter.add_metric(base, _nan_if_none(obs.jitter))
            loss.add_metric(base, obs.loss_ratio)
            mos.add_metric(base, obs.mos)
            last_round.add_metric(base, obs.started_at)
            for s in _STATES:
                state.add_metric([*base, s], 1.0 if rec.state == s else 0.0)

        # Free labels differ between endpoints; every row must carry the union of label names.
        info_names = sorted({k for _, fields in info_rows for k in fields})
        info = GaugeMetricFamily(
            "vcmon_endpoint_info",
            "Inventory fields of each endpoint; always 1",
            labels=(*BASE_LABELS, *info_names),
        )
        for base, fields in info_rows:
            info.add_metric(base + [fields.get(k, "") for k in info_names], 1.0)

        ignored = CounterMetricFamily(
            "vcmon_icmp_packets_ignored",
            "ICMP packets the engine received but could not use, by reason",
            labels=("reason",),
        )
        for reason, count in sorted(self._engine_counters().items()):
            ignored.add_metric([reason], count)

        yield from (up, rtt, round_rtt, jitter, loss, mos, sent, received, late, dup, errors,
                    rounds, failed, state, last_round, info, ignored)  # fmt: skip


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
    results: Results, counters: Callable[[], Mapping[str, int]]
) -> tuple[CollectorRegistry, SelfMetrics]:
    """A registry holding the endpoint collector and the self metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EndpointCollector(results, counters))
    return registry, SelfMetrics(registry)
