"""The lab's two network namespaces, joined only to each other, with no route out.

Layout (all addresses from the 198.18.0.0/15 benchmarking range)::

    monitor ns (vcmon-…-mon)                  province ns (vcmon-…-prov)
      lo up                                     lo up, kernel echo replies off
      vcm0 198.19.255.1/30  <── veth ──>  vcp0 198.19.255.2/30
      198.18.0.0/16 via 198.19.255.2           local 198.18.0.0/16 dev lo  (AnyIP: every
                                                endpoint address is local here)

The veth pair is created directly inside the namespaces, so nothing ever appears in the root
namespace. :func:`up` verifies the result and refuses (tearing down again) when any route
could leave the lab; :func:`down` is idempotent and also cleans up after a crash: it kills
every process still inside the namespaces (by pid, from ``ip netns pids``) and deletes them.
:func:`in_netns` moves the calling thread into a namespace for as long as a ``with`` block,
which is how a test creates sockets that live in the monitor namespace.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from vcmon_lab.process import wait_until, wait_until_async
from vcmon_lab.profiles import LAB_NET, Profile
from vcmon_lab.responder import EchoTruth, ResponderProcess
from vcmon_lab.services import ServicesProcess

log = logging.getLogger(__name__)

NETNS_DIR = Path("/var/run/netns")
PREFIX = "vcmon-"

#: Endpoint addresses: local (AnyIP) in the province namespace, routed there from the monitor.
ENDPOINT_NET = ipaddress.IPv4Network("198.18.0.0/16")
#: The /30 on the veth pair.
MONITOR_IF = ipaddress.IPv4Interface("198.19.255.1/30")
PROVINCE_IF = ipaddress.IPv4Interface("198.19.255.2/30")
MONITOR_VETH = "vcm0"
PROVINCE_VETH = "vcp0"

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int

# Test runs name their namespaces after their pid so a later run can tell a crashed run's
# leftovers (pid gone) from a parallel run's live lab.
_RUN_NAME = re.compile(rf"^{re.escape(PREFIX)}t(\d+)-")


class LabError(RuntimeError):
    """The lab could not be built, verified or torn down."""


@dataclass(frozen=True, slots=True)
class LabNames:
    """Names of one lab's namespaces; distinct names let several labs exist at once."""

    monitor: str = f"{PREFIX}mon"
    province: str = f"{PREFIX}prov"

    def __post_init__(self) -> None:
        for name in (self.monitor, self.province):
            if not name.startswith(PREFIX) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
                raise ValueError(f"lab namespace names must start with {PREFIX!r}: {name!r}")
        if self.monitor == self.province:
            raise ValueError("monitor and province namespaces must differ")

    @classmethod
    def for_run(cls, tag: str, pid: int | None = None) -> LabNames:
        """Names unique to this process (``vcmon-t<pid>-<tag>-mon``), for tests run in parallel."""
        base = f"{PREFIX}t{os.getpid() if pid is None else pid}-{tag}"
        return cls(monitor=f"{base}-mon", province=f"{base}-prov")

    @property
    def both(self) -> tuple[str, str]:
        return (self.monitor, self.province)


# --- running ip -------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> str:
    """Run ``ip`` with arguments; raise LabError with its stderr when it fails and check is set."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = _ip("-j", *args).strip()
    data = json.loads(out) if out else []
    if not isinstance(data, list):
        raise LabError(f"ip -j {' '.join(args)}: unexpected output {out[:200]!r}")
    return data


def netns_path(name: str) -> Path:
    """Where ``ip netns`` keeps the namespace's handle."""
    return NETNS_DIR / name


def exists(name: str) -> bool:
    """Whether a named network namespace exists."""
    return netns_path(name).exists()


def list_lab_namespaces() -> list[str]:
    """Every named namespace that belongs to some vcmon lab."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX))


def netns_pids(name: str) -> list[int]:
    """Pids of processes whose network namespace is ``name`` (never this process)."""
    if not exists(name):
        return []
    out = _ip("netns", "pids", name, check=False)
    own = os.getpid()
    return [int(tok) for tok in out.split() if tok.isdigit() and int(tok) != own]


def _sysctl(ns: str, key: str, value: str) -> None:
    # Written through /proc from inside the namespace: /proc/sys/net shows the opener's netns.
    with in_netns(ns):
        Path("/proc/sys", *key.split(".")).write_text(value + "\n")


def _read_sysctl(ns: str, key: str) -> str:
    with in_netns(ns):
        return Path("/proc/sys", *key.split(".")).read_text().strip()


# --- switching namespaces ---------------------------------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the CURRENT THREAD in network namespace ``name``, then switch back.

    Sockets created inside keep that namespace for life, so they can be used afterwards from
    any thread. Other threads are unaffected; do not ``await`` inside the block, or other
    coroutines of the same loop would run in the namespace too.
    """
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace {name!r} does not exist") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


# --- bringing the lab up and down -------------------------------------------------------------


