"""Command line: run the daemon, check a config, probe addresses, import inventories, run the
province lab and the demo, and talk to a running daemon (status, alerts, silences, outbox).

One module per command group, each adding its subcommands with ``add_parsers(sub)``; this
module only assembles them. A command module imports at the top what every command pays for
anyway (the config models, rich); what one command alone needs (the daemon, the ICMP engine,
the lab, httpx) it imports inside that command, so that `vcmon status` does not load the
daemon."""

from __future__ import annotations

import argparse

from vcmon import __version__
from vcmon.cli import alerts, daemon, inventory, lab, outbox, output, probe, status

DESCRIPTION = (
    "Command line: run the daemon, check a config, probe addresses, import inventories, run "
    "the province lab and the demo, and talk to a running daemon."
)
# In the order `vcmon --help` lists them.
GROUPS = (daemon, probe, inventory, lab, alerts, status, outbox)


def parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="vcmon", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"vcmon {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vcmon`` command."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SystemExit as exc:  # a command's early exit with its status (bad config, no daemon)
        return exc.code if isinstance(exc.code, int) else output.EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
