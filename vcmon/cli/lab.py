"""The lab and demo commands: `vcmon lab up|down|status|scenario` and `vcmon demo`.

The simulator (package vcmon_lab, the ``lab`` extra) is imported only when one of these
commands runs, so building the parser and every other command work without it; when it is
not installed, these commands say how to get it."""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vcmon import logs
from vcmon.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, err, out
from vcmon.config import Config, ConfigError
from vcmon.units import MS

if TYPE_CHECKING:
    from vcmon_lab.control import LabHome, LabStatus
    from vcmon_lab.demo import Snapshot
    from vcmon_lab.profiles import Profile


#: The lab's addresses (benchmarking, RFC 2544; vcmon_lab.profiles.LAB_NET, a test keeps them
#: equal). Known here too: `vcmon run` refuses them outside the lab even when the lab is not
#: installed, as they must never be probed through this host's routes.
LAB_NET = ipaddress.ip_network("198.18.0.0/15")

LAB_MISSING = (
    "the province lab is not installed (Python package vcmon_lab); install vcmon with its "
    "'lab' extra: pip install 'vcmon[lab]', or from a checkout: pip install '.[lab]'"
)


def lab_installed() -> bool:
    """Whether the simulator can be imported (the ``lab`` extra)."""
    try:
        import vcmon_lab  # noqa: F401  (its __init__ is small: no namespaces, no processes)
    except ImportError:
        return False
    return True


def _needs_lab(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command``, or a clear message and exit 1 when the lab is not installed."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        if not lab_installed():
            err.print(f"vcmon: {LAB_MISSING}", markup=False, soft_wrap=True)
            return EXIT_FAILURE
        return command(args)

    return run


def lab_endpoints(config: Config) -> list[str]:
    """Ids of endpoints whose address is in the lab's range (benchmarking, RFC 2544)."""
    found = []
    for ep in config.endpoints:
        try:
            if ipaddress.ip_address(ep.address) in LAB_NET:
                found.append(ep.id)
        except ValueError:
            continue  # a host name
    return found


def netns_errors() -> tuple[type[Exception], ...]:
    """What `vcmon run --netns` raises when the namespace is missing. Entering a namespace is
    the lab's code: without it, say how to get it and exit 1."""
    if not lab_installed():
        err.print(f"vcmon: --netns needs {LAB_MISSING}", markup=False, soft_wrap=True)
        raise SystemExit(EXIT_FAILURE)
    from vcmon_lab.netns import LabError

    return (LabError,)


# --- the province lab -------------------------------------------------------------------------


def _lab_home(args: argparse.Namespace) -> LabHome:
    from vcmon_lab.control import LabHome

    return LabHome.named(args.lab)


def _no_lab() -> bool:
    """Print why the lab cannot run here (not root, no `ip`); True when it cannot."""
    from vcmon_lab.control import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        err.print(f"vcmon: {reason}", markup=False)
    return reason is not None


def _lab_errors() -> tuple[type[Exception], ...]:
    """Failures of the lab an admin can act on: printed in one line, exit 1."""
    from vcmon_lab.netns import LabError
    from vcmon_lab.process import LabProcessError  # the responder's and the services'

    return (LabError, LabProcessError, OSError)


def _lab_inputs(args: argparse.Namespace) -> tuple[Path, int, str]:
    """Inventory, seed and listen options with their defaults (kept out of the parser, so
    that building it does not import the lab)."""
    from vcmon_lab.control import DEFAULT_INVENTORY, DEFAULT_SEED
    from vcmon_lab.province import LAB_LISTEN

    inventory = Path(args.inventory) if args.inventory else DEFAULT_INVENTORY
    seed = DEFAULT_SEED if args.seed is None else args.seed
    return inventory, seed, args.listen or LAB_LISTEN


def _usage_error(exc: Exception) -> int:
    err.print(str(exc), markup=False)
    return EXIT_USAGE


def cmd_lab_up(args: argparse.Namespace) -> int:
    from vcmon_lab.control import lab_up
    from vcmon_lab.province import LabMappingError

    if _no_lab():
        return EXIT_FAILURE
    logs.setup("warning")
    home = _lab_home(args)
    inventory, seed, listen = _lab_inputs(args)
    try:
        up = lab_up(home, inventory, seed=seed, listen=listen)
    except ConfigError as exc:
        return _usage_error(exc)
    except LabMappingError as exc:
        err.print(f"{inventory}: cannot map these endpoints into the lab:", markup=False)
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False)
        return EXIT_USAGE
    except _lab_errors() as exc:
        err.print(f"vcmon: lab up failed: {exc}", markup=False)
        return EXIT_FAILURE
    st = up.state
    flag = f" --lab {args.lab}" if args.lab else ""
    services = f", services pid {st.services_pid}" if st.services_pid else ""

    def say(text: str) -> None:
        out.print(text, markup=False, soft_wrap=True)

    say(
        f"lab up: {len(up.profiles)} endpoints on 198.18.x.x; namespaces {st.monitor} (monitor) "
        f"and {st.province} (province); responder pid {st.responder_pid}{services}"
    )
    say(f"state:    {home.dir}")
    say("run the daemon through the lab (HTTP stays on this host):")
    say(f"  vcmon run -c {st.config} --netns {st.monitor}")
    say(f"  then http://{up.config.listen}/metrics")
    say(f"profiles: vcmon lab status{flag}")
    say(f"scenario: vcmon lab scenario co-to-uplink{flag}")
    say(f"remove:   vcmon lab down{flag}")
    return EXIT_OK


