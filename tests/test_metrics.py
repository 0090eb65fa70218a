"""The metrics collector against the contract of DESIGN.md §3, via a real text exposition."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vcmon.config import load_config
from vcmon.metrics import build_registry
from vcmon.probes.base import Echo, Outcome, RoundResult
from vcmon.results import RTT_BUCKETS, Results
from vcmon.stats import observe

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


def _scrape(results: Results, counters: dict[str, int] | None = None) -> dict[str, list[Sample]]:
    registry, _ = build_registry(results, lambda: counters or {})
    text = generate_latest(registry).decode()
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
