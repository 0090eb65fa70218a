"""The province lab as a long-lived thing: bring it up from an inventory, inspect it, play
scenarios on it, take it down — across separate commands, through a state directory.

State lives in ``/run/vcmon-lab`` (``$VCMON_LAB_DIR`` overrides it; a lab named ``X`` uses the
subdirectory ``X`` and namespaces ``vcmon-X-mon`` / ``vcmon-X-prov``). ``/run`` is a tmpfs,
cleared at boot like the namespaces themselves, so state never outlives the lab by a reboot:

- ``state.json``          names, responder pid, inventory, seed, who owns the lab
- ``vcmon-lab.yaml``      a ready-to-run daemon config: the inventory on lab addresses
- ``base-profiles.json``  the generated profiles (what scenarios restore)
- ``profiles.json``       the live profiles the responder reads on SIGHUP
- ``truth.jsonl``         the responder's ground truth (rotated to ``truth.jsonl.1`` past
                          32 MiB, so a lab left running holds at most ~64 MiB of /run);
                          ``truth.log`` its log
- ``services.jsonl``      the TCP/SIP/HTTP/UDP services' truth; ``services.log`` their log
- ``scenario.json``       the scenario being played, while one is

Nothing here prints: the CLI renders what these functions return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vcmon.config import Config, load_config
from vcmon.logs import event
from vcmon_lab import data_file, netns
from vcmon_lab.netns import Lab, LabError, LabNames
from vcmon_lab.process import pid_alive
from vcmon_lab.profiles import Profile, dump_profiles, load_profiles
from vcmon_lab.province import (
    LAB_LISTEN,
    by_address,
    generate_profiles,
    lab_config,
    map_addresses,
)
from vcmon_lab.scenario import BoundScenario, Progress, ScenarioRunner, bind, load_scenario

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/run/vcmon-lab")
STATE_DIR_ENV = "VCMON_LAB_DIR"
DEFAULT_INVENTORY = data_file("province-231.yaml")
DEFAULT_SEED = 1

STATE_FILE = "state.json"
CONFIG_FILE = "vcmon-lab.yaml"
BASE_FILE = "base-profiles.json"
PROFILES_FILE = "profiles.json"
TRUTH_FILE = "truth.jsonl"
TRUTH_MAX_BYTES = 32 << 20  # 231 rooms × 5 echoes / 10 s write about 70 MiB an hour
SCENARIO_FILE = "scenario.json"
# Everything a lab writes; down removes exactly these, never anything else in the directory.
_OWN_FILES = (STATE_FILE, CONFIG_FILE, BASE_FILE, PROFILES_FILE, PROFILES_FILE + ".tmp",
              TRUTH_FILE, TRUTH_FILE + ".1", "truth.log", "services.jsonl", "services.log",
              SCENARIO_FILE, SCENARIO_FILE + ".tmp",
              STATE_FILE + ".tmp")  # fmt: skip


def unavailable_reason() -> str | None:
    """Why this process cannot run a lab, or None when it can."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, raw sockets); run it with sudo"
    if shutil.which("ip") is None:
        return "the lab needs the `ip` command: apt-get install iproute2 (or `make debs`)"
    return None


