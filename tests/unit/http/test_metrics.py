"""The /metrics page against the contract in docs/architecture.md, via a real text exposition;
the kept per-endpoint text against prometheus_client's render of the same families."""

from __future__ import annotations

import gzip
import math
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics import parser as om_parser
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vcmon.config import load_config
from vcmon.http.api import Api
from vcmon.http.exposition import (
    EndpointExposition,
    accepts_gzip,
    chunks,
    escape_label_value,
    format_value,
    negotiate,
)
from vcmon.http.metrics import (
    BASE_LABELS,
    ENDPOINT_FAMILIES,
    INFO,
    ROUND_STATS,
    STATES,
    build_registry,
    info_fields,
)
from vcmon.http.server import Request
from vcmon.measure.probes.base import Echo, Outcome, RoundResult
from vcmon.measure.results import RTT_BUCKETS, EndpointRecord, Results
from vcmon.measure.stats import observe
from vcmon.states import State

# prometheus_client's OpenMetrics modules and utils carry no annotations.
_om_latest: Callable[[CollectorRegistry], bytes] = om_exposition.generate_latest
_om_families: Callable[[str], Iterator[Metric]] = om_parser.text_string_to_metric_families
_go_float: Callable[[float], str] = floatToGoString

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus 2.x sends by default

CONFIG = """
listen: 127.0.0.1:9231
endpoints:
  - id: co-to-dong-tien
    name: UBND xã Đồng Tiến
    address: 127.0.0.21
    district: Cô Tô
    level: commune
    site: Đồng Tiến
    labels: {link: microwave}
  - id: ha-long
    name: UBND TP Hạ Long
    address: ::1
    district: Hạ Long
    level: district
"""

Sample = tuple[str, dict[str, str], float]


def _page(results: Results, counters: dict[str, int] | None = None, accept: str = "") -> bytes:
    """The page /metrics serves: the kept per-endpoint text and the registry's render."""
    registry, _ = build_registry(lambda: counters or {})
    return negotiate(accept).page(EndpointExposition(results).snapshot(), registry, gzip=False)


def _scrape(results: Results, counters: dict[str, int] | None = None) -> dict[str, list[Sample]]:
    text = _page(results, counters).decode()
    by_name: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            by_name.setdefault(s.name, []).append((s.name, dict(s.labels), s.value))
    return by_name


