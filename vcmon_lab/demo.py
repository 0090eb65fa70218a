"""The demo: the daemon watching the province lab while a scenario breaks things, in one process.

As root, :func:`prepare_lab` brings up the lab for the 231-room inventory (tied to this
process, so it cannot outlive it) and :func:`run` plays the looping demo scenario beside a
daemon that probes through the lab's monitor namespace and serves HTTP on this host's loopback.
Without root, :func:`prepare_loopback` runs the daemon on the loopback demo config instead.
Every tick, ``on_tick`` gets a :class:`Snapshot` — endpoints summarised by district — for the
CLI to draw; nothing here prints.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vcmon.alerts.health import State
from vcmon.config import Config, load_config
from vcmon.daemon import Daemon
from vcmon.http.api import split_listen
from vcmon.logs import event
from vcmon.measure.results import Results
from vcmon_lab import data_file
from vcmon_lab.control import (
    DEFAULT_INVENTORY,
    Attached,
    LabHome,
    LabState,
    attach_state,
    lab_down,
    lab_up,
    play_scenario,
    responder_alive,
)
from vcmon_lab.netns import LabError
from vcmon_lab.province import LAB_LISTEN
from vcmon_lab.scenario import BoundScenario, Progress, bind, load_scenario

log = logging.getLogger(__name__)

DEFAULT_SCENARIO = data_file("scenarios", "demo.yaml")
LOOPBACK_CONFIG = data_file("demo.yaml")
#: Said when the demo runs without the lab, so nobody mistakes loopback for a network.
LOOPBACK_NOTE = (
    "no province lab: the 231 rooms are loopback addresses answered by this machine's kernel. "
    "Delay, jitter, loss, outages and the demo scenario are NOT simulated (every room is up "
    "with RTTs of a few µs). Run `sudo make demo` for the lab."
)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the demo will run: a config, and the lab and scenario when there is one."""

    config: Config
    lab: Attached | None = None
    scenario: BoundScenario | None = None

    @property
    def netns(self) -> str | None:
        return None if self.lab is None else self.lab.home.names.monitor

    def urls(self) -> tuple[str, str]:
        """The metrics and status URLs the daemon serves."""
        host, port = split_listen(self.config.listen)
        base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return f"{base}/metrics", f"{base}/api/v1/status"


def prepare_lab(
    home: LabHome,
    *,
    inventory: Path = DEFAULT_INVENTORY,
    scenario: Path | None = DEFAULT_SCENARIO,
    seed: int = 1,
    listen: str = LAB_LISTEN,
) -> Plan:
    """Bring up the lab owned by this process and bind the scenario; the caller tears down.

    ConfigError for a bad inventory or scenario (the scenario is checked before the lab is
    built), LabError when the lab cannot be built or one is already up.
    """
    loaded = load_scenario(scenario) if scenario is not None else None
    if loaded is not None:
        # Checked against the inventory before anything is built, so a typo costs nothing.
        source = load_config(inventory)
        bind(loaded, {ep.id: ep.parent for ep in source.endpoints})
    old = LabState.read(home)
    if old is not None and responder_alive(home, old):
        raise LabError(
            f"a lab is already up ({home.dir}); the demo brings up its own. Take it down with "
            f"`vcmon lab down`, or watch it with: vcmon run -c {old.config} --netns {old.monitor}"
        )
    up = lab_up(home, inventory, seed=seed, owner_pid=os.getpid(), listen=listen)
    try:
        lab = attach_state(home, up.state, lab=up.lab)
        bound = bind(loaded, lab.parents()) if loaded is not None else None
    except BaseException:
        lab_down(home)
        raise
    return Plan(up.config, lab, bound)


def prepare_loopback(config: Path = LOOPBACK_CONFIG, *, listen: str | None = None) -> Plan:
    """The fallback without root: the loopback demo config, no lab, no scenario."""
    loaded = load_config(config)
    return Plan(loaded if listen is None else loaded.model_copy(update={"listen": listen}))


