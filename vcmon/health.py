"""Endpoint health, decided purely from the last state and the newest observation."""

from __future__ import annotations

import enum

from vcmon.stats import Observation


class State(enum.StrEnum):
    """Health states of the metric contract."""

    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    UNREACHABLE = "unreachable"
    FLAPPING = "flapping"
    MAINTENANCE = "maintenance"


def next_state(previous: State | None, obs: Observation) -> State:
    """Up when the round got any answer, down otherwise.

    Thresholds, hysteresis, topology and flapping belong to the alert engine; this is the
    raw per-round reachability the metrics report until then.
    """
    del previous  # the raw state does not depend on history
    return State.UP if obs.up else State.DOWN
