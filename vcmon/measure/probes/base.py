"""The narrow contract every probe fulfils: one round against one target."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


class Outcome(enum.Enum):
    """What became of one echo by the end of its round."""

    OK = "ok"
    TIMEOUT = "timeout"  # no answer within the per-echo timeout (a late answer may still come)
    ERROR = "error"  # an ICMP error (unreachable, TTL exceeded) or a send failure answered it


@dataclass(frozen=True, slots=True)
class Echo:
    """One request of a round, in send order."""

    seq: int
    outcome: Outcome
    rtt: float | None = None  # seconds, only when outcome is OK
    reason: str | None = None  # for ERROR: e.g. "host-unreachable", "ttl-exceeded", "send:EPERM"


@dataclass(frozen=True, slots=True)
class RoundSettings:
    """How to run one round."""

    count: int  # echoes per round
    spacing: float  # seconds between echoes of the round
    timeout: float  # seconds an echo may take before it counts as lost


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round saw. ``failure`` is set when the round could not run at all."""

    echoes: tuple[Echo, ...]
    duplicates: int = 0
    failure: str | None = None


@dataclass(slots=True)
class Tally:
    """Per-target counters for what arrives outside any round: late replies, duplicates, errors."""

    late: int = 0
    duplicate: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class Probe(Protocol):
    """A probe measures one target per call; the caller owns scheduling and timing."""

    name: str

    async def run_round(self, address: str, settings: RoundSettings, tally: Tally) -> RoundResult:
        """Run one round against ``address`` and return every echo's outcome."""
        ...
