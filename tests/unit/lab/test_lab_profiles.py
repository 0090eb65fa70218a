"""Impairment profiles: table tests of decide(), validation, and statistics of many draws."""

from __future__ import annotations

import math
import random
import re
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcmon_lab.profiles import (
    DEFAULT_KEY,
    LAB_NET,
    Channel,
    Decision,
    Distribution,
    Profile,
    decide,
    dump_profiles,
    load_profiles,
    parse_profiles,
)

GOOD, BAD = Channel.GOOD, Channel.BAD
N = 40_000  # draws per statistical test: tolerances below are ≥ 5 standard errors


def run(profile: Profile, n: int, seed: int = 1) -> list[Decision]:
    """``n`` consecutive decisions for one endpoint, carrying the channel state."""
    rng = random.Random(seed)
    state = GOOD
    out = []
    for _ in range(n):
        d = decide(profile, state, rng)
        state = d.state
        out.append(d)
    return out


# -- table ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "state", "expected"),
    [
        (Profile(delay=0.015), GOOD, Decision(False, 0.015, GOOD)),
        (Profile(), GOOD, Decision(False, 0.0, GOOD)),
        (Profile(up=False), GOOD, Decision(True, 0.0, GOOD)),
        (Profile(up=False), BAD, Decision(True, 0.0, BAD)),  # down leaves the channel alone
        (Profile(delay=0.01, loss=1.0), GOOD, Decision(True, 0.0, GOOD)),
        # p = 1: the channel turns bad at once and drops.
        (Profile(delay=0.01, burst_p=1.0, burst_r=0.5), GOOD, Decision(True, 0.0, BAD)),
        # r = 1: a bad channel recovers before this echo, which gets through.
        (Profile(delay=0.01, burst_p=0.5, burst_r=1.0), BAD, Decision(False, 0.01, GOOD)),
        # Bad but lossless in the bad state: the echo passes.
        (
            Profile(delay=0.01, burst_p=1.0, burst_r=1e-9, burst_loss=0.0),
            BAD,
            Decision(False, 0.01, BAD),
        ),
        # No bursts configured: a stale bad state still recovers with r = 1 (the default).
        (Profile(delay=0.01), BAD, Decision(False, 0.01, GOOD)),
    ],
)
def test_decide_table(profile: Profile, state: Channel, expected: Decision) -> None:
    assert decide(profile, state, random.Random(7)) == expected


def test_down_draws_nothing_from_the_rng() -> None:
    rng = random.Random(3)
    before = rng.getstate()
    decide(Profile(delay=0.02, jitter=0.01, loss=0.5, burst_p=0.1, up=False), GOOD, rng)
    assert rng.getstate() == before


def test_alternating_channel_drops_every_other_echo() -> None:
    # p = r = 1: good → bad → good …; loss only in the bad state.
    decisions = run(Profile(delay=0.005, burst_p=1.0, burst_r=1.0), 10)
    assert [d.drop for d in decisions] == [True, False] * 5
    assert [d.state for d in decisions] == [BAD, GOOD] * 5


