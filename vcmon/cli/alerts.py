"""`vcmon alerts list|ack|test` and `vcmon silence add|list|expire`: the daemon's alerts API
from the command line, and a test alert through every sink. The API commands ask and shape
(pure functions returning a line or a Grid); ``cmd_daemon_api`` draws what they return."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vcmon.cli.client import (
    CommandError,
    Credentials,
    add_daemon_options,
    call,
    credentials,
    daemon_url,
)
from vcmon.cli.outbox import send_test
from vcmon.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, err, load, out

MATCHER_FIELDS: Final = ("endpoint", "district", "level", "kind", "severity")
_SEVERITY_STYLE: Final = {"critical": "bold red", "warning": "yellow"}


@dataclass(frozen=True, slots=True)
class Cell:
    """One table cell; ``style`` is a rich style name, empty for plain."""

    text: str
    style: str = ""


@dataclass(frozen=True, slots=True)
class Grid:
    """A table for ``cmd_daemon_api`` to draw."""

    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[Cell, ...]]


Output = str | Grid  # a line (an id, a JSON document) or a table
Command = Callable[[argparse.Namespace], Output]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`alerts test|list|ack` and `silence add|list|expire`. The API commands run through
    ``cmd_daemon_api``, which calls ``args.run`` and draws what it returns."""
    handler = cmd_daemon_api
    al = sub.add_parser("alerts", help="alert tools")
    alerts_sub = al.add_subparsers(dest="alerts_command", required=True)
    al_test = alerts_sub.add_parser("test", help="send a test alert through each sink; show "
                                    "what each receiver acknowledged")  # fmt: skip
    al_test.add_argument("-c", "--config", required=True, help="config file (YAML)")
    al_test.add_argument("--sink", help="only this sink")
    al_test.set_defaults(func=cmd_alerts_test)

    al_list = alerts_sub.add_parser(
        "list", help="open alerts of a running daemon, or those that ended (--ended)"
    )
    add_daemon_options(al_list)
    al_list.add_argument(
        "--ended", action="store_true", help="alerts that ended instead: what happened lately"
    )
    al_list.add_argument(
        "--since",
        default="24h",
        help="with --ended: how far back, e.g. 12h, 7d (default 24h; at most 30d)",
    )
    al_list.add_argument("--json", action="store_true", help="the API's JSON")
    al_list.set_defaults(func=handler, run=alerts_list)

    al_ack = alerts_sub.add_parser("ack", help="acknowledge an open alert (`vcmon alerts list`)")
    add_daemon_options(al_ack)
    al_ack.add_argument("alert_id", help="the alert's id (`vcmon alerts list --json`)")
    al_ack.add_argument("--comment", default="", help="what is being done (shown to everyone)")
    al_ack.add_argument("--duration", help="for how long: 90s, 15m, 2h, 1d (default: while open)")
    al_ack.add_argument("--author", help="who, on a daemon without authentication ($USER)")
    al_ack.set_defaults(func=handler, run=alerts_ack)

    sil = sub.add_parser("silence", help="mute alerts for a while (through the daemon's API)")
    sil_sub = sil.add_subparsers(dest="silence_command", required=True)
    add = sil_sub.add_parser("add", help="create a silence; prints its id")
    add_daemon_options(add)
    for name in MATCHER_FIELDS:
        add.add_argument(f"--{name}", help=f"match this {name} (exact, or ~regex: full match)")
    add.add_argument(
        "--label", action="append", default=[], metavar="NAME=VALUE", help="match a label"
    )
    add.add_argument("--duration", required=True, help="how long: 90s, 15m, 2h, 1d, 1h30m")
    add.add_argument("--comment", required=True, help="why (shown to everyone)")
    add.add_argument("--author", help="who, on a daemon without authentication ($USER)")
    add.set_defaults(func=handler, run=silence_add)

    ls = sil_sub.add_parser("list", help="silences in force (--expired: also ended ones)")
    add_daemon_options(ls)
    ls.add_argument("--expired", action="store_true", help="also those that ended")
    ls.add_argument("--json", action="store_true", help="the API's JSON")
    ls.set_defaults(func=handler, run=silence_list)

    expire = sil_sub.add_parser("expire", help="end a silence now")
    add_daemon_options(expire)
    expire.add_argument("id", help="the silence's id (`vcmon silence list`)")
    expire.set_defaults(func=handler, run=silence_expire)


# --- drawing ------------------------------------------------------------------------------------