def _one(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    hits = [
        v for _, lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


@pytest.fixture
def results(tmp_path: Path) -> Results:
    path = tmp_path / "vcmon.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return Results(load_config(path).endpoints)


def _round(*rtts_ms: float | None) -> RoundResult:
    return RoundResult(
        echoes=tuple(
            Echo(seq=i, outcome=Outcome.OK, rtt=ms / 1000)
            if ms is not None
            else Echo(seq=i, outcome=Outcome.TIMEOUT)
            for i, ms in enumerate(rtts_ms)
        )
    )


def test_round_series_after_one_round(results: Results) -> None:
    results["co-to-dong-tien"].record(observe(_round(30.0, 34.0, None, 32.0, 30.0), 1000.0))
    results["co-to-dong-tien"].state = State.UP  # as the alert engine sets it
    m = _scrape(results)
    labels = {
        "endpoint": "co-to-dong-tien",
        "probe": "icmp",
        "district": "Cô Tô",
        "level": "commune",
    }
    assert _one(m, "vcmon_up", **labels) == 1.0
    assert _one(m, "vcmon_loss_ratio", **labels) == pytest.approx(0.2)
    assert _one(m, "vcmon_round_rtt_seconds", stat="min", **labels) == pytest.approx(0.030)
    assert _one(m, "vcmon_round_rtt_seconds", stat="avg", **labels) == pytest.approx(0.0315)
    assert _one(m, "vcmon_round_rtt_seconds", stat="median", **labels) == pytest.approx(0.031)
    assert _one(m, "vcmon_round_rtt_seconds", stat="max", **labels) == pytest.approx(0.034)
    # answered in order 30, 34, 32, 30 → |4| + |2| + |2| = 8 over 3
    assert _one(m, "vcmon_jitter_seconds", **labels) == pytest.approx(0.008 / 3)
    assert 1.0 < _one(m, "vcmon_mos", **labels) < 4.5
    assert _one(m, "vcmon_packets_sent_total", **labels) == 5
    assert _one(m, "vcmon_packets_received_total", **labels) == 4
    assert _one(m, "vcmon_rtt_seconds_count", **labels) == 4
    assert _one(m, "vcmon_rtt_seconds_sum", **labels) == pytest.approx(0.126)
    assert _one(m, "vcmon_rtt_seconds_bucket", le="0.03", **labels) == 2
    assert _one(m, "vcmon_rtt_seconds_bucket", le="+Inf", **labels) == 4
    assert _one(m, "vcmon_endpoint_state", state="up", **labels) == 1.0
    assert _one(m, "vcmon_endpoint_state", state="down", **labels) == 0.0


def test_failed_round_reports_no_rtt_never_zero(results: Results) -> None:
    results["ha-long"].record(observe(_round(None, None, None), 1000.0))
    results["ha-long"].state = State.DOWN  # as the alert engine sets it
    m = _scrape(results)
    labels = {"endpoint": "ha-long"}
    assert _one(m, "vcmon_up", **labels) == 0.0
    assert _one(m, "vcmon_loss_ratio", **labels) == 1.0
    for stat in ("min", "avg", "median", "max"):
        assert math.isnan(_one(m, "vcmon_round_rtt_seconds", stat=stat, **labels))
    assert math.isnan(_one(m, "vcmon_jitter_seconds", **labels))
    assert _one(m, "vcmon_endpoint_state", state="down", **labels) == 1.0


def test_endpoint_without_a_round_has_no_gauges(results: Results) -> None:
    m = _scrape(results)
    assert not [s for s in m.get("vcmon_up", []) if s[1]["endpoint"] == "ha-long"]
    assert _one(m, "vcmon_packets_sent_total", endpoint="ha-long") == 0


def test_info_carries_inventory_fields_in_utf8(results: Results) -> None:
    m = _scrape(results)
    info = {lab["endpoint"]: lab for _, lab, _ in m["vcmon_endpoint_info"]}
    assert info["co-to-dong-tien"]["name"] == "UBND xã Đồng Tiến"
    assert info["co-to-dong-tien"]["site"] == "Đồng Tiến"
    assert info["co-to-dong-tien"]["label_link"] == "microwave"
    assert info["ha-long"]["label_link"] == ""
    assert info["ha-long"]["address"] == "::1"


def test_late_duplicate_and_error_counters(results: Results) -> None:
    rec = results["co-to-dong-tien"]
    rec.tally.late += 2
    rec.tally.duplicate += 1
    rec.tally.errors["host-unreachable"] += 3
    m = _scrape(results, {"malformed": 4})
    assert _one(m, "vcmon_packets_late_total", endpoint="co-to-dong-tien") == 2
    assert _one(m, "vcmon_packets_duplicate_total", endpoint="co-to-dong-tien") == 1
    assert (
        _one(m, "vcmon_packets_error_total", endpoint="co-to-dong-tien", reason="host-unreachable")
        == 3
    )
    assert _one(m, "vcmon_icmp_packets_ignored_total", reason="malformed") == 4


def test_histogram_buckets_span_wan_range() -> None:
    assert RTT_BUCKETS[0] == 0.0005
    assert RTT_BUCKETS[-1] == 5.0
    assert list(RTT_BUCKETS) == sorted(RTT_BUCKETS)


def test_self_metrics_present(results: Results) -> None:
    m = _scrape(results)
    assert _one(m, "vcmon_build_info") == 1.0
    assert "vcmon_scheduler_lag_seconds_bucket" in m
    assert "vcmon_config_last_reload_successful" in m


# ── the kept text against prometheus_client's render of the same families ──────────────────


class _Reference(Collector):
    """The per-endpoint families as prometheus_client's own families, built from Results at
    scrape time (how vcmon rendered them before the text was kept); families without samples
    are left out, as the kept text leaves them out."""

    def __init__(self, results: Results) -> None:
        self._results = results

    def collect(self) -> Iterator[Metric]:
        records = list(self._results)
        info_names = sorted({k for rec in records for k in info_fields(rec.endpoint)})
        kinds = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
                 "histogram": HistogramMetricFamily}  # fmt: skip
        fams: dict[str, Metric] = {
            f.name: kinds[f.type](
                f.name, f.help, labels=(*BASE_LABELS, *(info_names if f is INFO else f.extra))
            )
            for f in ENDPOINT_FAMILIES
        }

        def add(name: str, labels: list[str], value: float) -> None:
            fams[name].add_metric(labels, value)  # type: ignore[attr-defined]

        for rec in records:
            ep = rec.endpoint
            base = [ep.id, ep.probe, ep.district, ep.level.value]
            fields = info_fields(ep)
            add("vcmon_endpoint_info", base + [fields.get(k, "") for k in info_names], 1.0)
            add("vcmon_packets_sent", base, rec.sent)
            add("vcmon_packets_received", base, rec.received)
            add("vcmon_packets_late", base, rec.tally.late)
            add("vcmon_packets_duplicate", base, rec.tally.duplicate)
            for reason, count in sorted(rec.tally.errors.items()):
                add("vcmon_packets_error", [*base, reason], count)
            add("vcmon_rounds", base, rec.rounds)
            add("vcmon_round_failures", base, rec.failures)
            hist = rec.histogram
            fams["vcmon_rtt_seconds"].add_metric(base, hist.cumulative(), hist.total)  # type: ignore[attr-defined]
            obs = rec.last
            if obs is None:
                continue
            add("vcmon_up", base, 1.0 if obs.up else 0.0)
            stats = (obs.rtt_min, obs.rtt_avg, obs.rtt_median, obs.rtt_max)
            for stat, value in zip(ROUND_STATS, stats, strict=True):
                add("vcmon_round_rtt_seconds", [*base, stat], math.nan if value is None else value)
            add("vcmon_jitter_seconds", base, math.nan if obs.jitter is None else obs.jitter)
            add("vcmon_loss_ratio", base, obs.loss_ratio)
            if obs.mos is not None:  # a probe whose round trip is not a media path has none
                add("vcmon_mos", base, obs.mos)
            add("vcmon_last_round_timestamp_seconds", base, obs.started_at)
            for s in STATES:
                add("vcmon_endpoint_state", [*base, s], 1.0 if rec.state == s else 0.0)
        yield from (fam for fam in fams.values() if fam.samples)


def _reference(results: Results) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reference(results))
    return registry


