"""What the daemon currently knows about each endpoint: last round, running counters, state.

Written by the scheduler after each round; read by the exposition (which renders an endpoint's
series as its round lands) and at request time by the status API.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vcmon.alerts.health import State, next_state
from vcmon.config import Endpoint
from vcmon.measure.probes.base import Tally
from vcmon.measure.stats import Observation

# WAN round-trip buckets, 0.5 ms to 5 s: fine where LAN and fibre live, coarse where only
# "bad" and "worse" matter.
RTT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
)  # fmt: skip


@dataclass(slots=True)
class RttHistogram:
    """Cumulative histogram of every answer's RTT (non-cumulative counts per bucket)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS) + 1))
    total: float = 0.0

    def add(self, rtt: float) -> None:
        self.counts[bisect.bisect_left(RTT_BUCKETS, rtt)] += 1
        self.total += rtt

    def cumulative(self) -> list[tuple[str, int]]:
        """Buckets as Prometheus wants them: (le, cumulative count), ending with +Inf."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*RTT_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass(slots=True)
class EndpointRecord:
    """Everything known about one endpoint."""

    endpoint: Endpoint
    tally: Tally = field(default_factory=Tally)
    last: Observation | None = None
    state: State | None = None
    resolved: str | None = None  # the IP last probed, for hostname endpoints
    rounds: int = 0
    failures: int = 0  # rounds that could not probe at all
    sent: int = 0
    received: int = 0
    histogram: RttHistogram = field(default_factory=RttHistogram)

    def record(self, obs: Observation) -> None:
        """Fold one round into the counters and state."""
        self.last = obs
        self.rounds += 1
        self.failures += obs.failure is not None
        self.sent += obs.sent
        self.received += obs.received
        for rtt in obs.rtts:
            self.histogram.add(rtt)
        self.state = next_state(self.state, obs)


class Results:
    """Records for every endpoint of the current config, by id."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._records: dict[str, EndpointRecord] = {}
        self.generation = 0  # counts replace() calls, so the exposition sees a reload
        self.replace(endpoints)

    def replace(self, endpoints: Iterable[Endpoint]) -> None:
        """Adopt a new inventory; records of endpoints that stay keep their history."""
        old = self._records
        new: dict[str, EndpointRecord] = {}
        for ep in endpoints:
            rec = old.get(ep.id)
            if rec is None:
                rec = EndpointRecord(ep)
            else:
                rec.endpoint = ep
            new[ep.id] = rec
        # Swap whole dicts so a scrape running in another thread never sees one change size.
        self._records = new
        self.generation += 1

    def __getitem__(self, endpoint_id: str) -> EndpointRecord:
        return self._records[endpoint_id]

    def __iter__(self) -> Iterator[EndpointRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def all_observed(self) -> bool:
        """True once every endpoint has finished at least one round."""
        return all(rec.last is not None for rec in list(self._records.values()))