@dataclass(frozen=True, slots=True)
class LabHome:
    """One named lab: its namespaces and its state directory."""

    name: str
    dir: Path
    names: LabNames

    @classmethod
    def named(cls, name: str = "", env: Mapping[str, str] | None = None) -> LabHome:
        """The default lab (``name`` empty) or a named one; LabError for an unusable name."""
        env = os.environ if env is None else env
        root = Path(env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
        try:
            names = LabNames(f"vcmon-{name}-mon", f"vcmon-{name}-prov") if name else LabNames()
        except ValueError as exc:
            raise LabError(f"bad lab name {name!r}: {exc}") from None
        if name and ("/" in name or name.startswith(".")):
            raise LabError(f"bad lab name {name!r}: letters, digits, '-', '_' only")
        return cls(name, root / name if name else root, names)

    def path(self, file: str) -> Path:
        return self.dir / file

    @property
    def config_path(self) -> Path:
        return self.path(CONFIG_FILE)


@dataclass(frozen=True, slots=True)
class LabState:
    """What ``state.json`` records about a lab that is up."""

    monitor: str
    province: str
    responder_pid: int
    inventory: str
    seed: int
    config: str
    created: float
    owner_pid: int | None = None  # a process that takes the lab down when it ends (the demo)
    services_pid: int | None = None  # vcmon_lab.services, when the lab runs them

    @classmethod
    def read(cls, home: LabHome) -> LabState | None:
        """The recorded state, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(home.path(STATE_FILE).read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def write(self, home: LabHome) -> None:
        _write_atomic(home.path(STATE_FILE), json.dumps(asdict(self), indent=1))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _events_only(lab: Lab) -> None:
    """Keep only the events of the lab's truth files: controllers wait for those alone."""
    for process in (lab.responder, lab.services):
        if process is not None:
            process.truth.keep_records = False


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _ours(home: LabHome, pid: int | None) -> bool:
    # The profiles path on its command line tells our process from a reused pid.
    return pid is not None and pid_alive(pid) and str(home.path(PROFILES_FILE)) in _cmdline(pid)


def responder_alive(home: LabHome, state: LabState) -> bool:
    """Whether the recorded responder still runs (and is ours, not a reused pid)."""
    return _ours(home, state.responder_pid)


def services_alive(home: LabHome, state: LabState) -> bool:
    """Whether the recorded services process still runs."""
    return _ours(home, state.services_pid)


def _lab_processes(home: LabHome, state: LabState | None) -> list[tuple[int, str]]:
    if state is None:
        return []
    found = [(state.responder_pid, "responder")] if responder_alive(home, state) else []
    if state.services_pid is not None and services_alive(home, state):
        found.append((state.services_pid, "services"))
    return found


# --- up ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpResult:
    """A lab just brought up."""

    home: LabHome
    state: LabState
    config: Config  # the lab's own config (lab addresses)
    profiles: dict[str, Profile]  # endpoint id → base profile
    lab: Lab  # controls the responder this process started


def _responder_cpus() -> set[int] | None:
    # The responder spins before due replies at real-time priority; on its own CPU it never
    # delays the daemon's sends (see tests/conftest.py for the measured effect).
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[-1]} if len(cpus) > 1 else None


def lab_up(
    home: LabHome,
    inventory: Path = DEFAULT_INVENTORY,
    *,
    seed: int = DEFAULT_SEED,
    owner_pid: int | None = None,
    listen: str = LAB_LISTEN,
) -> UpResult:
    """Build the lab for ``inventory`` and start its responder; replaces a lab already up.

    Raises ConfigError / LabMappingError for an unusable inventory (before touching anything)
    and LabError when the lab cannot be built or is in use by a running demo. With
    ``owner_pid`` (the demo) the responder dies with that process; without, it is detached
    and outlives the command.
    """
    source = load_config(inventory)
    addresses = map_addresses(source.endpoints)
    profiles = generate_profiles(source.endpoints, seed)
    old = LabState.read(home)
    if old is not None and old.owner_pid not in (None, os.getpid()) and pid_alive(old.owner_pid):
        raise LabError(
            f"the lab is in use by process {old.owner_pid} (vcmon demo); stop that first"
        )
    lab_down(home)
    home.dir.mkdir(parents=True, exist_ok=True)
    config_text = lab_config(source, addresses, listen=listen)
    home.config_path.write_text(config_text, encoding="utf-8")
    config = load_config(home.config_path)
    _write_atomic(home.path(BASE_FILE), dump_profiles(by_address(profiles, addresses)))
    lab = Lab(
        home.names,
        home.dir,
        seed=seed,
        responder_cpus=_responder_cpus(),
        die_with_parent=owner_pid is not None,
    )
    lab.responder.truth_max_bytes = TRUTH_MAX_BYTES
    # This process only waits for events; a demo running for days must not hoard records.
    _events_only(lab)
    try:
        lab.start(by_address(profiles, addresses))
    except BaseException:
        lab_down(home)
        raise
    pid = lab.responder.pid
    assert pid is not None
    services_pid = lab.services.pid if lab.services is not None else None
    state = LabState(
        monitor=home.names.monitor,
        province=home.names.province,
        responder_pid=pid,
        inventory=str(inventory.absolute()),
        seed=seed,
        config=str(home.config_path),
        created=time.time(),
        owner_pid=owner_pid,
        services_pid=services_pid,
    )
    state.write(home)
    event(log, logging.INFO, "lab_up", monitor=state.monitor, province=state.province,
          responder=pid, endpoints=len(profiles), state_dir=str(home.dir))  # fmt: skip
    return UpResult(home, state, config, profiles, lab)


