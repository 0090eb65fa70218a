"""What the daemon currently knows about each endpoint: last round, running counters, state.

One record per (endpoint, probe) pair, so an endpoint may carry several probes. Written by
the scheduler after each round, except ``state``: the alert engine is its one writer (through
the alert runtime), so a record no engine looks after shows none. Read by the exposition
(which renders a record's series as its round lands) and at request time by the status API.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vcmon.config import Endpoint
from vcmon.measure.probes.base import Tally
from vcmon.measure.stats import Observation
from vcmon.states import State

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


def endpoint_probes(ep: Endpoint) -> tuple[str, ...]:
    """The probes that run against ``ep``, the first one its primary (the config has one
    ``probe`` per endpoint today; a ``probes:`` list only changes this function)."""
    return (ep.probe,)


@dataclass(slots=True)
class EndpointRecord:
    """Everything known about one endpoint as one probe sees it."""

    endpoint: Endpoint
    probe: str = ""  # the probe's name; the endpoint's primary probe when not given
    tally: Tally = field(default_factory=Tally)
    last: Observation | None = None
    state: State | None = None  # written by the alert engine only (AlertRuntime.on_round)
    resolved: str | None = None  # the IP last probed, for hostname endpoints
    rounds: int = 0
    failures: int = 0  # rounds that could not probe at all
    sent: int = 0
    received: int = 0
    histogram: RttHistogram = field(default_factory=RttHistogram)

    def __post_init__(self) -> None:
        if not self.probe:
            self.probe = endpoint_probes(self.endpoint)[0]

    @property
    def key(self) -> tuple[str, str]:
        """(endpoint id, probe): what Results, the scheduler and the exposition key it by."""
        return (self.endpoint.id, self.probe)

    @property
    def slot_key(self) -> str:
        """What the round's phase is hashed from: the id for the primary probe (so its slot is
        the one it always had), the id and the probe's name for the others."""
        ep = self.endpoint
        return ep.id if self.probe == endpoint_probes(ep)[0] else f"{ep.id}/{self.probe}"

    def record(self, obs: Observation) -> None:
        """Fold one round into the counters (the state is the alert engine's to set)."""
        self.last = obs
        self.rounds += 1
        self.failures += obs.failure is not None
        self.sent += obs.sent
        self.received += obs.received
        for rtt in obs.rtts:
            self.histogram.add(rtt)


class Results:
    """Records for every (endpoint, probe) pair of the current config."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._records: dict[tuple[str, str], EndpointRecord] = {}
        self._primary: dict[str, EndpointRecord] = {}
        self.generation = 0  # counts replace() calls, so the exposition sees a reload
        self.replace(endpoints)

    def replace(self, endpoints: Iterable[Endpoint]) -> None:
        """Adopt a new inventory; records of endpoints that stay keep their history."""
        old = self._records
        new: dict[tuple[str, str], EndpointRecord] = {}
        primary: dict[str, EndpointRecord] = {}
        for ep in endpoints:
            for probe in endpoint_probes(ep):
                rec = old.get((ep.id, probe))
                if rec is None:
                    rec = EndpointRecord(ep, probe)
                else:
                    rec.endpoint = ep
                new[(ep.id, probe)] = rec
                primary.setdefault(ep.id, rec)
        # Swap whole dicts so a scrape running in another thread never sees one change size.
        self._records, self._primary = new, primary
        self.generation += 1

    def __getitem__(self, endpoint_id: str) -> EndpointRecord:
        """The record of the endpoint's primary probe."""
        return self._primary[endpoint_id]

    def get(self, endpoint_id: str, probe: str) -> EndpointRecord | None:
        """The record of ``probe`` on the endpoint, if it runs there."""
        return self._records.get((endpoint_id, probe))

    def __iter__(self) -> Iterator[EndpointRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def all_observed(self) -> bool:
        """True once every endpoint has finished at least one round."""
        return all(rec.last is not None for rec in list(self._records.values()))
