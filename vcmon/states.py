"""The health states every stage shares (the metric contract's ``state`` label).

A bottom module: measurement records carry a state, the alert engine decides it, the
exposition and the API show it; none of them needs another to name one.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    """Health states of the metric contract."""

    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    UNREACHABLE = "unreachable"
    FLAPPING = "flapping"
    MAINTENANCE = "maintenance"
