"""What `vcmon status` shows, shaped from a running daemon's status and alerts API.

Pure shaping here; fetching and drawing are the CLI's (the only rich user).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

SORT_KEYS: Final = ("district", "state", "rtt", "jitter", "loss", "mos", "name")
# Worst first when sorting by state.
STATE_ORDER: Final = {
    "down": 0,
    "flapping": 1,
    "degraded": 2,
    "unreachable": 3,
    "maintenance": 4,
    "up": 5,
    None: 6,
}


class StatusUnavailable(Exception):
    """The daemon could not be asked; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Row:
    """One endpoint's line."""

    id: str
    name: str
    district: str
    level: str
    state: str | None
    rtt_ms: float | None
    jitter_ms: float | None
    loss_pct: float | None
    mos: float | None


@dataclass(frozen=True, slots=True)
class AlertLine:
    """One firing alert."""

    severity: str
    kind: str
    endpoint: str
    summary: str
    affected: int
    suppressed_by: str | None


@dataclass(frozen=True, slots=True)
class View:
    """Everything one refresh shows."""

    instance: str
    alerts: tuple[AlertLine, ...]
    groups: tuple[tuple[str, tuple[Row, ...]], ...]  # district → rows

    def counts(self) -> dict[str, int]:
        """Endpoints per state."""
        out: dict[str, int] = {}
        for _, rows in self.groups:
            for r in rows:
                key = r.state or "unknown"
                out[key] = out.get(key, 0) + 1
        return out


def _row(ep: Mapping[str, Any]) -> Row:
    last = ep.get("last") or {}
    rtt = (last.get("rtt_ms") or {}).get("avg")
    return Row(
        id=str(ep["id"]),
        name=str(ep.get("name", "")),
        district=str(ep.get("district", "")),
        level=str(ep.get("level", "")),
        state=ep.get("state"),
        rtt_ms=rtt,
        jitter_ms=last.get("jitter_ms"),
        loss_pct=last.get("loss_pct"),
        mos=last.get("mos") if rtt is not None else None,
    )


def _key(sort: str) -> Any:
    big = float("inf")
    keys: dict[str, Any] = {
        "district": lambda r: (r.district, r.id),
        "name": lambda r: r.name,
        "state": lambda r: (STATE_ORDER.get(r.state, 6), r.id),
        "rtt": lambda r: -(r.rtt_ms if r.rtt_ms is not None else big),
        "jitter": lambda r: -(r.jitter_ms if r.jitter_ms is not None else big),
        "loss": lambda r: -(r.loss_pct if r.loss_pct is not None else big),
        "mos": lambda r: r.mos if r.mos is not None else -1.0,
    }
    return keys[sort]


def build(status: Mapping[str, Any], alerts: Mapping[str, Any], sort: str = "state") -> View:
    """Group endpoints by district (districts with trouble first), each sorted by ``sort``."""
    rows = [_row(ep) for ep in status.get("endpoints", [])]
    by_district: dict[str, list[Row]] = {}
    for r in rows:
        by_district.setdefault(r.district, []).append(r)
    key = _key(sort)
    groups = [(d, tuple(sorted(rs, key=key))) for d, rs in by_district.items()]
    groups.sort(key=lambda g: (min(STATE_ORDER.get(r.state, 6) for r in g[1]), g[0]))
    lines = tuple(
        AlertLine(
            severity=str(a.get("severity", "")),
            kind=str(a.get("kind", "")),
            endpoint=str((a.get("endpoint") or {}).get("id", "")),
            summary=str(a.get("summary") or (a.get("endpoint") or {}).get("name", "")),
            affected=len(a.get("affected") or ()),
            suppressed_by=a.get("suppressed_by"),
        )
        for a in sorted(
            alerts.get("alerts", []), key=lambda a: (a.get("severity") != "critical", a.get("kind"))
        )
    )
    return View(str(status.get("instance", "")), lines, tuple(groups))


def only_trouble(view: View) -> View:
    """The same view without endpoints that are plainly up."""
    groups: Sequence[tuple[str, tuple[Row, ...]]] = [
        (d, tuple(r for r in rows if r.state != "up")) for d, rows in view.groups
    ]
    return View(view.instance, view.alerts, tuple((d, rs) for d, rs in groups if rs))