# --- what the terminal shows ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DistrictRow:
    """One district's endpoints, summarised from their last rounds."""

    district: str
    total: int
    up: int
    down: int
    waiting: int  # no round finished yet
    rtt_ms: float | None  # median of the endpoints' mean RTTs
    rtt_max_ms: float | None  # worst mean RTT
    jitter_ms: float | None  # median jitter
    loss_pct: float | None  # mean loss of the last rounds of the rooms that answered
    down_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one refresh of the demo view needs."""

    rows: tuple[DistrictRow, ...]
    elapsed: float
    scenario: str | None
    active: tuple[str, ...] = field(default=())
    alerts: tuple[tuple[str, str], ...] = field(default=())  # (severity, summary) now firing

    @property
    def totals(self) -> tuple[int, int, int]:
        """(endpoints, up, down) over all districts."""
        return (
            sum(r.total for r in self.rows),
            sum(r.up for r in self.rows),
            sum(r.down for r in self.rows),
        )


def district_rows(results: Results) -> list[DistrictRow]:
    """Per-district summary of the latest rounds, districts in inventory order."""
    groups: dict[str, list[tuple[str, State | None, float | None, float | None, float]]] = {}
    for rec in results:
        obs = rec.last
        groups.setdefault(rec.endpoint.district, []).append(
            (
                rec.endpoint.id,
                # Answering or not in the last round: the alert engine's state lags by design.
                None if obs is None else (State.UP if obs.up else State.DOWN),
                None if obs is None else obs.rtt_avg,
                None if obs is None else obs.jitter,
                float("nan") if obs is None else obs.loss_ratio,
            )
        )
    rows = []
    for district, items in groups.items():
        rtts = [r for _, _, r, _, _ in items if r is not None]
        jitters = [j for _, _, _, j, _ in items if j is not None]
        # Rooms not answering at all are listed apart; loss here is the answering rooms'.
        losses = [x for _, st, _, _, x in items if st is State.UP]
        down = tuple(eid for eid, st, _, _, _ in items if st is not None and st is not State.UP)
        rows.append(
            DistrictRow(
                district=district,
                total=len(items),
                up=sum(1 for _, st, _, _, _ in items if st is State.UP),
                down=len(down),
                waiting=sum(1 for _, st, _, _, _ in items if st is None),
                rtt_ms=statistics.median(rtts) * 1e3 if rtts else None,
                rtt_max_ms=max(rtts) * 1e3 if rtts else None,
                jitter_ms=statistics.median(jitters) * 1e3 if jitters else None,
                loss_pct=statistics.fmean(losses) * 100 if losses else None,
                down_ids=down,
            )
        )
    return rows


# --- running ----------------------------------------------------------------------------------


async def run(
    plan: Plan,
    on_tick: Callable[[Snapshot], None],
    *,
    tick: float = 1.0,
    on_scenario: Callable[[Progress], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Run daemon, scenario and view in one TaskGroup until the daemon stops (SIGINT/SIGTERM).

    The scenario restores the lab's base profiles when it is cancelled; tearing the lab down
    is the caller's (it also has to happen when this never got to run).
    """
    daemon = Daemon(plan.config, icmp_netns=plan.netns)
    daemon.on_stop = on_stop
    started = time.monotonic()
    progress: list[Progress] = []

    def scenario_changed(p: Progress) -> None:
        progress[:] = [p]
        if on_scenario is not None:
            on_scenario(p)

    async def view() -> None:
        await daemon.started.wait()
        while True:
            active = progress[0].active if progress else ()
            name = plan.scenario.scenario.name if plan.scenario is not None else None
            firing = tuple(
                (a.severity.value, f"{a.kind.value} {a.target.name}")
                for a in (daemon.alerts.alerts() if daemon.alerts is not None else [])
                if a.notified
            )
            on_tick(
                Snapshot(
                    tuple(district_rows(daemon.results)),
                    time.monotonic() - started,
                    name,
                    active,
                    firing,
                )
            )
            await asyncio.sleep(tick)

    async with asyncio.TaskGroup() as tg:
        main = tg.create_task(daemon.run(), name="daemon")
        helpers = [tg.create_task(view(), name="demo-view")]
        if plan.lab is not None and plan.scenario is not None:
            lab, scenario = plan.lab, plan.scenario

            async def play() -> None:
                await daemon.started.wait()
                await play_scenario(lab, scenario, on_change=scenario_changed)

            helpers.append(tg.create_task(play(), name="scenario"))
        await main  # returns when a signal stops the daemon; raises if it could not start
        for task in helpers:
            task.cancel()
    event(log, logging.INFO, "demo_finished", seconds=round(time.monotonic() - started, 1))