def cmd_daemon_api(args: argparse.Namespace) -> int:
    """`vcmon silence …` and `vcmon alerts list|ack`: run ``args.run`` and draw what it returns."""
    try:
        output = args.run(args)
    except CommandError as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return exc.code
    if isinstance(output, Grid):
        table = Table(title=Text(output.title), title_justify="left")
        for col in output.columns:
            table.add_column(col)
        for row in output.rows:
            table.add_row(*(Text(cell.text, style=cell.style) for cell in row))
        # Piped into a file or grep, one line per row beats columns squeezed into 80.
        (out if out.is_terminal else Console(highlight=False, width=240)).print(table)
    else:
        sys.stdout.write(output + "\n")  # ids and JSON verbatim: no markup, no emoji codes
    return EXIT_OK


def cmd_alerts_test(args: argparse.Namespace) -> int:
    """A firing and its resolve through each sink (or one), with what each receiver said."""
    config = load(args.config)
    results = asyncio.run(send_test(config, args.sink))
    if not results:
        err.print(f"vcmon: no sink named {args.sink!r} in {config.source}", markup=False)
        return EXIT_USAGE
    table = Table(title="test alert (a firing and its resolve) through each sink")
    for col in ("sink", "result", "seconds"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.sink,
            Text(r.detail, style="green" if r.ok else "bold red"),
            f"{r.seconds:.3f}",
        )
    out.print(table)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE


# --- the commands -------------------------------------------------------------------------------


def silence_add(args: argparse.Namespace) -> Output:
    """Create a silence; its id."""
    from vcmon.alerts.durations import BadInput, parse_duration

    matchers: dict[str, Any] = {
        name: getattr(args, name) for name in MATCHER_FIELDS if getattr(args, name) is not None
    }
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--label {item}: expected NAME=VALUE", EXIT_USAGE)
        labels[key] = value
    if labels:
        matchers["labels"] = labels
    if not matchers:
        raise CommandError(
            "a silence must match something: give --endpoint, --district, --level, --kind, "
            "--severity or --label",
            EXIT_USAGE,
        )
    try:
        parse_duration(args.duration)  # checked here too, so a typo needs no daemon to show
    except BadInput as exc:
        raise CommandError(f"--{exc}", EXIT_USAGE) from None
    creds = credentials(args)
    body = {"matchers": matchers, "duration": args.duration, "comment": args.comment}
    author = _author(args, creds)
    if author is not None:
        body["created_by"] = author
    doc = call(daemon_url(args), "POST", "/api/v1/silences", body, creds)
    return str(doc["id"])


def _author(args: argparse.Namespace, creds: Credentials) -> str | None:
    """The name to send: --author, else (without credentials) $USER. With credentials the
    daemon records the authenticated name, so none is sent unless --author asks."""
    if args.author:
        return str(args.author)
    if creds.present:
        return None
    return os.environ.get("USER") or "unknown"


def silence_expire(args: argparse.Namespace) -> Output:
    """End a silence now."""
    from urllib.parse import quote

    path = f"/api/v1/silences/{quote(args.id, safe='')}"
    doc = call(daemon_url(args), "DELETE", path, creds=credentials(args))
    return f"silence {doc['id']} expired"


def alerts_ack(args: argparse.Namespace) -> Output:
    """Acknowledge an open alert."""
    from urllib.parse import quote

    from vcmon.alerts.durations import BadInput, parse_duration

    body: dict[str, Any] = {"comment": args.comment}
    if args.duration is not None:
        try:
            parse_duration(args.duration)
        except BadInput as exc:
            raise CommandError(f"--{exc}", EXIT_USAGE) from None
        body["duration"] = args.duration
    creds = credentials(args)
    author = _author(args, creds)
    if author is not None:
        body["by"] = author
    path = f"/api/v1/alerts/{quote(args.alert_id, safe='')}/ack"
    doc = call(daemon_url(args), "POST", path, body, creds)
    return f"alert {doc['alert_id']} acknowledged by {doc['acknowledged']['by']}"


def silence_list(args: argparse.Namespace, now: float | None = None) -> Output:
    """Silences in force (and ended ones with --expired), as a table or the API's JSON."""
    path = "/api/v1/silences" + ("?expired=1" if args.expired else "")
    doc = call(daemon_url(args), "GET", path, creds=credentials(args))
    if args.json:
        return json.dumps(doc, ensure_ascii=False, indent=2)
    now = _now() if now is None else now
    silences = sorted(doc["silences"], key=lambda s: (not s["active"], s["ends_at"]))
    rows = [
        (
            Cell(s["id"]),
            Cell(matchers_text(s["matchers"])),
            _ends(s, now),
            Cell(s["created_by"]),
            Cell(s["comment"]),
        )
        for s in silences
    ]
    which = " (with those that ended)" if args.expired else " in force"
    return Grid(
        _count(len(rows), "silence", which), ("id", "matchers", "ends in", "by", "comment"), rows
    )


