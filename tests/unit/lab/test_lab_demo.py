"""The demo's pure parts: the per-district summary and where it says to look."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcmon.config import Endpoint, Level, Timing, load_config
from vcmon.measure.results import Results
from vcmon.measure.stats import Observation
from vcmon_lab.demo import LOOPBACK_CONFIG, Plan, Snapshot, district_rows, prepare_loopback


def room(id: str, district: str) -> Endpoint:
    return Endpoint(id=id, name=id, address="127.0.0.1", district=district,
                    level=Level.COMMUNE, timing=Timing())  # fmt: skip


def obs(*rtts: float, sent: int = 4) -> Observation:
    return Observation(started_at=0.0, sent=sent, received=len(rtts), rtts=rtts)


def test_district_rows_summarise_the_last_rounds() -> None:
    rooms = [room("a1", "A"), room("a2", "A"), room("a3", "A"), room("b1", "B"), room("b2", "B")]
    results = Results(rooms)
    results["a1"].record(obs(0.010, 0.012))  # half lost
    results["a2"].record(obs(0.020, 0.020, 0.020, 0.020))
    results["a3"].record(obs())  # down
    results["b1"].record(obs(0.030, 0.034, 0.030, 0.034))
    # b2 has no round yet
    a, b = district_rows(results)
    assert (a.district, a.total, a.up, a.down, a.waiting) == ("A", 3, 2, 1, 0)
    assert a.down_ids == ("a3",)
    approx = (a.rtt_ms, a.rtt_max_ms, a.jitter_ms, a.loss_pct, b.jitter_ms)
    # RTT: median of 11 and 20 ms, worst 20; jitter: median of 2 and 0 ms; loss: answering only
    assert approx == pytest.approx((15.5, 20.0, 1.0, 25.0, 4.0))
    assert (b.total, b.up, b.down, b.waiting, b.down_ids) == (2, 1, 0, 1, ())
    snap = Snapshot((a, b), 12.0, None)
    assert snap.totals == (5, 3, 1)


def test_district_rows_before_any_round() -> None:
    (row,) = district_rows(Results([room("x", "X")]))
    assert (row.waiting, row.rtt_ms, row.jitter_ms, row.loss_pct) == (1, None, None, None)


def test_the_loopback_fallback_and_its_urls() -> None:
    plan = prepare_loopback()
    assert (plan.lab, plan.netns, plan.scenario) == (None, None, None)
    assert len(plan.config.endpoints) == 231
    assert plan.urls() == (
        "http://127.0.0.1:9231/metrics",
        "http://127.0.0.1:9231/api/v1/status",
    )
    moved = prepare_loopback(listen="[::1]:9300")
    assert moved.urls()[0] == "http://[::1]:9300/metrics"
    assert Plan(load_config(Path(LOOPBACK_CONFIG))).config.listen == "127.0.0.1:9231"
