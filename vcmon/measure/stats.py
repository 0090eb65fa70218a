"""Round statistics: loss, RTT summary, jitter (IPDV) and MOS, as defined in the README.

Probe-agnostic: every probe's round is summarised the same way; MOS only for a probe whose
RTT is a voice/video round trip (``Probe.voice``). All functions are pure; RTTs in seconds.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from dataclasses import dataclass

from vcmon.measure.probes.base import Outcome, RoundResult
from vcmon.units import MS


@dataclass(frozen=True, slots=True)
class Observation:
    """One round of one endpoint, summarised. RTT fields are None when nothing answered."""

    started_at: float  # wall-clock seconds since the epoch
    sent: int
    received: int
    rtts: tuple[float, ...]  # answered echoes, in send order
    errors: tuple[tuple[str, int], ...] = ()
    failure: str | None = None  # the round could not run (e.g. name resolution failed)
    duplicates: int = 0
    voice: bool = True  # the probe's RTT is a media round trip, so a MOS estimate means something

    @property
    def up(self) -> bool:
        """At least one echo of the round was answered in time."""
        return self.received > 0

    @property
    def loss_ratio(self) -> float:
        """1 − received/sent; a round that could not send anything counts as total loss."""
        return 1.0 if self.sent == 0 else 1.0 - self.received / self.sent

    @property
    def rtt_min(self) -> float | None:
        return min(self.rtts) if self.rtts else None

    @property
    def rtt_max(self) -> float | None:
        return max(self.rtts) if self.rtts else None

    @property
    def rtt_avg(self) -> float | None:
        return math.fsum(self.rtts) / len(self.rtts) if self.rtts else None

    @property
    def rtt_median(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None

    @property
    def jitter(self) -> float | None:
        """IPDV jitter of the round; None with fewer than two answers."""
        return ipdv_jitter(self.rtts)

    @property
    def mos(self) -> float | None:
        """Estimated MOS of a call over this path (1.0 when nothing answered); None for a
        probe whose RTT says nothing about a call (``voice`` false)."""
        return mos(self.rtt_avg, self.jitter, self.loss_ratio) if self.voice else None


def ipdv_jitter(rtts: tuple[float, ...] | list[float]) -> float | None:
    """Mean absolute difference of consecutive RTTs (RFC 5481 IPDV, as PingPlotter reports)."""
    if len(rtts) < 2:
        return None
    return math.fsum(abs(b - a) for a, b in itertools.pairwise(rtts)) / (len(rtts) - 1)


def mos(rtt_avg: float | None, jitter: float | None, loss_ratio: float) -> float:
    """Simplified ITU-T G.107 E-model as PingPlotter documents it, clamped to [1, 4.5]: the
    one MOS formula (rounds, quality levels and events all use it; RTT and jitter in s)."""
    if rtt_avg is None:
        return 1.0
    latency_ms = rtt_avg * MS + 2.0 * (jitter or 0.0) * MS + 10.0
    if latency_ms < 160.0:
        r = 93.2 - latency_ms / 40.0
    else:
        r = 93.2 - (latency_ms - 120.0) / 10.0
    r -= 2.5 * loss_ratio * 100.0
    if r <= 0:
        return 1.0
    score = 1.0 + 0.035 * r + 0.000007 * r * (r - 60.0) * (100.0 - r)
    return min(4.5, max(1.0, score))


def observe(result: RoundResult, started_at: float, voice: bool = True) -> Observation:
    """Summarise a probe's round into an Observation (``voice``: the probe's, for MOS)."""
    # One pass, and no Counter unless something failed: this runs for every round.
    ok, error = Outcome.OK, Outcome.ERROR
    rtts: list[float] = []
    errors: Counter[str] | None = None
    for e in result.echoes:
        if e.outcome is ok:
            if e.rtt is not None:
                rtts.append(e.rtt)
        elif e.outcome is error:
            if errors is None:
                errors = Counter()
            errors[e.reason or "unknown"] += 1
    return Observation(
        started_at=started_at,
        sent=len(result.echoes),
        received=len(rtts),
        rtts=tuple(rtts),
        errors=tuple(sorted(errors.items())) if errors else (),
        failure=result.failure,
        duplicates=result.duplicates,
        voice=voice,
    )