def alerts_list(args: argparse.Namespace, now: float | None = None) -> Output:
    """Open alerts, critical first, as a table or the API's JSON; with ``--ended``, the
    alerts that ended, the latest first."""
    from urllib.parse import quote

    path = "/api/v1/alerts"
    if args.ended:
        path += f"?state=ended&since={quote(args.since, safe='')}"
    doc = call(daemon_url(args), "GET", path, creds=credentials(args))
    if args.json:
        return json.dumps(doc, ensure_ascii=False, indent=2)
    now = _now() if now is None else now
    if args.ended:
        return _ended_grid(doc["alerts"], args.since, now)
    alerts = sorted(doc["alerts"], key=lambda a: (a["severity"] != "critical", a["started_at"]))
    rows = [
        (
            Cell(a["severity"], _SEVERITY_STYLE.get(a["severity"], "")),
            Cell(a["kind"]),
            Cell(a["endpoint"]["id"]),
            Cell(a["endpoint"]["district"]),
            Cell(_since(_parse_time(a["started_at"]), now)),
            Cell(str(len(a["affected"])) if a["affected"] else ""),
            Cell(a["suppressed_by"] or "", "dim"),
        )
        for a in alerts
    ]
    columns = ("severity", "kind", "endpoint", "district", "since", "affected", "held back by")
    return Grid(_count(len(rows), "open alert"), columns, rows)


def _ended_grid(alerts: list[dict[str, Any]], since: str, now: float) -> Grid:
    rows = []
    for a in alerts:
        started, ended = _parse_time(a["started_at"]), _parse_time(a["ended_at"])
        rows.append(
            (
                Cell(a["severity"], _SEVERITY_STYLE.get(a["severity"], "")),
                Cell(a["kind"]),
                Cell(a["endpoint"]["id"]),
                Cell(a["endpoint"]["district"]),
                Cell(_since(started, now)),
                Cell(span(ended - started)),
                Cell(str(len(a["affected"])) if a["affected"] else ""),
            )
        )
    columns = ("severity", "kind", "endpoint", "district", "started", "lasted", "affected")
    return Grid(_count(len(rows), "alert", f" ended in the last {since}"), columns, rows)


# --- shaping ------------------------------------------------------------------------------------


def matchers_text(matchers: dict[str, Any]) -> str:
    """``district="Cô Tô" kind=~loss.*``: exact values quoted, regular expressions after =~."""
    pairs = [(k, matchers[k]) for k in MATCHER_FIELDS if matchers.get(k) is not None]
    pairs += sorted((matchers.get("labels") or {}).items())
    return " ".join(
        f"{k}={v}" if v.startswith("~") else f"{k}={json.dumps(v, ensure_ascii=False)}"
        for k, v in pairs
    )


def span(seconds: float) -> str:
    """A length of time in its two largest units: '45s', '5m', '1h 59m', '2d 3h'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "m")]
    while parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n}{unit}" for n, unit in parts[:2] if n)


def _ends(silence: dict[str, Any], now: float) -> Cell:
    # Whether it is in force is the daemon's word; only the spans use this host's clock.
    if silence["starts_at"] is None or silence["ends_at"] is None:
        return Cell("?", "dim")  # a time no calendar holds, stored before the API checked
    starts, ends = _parse_time(silence["starts_at"]), _parse_time(silence["ends_at"])
    if silence["active"]:
        return Cell(span(ends - now))
    if starts > now:
        return Cell(f"{span(ends - now)} (starts in {span(starts - now)})", "yellow")
    return Cell(f"ended {span(now - ends)} ago", "dim")


def _since(started: float, now: float) -> str:
    local = dt.datetime.fromtimestamp(started).astimezone()
    shown = local.strftime("%H:%M" if now - started < 86400 else "%m-%d %H:%M")
    return f"{shown} ({span(now - started)} ago)"


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _count(n: int, noun: str, rest: str = "") -> str:
    return f"{n or 'no'} {noun}{'' if n == 1 else 's'}{rest}"


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()
