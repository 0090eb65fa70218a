"""The probe registry: config schema, CLI choices and the daemon derive their probe list from it.

A new probe is one module, one entry in ``PROBES`` and one test file. Every probe class is
built from the shared ICMP engine (probes that do not need it simply ignore it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from vcmon.measure.probes.base import Probe
from vcmon.measure.probes.icmp import IcmpEngine, IcmpProbe

PROBES: Final[dict[str, Callable[[IcmpEngine], Probe]]] = {
    IcmpProbe.name: IcmpProbe,
}
PROBE_NAMES: Final[frozenset[str]] = frozenset(PROBES)


def build_probes(engine: IcmpEngine) -> dict[str, Probe]:
    """One instance of every registered probe, keyed by name, sharing ``engine``."""
    return {name: factory(engine) for name, factory in PROBES.items()}
