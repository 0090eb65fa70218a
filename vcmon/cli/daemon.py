"""`vcmon run` and `vcmon check`: run the daemon on a config, or validate and summarise it."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

from rich.table import Table

from vcmon import logs
from vcmon.cli import lab as lab_cli
from vcmon.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, err, load, out
from vcmon.config import Config, ConfigError, Level


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`run` and `check`."""
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


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or Ctrl-C."""
    # The whole daemon is imported only by the command that runs it.
    from vcmon.alerts.store import StoreError
    from vcmon.daemon import run_daemon
    from vcmon.measure.probes.icmp import IcmpUnavailable

    config = load(args.config)
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
    """Validate a config, its web config and TLS files; print what it monitors."""
    from vcmon.http import auth as webauth
    from vcmon.measure.probes.icmp import IcmpUnavailable, detect_mode

    config = load(args.config)
    try:
        web = webauth.load_for(config)
        if web is not None and web.tls is not None:
            web.tls.context()  # the certificate, key and CA files are usable
    except ConfigError as exc:
        err.print(str(exc), markup=False)
        return EXIT_USAGE
    out.print(_district_table(config))
    rate = sum(ep.timing.count / ep.timing.interval for ep in config.endpoints)
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


def _district_table(config: Config) -> Table:
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
    return table
