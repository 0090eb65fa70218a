"""The lab's namespaces: built isolated, torn down completely, entered per thread."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LabFactory
from vcmon.measure.probes.icmp_packet import checksum
from vcmon_lab import netns
from vcmon_lab.netns import (
    ENDPOINT_NET,
    MONITOR_IF,
    MONITOR_VETH,
    PROVINCE_IF,
    PROVINCE_VETH,
    Lab,
    LabError,
    LabNames,
    in_netns,
)
from vcmon_lab.process import wait_until
from vcmon_lab.profiles import LAB_NET, Profile


@pytest.fixture
def names(require_root: None) -> Iterator[LabNames]:
    """Fresh names for a bare namespace pair, removed after the test whatever happened."""
    n = LabNames.for_run(f"ns{threading.get_ident() % 10_000}-{os.urandom(2).hex()}")
    yield n
    netns.down(n)


def ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    data: list[dict[str, Any]] = json.loads(out or "[]")
    return data


def main_routes(ns: str) -> set[tuple[str, str | None, str | None]]:
    return {
        (r["dst"], r.get("gateway"), r.get("dev"))
        for r in ip_json("-n", ns, "-4", "route", "show", "table", "main")
    }


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


# -- building and removing -------------------------------------------------------------------


def test_up_builds_exactly_the_lab(names: LabNames) -> None:
    netns.up(names)
    assert netns.verify(names) == []
    mon, prov = names.both
    link = str(MONITOR_IF.network)
    assert main_routes(mon) == {
        (str(ENDPOINT_NET), str(PROVINCE_IF.ip), MONITOR_VETH),
        (link, None, MONITOR_VETH),
    }
    assert main_routes(prov) == {(link, None, PROVINCE_VETH)}
    local = ip_json("-n", prov, "-4", "route", "show", "table", "local")
    assert any(r["dst"] == str(ENDPOINT_NET) and r["type"] == "local" for r in local)
    assert {x["ifname"] for x in ip_json("-n", mon, "link", "show")} == {"lo", MONITOR_VETH}
    assert {x["ifname"] for x in ip_json("-n", prov, "link", "show")} == {"lo", PROVINCE_VETH}
    for ns in names.both:
        assert all(x["operstate"] != "DOWN" for x in ip_json("-n", ns, "link", "show"))
    assert netns.sysctl(prov, "net.ipv4.icmp_echo_ignore_all") == "1"
    # The veth pair never appears in the root namespace.
    root_links = {x["ifname"] for x in ip_json("link", "show")}
    assert not {MONITOR_VETH, PROVINCE_VETH} & root_links


def test_no_route_out_of_the_lab(names: LabNames) -> None:
    netns.up(names)
    for ns in names.both:
        for family in ("-4", "-6"):
            routes = ip_json("-n", ns, family, "route", "show", "table", "all")
            assert routes, f"{ns} has no {family} routes at all?"
            for route in routes:
                assert route["dst"] != "default", route
                net = ipaddress.ip_network(route["dst"], strict=False)
                if isinstance(net, ipaddress.IPv4Network):
                    assert net.subnet_of(LAB_NET) or net.is_loopback, route
                else:
                    assert net.is_link_local or net.is_loopback or net.is_multicast, route
    # A lab address routes into the province, over the veth, from the monitor.
    for address in ("198.18.0.1", "198.18.200.17", "198.18.255.254"):
        (route,) = ip_json("-n", names.monitor, "route", "get", address)
        assert route["dev"] == MONITOR_VETH
        assert route["gateway"] == str(PROVINCE_IF.ip)


def test_up_and_down_are_idempotent(names: LabNames) -> None:
    netns.up(names)
    netns.up(names)  # rebuilds from scratch rather than failing on "File exists"
    assert netns.verify(names) == []
    netns.down(names)
    netns.down(names)
    assert not any(netns.exists(ns) for ns in names.both)
    assert not set(names.both) & set(netns.list_lab_namespaces())


def test_verify_catches_a_leak(names: LabNames) -> None:
    netns.up(names)
    mon = names.monitor
    # A default route inside the lab is still only the veth, but it is not the lab's design.
    subprocess.run(["ip", "-n", mon, "route", "add", "default", "dev", MONITOR_VETH], check=True)
    # A lab address that no longer goes to the province.
    subprocess.run(["ip", "-n", mon, "route", "add", "198.18.0.1/32", "dev", "lo"], check=True)
    problems = netns.verify(names)
    assert any("default route" in p for p in problems), problems
    assert any("198.18.0.1" in p and "not via the lab veth" in p for p in problems), problems


def test_route_problems_is_a_pure_check() -> None:
    outside = str(LAB_NET.supernet(new_prefix=8))  # wider than the lab: not allowed
    routes = [
        {"dst": "198.18.0.0/16", "gateway": str(PROVINCE_IF.ip)},
        {"dst": "default", "dev": MONITOR_VETH},
        {"dst": outside, "dev": MONITOR_VETH},
        {"dst": "fe80::/64", "dev": MONITOR_VETH},
        {"dst": "2001:db8::/32", "dev": MONITOR_VETH},
    ]
    problems = netns.route_problems(routes)
    assert len(problems) == 3
    assert "default route" in problems[0]
    assert outside in problems[1]
    assert "2001:db8::/32" in problems[2]


def test_up_refuses_and_cleans_up_when_verification_fails(
    names: LabNames, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netns, "verify", lambda _names: ["lab address routes somewhere else"])
    with pytest.raises(LabError, match="isolation check: lab address routes somewhere else"):
        netns.up(names)
    assert not any(netns.exists(ns) for ns in names.both)


def test_down_kills_processes_left_inside(names: LabNames) -> None:
    netns.up(names)
    orphan = subprocess.Popen(["ip", "netns", "exec", names.province, "sleep", "600"])
    try:
        assert orphan.pid in netns.netns_pids(names.province)
        netns.down(names)
        # down() reaps it (it happens to be our child), so only its absence is observable.
        with pytest.raises(ProcessLookupError):
            os.kill(orphan.pid, 0)
        assert not netns.exists(names.province)
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


@pytest.mark.usefixtures("require_root")
def test_sweep_removes_only_labs_of_dead_runs() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = LabNames.for_run("sweep", pid=dead.pid)
    ours = LabNames.for_run("sweep-live")
    try:
        netns.up(stale)
        netns.up(ours)
        removed = netns.sweep()
        assert set(stale.both) <= set(removed)
        assert not set(ours.both) & set(removed)
        assert all(netns.exists(ns) for ns in ours.both)
        assert set(ours.both) <= set(netns.sweep(run_pid=os.getpid()))
        assert not any(netns.exists(ns) for ns in (*stale.both, *ours.both))
    finally:
        netns.down(stale)
        netns.down(ours)


def test_names_are_checked() -> None:
    with pytest.raises(ValueError, match="must start with 'vcmon-'"):
        LabNames(monitor="mon", province="vcmon-prov")
    with pytest.raises(ValueError, match="must differ"):
        LabNames(monitor="vcmon-x", province="vcmon-x")
    n = LabNames.for_run("7", pid=4242)
    assert n == LabNames("vcmon-t4242-7-mon", "vcmon-t4242-7-prov")


# -- switching threads into a namespace ------------------------------------------------------


def test_in_netns_moves_only_the_current_thread(names: LabNames) -> None:
    netns.up(names)
    me = "/proc/thread-self/ns/net"
    home = netns_inode(me)
    target = netns_inode(str(netns.netns_path(names.monitor)))
    seen_by_other: list[int] = []
    entered, looked = threading.Event(), threading.Event()

    def other_thread() -> None:
        entered.wait(5)
        seen_by_other.append(netns_inode(me))
        looked.set()

    # Started before the switch: a thread started inside would inherit the namespace.
    other = threading.Thread(target=other_thread)
    other.start()
    with in_netns(names.monitor):
        assert netns_inode(me) == target
        entered.set()
        assert looked.wait(5)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # The monitor's veth address exists only inside the monitor namespace.
        udp.bind((str(MONITOR_IF.ip), 0))
    other.join()
    assert netns_inode(me) == home
    assert seen_by_other == [home]
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp, outside:
        # The socket stays in the monitor namespace after we left it.
        assert udp.getsockname()[0] == str(MONITOR_IF.ip)
        with pytest.raises(OSError, match="Cannot assign requested address"):
            outside.bind((str(MONITOR_IF.ip), 0))


def test_in_netns_restores_on_error(names: LabNames) -> None:
    netns.up(names)
    home = netns_inode("/proc/thread-self/ns/net")
    with pytest.raises(RuntimeError, match="boom"), in_netns(names.province):
        raise RuntimeError("boom")
    assert netns_inode("/proc/thread-self/ns/net") == home
    with pytest.raises(LabError, match="does not exist"), in_netns("vcmon-no-such-namespace"):
        pass


def _echo_request(ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"vcmon-lab-test"
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def _replies(sock: socket.socket, within: float) -> list[bytes]:
    """Every packet that arrives on ``sock`` within ``within`` seconds."""
    got = []
    while select.select([sock], [], [], within)[0]:
        got.append(sock.recv(2048))
        within = 0.05
    return got


def test_kernel_echo_is_off_in_the_province(names: LabNames) -> None:
    netns.up(names)
    with in_netns(names.monitor):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with sock:
        # The province's own veth address: the kernel would answer it if echo were on.
        sock.sendto(_echo_request(0x5A5A, 1), (str(PROVINCE_IF.ip), 0))
        # Absence can only be shown with a deadline; a kernel reply takes microseconds.
        assert _replies(sock, 0.3) == []


# -- the Lab object and fixture ----------------------------------------------------------------


def test_lab_fixture_answers_reloads_and_records(lab: LabFactory) -> None:
    env = lab({"198.18.0.1": Profile(delay=0.003), "198.18.0.2": Profile(up=False)}, seed=5)
    assert netns.verify(env.names) == []
    with env.in_monitor():
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with sock:
        sock.sendto(_echo_request(0x1234, 1), ("198.18.0.1", 0))
        sock.sendto(_echo_request(0x1234, 2), ("198.18.0.2", 0))
        sock.sendto(_echo_request(0x1234, 3), ("198.18.0.3", 0))  # no profile: ignored
        replies = _replies(sock, 2.0)
        assert len(replies) == 1
        reply = replies[0]
        ihl = (reply[0] & 0x0F) * 4
        assert socket.inet_ntoa(reply[12:16]) == "198.18.0.1"  # answered from the pinged address
        assert reply[ihl] == 0  # echo reply
        assert checksum(reply[ihl:]) == 0
        assert struct.unpack_from("!HH", reply, ihl + 4) == (0x1234, 1)

        truth = env.wait_echoes(lambda e: len(e) >= 2)
        by_dst = {e.dst: e for e in truth}
        assert set(by_dst) == {"198.18.0.1", "198.18.0.2"}
        ok, down = by_dst["198.18.0.1"], by_dst["198.18.0.2"]
        assert (ok.id, ok.seq, ok.src, ok.dropped) == (0x1234, 1, str(MONITOR_IF.ip), False)
        assert ok.delay_ns is not None
        assert ok.tx_ns is not None
        assert ok.delay_ns == ok.tx_ns - ok.rx_ns
        assert ok.planned_ns == 3_000_000
        assert 0 <= ok.delay_ns - ok.planned_ns < 1_000_000
        assert (down.dropped, down.reason, down.delay_ns) == (True, "profile", None)

        env.set_profiles({"198.18.0.2": Profile(delay=0.001)})
        sock.sendto(_echo_request(0x1234, 4), ("198.18.0.2", 0))
        sock.sendto(_echo_request(0x1234, 5), ("198.18.0.1", 0))  # dropped from the profiles
        assert len(_replies(sock, 2.0)) == 1
        truth = env.wait_echoes(lambda e: len(e) >= 3)
        assert (truth[-1].dst, truth[-1].seq, truth[-1].dropped) == ("198.18.0.2", 4, False)


@pytest.mark.usefixtures("require_root")
def test_lab_stop_leaves_nothing(tmp_path: Path) -> None:
    names = LabNames.for_run("stop")
    with Lab(names, tmp_path) as env:
        env.start({"198.18.0.1": Profile()})
        pid = env.responder.pid
        assert pid is not None
        assert pid in netns.netns_pids(names.province)
    assert not any(netns.exists(ns) for ns in names.both)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    stop = env.responder.truth.find_event("stop")
    assert stop is not None
    assert stop["received"] == 0


CRASHING_RUN = """
import sys
from pathlib import Path
from vcmon_lab.netns import Lab, LabNames
from vcmon_lab.profiles import Profile
lab = Lab(LabNames.for_run("crash"), Path(sys.argv[1]), die_with_parent=True)
lab.start({"198.18.0.1": Profile()})
print(lab.monitor, lab.province, lab.responder.pid, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.usefixtures("require_root")
def test_a_killed_run_leaves_nothing_the_next_sweep_misses(tmp_path: Path) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None
        monitor, province, pid = run.stdout.readline().split()
        assert netns.exists(monitor)
        assert int(pid) in netns.netns_pids(province)
        run.kill()  # SIGKILL: no cleanup code runs
        run.wait(timeout=5)
        # The responder follows its parent (PR_SET_PDEATHSIG) …
        wait_until(lambda: not netns.netns_pids(province), 5.0, "the responder to exit")
        # … and the namespaces of the dead run are swept by the next one.
        assert {monitor, province} <= set(netns.sweep())
        assert not netns.exists(monitor)
        assert not netns.exists(province)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