# --- down -------------------------------------------------------------------------------------


def lab_down(home: LabHome, *, grace: float = 2.0) -> list[str]:
    """Stop everything of this lab and remove its state; what was removed, empty if nothing.

    Works from whatever is left: the state file may be missing (crash) or stale.
    """
    removed: list[str] = []
    state = LabState.read(home)
    runner = _scenario_doc(home)
    runner_pid = runner.get("pid") if runner else None
    if isinstance(runner_pid, int) and runner_pid != os.getpid() and pid_alive(runner_pid):
        # A scenario still playing would only fail against a vanished responder.
        netns.kill_pids([runner_pid], grace=grace)
        removed.append(f"scenario runner {runner_pid}")
    for ns in home.names.both:
        if netns.exists(ns):
            removed.append(f"namespace {ns}")
    netns.down(home.names, grace=grace)  # kills every process inside, the responder included
    # Only if their namespace was deleted from under them: then `ip netns pids` finds nothing.
    for pid, what in _lab_processes(home, state):
        netns.kill_pids([pid], grace=grace)
        removed.append(f"{what} {pid}")
    for name in _OWN_FILES:
        path = home.path(name)
        if path.exists():
            path.unlink()
            removed.append(str(path))
    # Left alone when it holds files that are not ours (or other labs' directories).
    with contextlib.suppress(OSError):
        home.dir.rmdir()
    if removed:
        event(log, logging.INFO, "lab_down", removed=len(removed), state_dir=str(home.dir))
    return removed


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One endpoint's place and profiles in a running lab."""

    id: str
    name: str
    district: str
    level: str
    address: str
    profile: Profile | None  # live
    base: Profile | None  # generated; differs from live while a scenario impairs it


@dataclass(frozen=True, slots=True)
class ScenarioStatus:
    """The scenario being played on the lab, as its runner last reported."""

    name: str
    file: str
    pid: int
    running: bool
    started: float
    active: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LabStatus:
    """Everything ``vcmon lab status`` shows."""

    home: LabHome
    state: LabState | None
    namespaces: dict[str, bool]
    problems: list[str]
    responder_running: bool
    services_running: bool | None  # None: the lab runs no services
    endpoints: list[EndpointStatus] = field(default_factory=list)
    scenario: ScenarioStatus | None = None

    @property
    def healthy(self) -> bool:
        return (
            self.state is not None
            and all(self.namespaces.values())
            and not self.problems
            and self.responder_running
            and self.services_running is not False
        )


def lab_status(home: LabHome) -> LabStatus:
    """Inspect a lab: namespaces, isolation, responder, every endpoint's profile, scenario."""
    state = LabState.read(home)
    namespaces = {ns: netns.exists(ns) for ns in home.names.both}
    problems = netns.verify(home.names) if any(namespaces.values()) else []
    running = state is not None and responder_alive(home, state)
    services = None
    if state is not None and state.services_pid is not None:
        services = services_alive(home, state)
    endpoints: list[EndpointStatus] = []
    if state is not None:
        endpoints = _endpoint_rows(home, state, problems)
    return LabStatus(
        home, state, namespaces, problems, running, services, endpoints, _scenario_status(home)
    )


def _endpoint_rows(home: LabHome, state: LabState, problems: list[str]) -> list[EndpointStatus]:
    try:
        config = load_config(Path(state.config))
        live = load_profiles(home.path(PROFILES_FILE))
        base = load_profiles(home.path(BASE_FILE))
    except (OSError, ValueError) as exc:
        problems.append(f"cannot read the lab's files: {exc}")
        return []
    return [
        EndpointStatus(
            ep.id,
            ep.name,
            ep.district,
            ep.level.value,
            ep.address,
            live.get(ep.address),
            base.get(ep.address),
        )
        for ep in config.endpoints
    ]