def cmd_lab_down(args: argparse.Namespace) -> int:
    from vcmon_lab.control import lab_down

    if _no_lab():
        return EXIT_FAILURE
    logs.setup("warning")
    home = _lab_home(args)
    try:
        removed = lab_down(home)
    except _lab_errors() as exc:
        err.print(f"vcmon: lab down failed: {exc}", markup=False)
        return EXIT_FAILURE
    if removed:
        things = [r for r in removed if not r.startswith("/")]
        files = len(removed) - len(things)
        summary = ", ".join([*things, f"{files} state files"] if files else things)
        out.print(f"lab down: removed {summary}", markup=False, soft_wrap=True)
    else:
        out.print(f"lab down: nothing to remove ({home.names.monitor} is not up)", markup=False)
    return EXIT_OK


def _profile_cells(live: Profile | None, base: Profile | None) -> list[str]:
    if live is None:
        return ["—"] * 6
    burst = f"{live.burst_p:g}/{live.burst_r:g}" if live.burst_p > 0 else ""
    return [
        f"{live.delay * MS:.1f}",
        f"{live.jitter * MS:.1f}",
        f"{live.loss * 100:.1f}",
        burst,
        "up" if live.up else "[bold red]down[/]",
        "[yellow]scenario[/]" if base is not None and live != base else "",
    ]


def _status_table(status: LabStatus) -> Table:
    table = Table(title="endpoints by district (live profiles)", title_justify="left")
    for col in ("district", "endpoint", "address", "delay ms", "jitter ms", "loss %",
                "burst p/r", "state", ""):  # fmt: skip
        table.add_column(col, justify="right" if col.endswith(("ms", "%")) else "left")
    by_district: dict[str, list[list[str]]] = {}
    for ep in status.endpoints:
        by_district.setdefault(ep.district, []).append(
            [ep.id, ep.address, *_profile_cells(ep.profile, ep.base)]
        )
    for district, rows in by_district.items():
        for i, row in enumerate(rows):
            table.add_row(district if i == 0 else "", *row)
        table.add_section()
    return table