def up(names: LabNames = LabNames()) -> None:
    """Create both namespaces from scratch (removing any leftovers first) and verify them.

    Raises LabError, with the lab torn down again, if anything fails or a lab address would
    route anywhere but into the province namespace.
    """
    down(names)
    mon, prov = names.both
    try:
        _ip("netns", "add", mon)
        _ip("netns", "add", prov)
        for ns in (mon, prov):
            _ip("-n", ns, "link", "set", "lo", "up")
        # Both ends are born inside the lab namespaces; the root namespace never sees them.
        _ip(
            "-n", mon, "link", "add", MONITOR_VETH, "type", "veth",
            "peer", "name", PROVINCE_VETH, "netns", prov,
        )  # fmt: skip
        _sysctl(prov, "net.ipv4.icmp_echo_ignore_all", "1")
        # Lets the unprivileged datagram ICMP socket be tested inside the monitor namespace.
        _sysctl(mon, "net.ipv4.ping_group_range", "0 2147483647")
        _ip("-n", mon, "addr", "add", str(MONITOR_IF), "dev", MONITOR_VETH)
        _ip("-n", prov, "addr", "add", str(PROVINCE_IF), "dev", PROVINCE_VETH)
        _ip("-n", mon, "link", "set", MONITOR_VETH, "up")
        _ip("-n", prov, "link", "set", PROVINCE_VETH, "up")
        _ip("-n", mon, "route", "add", str(ENDPOINT_NET), "via", str(PROVINCE_IF.ip),
            "dev", MONITOR_VETH)  # fmt: skip
        _ip("-n", prov, "route", "add", "local", str(ENDPOINT_NET), "dev", "lo")
        problems = verify(names)
        if problems:
            raise LabError("lab failed its isolation check: " + "; ".join(problems))
    except BaseException:
        down(names)
        raise
    log.info("lab up: monitor=%s province=%s", mon, prov)


def down(names: LabNames = LabNames(), *, grace: float = 2.0) -> None:
    """Kill every process inside the lab namespaces and delete them; a no-op if already gone."""
    _remove([ns for ns in names.both if exists(ns)], grace=grace)


def sweep(*, run_pid: int | None = None, everything: bool = False, grace: float = 2.0) -> list[str]:
    """Remove leftover lab namespaces and the processes in them; return the names removed.

    By default only namespaces of test runs whose process has died (``vcmon-t<pid>-…``);
    with ``run_pid``, also those of that run; with ``everything``, every ``vcmon-`` namespace.
    """
    victims = []
    for ns in list_lab_namespaces():
        match = _RUN_NAME.match(ns)
        pid = int(match.group(1)) if match else None
        if everything or (pid is not None and (pid == run_pid or not _pid_alive(pid))):
            victims.append(ns)
    _remove(victims, grace=grace)
    return victims


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(namespaces: Sequence[str], *, grace: float) -> None:
    pids = sorted({pid for ns in namespaces for pid in netns_pids(ns)})
    kill_pids(pids, grace=grace)
    for ns in namespaces:
        # Deleting the namespace destroys the veth pair with it.
        _ip("netns", "del", ns, check=False)
        if exists(ns):
            raise LabError(f"could not delete network namespace {ns!r}")
        log.info("removed network namespace %s", ns)


def kill_pids(pids: Sequence[int], *, grace: float = 2.0) -> None:
    """SIGTERM the given processes, then SIGKILL whatever is still alive after ``grace``."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _pid_alive(pid) and not _reap(pid)]
        if alive:
            time.sleep(0.01)  # polling for exit of processes that may not be our children
    for pid in alive:
        log.warning("process %d ignored SIGTERM, killing it", pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        _reap(pid)


def _reap(pid: int) -> bool:
    """Collect a child's exit status so it does not linger as a zombie; True if it exited."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # not our child: only its disappearance tells
    return done == pid


# --- verification -----------------------------------------------------------------------------


def verify(names: LabNames = LabNames()) -> list[str]:
    """Check the lab is isolated; return the problems found (empty when all is well).

    Each namespace may hold only ``lo`` and its veth end; routes may only cover lab prefixes,
    loopback, or IPv6 link-local and multicast; there is no default route; and from the monitor
    namespace a lab address must route via the province end of the veth.
    """
    problems: list[str] = []
    for ns, veth in ((names.monitor, MONITOR_VETH), (names.province, PROVINCE_VETH)):
        if not exists(ns):
            problems.append(f"namespace {ns} does not exist")
            continue
        links = {link.get("ifname") for link in _ip_json("-n", ns, "link", "show")}
        if links != {"lo", veth}:
            problems.append(f"{ns}: unexpected links {sorted(str(x) for x in links)}")
        problems.extend(f"{ns}: {p}" for p in route_problems(_routes(ns)))
    if exists(names.monitor):
        for addr in (ENDPOINT_NET[1], ENDPOINT_NET[-2]):
            problems.extend(route_get_problems(names.monitor, str(addr)))
    return problems


def _routes(ns: str) -> list[dict[str, Any]]:
    return [
        *_ip_json("-n", ns, "-4", "route", "show", "table", "all"),
        *_ip_json("-n", ns, "-6", "route", "show", "table", "all"),
    ]


