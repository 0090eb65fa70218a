"""`vcmon outbox` and `vcmon alerts test`: what each sink still has to deliver and its dead
letters, read from the state file (the daemon may be running: SQLite's WAL lets both read and
write); and the test event that `vcmon alerts test` sends through every sink."""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import time
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from vcmon.alerts.model import rfc3339
from vcmon.alerts.runtime import state_path
from vcmon.alerts.store import Store, StoreError
from vcmon.cli.output import EXIT_FAILURE, EXIT_OK, err, load, out
from vcmon.config import Config
from vcmon.delivery.grouping import Notification, group_labels
from vcmon.delivery.sinks.base import GroupSink, SinkError
from vcmon.delivery.sinks.registry import build_sinks, grouping_of


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`outbox` (the backlog) and `outbox retry`."""
    box = sub.add_parser("outbox", help="what each sink still has to deliver; dead letters")
    box.add_argument("-c", "--config", required=True, help="config file (YAML)")
    box_sub = box.add_subparsers(dest="outbox_command")
    retry = box_sub.add_parser("retry", help="send dead letters again, in order")
    retry.add_argument("--sink", help="only this sink's")
    box.set_defaults(func=cmd_outbox, outbox_command="list")


def cmd_outbox(args: argparse.Namespace) -> int:
    """Each sink's cursor, pending events and dead letters; or requeue the dead letters."""
    config = load(args.config)
    try:
        if args.outbox_command == "retry":
            counts = retry_dead_letters(config, args.sink)
            for sink, n in counts.items():
                out.print(f"{sink}: {n} dead letters requeued", markup=False)
            if not counts:
                out.print("no dead letters", markup=False)
            return EXIT_OK
        last, sinks = backlog(config)
    except StoreError as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return EXIT_FAILURE
    table = Table(title=f"outbox (newest event: {last})")
    for col in ("sink", "delivered up to", "pending", "dead letters"):
        table.add_column(col)
    for b in sinks:
        table.add_row(
            b.sink,
            "not started" if b.cursor is None else str(b.cursor),
            str(len(b.pending)),
            str(len(b.dead)),
        )
    out.print(table)
    for b in sinks:
        for doc in b.pending[:10]:
            out.print(f"  {b.sink} pending #{doc['seq']} {doc['status']} {doc['kind']} "
                      f"{doc['endpoint']['id']}: {doc['summary']}", markup=False)  # fmt: skip
        for seq, reason, at in b.dead:
            when = dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")
            out.print(f"  {b.sink} dead letter #{seq}: {reason} at {when}", markup=False)
    return EXIT_OK


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


@dataclass(frozen=True, slots=True)
class TestResult:
    """What one sink's receiver did with the test events."""

    sink: str
    ok: bool
    detail: str  # "acknowledged", or why not
    seconds: float


def test_events(instance: str, now: float) -> list[dict[str, Any]]:
    """A firing and its resolve of kind ``test``, so nothing is left firing anywhere."""
    alert_id = f"test-{secrets.token_hex(4)}"
    base: dict[str, Any] = {
        "alert_id": alert_id,
        "kind": "test",
        "severity": "warning",
        "instance": instance,
        "endpoint": {
            "id": "vcmon-test",
            "name": "vcmon test",
            "address": "",
            "district": "",
            "level": "",
        },
        "affected": [],
        "measurements": {"rtt_ms": None, "jitter_ms": None, "loss_pct": None, "mos": None},
        "started_at": rfc3339(now),
        "description": "Sent by `vcmon alerts test`; nothing is wrong.",
    }
    return [
        base | {"id": f"{alert_id}-1", "seq": 0, "status": "firing", "ended_at": None,
                "summary": "vcmon: test alert (firing)"},
        base | {"id": f"{alert_id}-2", "seq": 0, "status": "resolved",
                "ended_at": rfc3339(now), "summary": "vcmon: test alert (resolved)"},
    ]  # fmt: skip


async def send_test(config: Config, only: str | None = None) -> list[TestResult]:
    """Send the test events through each sink (or one) directly, not through the log."""
    results = []
    groups = {getattr(c, "name", ""): grouping_of(c) for c in config.sinks}
    for sink in build_sinks(config.sinks, config.instance):
        if only is not None and sink.name != only:
            continue
        policy = groups.get(sink.name)
        started = time.monotonic()
        try:
            await sink.start()
            for doc in test_events(config.instance, time.time()):
                if policy is not None and isinstance(sink, GroupSink):
                    # As people will see it: the firing and the resolve, each a group message.
                    labels = group_labels(doc, policy.by)
                    note = Notification(f"grp-{doc['id']}", labels, (doc,), (), (), time.time())
                    await sink.send_group(note)
                else:
                    await sink.send(doc)
        except SinkError as exc:
            results.append(TestResult(sink.name, False, str(exc), time.monotonic() - started))
        else:
            results.append(TestResult(sink.name, True, "acknowledged", time.monotonic() - started))
        finally:
            await sink.close()
    return results