def _kept(results: Results, openmetrics: bool = False) -> bytes:
    return b"".join(chunks(EndpointExposition(results).snapshot(), openmetrics))


def _parsed(text: str, openmetrics: bool = False) -> list[tuple[str, str, list[Sample]]]:
    parse = _om_families if openmetrics else text_string_to_metric_families
    return [
        (fam.name, fam.type, [(s.name, dict(s.labels), s.value) for s in fam.samples])
        for fam in parse(text)
    ]


def _same(a: list[tuple[str, str, list[Sample]]], b: list[tuple[str, str, list[Sample]]]) -> None:
    """Family by family and sample by sample; NaN equals NaN."""
    assert [(n, t, len(s)) for n, t, s in a] == [(n, t, len(s)) for n, t, s in b]
    for (_, _, sa), (_, _, sb) in zip(a, b, strict=True):
        for (na, la, va), (nb, lb, vb) in zip(sa, sb, strict=True):
            assert (na, la) == (nb, lb)
            assert va == vb or (math.isnan(va) and math.isnan(vb)), (na, la, va, vb)


def _odd(rec: EndpointRecord) -> None:
    """Label values a config may hold (quotes, backslashes, Unicode) and a line break, which the
    loader refuses but the encoder must still escape."""
    rec.endpoint = rec.endpoint.model_copy(update={
        "name": 'UBND "xã" C:\\Tô\nline 2 ☃', "district": 'Cô Tô \\" ½', "site": "\\",
        "labels": {"link": 'fibre "A"\\B', "odd-key": "Đ\nx"},
    })  # fmt: skip


