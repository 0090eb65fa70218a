"""Round statistics, jitter and MOS against worked examples computed by hand."""

from __future__ import annotations

import math

import pytest

from vcmon.measure.probes.base import Echo, Outcome, RoundResult
from vcmon.measure.stats import ipdv_jitter, mos, observe

MS = 0.001


@pytest.mark.parametrize(
    ("rtts_ms", "expected_ms"),
    [
        ([], None),
        ([10.0], None),
        ([10.0, 10.0], 0.0),
        ([10.0, 12.0], 2.0),
        # |12-10| + |11-12| + |15-11| = 2 + 1 + 4 = 7, over 3 differences
        ([10.0, 12.0, 11.0, 15.0], 7.0 / 3.0),
        # order matters: the same values sorted give 1 + 1 + 3 = 5 over 3
        ([10.0, 11.0, 12.0, 15.0], 5.0 / 3.0),
        ([40.0, 20.0, 40.0, 20.0, 40.0], 20.0),
    ],
)
def test_ipdv_jitter(rtts_ms: list[float], expected_ms: float | None) -> None:
    got = ipdv_jitter([r * MS for r in rtts_ms])
    if expected_ms is None:
        assert got is None
    else:
        assert got == pytest.approx(expected_ms * MS, abs=1e-12)


@pytest.mark.parametrize(
    ("rtt_ms", "jitter_ms", "loss", "expected"),
    [
        # Le = 20 + 2*2 + 10 = 34 → R = 93.2 − 34/40 = 92.35
        # MOS = 1 + 0.035·92.35 + 7e-6·92.35·32.35·7.65 = 4.392232
        (20.0, 2.0, 0.0, 4.392232),
        # Le = 200 + 20 + 10 = 230 ≥ 160 → R = 93.2 − 11 = 82.2 → MOS = 4.104375
        (200.0, 10.0, 0.0, 4.104375),
        # Le = 20 → R = 92.7, minus 2.5·20 % = 42.7 → MOS = 2.198203
        (10.0, 0.0, 0.2, 2.198203),
        # Le = 160 exactly takes the second branch: R = 93.2 − 4 = 89.2 → 4.318911
        (150.0, 0.0, 0.0, 4.318911),
        # Le just under 160: R = 93.2 − 159.9/40 = 89.2025 → 4.318975
        (149.9, 0.0, 0.0, 4.318975),
        # jitter unknown (one answer) counts as zero: Le = 15 → R = 92.825 → 4.401910
        (5.0, None, 0.0, 4.401910),
        # heavy loss drives R below zero: clamped to 1
        (10.0, 0.0, 0.6, 1.0),
        # nothing answered
        (None, None, 1.0, 1.0),
    ],
)
def test_mos_worked_examples(
    rtt_ms: float | None, jitter_ms: float | None, loss: float, expected: float
) -> None:
    got = mos(
        None if rtt_ms is None else rtt_ms * MS,
        None if jitter_ms is None else jitter_ms * MS,
        loss,
    )
    assert got == pytest.approx(expected, abs=1e-6)


def test_mos_never_leaves_its_range() -> None:
    for rtt in (0.0, 0.001, 0.05, 0.3, 2.0, 10.0):
        for jitter in (0.0, 0.01, 0.2):
            for loss in (0.0, 0.01, 0.5, 1.0):
                assert 1.0 <= mos(rtt, jitter, loss) <= 4.5


def _echo(ms: float | None, outcome: Outcome = Outcome.OK, reason: str | None = None) -> Echo:
    return Echo(seq=0, outcome=outcome, rtt=None if ms is None else ms * MS, reason=reason)


@pytest.mark.parametrize(
    ("echoes", "sent", "received", "loss", "stats_ms"),
    [
        # (min, avg, median, max)
        ([_echo(10), _echo(12), _echo(11), _echo(15), _echo(12)], 5, 5, 0.0, (10, 12, 12, 15)),
        ([_echo(10), _echo(None, Outcome.TIMEOUT), _echo(20)], 3, 2, 1 / 3, (10, 15, 15, 20)),
        ([_echo(None, Outcome.TIMEOUT)] * 4, 4, 0, 1.0, None),
        (
            [_echo(5), _echo(None, Outcome.ERROR, "host-unreachable"), _echo(7), _echo(6)],
            4,
            3,
            0.25,
            (5, 6, 6, 7),
        ),
    ],
)
def test_observe_round(
    echoes: list[Echo],
    sent: int,
    received: int,
    loss: float,
    stats_ms: tuple[float, float, float, float] | None,
) -> None:
    obs = observe(RoundResult(echoes=tuple(echoes)), started_at=1.0)
    assert (obs.sent, obs.received) == (sent, received)
    assert obs.loss_ratio == pytest.approx(loss)
    assert obs.up == (received > 0)
    got = (obs.rtt_min, obs.rtt_avg, obs.rtt_median, obs.rtt_max)
    if stats_ms is None:
        assert got == (None, None, None, None)
        assert obs.jitter is None
        assert obs.mos == 1.0
    else:
        assert got == pytest.approx(tuple(v * MS for v in stats_ms))


def test_observe_counts_errors_by_reason() -> None:
    echoes = (
        _echo(None, Outcome.ERROR, "host-unreachable"),
        _echo(None, Outcome.ERROR, "host-unreachable"),
        _echo(None, Outcome.ERROR, "ttl-exceeded"),
    )
    obs = observe(RoundResult(echoes=echoes), started_at=0.0)
    assert obs.errors == (("host-unreachable", 2), ("ttl-exceeded", 1))


def test_failed_round_has_no_rtt_and_full_loss() -> None:
    obs = observe(RoundResult(echoes=(), failure="resolve: no such host"), started_at=0.0)
    assert obs.sent == 0
    assert obs.loss_ratio == 1.0
    assert obs.rtt_avg is None
    assert not obs.up
    assert obs.mos is not None
    assert math.isclose(obs.mos, 1.0)
