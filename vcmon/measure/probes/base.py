"""The contract every probe fulfils: one round against one target, built from a context.

A probe kind is one module that declares a ``ProbeKind`` (its name, whether its RTT is a
voice/video round trip, the key and model of its config block, and a factory) and registers
it in ``vcmon.measure.probes.registry``. The factory gets a ``ProbeContext``: the clock, the
shared time grid, the resolver, the settings blocks, and shared resources (sockets, engines)
created on first request and started once for every probe that asked for them.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, TypeVar

from pydantic import BaseModel

from vcmon.clock import Clock, SystemClock
from vcmon.measure.grid import Grid
from vcmon.measure.resolver import Resolver


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
    """A probe measures one target per call; the caller owns scheduling and timing.

    ``voice`` says whether its RTT is the round trip a call's media would see (ICMP echo,
    two-way UDP), so that a MOS estimate means something; a TCP handshake's does not.
    """

    name: str
    voice: bool

    async def run_round(self, address: str, settings: RoundSettings, tally: Tally) -> RoundResult:
        """Run one round against ``address`` and return every echo's outcome."""
        ...


class Resource(Protocol):
    """Something several probes share (a socket, an engine): started once, closed once."""

    async def start(self) -> None:
        """Open it (raise with a message naming the fix when it cannot be)."""
        ...

    def close(self) -> None:
        """Release it; rounds still running finish with what they have."""
        ...


R = TypeVar("R", bound=Resource)
M = TypeVar("M", bound=BaseModel)
Opener = Callable[[Resource], Awaitable[None]]


async def _start(resource: Resource) -> None:
    await resource.start()


class ProbeContext:
    """What a probe's factory may use. Shared resources are made on first request and started
    by ``start()`` (again after a reload adds probes: only the new ones start)."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        grid: Grid | None = None,
        resolver: Resolver | None = None,
        settings: Mapping[str, object] | None = None,
        opener: Opener | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.grid = grid or Grid()
        self.resolver = resolver or Resolver()
        self._settings = dict(settings or {})
        self._opener = opener or _start  # the daemon's may open them in the lab's namespace
        self._resources: dict[str, Resource] = {}
        self._started: list[Resource] = []

    def settings(self, key: str, model: type[M]) -> M:
        """The config block ``key`` as ``model`` (its defaults when the config has none)."""
        value = self._settings.get(key)
        if value is None:
            return model()
        if isinstance(value, model):
            return value
        if isinstance(value, BaseModel):
            return model.model_validate(value, from_attributes=True)
        return model.model_validate(value)

    def shared(self, key: str, kind: type[R], make: Callable[[], R]) -> R:
        """The shared resource ``key``, made by ``make()`` the first time it is asked for."""
        resource = self._resources.get(key)
        if resource is None:
            resource = self._resources[key] = make()
        if not isinstance(resource, kind):
            raise TypeError(f"shared resource {key!r} is a {type(resource).__name__}")
        return resource

    def existing(self, key: str, kind: type[R]) -> R | None:
        """The shared resource ``key`` if some probe asked for it, else None."""
        resource = self._resources.get(key)
        return resource if isinstance(resource, kind) else None

    async def start(self) -> None:
        """Start every resource asked for and not started yet, in the order asked."""
        for resource in list(self._resources.values()):
            if not any(resource is s for s in self._started):
                await self._opener(resource)
                self._started.append(resource)

    def close(self) -> None:
        """Close what was started, last first."""
        while self._started:
            self._started.pop().close()

    async def __aenter__(self) -> ProbeContext:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class ProbeKind:
    """A probe as the registry knows it: one per probe module, registered once."""

    name: str  # the endpoint's ``probe:`` value and the ``probe`` label
    create: Callable[[ProbeContext], Probe]
    voice: bool  # its RTT is a media round trip: MOS is computed for it
    settings_key: str | None = None  # its top-level config block, if it has one
    settings_model: type[BaseModel] | None = None  # that block's schema
