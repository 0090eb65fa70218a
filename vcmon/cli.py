"""Command line: run the daemon, check a config, probe addresses, import inventories."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vcmon import __version__, logs
from vcmon.config import Config, ConfigError, Level, load_config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _load(path: str) -> Config:
    try:
        return load_config(Path(path))
    except ConfigError as exc:
        err.print(str(exc), markup=False)
        raise SystemExit(EXIT_USAGE) from None


def cmd_run(args: argparse.Namespace) -> int:
    from vcmon.daemon import run_daemon
    from vcmon.probes.icmp import IcmpUnavailable

    config = _load(args.config)
    logs.setup(args.log_level, args.log_format)
    try:
        asyncio.run(run_daemon(config))
    except IcmpUnavailable as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. the listen port is taken
        err.print(f"vcmon: cannot start: {exc}", markup=False)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from vcmon.probes.icmp import IcmpUnavailable, detect_mode

    config = _load(args.config)
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
    out.print(f"listen: http://{config.listen}/metrics")
    out.print("config OK")
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    from vcmon.probe_once import probe_addresses
    from vcmon.probes.base import RoundSettings
    from vcmon.probes.icmp import IcmpUnavailable

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
    from vcmon.inventory import import_csv

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


def parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="vcmon", description=__doc__)
    p.add_argument("--version", action="version", version=f"vcmon {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", required=True, help="config file (YAML)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vcmon`` command."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