def _late_and_errors(rec: EndpointRecord) -> None:
    rec.record(observe(RoundResult(echoes=(
        Echo(0, Outcome.ERROR, reason="host-unreachable"), Echo(1, Outcome.OK, rtt=0.0123),
        Echo(2, Outcome.ERROR, reason='send:"EPERM"\\'))), 1000.0))  # fmt: skip
    rec.tally.late += 2
    rec.tally.duplicate += 1
    rec.tally.errors["host-unreachable"] += 1


def _big(rec: EndpointRecord) -> None:
    rec.record(observe(_round(1.0, 2.0, 7000.0), 1_712_345_678.123))
    rec.sent, rec.received, rec.rounds = 12_345_678, 10_000_000, 123_456_789
    rec.histogram.total = 1e17


def _flapping(rec: EndpointRecord) -> None:
    rec.record(observe(_round(1.0), 5.0))
    rec.state = State.FLAPPING  # as the alert engine sets it


def _odd_observed(rec: EndpointRecord) -> None:
    _odd(rec)
    rec.record(observe(_round(3.0, 4.0), 9.0))


CASES: dict[str, Callable[[EndpointRecord], None]] = {
    "never observed": lambda rec: None,
    "all lost": lambda rec: rec.record(observe(_round(None, None, None), 1000.0)),
    "partial": lambda rec: rec.record(observe(_round(30.0, None, 34.0, 32.0), 1000.5)),
    "one answer, jitter NaN": lambda rec: rec.record(observe(_round(None, 0.4), 1000.0)),
    "could not probe": lambda rec: rec.record(
        observe(RoundResult(echoes=(), failure="resolve: no such name"), 1000.0)
    ),
    "late, duplicates, errors": _late_and_errors,
    "large counters and sums": _big,
    "engine state flapping": _flapping,
    "odd label values": _odd,
    "odd labels after rounds": _odd_observed,
}


@pytest.mark.parametrize("case", CASES)
def test_kept_text_equals_prometheus_client(results: Results, case: str) -> None:
    CASES[case](results["co-to-dong-tien"])
    results["ha-long"].record(observe(_round(5.0, 6.0), 1000.0))  # the other one observed
    results.replace([rec.endpoint for rec in results])  # labels changed in place: adopt them
    ref = _reference(results)
    kept = _kept(results)
    _same(_parsed(kept.decode()), _parsed(generate_latest(ref).decode()))
    assert kept == generate_latest(ref)  # even byte for byte: labels in name order, Go floats
    kept_om = _kept(results, openmetrics=True) + b"# EOF\n"
    _same(_parsed(kept_om.decode(), True), _parsed(_om_latest(ref).decode(), True))
    assert kept_om == _om_latest(ref)


def test_promtool_accepts_the_page(results: Results, tmp_path: Path) -> None:
    for case in ("partial", "late, duplicates, errors", "odd labels after rounds"):
        CASES[case](results["co-to-dong-tien"])
    results.replace([rec.endpoint for rec in results])
    page = _page(results, {"malformed": 1})
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=page, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    om = _page(results, accept=PROMETHEUS_ACCEPT)
    assert om.endswith(b"\n# EOF\n")
    assert om.count(b"# EOF") == 1
    assert {f.name for f in _om_families(om.decode())} >= {
        "vcmon_up", "vcmon_packets_sent", "vcmon_rtt_seconds", "vcmon_build_info"}  # fmt: skip


def test_a_round_is_seen_once_its_endpoint_is_updated(results: Results) -> None:
    exposition = EndpointExposition(results)
    rec = results["ha-long"]
    rec.record(observe(_round(5.0), 1000.0))
    before = b"".join(chunks(exposition.snapshot(), False))
    assert b'vcmon_up{district="H' not in before  # kept text: nothing re-rendered yet
    exposition.update(rec)
    after = b"".join(chunks(exposition.snapshot(), False))
    assert after == _kept(results)
    assert b'vcmon_rounds_total{district="H\xe1\xba\xa1 Long",endpoint="ha-long"' in after


