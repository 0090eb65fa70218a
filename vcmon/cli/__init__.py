"""Command line: run the daemon, check a config, probe addresses, import inventories, run the
province lab and the demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vcmon import __version__, logs
from vcmon.cli import api_commands as silence_cli
from vcmon.cli.status_view import SORT_KEYS
from vcmon.cli.status_view import View as StatusView
from vcmon.config import Config, ConfigError, Level, load_config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _load(path: str) -> Config:
    try:
        config = load_config(Path(path))
    except ConfigError as exc:
        err.print(str(exc), markup=False)
        raise SystemExit(EXIT_USAGE) from None
    for warning in config.warnings:
        err.print(f"warning: {warning}", markup=False)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from vcmon.alerts.store import StoreError
    from vcmon.cli import lab as lab_cli
    from vcmon.daemon import run_daemon
    from vcmon.measure.probes.icmp import IcmpUnavailable

    config = _load(args.config)
    if args.netns is None and (lab := lab_cli.lab_endpoints(config)):
        err.print(
            f"vcmon: {len(lab)} endpoints ({', '.join(lab[:3])}{', …' if len(lab) > 3 else ''}) "
            "have lab addresses (198.18.0.0/15), which exist only inside the province lab; "
            "probe them there with --netns (e.g. --netns vcmon-mon), never through this host's "
            "routes",
            markup=False,
        )
        return EXIT_USAGE
    logs.setup(args.log_level, args.log_format)
    netns_errors: tuple[type[Exception], ...] = ()
    if args.netns is not None:
        netns_errors = lab_cli.netns_errors()
    try:
        asyncio.run(run_daemon(config, icmp_netns=args.netns))
    except ConfigError as exc:  # the web config (TLS files, users), read when serving starts
        err.print(str(exc), markup=False)
        return EXIT_USAGE
    except (IcmpUnavailable, StoreError) as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return EXIT_FAILURE
    except netns_errors as exc:  # the namespace does not exist
        err.print(f"vcmon: {exc} (is the lab up? `vcmon lab status`)", markup=False)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. the listen port is taken
        if args.netns is not None and "setns" in str(exc):  # without CAP_SYS_ADMIN
            err.print(f"vcmon: cannot probe from network namespace {args.netns}: {exc} "
                      "(needs root)", markup=False)  # fmt: skip
        else:
            err.print(f"vcmon: cannot start: {exc}", markup=False)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from vcmon.http import auth as webauth
    from vcmon.measure.probes.icmp import IcmpUnavailable, detect_mode

    config = _load(args.config)
    try:
        web = webauth.load_for(config)
        if web is not None and web.tls is not None:
            web.tls.context()  # the certificate, key and CA files are usable
    except ConfigError as exc:
        err.print(str(exc), markup=False)
        return EXIT_USAGE
    eps = config.endpoints
    table = Table(title=f"{config.source}: {len(eps)} endpoints", title_justify="left")
    table.add_column("district")
    levels = [lvl.value for lvl in Level]
    for lvl in levels:
        table.add_column(lvl, justify="right")
    table.add_column("total", justify="right")
    by_district: dict[str, Counter[str]] = {}
    for ep in eps:
        by_district.setdefault(ep.district, Counter())[ep.level.value] += 1
    for district, counts in sorted(by_district.items()):
        row = [str(counts[lvl] or "") for lvl in levels]
        table.add_row(district, *row, str(sum(counts.values())))
    out.print(table)
    rate = sum(ep.timing.count / ep.timing.interval for ep in eps)
    out.print(f"echoes per second: {rate:.1f} (cap {config.icmp.max_rate:g})")
    try:
        mode = detect_mode(config.icmp.socket)
        out.print(f"ICMP socket: {mode}")
    except IcmpUnavailable as exc:
        out.print(f"ICMP socket: unavailable — {exc}", markup=False)
    scheme = "https" if web is not None and web.tls is not None else "http"
    out.print(f"listen: {scheme}://{config.listen}/metrics")
    for line in webauth.summary(config, web):
        out.print(line, markup=False, soft_wrap=True)
    out.print("config OK")
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    from vcmon.measure.probe_once import probe_addresses
    from vcmon.measure.probes.base import RoundSettings
    from vcmon.measure.probes.icmp import IcmpUnavailable

    try:
        rows = asyncio.run(
            probe_addresses(
                args.address,
                RoundSettings(count=args.count, spacing=args.interval, timeout=args.timeout),
                args.mode,
            )
        )
    except IcmpUnavailable as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return EXIT_FAILURE
    table = Table(show_edge=False, box=None, pad_edge=False)
    for col in ("address", "sent/recv/loss", "min/avg/med/max ms", "jitter ms", "MOS"):
        table.add_column(col, justify="left" if col == "address" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row.cells())
    out.print(table, soft_wrap=True)
    out.print()
    width = max(len(row.address) for row in rows)
    for row in rows:
        out.print(f"{row.address:<{width}} : {row.echo_line()}", markup=False, soft_wrap=True)
    any_up = any(row.received > 0 for row in rows)
    return EXIT_OK if any_up else EXIT_FAILURE


def cmd_inventory_import(args: argparse.Namespace) -> int:
    from vcmon.config.inventory_import import import_csv

    text, errors = import_csv(Path(args.csv))
    for error in errors:
        err.print(str(error), markup=False)
    if errors:
        err.print(f"{len(errors)} bad row(s); nothing written", markup=False)
        return EXIT_USAGE
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        err.print(f"wrote {args.output}", markup=False)
    else:
        sys.stdout.write(text)
    return EXIT_OK


# --- status of a running daemon ---------------------------------------------------------------


def _opt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


_STATE_STYLE = {
    "up": "green",
    "degraded": "yellow",
    "down": "bold red",
    "unreachable": "magenta",
    "flapping": "bold yellow",
    "maintenance": "blue",
}


def _status_view(view: StatusView) -> Group:
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


def cmd_status(args: argparse.Namespace) -> int:
    from vcmon.cli import status_view
    from vcmon.cli.api_commands import CommandError, call, credentials, daemon_url

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

    def current() -> StatusView:
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
            out.print(_status_view(current()))
            return EXIT_OK
        with Live(_status_view(current()), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(1.0)  # the refresh cadence of a live view
                live.update(_status_view(current()), refresh=True)
    except status_view.StatusUnavailable as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return EXIT_FAILURE


# --- alerts and silences, through the daemon's API --------------------------------------------


def cmd_daemon_api(args: argparse.Namespace) -> int:
    """`vcmon silence …` and `vcmon alerts list`: run ``args.run`` and draw what it returns."""
    try:
        output = args.run(args)
    except silence_cli.CommandError as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return exc.code
    if isinstance(output, silence_cli.Grid):
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


# --- the outbox ---------------------------------------------------------------------------------


def cmd_alerts_test(args: argparse.Namespace) -> int:
    from vcmon.cli.outbox import send_test

    config = _load(args.config)
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


def cmd_outbox(args: argparse.Namespace) -> int:
    import datetime as dt

    from vcmon.alerts.store import StoreError
    from vcmon.cli.outbox import backlog, retry_dead_letters

    config = _load(args.config)
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


def parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="vcmon", description=__doc__)
    p.add_argument("--version", action="version", version=f"vcmon {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", required=True, help="config file (YAML)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])
    run.add_argument(
        "--netns",
        metavar="NAME",
        help="open the ICMP sockets in this network namespace (the lab's vcmon-mon); "
        "HTTP is still served here",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config and summarise it")
    check.add_argument("-c", "--config", required=True, help="config file (YAML)")
    check.set_defaults(func=cmd_check)

    probe = sub.add_parser("probe", help="measure addresses once and print a table")
    probe.add_argument("address", nargs="+", help="IPv4, IPv6 or hostname")
    probe.add_argument("-n", "--count", type=int, default=5, help="echoes per address (5)")
    probe.add_argument(
        "-i", "--interval", type=float, default=0.2, help="seconds between echoes (0.2)"
    )
    probe.add_argument("-t", "--timeout", type=float, default=1.0, help="per-echo timeout (1.0)")
    probe.add_argument(
        "--mode", default="auto", choices=["auto", "raw", "dgram"], help="ICMP socket"
    )
    probe.set_defaults(func=cmd_probe)

    inv = sub.add_parser("inventory", help="inventory tools")
    inv_sub = inv.add_subparsers(dest="inventory_command", required=True)
    imp = inv_sub.add_parser("import", help="turn a spreadsheet export (CSV) into inventory YAML")
    imp.add_argument("csv", help="CSV file with a header row")
    imp.add_argument("-o", "--output", help="write YAML here instead of stdout")
    imp.set_defaults(func=cmd_inventory_import)

    from vcmon.cli import lab as lab_cli  # not at the top: it imports this module's consoles

    lab_cli.add_parsers(sub)

    al = sub.add_parser("alerts", help="alert tools")
    al_sub = al.add_subparsers(dest="alerts_command", required=True)
    al_test = al_sub.add_parser("test", help="send a test alert through each sink; show what "
                                "each receiver acknowledged")  # fmt: skip
    al_test.add_argument("-c", "--config", required=True, help="config file (YAML)")
    al_test.add_argument("--sink", help="only this sink")
    al_test.set_defaults(func=cmd_alerts_test)
    silence_cli.add_parsers(sub, al_sub, cmd_daemon_api)

    st = sub.add_parser("status", help="live view of a running daemon (its status API)")
    silence_cli.add_daemon_options(st)
    st.add_argument("--once", action="store_true", help="print one table and exit (for scripts)")
    st.add_argument("--sort", default="state", choices=SORT_KEYS, help="order within a district")
    st.add_argument("--problems", action="store_true", help="only endpoints that are not up")
    st.set_defaults(func=cmd_status)

    box = sub.add_parser("outbox", help="what each sink still has to deliver; dead letters")
    box.add_argument("-c", "--config", required=True, help="config file (YAML)")
    box_sub = box.add_subparsers(dest="outbox_command")
    retry = box_sub.add_parser("retry", help="send dead letters again, in order")
    retry.add_argument("--sink", help="only this sink's")
    box.set_defaults(func=cmd_outbox, outbox_command="list")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vcmon`` command."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SystemExit as exc:  # a command's early exit with its status (bad config, no daemon)
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
