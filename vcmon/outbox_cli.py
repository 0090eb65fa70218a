"""`vcmon outbox`: what each sink still has to deliver, and its dead letters, read from the
state file (the daemon may be running: SQLite's WAL lets both read and write)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vcmon.alerts.runtime import state_path
from vcmon.alerts.store import Store
from vcmon.config import Config
from vcmon.sinks.registry import build_sinks


@dataclass(frozen=True, slots=True)
class SinkBacklog:
    """One sink's position in the event log."""

    sink: str
    cursor: int | None  # None: the daemon has not run it yet
    pending: list[dict[str, Any]]
    dead: list[tuple[int, str, float]]  # (seq, reason, at)


def backlog(config: Config, limit: int = 50) -> tuple[int, list[SinkBacklog]]:
    """(newest seq, each configured sink's backlog)."""
    with Store.open(state_path(config)) as store:
        last = store.last_seq()
        out = []
        for sink in build_sinks(config.sinks, config.instance):
            cursor = store.cursor(sink.name)
            pending = store.events(cursor, limit) if cursor is not None else []
            dead = [(seq, reason, at) for _, seq, reason, at in store.dead_letters(sink.name)]
            out.append(SinkBacklog(sink.name, cursor, pending, dead))
    return last, out


def retry_dead_letters(config: Config, sink: str | None = None) -> dict[str, int]:
    """Requeue dead letters (of one sink, or all): each sink's cursor goes back to just before
    its oldest dead letter, so they are sent again in order; what was delivered after them is
    sent again too, which receivers dedupe by event id. Returns the count per sink."""
    counts: dict[str, int] = {}
    with Store.open(state_path(config)) as store:
        names = [s.name for s in build_sinks(config.sinks, config.instance)]
        for name in names:
            if sink is not None and name != sink:
                continue
            taken = store.take_dead_letters(name)
            if taken:
                first = min(int(doc["seq"]) for doc in taken)
                current = store.cursor(name) or 0
                store.advance(name, min(current, first - 1))
                counts[name] = len(taken)
    return counts