def _scenario_doc(home: LabHome) -> dict[str, Any] | None:
    try:
        doc = json.loads(home.path(SCENARIO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _scenario_status(home: LabHome) -> ScenarioStatus | None:
    doc = _scenario_doc(home)
    if doc is None:
        return None
    try:
        pid = int(doc["pid"])
        return ScenarioStatus(
            name=str(doc["name"]),
            file=str(doc["file"]),
            pid=pid,
            running=pid_alive(pid),
            started=float(doc["started"]),
            active=tuple(str(a) for a in doc.get("active", ())),
        )
    except (KeyError, TypeError, ValueError):
        return None


# --- scenarios --------------------------------------------------------------------------------


@dataclass(slots=True)
class Attached:
    """A running lab opened by another process than the one that started it."""

    home: LabHome
    state: LabState
    lab: Lab
    config: Config
    base: dict[str, Profile]  # endpoint id → base profile
    addresses: dict[str, str]  # endpoint id → lab address

    def parents(self) -> dict[str, tuple[str, ...]]:
        """The inventory tree: endpoint id → parent ids."""
        return {ep.id: ep.parent for ep in self.config.endpoints}

    def set_profiles(self, profiles: Mapping[str, Profile]) -> None:
        """Make endpoint-id profiles live (blocks until the responder has reloaded them)."""
        self.lab.set_profiles(by_address(profiles, self.addresses))


def attach(home: LabHome) -> Attached:
    """Open the running lab; LabError when there is none or its responder is gone."""
    state = LabState.read(home)
    if state is None:
        raise LabError(f"no lab is up (no {home.path(STATE_FILE)}); start one with `vcmon lab up`")
    if not responder_alive(home, state):
        raise LabError(
            f"the lab's responder (pid {state.responder_pid}) is not running; "
            "`vcmon lab up` rebuilds the lab"
        )
    return attach_state(home, state)


def attach_state(home: LabHome, state: LabState, *, lab: Lab | None = None) -> Attached:
    """An :class:`Attached` for a lab whose state is known; ``lab`` reuses the starter's."""
    config = load_config(Path(state.config))
    addresses = {ep.id: ep.address for ep in config.endpoints}
    by_addr = load_profiles(home.path(BASE_FILE))
    base = {eid: by_addr[addr] for eid, addr in addresses.items() if addr in by_addr}
    if lab is None:
        lab = Lab(home.names, home.dir, services=state.services_pid is not None)
        _events_only(lab)
        lab.responder.attach(state.responder_pid)
        if lab.services is not None and state.services_pid is not None:
            lab.services.attach(state.services_pid)
    return Attached(home, state, lab, config, base, addresses)


class ScenarioBusy(LabError):
    """Another scenario is already being played on this lab."""


def prepare_scenario(lab: Attached, scenario_path: Path) -> BoundScenario:
    """Load and bind a scenario to the lab's inventory (ConfigError when it is wrong)."""
    return bind(load_scenario(scenario_path), lab.parents())


async def play_scenario(
    lab: Attached,
    scenario: BoundScenario,
    *,
    on_change: Callable[[Progress], None] | None = None,
) -> None:
    """Play ``scenario`` on the lab until it ends (or, looping, until cancelled); restores after.

    Records itself in ``scenario.json`` for ``vcmon lab status``; refuses (ScenarioBusy) while
    another live process plays one.
    """
    doc = _scenario_doc(lab.home)
    if doc is not None and doc.get("pid") != os.getpid() and pid_alive(doc.get("pid")):
        raise ScenarioBusy(
            f"scenario {doc.get('name')!r} is already playing on this lab (pid {doc.get('pid')});"
            " stop it first"
        )
    record: dict[str, Any] = {
        "name": scenario.scenario.name,
        "file": scenario.scenario.source,
        "pid": os.getpid(),
        "started": time.time(),
        "active": [],
    }
    path = lab.home.path(SCENARIO_FILE)
    _write_atomic(path, json.dumps(record, ensure_ascii=False))

    def changed(progress: Progress) -> None:
        record["active"] = list(progress.active)
        _write_atomic(path, json.dumps(record, ensure_ascii=False))
        if on_change is not None:
            on_change(progress)

    async def apply(profiles: Mapping[str, Profile]) -> None:
        # set_profiles blocks briefly waiting for the responder's reload event.
        await asyncio.to_thread(lab.set_profiles, profiles)

    runner = ScenarioRunner(scenario, lab.base, apply, on_change=changed)
    try:
        await runner.run()
    finally:
        doc = _scenario_doc(lab.home)
        if doc is not None and doc.get("pid") == os.getpid():
            path.unlink(missing_ok=True)