def test_reload_removes_renames_and_relabels(results: Results) -> None:
    exposition = EndpointExposition(results)
    for rec in results:
        rec.record(observe(_round(5.0), 1000.0))
        exposition.update(rec)
    kept = results["ha-long"]
    moved = kept.endpoint.model_copy(update={"district": "Quảng Yên", "labels": {"isp": "vnpt"}})
    results.replace([moved])  # co-to-dong-tien removed, ha-long moved and given a free label
    page = b"".join(chunks(exposition.snapshot(), False)).decode()
    assert "co-to-dong-tien" not in page
    assert 'district="Hạ Long"' not in page
    assert page.encode() == _kept(results)
    info = {s.labels["endpoint"]: s.labels for f in text_string_to_metric_families(page)
            for s in f.samples if s.name == "vcmon_endpoint_info"}  # fmt: skip
    assert info["ha-long"]["label_isp"] == "vnpt"
    assert "label_link" not in info["ha-long"]  # the union of label names shrank with the inventory
    # A record the scheduler still holds from before the reload renders nothing.
    exposition.update(EndpointRecord(kept.endpoint.model_copy(update={"id": "co-to-dong-tien"})))
    assert b"co-to-dong-tien" not in b"".join(chunks(exposition.snapshot(), False))


async def test_gzip_round_trip_through_the_handler(results: Results) -> None:
    results["co-to-dong-tien"].record(observe(_round(30.0, 34.0), 1000.0))
    registry, _ = build_registry(dict)
    api = Api(results, registry, {})
    plain = await api.metrics(Request("GET", "/metrics", {}, {}))
    headers = {"accept-encoding": "deflate, gzip;q=0.8", "accept": PROMETHEUS_ACCEPT}
    packed = await api.metrics(Request("GET", "/metrics", {}, headers))
    assert ("Content-Encoding", "gzip") in packed.headers
    assert ("Content-Encoding", "gzip") not in plain.headers
    assert packed.content_type.startswith("application/openmetrics-text; version=1.0.0")
    om = gzip.decompress(packed.body)
    assert om.endswith(b"# EOF\n")
    _same(
        _parsed(om.decode(), True)[:-5],
        _parsed(_page(results, accept=PROMETHEUS_ACCEPT).decode(), True)[:-5],
    )
    text = await api.metrics(Request("GET", "/metrics", {}, {"accept-encoding": "gzip"}))
    assert text.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert gzip.decompress(text.body).split(b"# HELP vcmon_build_info")[0] == plain.body.split(
        b"# HELP vcmon_build_info")[0]  # fmt: skip


@pytest.mark.parametrize(
    ("header", "wanted"),
    [("gzip", True), ("GZip", True), ("deflate, gzip;q=0.5", True), ("gzip;q=0", False),
     ("gzip; q=0.000", False), ("identity", False), ("", False), ("gzip;q=x", False),
     ("x-gzip", False), ("br, gzip", True)],
)  # fmt: skip
def test_accepts_gzip(header: str, wanted: bool) -> None:
    assert accepts_gzip(header) is wanted


_OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.mark.parametrize(
    ("accept", "openmetrics", "content_type"),
    [
        ("", False, "text/plain; version=0.0.4; charset=utf-8"),
        (PROMETHEUS_ACCEPT, True, f"{_OM}; escaping=underscores"),
        ("application/openmetrics-text;version=1.0.0;escaping=dots", True,
         f"{_OM}; escaping=underscores"),
        ("text/plain;version=1.0.0;escaping=allow-utf-8", False,
         "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8"),
    ],
)  # fmt: skip
def test_negotiation(accept: str, openmetrics: bool, content_type: str) -> None:
    fmt = negotiate(accept)
    assert (fmt.openmetrics, fmt.content_type) == (openmetrics, content_type)


# ── the encoder's pieces against prometheus_client ──────────────────────────────────────────


@given(value=st.text(), number=st.floats() | st.integers(0, 2**63))
def test_label_escaper_and_float_formatter_parse_back(value: str, number: float) -> None:
    line = f'm{{l="{escape_label_value(value)}"}} {format_value(number)}\n'
    [sample] = [s for fam in text_string_to_metric_families(line) for s in fam.samples]
    assert sample.labels == {"l": value}
    assert sample.value == float(number) or (math.isnan(sample.value) and math.isnan(number))
    assert format_value(number) == _go_float(number)
