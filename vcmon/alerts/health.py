"""Reachability of one endpoint after hysteresis, and flap detection: pure and synchronous.

``step`` folds one round result into a ``Reach``: ``down_after`` failed rounds in a row
confirm an outage, ``up_after`` good rounds in a row confirm recovery (Gatus's failure and
success thresholds, Nagios's soft and hard states). Flapping follows Nagios: the share of
state changes among the last ``window`` raw results, newer changes weighted more (0.75 for
the oldest to 1.25 for the newest), starts at ``start_pct`` and stops at ``stop_pct``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from vcmon.config.alerts import HealthPolicy
from vcmon.states import State

__all__ = ["Reach", "State", "flap_pct", "step"]  # State re-exported: the engine's vocabulary


@dataclass(frozen=True, slots=True)
class Reach:
    """One endpoint's reachability: confirmed state, the streak that may change it, flaps."""

    confirmed_up: bool | None = None  # None until the first streak decides
    ok_streak: int = 0
    fail_streak: int = 0
    fail_since: float | None = None  # start of the first round of the current failing streak
    ok_since: float | None = None  # start of the first round of the current good streak
    last_at: float | None = None  # start of the newest round
    last_ok: bool | None = None  # the newest round's raw result
    history: tuple[bool, ...] = ()  # raw results, oldest first, at most the flap window
    flapping: bool = False

    @property
    def failing(self) -> bool:
        """The newest round failed (confirmed or not)."""
        return self.last_ok is False


def flap_pct(history: Sequence[bool]) -> float:
    """Weighted share of changes between consecutive results, in per cent (0 with < 2)."""
    n = len(history) - 1
    if n < 1:
        return 0.0
    changed = total = 0.0
    for i in range(n):
        # The i-th change of n: 0.75 for the oldest, 1.25 for the newest.
        weight = 0.75 + 0.5 * (i / (n - 1) if n > 1 else 1.0)
        total += weight
        if history[i] != history[i + 1]:
            changed += weight
    return 100.0 * changed / total


def step(reach: Reach, ok: bool, at: float, policy: HealthPolicy) -> Reach:
    """Fold one round (``ok``: anything answered; ``at``: when it started) into ``reach``."""
    if ok:
        ok_streak, fail_streak = reach.ok_streak + 1, 0
        ok_since = reach.ok_since if reach.ok_streak else at
        fail_since = None
    else:
        ok_streak, fail_streak = 0, reach.fail_streak + 1
        fail_since = reach.fail_since if reach.fail_streak else at
        ok_since = None
    confirmed = reach.confirmed_up
    if ok and ok_streak >= policy.up_after:
        confirmed = True
    elif not ok and fail_streak >= policy.down_after:
        confirmed = False
    flap = policy.flapping
    history = (*reach.history, ok)[-flap.window :]
    flapping = reach.flapping
    if flap.enabled:
        # As Nagios does, a short history is padded with its oldest result (no changes), so
        # the first results after a start cannot look like flapping.
        steady = all(h == ok for h in history)  # the usual case, and 0 % by definition
        pct = 0.0 if steady else flap_pct((history[0],) * (flap.window - len(history)) + history)
        if not flapping and pct >= flap.start_pct:
            flapping = True
        elif flapping and pct <= flap.stop_pct:
            flapping = False
    else:
        flapping = False
    return replace(
        reach,
        confirmed_up=confirmed,
        ok_streak=ok_streak,
        fail_streak=fail_streak,
        fail_since=fail_since,
        ok_since=ok_since,
        last_at=at,
        last_ok=ok,
        history=history,
        flapping=flapping,
    )
