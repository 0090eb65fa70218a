"""Reachability hysteresis and Nagios-style flap detection, as tables."""

from __future__ import annotations

import pytest

from vcmon.alerts.health import Reach, flap_pct, step
from vcmon.config.alerts import FlapPolicy, HealthPolicy

T, F = True, False


@pytest.mark.parametrize(
    ("history", "pct"),
    [
        ((), 0.0),
        ((T,), 0.0),
        ((T,) * 21, 0.0),
        ((T, F) * 10 + (T,), 100.0),
        ((T, F), 100.0),
        # One change: the newest weighs 1.25, the oldest 0.75, of a total of 20.
        ((T,) * 20 + (F,), 1.25 / 20 * 100),
        ((F,) + (T,) * 20, 0.75 / 20 * 100),
    ],
)
def test_flap_pct(history: tuple[bool, ...], pct: float) -> None:
    assert flap_pct(history) == pytest.approx(pct)


def run(results: str, policy: HealthPolicy | None = None) -> list[Reach]:
    policy = policy or HealthPolicy()
    reach = Reach()
    out = []
    for i, ch in enumerate(results):
        reach = step(reach, ch == "+", float(i), policy)
        out.append(reach)
    return out


@pytest.mark.parametrize(
    ("results", "confirmed"),
    [
        ("+", None),
        ("++", True),
        ("--", None),
        ("---", False),
        ("++--", True),
        ("++---", False),
        ("+++---+", False),
        ("+++---++", True),
        ("++--+--+", True),  # no streak of three ever
    ],
)
def test_confirmed_state(results: str, confirmed: bool | None) -> None:
    assert run(results)[-1].confirmed_up is confirmed


def test_streak_start_times() -> None:
    reach = run("++---")[-1]
    assert reach.fail_since == 2.0
    assert reach.ok_since is None
    assert run("---++")[-1].ok_since == 3.0


@pytest.mark.parametrize(
    ("results", "flapping"),
    [
        ("+" * 30, False),
        ("+-" * 4, True),  # four changes in a row among the newest results
        ("+-" * 3 + "+" * 20, False),  # settled again
        ("---++" * 5, True),
        ("-" * 3 + "+" * 27, False),
    ],
)
def test_flapping(results: str, flapping: bool) -> None:
    assert run(results)[-1].flapping is flapping


def test_flapping_hysteresis_between_stop_and_start() -> None:
    policy = HealthPolicy(flapping=FlapPolicy(start_pct=30, stop_pct=20))
    states = run("+-" * 6 + "+" * 30, policy)
    pcts = [flap_pct(((r.history[0],) * (21 - len(r.history))) + r.history) for r in states]
    started = next(i for i, r in enumerate(states) if r.flapping)
    stopped = next(i for i, r in enumerate(states) if i > started and not r.flapping)
    assert pcts[started] >= 30
    assert all(p > 20 for p in pcts[started:stopped])  # between 20 and 30 it stays flapping
    assert pcts[stopped] <= 20


def test_flapping_disabled() -> None:
    policy = HealthPolicy(flapping=FlapPolicy(enabled=False))
    assert not any(r.flapping for r in run("+-" * 20, policy))
