"""`vcmon inventory import`: a spreadsheet export (CSV) turned into inventory YAML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vcmon.cli.output import EXIT_OK, EXIT_USAGE, err
from vcmon.config.inventory_import import import_csv


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`inventory import CSV`."""
    inv = sub.add_parser("inventory", help="inventory tools")
    inv_sub = inv.add_subparsers(dest="inventory_command", required=True)
    imp = inv_sub.add_parser("import", help="turn a spreadsheet export (CSV) into inventory YAML")
    imp.add_argument("csv", help="CSV file with a header row")
    imp.add_argument("-o", "--output", help="write YAML here instead of stdout")
    imp.set_defaults(func=cmd_inventory_import)


def cmd_inventory_import(args: argparse.Namespace) -> int:
    """Every bad row reported, and nothing written, or the YAML to a file or stdout."""
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