def route_problems(routes: Sequence[dict[str, Any]]) -> list[str]:
    """Routes (``ip -j route show table all``) that could lead out of the lab."""
    problems = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst == "default" or not dst:
            problems.append(f"default route {route}")
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            problems.append(f"unparseable route {route}")
            continue
        if isinstance(net, ipaddress.IPv4Network):
            allowed = net.subnet_of(LAB_NET) or net.is_loopback
        else:
            allowed = net.is_link_local or net.is_loopback or net.is_multicast
        if not allowed:
            problems.append(f"route outside the lab: {dst}")
    return problems


def route_get_problems(monitor: str, address: str) -> list[str]:
    """Check that ``address`` routes from the monitor namespace into the province, nowhere else."""
    try:
        result = _ip_json("-n", monitor, "route", "get", address)
    except LabError as exc:
        return [f"{monitor}: no route to lab address {address}: {exc}"]
    if len(result) != 1:
        return [f"{monitor}: route get {address} gave {result}"]
    r = result[0]
    if r.get("dev") != MONITOR_VETH or r.get("gateway") != str(PROVINCE_IF.ip):
        return [f"{monitor}: lab address {address} routes {r}, not via the lab veth"]
    return []


def sysctl(ns: str, key: str) -> str:
    """Read a sysctl as seen inside namespace ``ns``."""
    return _read_sysctl(ns, key)


# --- the whole lab ----------------------------------------------------------------------------


class Lab:
    """Both namespaces plus a responder, as one unit for tests, benchmarks and the CLI.

    ``workdir`` holds the profiles file, the ground truth (``truth.jsonl``) and the responder's
    log. Use as a context manager or call :meth:`start` / :meth:`stop`.

    The responder runs with real-time priority ``realtime`` (0: normal scheduling) so replies
    leave on time; give it ``responder_cpus`` of its own and keep the prober being measured
    off them, or its spinning preempts the prober between taking a send time and sending.
    ``die_with_parent`` ties the responder's life to this process (tests); the CLI leaves it
    off so the lab outlives the command that started it. With ``services`` (the default) a
    :mod:`vcmon_lab.services` process beside it serves TCP, SIP, HTTP and UDP echo with the
    same profiles (truth in ``services.jsonl``).
    """

    def __init__(
        self,
        names: LabNames,
        workdir: Path,
        *,
        seed: int | None = None,
        realtime: int = 10,
        responder_cpus: Collection[int] | None = None,
        die_with_parent: bool = False,
        services: bool = True,
    ) -> None:
        self.names = names
        self.workdir = workdir
        self.responder = ResponderProcess(
            names.province,
            workdir / "profiles.json",
            workdir / "truth.jsonl",
            seed=seed,
            realtime=realtime,
            cpus=responder_cpus,
            die_with_parent=die_with_parent,
        )
        self.services = (
            ServicesProcess(names.province, workdir / "profiles.json", workdir / "services.jsonl",
                            seed=seed, realtime=min(realtime, 1), die_with_parent=die_with_parent)
            if services else None
        )  # fmt: skip

    @property
    def monitor(self) -> str:
        """Name of the monitor-side namespace (where probes run)."""
        return self.names.monitor

    @property
    def province(self) -> str:
        """Name of the province namespace (where the endpoints and the responder live)."""
        return self.names.province

    def start(self, profiles: Mapping[str, Profile]) -> Lab:
        """Build the namespaces and start the responder with ``profiles``; undo on failure."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        up(self.names)
        try:
            self.responder.start(profiles)
            if self.services is not None:
                self.services.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the responder (flushing its truth) and remove the namespaces; idempotent."""
        try:
            if self.services is not None:
                self.services.stop()
            self.responder.stop()
        finally:
            down(self.names)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def in_monitor(self) -> AbstractContextManager[None]:
        """``with lab.in_monitor():`` puts the current thread in the monitor namespace."""
        return in_netns(self.monitor)

    def set_profiles(self, profiles: Mapping[str, Profile], *, timeout: float = 5.0) -> None:
        """Replace the live profiles and wait until the responder applies them."""
        self.responder.set_profiles(profiles, timeout=timeout)
        if self.services is not None and self.services.pid is not None:
            self.services.reload(timeout=timeout)

    def echoes(self) -> list[EchoTruth]:
        """Every echo the responder has recorded so far (reads what was flushed since)."""
        return list(self.responder.truth.poll().echoes)

    def wait_echoes(
        self, predicate: Callable[[list[EchoTruth]], bool], *, timeout: float = 5.0
    ) -> list[EchoTruth]:
        """Poll the truth until ``predicate(echoes)`` holds; raise after ``timeout``."""
        found: list[EchoTruth] = []

        def ready() -> bool:
            found[:] = self.echoes()
            return predicate(found)

        wait_until(ready, timeout, "ground truth")
        return found

    async def await_echoes(
        self, predicate: Callable[[list[EchoTruth]], bool], *, within: float = 5.0
    ) -> list[EchoTruth]:
        """Like :meth:`wait_echoes`, without blocking the event loop."""
        found: list[EchoTruth] = []

        def ready() -> bool:
            found[:] = self.echoes()
            return predicate(found)

        await wait_until_async(ready, within, "ground truth")
        return found
