"""`vcmon status`: a live view of a running daemon, drawn from its status and alerts API (the
shaping is status_view's)."""

from __future__ import annotations

import argparse
import time
from typing import Any, Final

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vcmon.cli import status_view
from vcmon.cli.client import CommandError, add_daemon_options, call, credentials, daemon_url
from vcmon.cli.output import EXIT_FAILURE, EXIT_OK, err, out
from vcmon.cli.status_view import SORT_KEYS, View

_STATE_STYLE: Final = {
    "up": "green",
    "degraded": "yellow",
    "down": "bold red",
    "unreachable": "magenta",
    "flapping": "bold yellow",
    "maintenance": "blue",
}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`status`."""
    st = sub.add_parser("status", help="live view of a running daemon (its status API)")
    add_daemon_options(st)
    st.add_argument("--once", action="store_true", help="print one table and exit (for scripts)")
    st.add_argument("--sort", default="state", choices=SORT_KEYS, help="order within a district")
    st.add_argument("--problems", action="store_true", help="only endpoints that are not up")
    st.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Redraw every second until Ctrl-C; --once prints one view."""

    def fetch() -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            status = call(url, "GET", "/api/v1/status", creds=creds)
        except CommandError as exc:
            raise status_view.StatusUnavailable(str(exc)) from None
        try:
            alerts = call(url, "GET", "/api/v1/alerts", creds=creds)
        except CommandError:
            alerts = {"alerts": []}  # a daemon without an alert engine
        return status, alerts

    def current() -> View:
        status, alerts = fetch()
        view = status_view.build(status, alerts, args.sort)
        return status_view.only_trouble(view) if args.problems else view

    try:
        url, creds = daemon_url(args), credentials(args)
    except CommandError as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return exc.code
    try:
        if args.once:
            out.print(draw(current()))
            return EXIT_OK
        with Live(draw(current()), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(1.0)  # the refresh cadence of a live view
                live.update(draw(current()), refresh=True)
    except status_view.StatusUnavailable as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return EXIT_FAILURE


def _opt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def draw(view: View) -> Group:
    """The counts by state, the firing alerts and the endpoints by district."""
    counts = view.counts()
    head = Text(f"vcmon {view.instance}   ")
    for state, n in sorted(counts.items()):
        head.append(f"{state} {n}  ", style=_STATE_STYLE.get(state, ""))
    parts: list[Any] = [head]
    if view.alerts:
        alerts = Table(title=f"{len(view.alerts)} alerts firing", title_justify="left")
        for col in ("severity", "kind", "endpoint", "affected", "summary", "held back by"):
            alerts.add_column(col)
        for a in view.alerts:
            alerts.add_row(
                Text(a.severity, style="bold red" if a.severity == "critical" else "yellow"),
                a.kind, a.endpoint, str(a.affected or ""), a.summary, a.suppressed_by or "",
            )  # fmt: skip
        parts.append(alerts)
    table = Table()
    for col in ("district", "endpoint", "name", "state", "RTT ms", "jitter ms", "loss %", "MOS"):
        table.add_column(col, justify="right" if col.endswith(("ms", "%", "MOS")) else "left")
    for district, rows in view.groups:
        for i, r in enumerate(rows):
            table.add_row(
                district if i == 0 else "",
                r.id,
                r.name,
                Text(r.state or "—", style=_STATE_STYLE.get(r.state or "", "")),
                _opt(r.rtt_ms), _opt(r.jitter_ms), _opt(r.loss_pct), _opt(r.mos),
            )  # fmt: skip
        table.add_section()
    parts.append(table)
    return Group(*parts)