def cmd_lab_status(args: argparse.Namespace) -> int:
    from vcmon_lab.control import lab_status

    if _no_lab():
        return EXIT_FAILURE
    home = _lab_home(args)
    try:
        status = lab_status(home)
    except _lab_errors() as exc:
        err.print(f"vcmon: lab status failed: {exc}", markup=False)
        return EXIT_FAILURE
    st = status.state
    if st is None and not any(status.namespaces.values()):
        out.print(f"no lab is up ({home.names.monitor}); start one with `vcmon lab up`")
        return EXIT_FAILURE
    for ns, present in status.namespaces.items():
        out.print(f"namespace {ns}: " + ("[green]ok[/]" if present else "[bold red]MISSING[/]"))
    for problem in status.problems:
        out.print(f"[bold red]problem:[/] {problem}", soft_wrap=True)
    if st is None:
        out.print("[bold red]no state file[/]: left over from a crash? `vcmon lab down` cleans up")
        return EXIT_FAILURE

    def running(ok: bool | None) -> str:
        return "running" if ok else "[bold red]NOT RUNNING[/]"

    out.print(f"responder: pid {st.responder_pid} {running(status.responder_running)}")
    if status.services_running is not None:
        out.print(f"services:  pid {st.services_pid} {running(status.services_running)}")
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.created))
    out.print(f"inventory: {st.inventory} (seed {st.seed}), up since {created}", markup=False)
    if st.owner_pid:
        out.print(f"owned by:  pid {st.owner_pid} (vcmon demo; goes down with it)")
    out.print(f"state:     {home.dir}", markup=False)
    out.print(f"daemon:    vcmon run -c {st.config} --netns {st.monitor}", markup=False)
    sc = status.scenario
    if sc is None:
        out.print("scenario:  none")
    else:
        playing = "playing" if sc.running else "[bold red]runner gone[/]"
        out.print(f"scenario:  {sc.name} ({sc.file}), pid {sc.pid} {playing}", soft_wrap=True)
        for line in sc.active or ("(nothing impaired right now)",):
            out.print(f"  • {line}", markup=False, soft_wrap=True)
    # Piped into less or a file, keep every column readable rather than squeezed to 80.
    out.print(_status_table(status), width=None if out.is_terminal else 160)
    return EXIT_OK if status.healthy else EXIT_FAILURE


def cmd_lab_scenario(args: argparse.Namespace) -> int:
    from vcmon_lab import scenario_file
    from vcmon_lab.control import attach, play_scenario, prepare_scenario
    from vcmon_lab.scenario import Progress

    if _no_lab():
        return EXIT_FAILURE
    logs.setup("warning")
    home = _lab_home(args)
    try:
        lab = attach(home)
        scenario = prepare_scenario(lab, scenario_file(args.file))
    except ConfigError as exc:
        return _usage_error(exc)
    except _lab_errors() as exc:
        err.print(f"vcmon: {exc}", markup=False)
        return EXIT_FAILURE
    sc = scenario.scenario
    length = f"repeating every {sc.period:g} s" if sc.loop else f"{sc.period:g} s"
    out.print(f"scenario {sc.name!r}: {len(sc.steps)} steps, {length}; Ctrl-C stops it and "
              "restores the profiles", markup=False, soft_wrap=True)  # fmt: skip

    def changed(p: Progress) -> None:
        what = "; ".join(p.active) or "every endpoint back to its profile"
        out.print(f"[+{p.t:6.1f} s] {what}", markup=False, soft_wrap=True)

    async def main() -> bool:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await play_scenario(lab, scenario, on_change=changed)
        except asyncio.CancelledError:
            return False
        return True

    try:
        finished = asyncio.run(main())
    except _lab_errors() as exc:
        err.print(f"vcmon: scenario stopped: {exc}", markup=False)
        return EXIT_FAILURE
    out.print("scenario finished" if finished else "scenario stopped; profiles restored")
    return EXIT_OK if finished else 130


# --- the demo ---------------------------------------------------------------------------------


