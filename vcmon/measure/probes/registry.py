"""The probe registry: config schema, CLI choices and the daemon derive their probe list from it.

A new probe is one module declaring a ``ProbeKind``, one ``register()`` call below and one
test file. Tests may register a probe of their own and ``unregister()`` it afterwards.
"""

from __future__ import annotations

from vcmon.measure.probes import icmp
from vcmon.measure.probes.base import Probe, ProbeContext, ProbeKind

PROBES: dict[str, ProbeKind] = {}
# Rebound on every change; the config loader reads it at validation time.
PROBE_NAMES: frozenset[str] = frozenset()


def register(kind: ProbeKind) -> ProbeKind:
    """Make ``kind`` known by its name; a name is registered once."""
    global PROBE_NAMES
    if kind.name in PROBES:
        raise ValueError(f"probe {kind.name!r} is already registered")
    PROBES[kind.name] = kind
    PROBE_NAMES = frozenset(PROBES)
    return kind


def unregister(name: str) -> None:
    """Forget the probe ``name`` (for tests that registered their own)."""
    global PROBE_NAMES
    PROBES.pop(name, None)
    PROBE_NAMES = frozenset(PROBES)


def probe_names() -> frozenset[str]:
    """The names of every registered probe."""
    return PROBE_NAMES


def kind(name: str) -> ProbeKind:
    """The registered probe ``name``; KeyError naming the known ones otherwise."""
    try:
        return PROBES[name]
    except KeyError:
        known = ", ".join(sorted(PROBES))
        raise KeyError(f"unknown probe {name!r} (expected one of: {known})") from None


def build_probes(
    ctx: ProbeContext, names: frozenset[str] | set[str] | None = None
) -> dict[str, Probe]:
    """One instance of each probe in ``names`` (default: every registered one), from ``ctx``.

    Only the probes built ask the context for their shared resources: a config without ICMP
    endpoints opens no ICMP socket.
    """
    wanted = PROBES if names is None else names
    return {name: kind(name).create(ctx) for name in sorted(wanted)}


register(icmp.KIND)