def test_same_seed_same_decisions() -> None:
    profile = Profile(delay=0.04, jitter=0.01, loss=0.05, burst_p=0.02, burst_r=0.3)
    assert run(profile, 500, seed=11) == run(profile, 500, seed=11)
    assert run(profile, 500, seed=11) != run(profile, 500, seed=12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": -0.001}, "delay must be a finite number of seconds ≥ 0"),
        ({"jitter": math.nan}, "jitter must be a finite number of seconds ≥ 0"),
        ({"delay": math.inf}, "delay must be a finite number of seconds ≥ 0"),
        ({"loss": 1.5}, "loss must be a probability in [0, 1]"),
        ({"burst_p": -0.1}, "burst_p must be a probability in [0, 1]"),
        ({"burst_loss": 2.0}, "burst_loss must be a probability in [0, 1]"),
        ({"burst_p": 0.1, "burst_r": 0.0}, "burst_r must be > 0 when burst_p > 0"),
    ],
)
def test_invalid_profiles(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Profile.from_dict(kwargs)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"delay": 0.01, "jiter": 0.001}, "unknown profile keys ['jiter']"),
        ({"delay": "10ms"}, "delay must be a number, got '10ms'"),
        ({"loss": True}, "loss must be a number, got True"),
        ({"up": "no"}, "up must be true or false, got 'no'"),
        ({"distribution": "pareto"}, "distribution must be one of ['normal', 'uniform']"),
    ],
)
def test_from_dict_rejects(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Profile.from_dict(data)


# -- files ---------------------------------------------------------------------------------


def test_yaml_file_with_fallback(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text(
        "198.18.0.1: {delay: 0.002, jitter: 0.0002}\n"
        "198.18.0.2: {delay: 0.04, jitter: 0.01, distribution: uniform, loss: 0.05}\n"
        "198.18.0.3: {up: false}\n"
        '"*": {delay: 0.001}\n'
    )
    profiles = load_profiles(path)
    assert profiles == {
        "198.18.0.1": Profile(delay=0.002, jitter=0.0002),
        "198.18.0.2": Profile(
            delay=0.04, jitter=0.01, distribution=Distribution.UNIFORM, loss=0.05
        ),
        "198.18.0.3": Profile(up=False),
        DEFAULT_KEY: Profile(delay=0.001),
    }


def test_json_round_trip(tmp_path: Path) -> None:
    profiles = {
        "198.18.3.7": Profile(delay=0.03, jitter=0.005, burst_p=0.01, burst_r=0.25),
        "198.19.0.9": Profile(up=False),
        "198.18.0.1": Profile(),
    }
    path = tmp_path / "p.json"
    path.write_text(dump_profiles(profiles))
    assert load_profiles(path) == profiles


def test_addresses_must_be_in_the_lab_range() -> None:
    outside = str(LAB_NET[-1] + 1)  # the first address after 198.18.0.0/15
    with pytest.raises(ValueError, match="outside the lab range"):
        parse_profiles({outside: {"delay": 0.001}})
    with pytest.raises(ValueError, match="is not an IPv4 address"):
        parse_profiles({"room-17": {"delay": 0.001}})
    with pytest.raises(ValueError, match=re.escape("profile for 198.18.0.1: loss must be a")):
        parse_profiles({"198.18.0.1": {"loss": 7}})


# -- properties ----------------------------------------------------------------------------

profiles_strategy = st.builds(
    Profile,
    delay=st.floats(0.0, 1.0),
    jitter=st.floats(0.0, 0.5),
    distribution=st.sampled_from(list(Distribution)),
    loss=st.floats(0.0, 1.0),
    burst_p=st.floats(0.0, 1.0),
    burst_r=st.floats(0.01, 1.0),
    burst_loss=st.floats(0.0, 1.0),
    up=st.booleans(),
)


@given(profiles_strategy, st.sampled_from(list(Channel)), st.integers(0, 2**32))
@settings(max_examples=300)
def test_decision_invariants(profile: Profile, state: Channel, seed: int) -> None:
    d = decide(profile, state, random.Random(seed))
    assert d.delay >= 0.0
    if d.drop:
        assert d.delay == 0.0
    if not profile.up:
        assert d.drop
        assert d.state is state
    if profile.loss == 1.0:
        assert d.drop
    if not d.drop and profile.distribution is Distribution.UNIFORM:
        assert profile.delay - profile.jitter <= d.delay <= profile.delay + profile.jitter
    if not d.drop and profile.jitter == 0.0:
        assert d.delay == profile.delay


# -- statistics ----------------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "jitter"), [(0.002, 0.0002), (0.015, 0.003), (0.04, 0.01)])
def test_normal_jitter_has_the_profile_mean_and_spread(delay: float, jitter: float) -> None:
    delays = [d.delay for d in run(Profile(delay=delay, jitter=jitter), N)]
    assert statistics.fmean(delays) == pytest.approx(delay, abs=5 * jitter / math.sqrt(N))
    assert statistics.stdev(delays) == pytest.approx(jitter, rel=0.03)


def test_uniform_jitter_has_the_profile_mean_and_spread() -> None:
    profile = Profile(delay=0.02, jitter=0.006, distribution=Distribution.UNIFORM)
    delays = [d.delay for d in run(profile, N)]
    sd = 0.006 / math.sqrt(3)
    assert statistics.fmean(delays) == pytest.approx(0.02, abs=5 * sd / math.sqrt(N))
    assert statistics.stdev(delays) == pytest.approx(sd, rel=0.03)
    assert min(delays) >= 0.014
    assert max(delays) <= 0.026


def test_truncated_normal_never_goes_negative() -> None:
    delays = [d.delay for d in run(Profile(delay=0.001, jitter=0.002), N)]
    assert min(delays) >= 0.0
    # Rejection keeps the shape above zero instead of piling draws up at exactly 0.
    assert sum(1 for x in delays if x == 0.0) == 0


def _within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("loss", [0.01, 0.05, 0.3])
def test_random_loss_rate(loss: float) -> None:
    drops = sum(d.drop for d in run(Profile(delay=0.01, loss=loss), N))
    assert _within_binomial(drops, N, loss)


def _bursts(drops: list[bool]) -> list[int]:
    lengths, current = [], 0
    for dropped in drops:
        if dropped:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


@pytest.mark.parametrize(("p", "r"), [(0.01, 0.25), (0.05, 0.5), (0.002, 0.1)])
def test_gilbert_elliott_loss_and_burst_length(p: float, r: float) -> None:
    profile = Profile(delay=0.01, burst_p=p, burst_r=r)
    drops = [d.drop for d in run(profile, 4 * N)]
    # Stationary share of the bad state is p/(p+r); every echo in it is lost.
    expected = p / (p + r)
    assert profile.expected_loss == pytest.approx(expected)
    bursts = _bursts(drops)
    # Drops are correlated, so compare against the count of bursts, not of echoes.
    tolerance = 5 * math.sqrt(len(bursts)) / len(bursts) + 0.02
    assert sum(drops) / len(drops) == pytest.approx(expected, rel=tolerance)
    # Burst lengths are geometric with mean 1/r.
    assert statistics.fmean(bursts) == pytest.approx(1 / r, rel=tolerance)


def test_bursts_are_longer_than_random_loss_at_the_same_rate() -> None:
    bursty = Profile(delay=0.01, burst_p=0.01, burst_r=0.2)
    random_loss = Profile(delay=0.01, loss=bursty.expected_loss)
    mean_bursty = statistics.fmean(_bursts([d.drop for d in run(bursty, N)]))
    mean_random = statistics.fmean(_bursts([d.drop for d in run(random_loss, N)]))
    assert mean_bursty > 3 * mean_random


def test_random_and_burst_loss_combine() -> None:
    profile = Profile(delay=0.01, loss=0.05, burst_p=0.02, burst_r=0.2, burst_loss=0.5)
    expected = 1 - (1 - 0.05) * (1 - 0.5 * 0.02 / 0.22)
    assert profile.expected_loss == pytest.approx(expected)
    drops = sum(d.drop for d in run(profile, 4 * N))
    assert drops / (4 * N) == pytest.approx(expected, rel=0.1)