class _ConsoleLogHandler(logging.Handler):
    """Logs through the rich console, so they scroll above a live table instead of into it."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logs.LogfmtFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), markup=False, soft_wrap=True, style="dim")


def _opt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _demo_view(snap: Snapshot, urls: tuple[str, str]) -> Group:
    total, up, down = snap.totals
    title = f"{total} rooms: [green]{up} up[/], " + (
        f"[bold red]{down} not answering[/]" if down else "0 not answering"
    )
    waiting = sum(r.waiting for r in snap.rows)
    if waiting:
        title += f", {waiting} not measured yet"
    table = Table(title=f"{title}   ·   {int(snap.elapsed)} s", title_justify="left")
    for col in ("district", "rooms", "up", "down", "RTT med ms", "RTT max ms", "jitter ms",
                "loss %"):  # fmt: skip
        table.add_column(col, justify="left" if col == "district" else "right", no_wrap=True)
    table.add_column("not answering", style="red")
    for r in snap.rows:
        more = f" +{len(r.down_ids) - 4}" if len(r.down_ids) > 4 else ""
        table.add_row(
            r.district,
            str(r.total),
            str(r.up),
            f"[bold red]{r.down}[/]" if r.down else "",
            _opt(r.rtt_ms),
            _opt(r.rtt_max_ms),
            _opt(r.jitter_ms),
            _opt(r.loss_pct),
            ", ".join(r.down_ids[:4]) + more,
        )
    lines = [f"metrics {urls[0]}   status {urls[1]}   Ctrl-C stops"]
    if snap.scenario is not None:
        lines.append(f"scenario {snap.scenario}: " + ("; ".join(snap.active) or "quiet for now"))
    firing = Text(f"firing alerts: {len(snap.alerts)}" if snap.alerts else "no alert firing")
    for severity, what in snap.alerts[:8]:
        firing.append(f"\n  {severity:<8} {what}", style="bold red" if severity == "critical"
                      else "yellow")  # fmt: skip
    return Group(Text("\n".join(lines)), firing, table)


def _demo_line(snap: Snapshot) -> str:
    total, up, down = snap.totals
    line = f"[+{int(snap.elapsed):4d} s] {total} rooms: {up} up, {down} not answering"
    down_ids = [eid for r in snap.rows for eid in r.down_ids]
    if down_ids:
        line += " (" + ", ".join(down_ids[:8]) + (" …" if len(down_ids) > 8 else "") + ")"
    waiting = sum(r.waiting for r in snap.rows)
    if waiting:
        line += f"; {waiting} not measured yet"
    if snap.scenario is not None:
        line += " | scenario: " + ("; ".join(snap.active) or "quiet")
    return line


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore_stop_signals() -> None:
    """From the first stop on, ignore further stop signals. Taken from asyncio's hands first:
    it restores their default action when its loop closes, which would kill the teardown."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def cmd_demo(args: argparse.Namespace) -> int:
    from vcmon.measure.probes.icmp import IcmpUnavailable
    from vcmon_lab import demo, scenario_file
    from vcmon_lab.control import lab_down, unavailable_reason
    from vcmon_lab.province import LabMappingError

    live_view = out.is_terminal
    root = logging.getLogger()
    root.handlers[:] = [_ConsoleLogHandler(out if live_view else err)]
    root.setLevel(logging.INFO)
    home = _lab_home(args)
    inventory, seed, listen = _lab_inputs(args)
    scenario: Path | None = scenario_file(args.scenario) if args.scenario else demo.DEFAULT_SCENARIO
    if args.scenario == "none":
        scenario = None
    try:
        reason = unavailable_reason()
        if reason is None:
            out.print("bringing up the province lab …")
            plan = demo.prepare_lab(
                home, inventory=inventory, scenario=scenario, seed=seed, listen=listen
            )
        else:
            err.print(f"note: {reason}, so {demo.LOOPBACK_NOTE}", markup=False)
            plan = demo.prepare_loopback(listen=args.listen)
    except (ConfigError, LabMappingError) as exc:
        return _usage_error(exc)
    except _lab_errors() as exc:
        err.print(f"vcmon: cannot start the demo: {exc}", markup=False)
        return EXIT_FAILURE
    urls = plan.urls()
    try:
        if plan.lab is not None:
            st = plan.lab.state
            out.print(
                f"lab: {len(plan.config.endpoints)} rooms on 198.18.x.x in namespace "
                f"{st.province}, probed from {st.monitor}; `sudo vcmon lab status"
                f"{f' --lab {args.lab}' if args.lab else ''}` in another terminal shows every "
                "profile",
                markup=False,
            )
        out.print(f"metrics: {urls[0]}", markup=False)
        out.print(f"status:  {urls[1]}", markup=False)
        if live_view:
            with Live(console=out, refresh_per_second=4) as live:
                asyncio.run(
                    demo.run(
                        plan,
                        lambda snap: live.update(_demo_view(snap, urls)),
                        on_stop=_ignore_stop_signals,
                    )
                )
        else:
            asyncio.run(
                demo.run(
                    plan,
                    lambda snap: out.print(_demo_line(snap), markup=False, soft_wrap=True),
                    tick=args.summary_every,
                    on_stop=_ignore_stop_signals,
                )
            )
    except Exception as exc:  # an ExceptionGroup from the TaskGroup, usually
        from vcmon.alerts.store import StoreError

        expected: tuple[type[Exception], ...] = (IcmpUnavailable, StoreError, *_lab_errors())
        problems = list(_leaves(exc))
        if not all(isinstance(p, expected) for p in problems):
            raise
        for problem in problems:
            err.print(f"vcmon: demo stopped: {problem}", markup=False)
        return EXIT_FAILURE
    finally:
        # A second Ctrl-C, or `timeout` signalling the process and then its group, must not
        # cut the teardown short and leave the namespaces behind.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if plan.lab is not None:
            lab_down(home)
            out.print("lab down")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`vcmon lab …` and `vcmon demo`, with their options."""
    inventory_help = "config or inventory file (default: the lab's 231-room province-231.yaml)"
    lab_opts = argparse.ArgumentParser(add_help=False)
    lab_opts.add_argument(
        "--lab",
        default="",
        metavar="NAME",
        help="another lab than the default: namespaces vcmon-NAME-mon/-prov, state in NAME/",
    )
    lab = sub.add_parser("lab", help="the province lab: simulated rooms in network namespaces")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser(
        "up", parents=[lab_opts], help="build the lab for an inventory (root); replaces one up"
    )
    up.add_argument("--inventory", metavar="FILE",
                    help=inventory_help)  # fmt: skip
    up.add_argument("--seed", type=int, help="seed of the profiles (1)")
    up.add_argument("--listen", metavar="HOST:PORT", help="for the lab config (127.0.0.1:9231)")
    up.set_defaults(func=_needs_lab(cmd_lab_up))
    down = lab_sub.add_parser("down", parents=[lab_opts], help="remove the lab (idempotent)")
    down.set_defaults(func=_needs_lab(cmd_lab_down))
    status = lab_sub.add_parser(
        "status", parents=[lab_opts], help="namespaces, processes, profiles, scenario"
    )
    status.set_defaults(func=_needs_lab(cmd_lab_status))
    scen = lab_sub.add_parser(
        "scenario", parents=[lab_opts], help="play a scenario file on the running lab"
    )
    scen.add_argument(
        "file", help="scenario YAML, or a shipped one by name: co-to-uplink, flap, loss-burst, …"
    )
    scen.set_defaults(func=_needs_lab(cmd_lab_scenario))

    dem = sub.add_parser(
        "demo",
        parents=[lab_opts],
        help="lab + looping scenario + daemon with a live table (root; loopback without)",
    )
    dem.add_argument("--inventory", metavar="FILE",
                     help=inventory_help)  # fmt: skip
    dem.add_argument(
        "--scenario",
        metavar="FILE",
        help="scenario file or shipped name to play (default: demo; 'none')",
    )
    dem.add_argument("--seed", type=int, help="seed of the profiles (1)")
    dem.add_argument("--listen", metavar="HOST:PORT", help="HTTP address (127.0.0.1:9231)")
    dem.add_argument(
        "--summary-every",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between summary lines when stdout is no terminal (5)",
    )
    dem.set_defaults(func=_needs_lab(cmd_demo))
