"""Quality levels (none, warning, critical) of one figure, with hysteresis: pure.

A level changes only after ``rounds`` rounds in a row beyond a ``raise`` value (worse) or
``clear_rounds`` rounds in a row within a ``clear`` value (better). Rounds in which nothing
answered are not quality: they are reachability's, and are skipped here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from vcmon.alerts.model import Severity
from vcmon.config.alerts import Metric, QualityPolicy, QualityRule
from vcmon.measure.stats import Observation, mos
from vcmon.units import MS

NONE, WARNING, CRITICAL = 0, 1, 2
SEVERITY_OF_LEVEL = {WARNING: Severity.WARNING, CRITICAL: Severity.CRITICAL}
LEVEL_OF_SEVERITY = {Severity.WARNING: WARNING, Severity.CRITICAL: CRITICAL}


@dataclass(frozen=True, slots=True)
class Track:
    """One figure's level and the streak that may change it."""

    level: int = NONE
    up_streak: int = 0  # rounds in a row worse than the level allows
    up_to: int = CRITICAL  # the lowest level those rounds reached
    down_streak: int = 0  # rounds in a row better than the level needs
    down_to: int = NONE  # the highest level those rounds allow
    value: float | None = None  # the newest value


def _beyond(value: float, limit: float, higher_is_worse: bool) -> bool:
    return value >= limit if higher_is_worse else value <= limit


def candidate(rule: QualityRule, metric: Metric, level: int, value: float) -> int:
    """The level ``value`` calls for, given the current ``level`` (raise above it, clear
    within it)."""
    worse = metric.higher_is_worse
    crit, warn = rule.critical, rule.warning
    # Holding a level needs only the clear value; reaching it needs the raise value.
    if crit is not None and _beyond(
        value, crit.clear_at if level >= CRITICAL else crit.raise_, worse
    ):
        return CRITICAL
    if warn is not None and _beyond(
        value, warn.clear_at if level >= WARNING else warn.raise_, worse
    ):
        return WARNING
    return NONE


def advance(track: Track, rule: QualityRule, metric: Metric, value: float | None) -> Track:
    """Fold one round's ``value`` of ``metric`` into ``track`` (None: no value this round)."""
    if value is None or math.isnan(value) or not rule.enabled:
        return track if rule.enabled else Track()
    want = candidate(rule, metric, track.level, value)
    if want > track.level:
        up_to = min(track.up_to, want) if track.up_streak else want
        up_streak = track.up_streak + 1
        if up_streak >= rule.rounds:
            return Track(level=up_to, value=value)
        return replace(track, up_streak=up_streak, up_to=up_to, down_streak=0, value=value)
    if want < track.level:
        down_to = max(track.down_to, want) if track.down_streak else want
        down_streak = track.down_streak + 1
        if down_streak >= rule.clear_rounds:
            return Track(level=down_to, value=value)
        return replace(track, down_streak=down_streak, down_to=down_to, up_streak=0, value=value)
    return Track(level=track.level, value=value)


@dataclass(frozen=True, slots=True)
class Quality:
    """All figures of one endpoint, and the pooled rounds behind its loss."""

    tracks: Mapping[Metric, Track]
    pool: tuple[tuple[int, int], ...] = ()  # (sent, received) of the newest answered rounds

    @classmethod
    def start(cls, levels: Mapping[Metric, int] | None = None) -> Quality:
        """Fresh tracks, at ``levels`` where alerts are already open (after a restart)."""
        levels = levels or {}
        return cls({m: Track(level=levels.get(m, NONE)) for m in Metric})


def values(
    obs: Observation, pool: tuple[tuple[int, int], ...], window: int = 1
) -> dict[Metric, float | None]:
    """The figures of a round: loss over the pooled rounds in %, RTT and jitter in ms, MOS
    (from the pooled loss)."""
    sent = sum(s for s, _ in pool)
    received = sum(r for _, r in pool)
    loss = 100.0 * (1.0 - received / sent) if sent else None
    pooled = loss if len(pool) >= window else None  # a short pool overstates one lost echo
    rtt = obs.rtt_avg
    jitter = obs.jitter
    # Pooled loss here too: one lost echo of five would otherwise sink a round's MOS to ~2.2.
    # This is the MOS a mos_low alert is decided on, and the one its events carry. None for a
    # probe whose RTT is not a media path, as the round's own MOS is.
    score = mos(rtt, jitter, (pooled or 0.0) / 100.0) if rtt is not None and obs.voice else None
    return {
        Metric.LOSS: pooled,
        Metric.RTT: rtt * MS if rtt is not None else None,
        Metric.JITTER: jitter * MS if jitter is not None else None,
        Metric.MOS: score,
    }


def observe(quality: Quality, obs: Observation, policy: QualityPolicy) -> Quality:
    """Fold a round into every figure; a round with no answer only empties the loss pool."""
    if not obs.up:
        # A silent round is an outage's, and the rounds around it are partly silent too:
        # after it, loss is pooled afresh rather than reporting the outage's edges as loss.
        return Quality(quality.tracks) if quality.pool else quality
    window = policy.loss_pct.window
    pool = (*quality.pool, (obs.sent, obs.received))[-window:]
    figures = values(obs, pool, window)
    tracks = {m: advance(quality.tracks[m], policy.rule(m), m, figures[m]) for m in quality.tracks}
    return Quality(tracks, pool)
