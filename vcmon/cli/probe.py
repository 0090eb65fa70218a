"""`vcmon probe`: measure addresses once and print a table, like fping."""

from __future__ import annotations

import argparse
import asyncio

from rich.table import Table

from vcmon.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, err, out


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`probe ADDRESS…`."""
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
    probe.add_argument("--probe", default="icmp", help="which registered probe to run (icmp)")
    probe.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    """One round to each address; exit 0 when any answered."""
    from vcmon.measure.probe_once import probe_addresses
    from vcmon.measure.probes.base import RoundSettings
    from vcmon.measure.probes.icmp import IcmpUnavailable
    from vcmon.measure.probes.registry import probe_names

    if args.probe not in probe_names():
        known = ", ".join(sorted(probe_names()))
        err.print(f"vcmon: --probe: unknown probe {args.probe!r} (expected one of: {known})",
                  markup=False)  # fmt: skip
        return EXIT_USAGE
    try:
        rows = asyncio.run(
            probe_addresses(
                args.address,
                RoundSettings(count=args.count, spacing=args.interval, timeout=args.timeout),
                args.mode,
                args.probe,
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
