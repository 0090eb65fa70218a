"""The ICMP engine on real sockets, loopback only (127.0.0.0/8 and ::1).

Cases the kernel cannot produce on the host's loopback (late replies, duplicates, ICMP errors,
no route, unprivileged datagram sockets) run in a fresh network namespace entered by one
dedicated thread: it holds only ``lo``, nothing can leave it, and its sysctls
(``ping_group_range``, ``icmp_echo_ignore_all``) are its own, so the host is never changed.
There a user-space responder answers our echo requests as each test scripts it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from vcmon.measure.probes.base import Outcome, ProbeContext, RoundResult, RoundSettings, Tally
from vcmon.measure.probes.icmp import IcmpEngine, IcmpProbe, IcmpUnavailable, _Pacer, detect_mode
from vcmon.measure.probes.icmp_packet import (
    build_echo_reply,
    build_echo_request,
    build_error,
    build_ipv4_header,
    build_ipv6_header,
    ipv4_header_length,
)
from vcmon.measure.probes.registry import PROBE_NAMES, PROBES, build_probes
from vcmon.measure.stats import ipdv_jitter

T = TypeVar("T")

FAST = RoundSettings(count=5, spacing=0.02, timeout=1.0)
PERMISSIVE = {"net/ipv4/ping_group_range": "0 2147483647"}
NO_KERNEL_ECHO = {"net/ipv4/icmp_echo_ignore_all": "1", "net/ipv6/icmp/echo_ignore_all": "1"}
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

# Every test here needs root (the autouse fixture below) and most enter a fresh namespace.
pytestmark = [pytest.mark.root, pytest.mark.netns]


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        reason = "ICMP engine tests need root (raw sockets, network namespaces)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI is set, so this is a failure, not a skip")
        pytest.skip(reason)


# -- helpers -------------------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], bool],
    what: str,
    within: float = 5.0,
    state: Callable[[], object] | None = None,
) -> None:
    """Wait for ``condition`` with a deadline (the engine works in the same loop)."""
    try:
        async with asyncio.timeout(within):
            # The engine's counters raise no events; a short poll under a deadline suffices.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        seen = f"; state: {state()!r}" if state is not None else ""
        raise AssertionError(f"timed out after {within}s waiting for {what}{seen}") from None


def outcomes(result: RoundResult) -> list[str]:
    return [e.reason or e.outcome.value if e.outcome is Outcome.ERROR else e.outcome.value
            for e in result.echoes]  # fmt: skip


def rtts(result: RoundResult) -> list[float]:
    return [e.rtt for e in result.echoes if e.rtt is not None]


def _enter_fresh_netns(lo_up: bool, sysctls: dict[str, str]) -> None:
    """Move the calling thread (only) into a new network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    if lo_up:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH", b"lo", 0).ljust(40, b"\0")
            flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
            fcntl.ioctl(
                s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP).ljust(40, b"\0")
            )
    for key, value in sysctls.items():
        # /proc/sys/net resolves against the calling thread's namespace.
        Path("/proc/sys", key).write_text(value)


async def in_netns(
    body: Callable[[], Awaitable[T]], *, lo_up: bool = True, kernel_echo: bool = True
) -> T:
    """Run ``body`` in its own event loop in a thread inside a fresh network namespace."""
    sysctls = dict(PERMISSIVE) | ({} if kernel_echo else NO_KERNEL_ECHO)
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    async def main() -> T:
        return await body()

    def run() -> None:
        try:
            _enter_fresh_netns(lo_up, sysctls)
        except OSError as exc:
            done.set_exception(exc)
            return
        try:
            done.set_result(asyncio.run(main()))
        except BaseException as exc:
            done.set_exception(exc)

    thread = threading.Thread(target=run, name="netns", daemon=True)
    thread.start()
    try:
        return await asyncio.wrap_future(done)
    except OSError as exc:
        if "unshare" in str(exc) and not os.environ.get("CI"):
            pytest.skip(f"cannot create a network namespace: {exc}")
        raise
    finally:
        await asyncio.to_thread(thread.join)


Action = tuple[str, float]  # ("reply" | "host-unreachable" | "ttl-exceeded", delay in s)
Script = Callable[[str, int], Sequence[Action]]  # (destination, nth request to it) → actions

_ERRORS4 = {"host-unreachable": (3, 1), "ttl-exceeded": (11, 0)}
_ERRORS6 = {"host-unreachable": (1, 3), "ttl-exceeded": (3, 0)}


class Responder:
    """A user-space echo responder for a test namespace whose kernel does not answer.

    It reads our echo requests from raw sockets and answers each as ``script`` says: a reply,
    an ICMP error quoting the request, several of them, or nothing, after chosen delays.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: Counter[str] = Counter()
        self._loop = asyncio.get_running_loop()
        self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self._v4.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)  # reply from any 127.x
        self._v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        for sock in (self._v4, self._v6):
            sock.setblocking(False)
        self._loop.add_reader(self._v4.fileno(), self._on_v4)
        self._loop.add_reader(self._v6.fileno(), self._on_v6)

    def close(self) -> None:
        for sock in (self._v4, self._v6):
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _actions(self, dst: str) -> Sequence[Action]:
        n = self.seen[dst]
        self.seen[dst] += 1
        return self.script(dst, n)

    def _on_v4(self) -> None:
        while True:
            try:
                data = self._v4.recv(4096)
            except BlockingIOError:
                return
            ihl = ipv4_header_length(data)
            if ihl is None or len(data) < ihl + 8 or data[ihl] != 8:
                continue  # not an echo request (our own replies and errors come by too)
            src = socket.inet_ntop(socket.AF_INET, data[12:16])
            dst = socket.inet_ntop(socket.AF_INET, data[16:20])
            request = data[ihl:]
            ident, seq = struct.unpack_from("!HH", request, 4)
            for kind, delay in self._actions(dst):
                if kind == "reply":
                    icmp = build_echo_reply(ident, seq, request[8:])
                else:
                    icmp = build_error(*_ERRORS4[kind], data)  # quote the whole request
                packet = build_ipv4_header(dst, src, len(icmp)) + icmp
                self._loop.call_later(delay, self._v4.sendto, packet, (src, 0))

    def _on_v6(self) -> None:
        while True:
            try:
                request = self._v6.recv(4096)
            except BlockingIOError:
                return
            if len(request) < 8 or request[0] != 128:
                continue
            # Tests use ::1 only, so source and destination are both ::1.
            ident, seq = struct.unpack_from("!HH", request, 4)
            for kind, delay in self._actions("::1"):
                if kind == "reply":
                    icmp = build_echo_reply(ident, seq, request[8:], v6=True)
                else:
                    quoted = build_ipv6_header("::1", "::1", len(request)) + request
                    icmp = build_error(*_ERRORS6[kind], quoted, v6=True)
                self._loop.call_later(delay, self._v6.sendto, icmp, ("::1", 0))


# -- host loopback, raw socket ---------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.3.2.1", "::1"])
async def test_loopback_round(address: str) -> None:
    tally = Tally()
    async with IcmpEngine() as engine:
        assert engine.mode == "raw"
        result = await engine.ping_round(address, FAST, tally)
    assert outcomes(result) == ["ok"] * 5
    assert all(0 < rtt < 0.1 for rtt in rtts(result)), rtts(result)
    assert [e.seq for e in result.echoes] == [0, 1, 2, 3, 4]
    assert ipdv_jitter(rtts(result)) is not None
    assert result.duplicates == 0
    assert result.failure is None
    assert tally == Tally()


async def test_probe_and_registry() -> None:
    assert PROBE_NAMES == frozenset({"icmp"}) == frozenset(PROBES)
    ctx = ProbeContext(settings={"icmp": {"socket": "raw"}})
    probes = build_probes(ctx)
    async with ctx:
        assert isinstance(probes["icmp"], IcmpProbe)
        assert probes["icmp"].engine.mode == "raw"
        assert probes["icmp"].voice
        assert probes["icmp"].name == "icmp"
        result = await probes["icmp"].run_round("127.0.0.1", FAST, Tally())
    assert outcomes(result) == ["ok"] * 5


async def test_many_endpoints_at_once_each_answer_attributed_to_its_address() -> None:
    addresses = [f"127.0.{i // 100}.{i % 100 + 1}" for i in range(200)]
    tallies = [Tally() for _ in addresses]
    async with IcmpEngine() as engine:
        results = await asyncio.gather(
            *(engine.ping_round(a, FAST, t) for a, t in zip(addresses, tallies, strict=True))
        )
        assert engine.outstanding == 0
        assert engine.tracked == 1000  # retained for late replies and duplicates
        own = {
            k: v for k, v in engine.counters.items() if k not in ("foreign_id", "foreign_cookie")
        }
    for address, result in zip(addresses, results, strict=True):
        assert outcomes(result) == ["ok"] * 5, address
        assert [e.seq for e in result.echoes] == [0, 1, 2, 3, 4], address
        assert result.duplicates == 0
    assert all(t == Tally() for t in tallies)
    assert own == {}  # nothing unmatched: every reply found its (destination, sequence)


async def test_same_address_concurrent_rounds_use_distinct_sequences() -> None:
    async with IcmpEngine() as engine:
        a, b = await asyncio.gather(
            engine.ping_round("127.0.0.7", FAST, Tally()),
            engine.ping_round("127.0.0.7", FAST, Tally()),
        )
    assert outcomes(a) == outcomes(b) == ["ok"] * 5
    assert sorted(e.seq for e in (*a.echoes, *b.echoes)) == list(range(10))


async def test_foreign_pings_do_not_disturb_counts() -> None:
    """Other pingers' replies reach our raw socket too; the identifier keeps them out."""
    fping = shutil.which("fping") or shutil.which("ping")
    settings = RoundSettings(count=5, spacing=0.05, timeout=1.0)
    tally = Tally()
    async with IcmpEngine() as engine:
        proc = None
        if fping:
            args = (
                ["-c", "10", "-p", "20", "-q"]
                if fping.endswith("fping")
                else ["-c", "10", "-i", "0.02", "-q"]
            )
            proc = await asyncio.create_subprocess_exec(
                fping, *args, "127.0.0.1",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        foreign = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        with foreign:
            foreign_id = (engine.ident + 1) & 0xFFFF
            for seq in range(5):  # same sequence numbers as ours, other identifier
                foreign.sendto(build_echo_request(foreign_id, seq, b"x" * 56), ("127.0.0.1", 0))
            result = await engine.ping_round("127.0.0.1", settings, tally)
        if proc is not None:
            async with asyncio.timeout(10):
                await proc.wait()
        await wait_until(lambda: engine.counters.get("foreign_id", 0) >= 5, "foreign replies")
    assert outcomes(result) == ["ok"] * 5
    assert result.duplicates == 0
    assert tally == Tally()


async def test_kernel_timestamp_survives_a_blocked_loop() -> None:
    """A reply stamped in time stays in time, however late the loop gets round to it."""
    settings = RoundSettings(count=1, spacing=0.0, timeout=0.1)
    async with IcmpEngine() as engine:
        task = asyncio.create_task(engine.ping_round("127.0.0.1", settings, Tally()))
        await wait_until(lambda: engine.tracked == 1, "the echo to go out")
        time.sleep(0.3)  # noqa: ASYNC251 -- the busy loop under test, 3× the timeout
        result = await task
    assert outcomes(result) == ["ok"]
    assert rtts(result)[0] < 0.05


async def test_round_end_drains_the_socket_itself() -> None:
    """Even if the reader callback never runs, the round collects stamped replies at its end."""
    settings = RoundSettings(count=3, spacing=0.01, timeout=0.05)
    async with IcmpEngine(tick=0.0) as engine:  # no ticks: replies are read when readable
        fam = engine._families[socket.AF_INET]
        loop = asyncio.get_running_loop()
        loop.remove_reader(fam.fd)
        try:
            result = await engine.ping_round("127.0.0.1", settings, Tally())
        finally:
            loop.add_reader(fam.fd, engine._drain, fam)
    assert outcomes(result) == ["ok"] * 3


async def test_sockets_are_read_on_ticks_while_rounds_run() -> None:
    """During rounds the loop is not woken per reply; idle, the socket is read when readable."""
    settings = RoundSettings(count=3, spacing=0.1, timeout=0.5)
    async with IcmpEngine(tick=0.05) as engine:
        fam = engine._families[socket.AF_INET]
        assert fam.reading
        task = asyncio.create_task(engine.ping_round("127.0.0.1", settings, Tally()))
        await wait_until(lambda: engine.tracked == 1, "the first echo to go out")
        assert not fam.reading
        started = time.monotonic()
        result = await task
        elapsed = time.monotonic() - started
        assert fam.reading  # late replies and strangers' packets are still read promptly
    assert outcomes(result) == ["ok"] * 3
    assert all(rtt < 0.05 for rtt in rtts(result))
    # two more sends 0.1 s apart, then the answer is read on the tick after the last one
    assert 0.19 < elapsed < 0.2 + 0.05 + 0.05


async def test_an_answer_in_time_is_never_lost_to_a_late_tick() -> None:
    """The tick (0.5 s) comes long after the timeout (50 ms): the kernel stamps decide."""
    settings = RoundSettings(count=2, spacing=0.0, timeout=0.05)
    async with IcmpEngine(tick=0.5) as engine:
        result = await engine.ping_round("127.0.0.1", settings, Tally())
    assert outcomes(result) == ["ok"] * 2
    assert all(0 < rtt < 0.05 for rtt in rtts(result))


async def test_without_a_grid_every_reply_wakes_the_loop() -> None:
    async with IcmpEngine(tick=0.0) as engine:
        fam = engine._families[socket.AF_INET]
        started = time.monotonic()
        result = await engine.ping_round("127.0.0.1", RoundSettings(3, 0.02, 1.0), Tally())
        elapsed = time.monotonic() - started
        assert fam.reading
    assert outcomes(result) == ["ok"] * 3
    assert elapsed < 0.04 + 0.02  # done at the last answer, not on a tick


async def test_grid_can_change_between_rounds() -> None:
    async with IcmpEngine(tick=0.05) as engine:
        assert outcomes(await engine.ping_round("127.0.0.1", FAST, Tally())) == ["ok"] * 5
        engine.tick = 0.0
        assert outcomes(await engine.ping_round("127.0.0.1", FAST, Tally())) == ["ok"] * 5
        engine.tick = 0.1
        assert outcomes(await engine.ping_round("127.0.0.1", FAST, Tally())) == ["ok"] * 5
        with pytest.raises(ValueError, match="tick"):
            engine.tick = 2.0


async def test_sequence_numbers_go_on_from_round_to_round() -> None:
    """A destination keeps its counter, so a very late reply cannot pass for a new echo."""
    async with IcmpEngine(retention=0.0) as engine:
        first = await engine.ping_round("127.0.0.1", RoundSettings(2, 0.0, 1.0), Tally())
        second = await engine.ping_round("127.0.0.1", RoundSettings(2, 0.0, 1.0), Tally())
    assert [e.seq for e in first.echoes + second.echoes] == [0, 1, 2, 3]


async def test_cancelled_round_leaves_no_outstanding_entries() -> None:
    settings = RoundSettings(count=20, spacing=0.05, timeout=1.0)
    async with IcmpEngine() as engine:
        task = asyncio.create_task(engine.ping_round("127.0.0.1", settings, Tally()))
        await wait_until(lambda: engine.tracked >= 2, "two echoes out")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.outstanding == 0
        assert engine.tracked == 0
        # answers that were queued, unread until the next tick, were read as the round's
        await asyncio.sleep(0.05)
        assert engine.counters.get("unmatched", 0) == 0
        # and the engine carries on
        assert outcomes(await engine.ping_round("127.0.0.1", FAST, Tally())) == ["ok"] * 5


async def test_retained_entries_are_pruned() -> None:
    async with IcmpEngine(retention=0.1) as engine:
        await engine.ping_round("127.0.0.1", FAST, Tally())
        assert engine.tracked == 5
        # a round that outlasts the retention prunes the first one when it ends
        await engine.ping_round("127.0.0.2", RoundSettings(3, 0.1, 1.0), Tally())
        assert engine.tracked == 3


async def test_pacing_caps_the_echo_rate() -> None:
    settings = RoundSettings(count=5, spacing=0.0, timeout=1.0)
    async with IcmpEngine(max_rate=250.0, burst=1) as engine:
        started = time.monotonic()
        results = await asyncio.gather(
            *(engine.ping_round(f"127.0.1.{i}", settings, Tally()) for i in range(1, 11))
        )
        elapsed = time.monotonic() - started
    assert all(outcomes(r) == ["ok"] * 5 for r in results)
    assert elapsed >= 49 / 250.0 - 0.01  # 50 echoes, one every 4 ms
    assert max(max(rtts(r)) for r in results) < 0.05  # waiting for a token is not RTT


def test_pacer_sequence() -> None:
    pacer = _Pacer(rate=10.0, burst=3)  # three at once, then one every 100 ms

    def send(now: float) -> float:
        wait = pacer.wait(now)
        pacer.take(now + wait)
        return wait

    assert [send(0.0) for _ in range(5)] == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])
    assert pacer.wait(5.0) == 0.0  # idle time refills the bucket
    assert [send(5.0) for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])


@pytest.mark.parametrize(
    ("address", "failure"),
    [("not-an-ip", "not an IP address: 'not-an-ip'"), ("127.1", "not an IP address: '127.1'")],
)
async def test_bad_address_is_a_failed_round(address: str, failure: str) -> None:
    async with IcmpEngine() as engine:
        result = await engine.ping_round(address, FAST, Tally())
    assert result == RoundResult((), failure=failure)


async def test_ipv4_mapped_address_goes_over_ipv4() -> None:
    async with IcmpEngine() as engine:
        result = await engine.ping_round("::ffff:127.0.0.1", FAST, Tally())
    assert outcomes(result) == ["ok"] * 5


async def test_engine_must_be_started() -> None:
    engine = IcmpEngine()
    with pytest.raises(RuntimeError, match="not running"):
        await engine.ping_round("127.0.0.1", FAST, Tally())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        IcmpEngine(mode="icmp")
    with pytest.raises(ValueError, match="max_rate"):
        IcmpEngine(max_rate=0)
    with pytest.raises(ValueError, match="mode"):
        detect_mode("fast")


def test_detect_mode_as_root() -> None:
    assert detect_mode("auto") == "raw"
    assert detect_mode("raw") == "raw"


# -- unprivileged processes (a subprocess without CAP_NET_RAW in a fresh namespace) -----------


def _run_without_cap_net_raw(code: str, ping_group_range: str | None) -> str:
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs unshare and setpriv (util-linux)")
    sysctl = (
        f'echo "{ping_group_range}" > /proc/sys/net/ipv4/ping_group_range; '
        if ping_group_range
        else ""
    )
    script = (
        f"ip link set lo up 2>/dev/null; {sysctl}"
        f'exec setpriv --bounding-set -net_raw --inh-caps -net_raw -- "$0" -c "$1"'
    )
    proc = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", script, sys.executable, code],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_without_privileges_the_error_names_every_fix() -> None:
    code = (
        "from vcmon.measure.probes.icmp import IcmpUnavailable, detect_mode\n"
        "try:\n    detect_mode('auto')\nexcept IcmpUnavailable as exc:\n    print(exc)\n"
    )
    message = _run_without_cap_net_raw(code, ping_group_range=None)
    assert "cannot open an ICMP socket" in message
    assert "run vcmon as root" in message
    assert "setcap cap_net_raw+ep " in message
    assert 'sysctl -w net.ipv4.ping_group_range="0 2147483647"' in message


def test_auto_falls_back_to_datagram_sockets() -> None:
    code = (
        "import asyncio\n"
        "from vcmon.measure.probes.icmp import IcmpEngine, detect_mode\n"
        "from vcmon.measure.probes.base import RoundSettings, Tally\n"
        "async def main():\n"
        "    async with IcmpEngine() as e:\n"
        "        r = await e.ping_round('127.0.0.1', RoundSettings(3, 0.01, 1.0), Tally())\n"
        "        print(detect_mode('auto'), e.mode, [x.outcome.value for x in r.echoes])\n"
        "asyncio.run(main())\n"
    )
    assert _run_without_cap_net_raw(code, "0 0") == "dgram dgram ['ok', 'ok', 'ok']"


def test_unavailable_is_raised_by_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import vcmon.measure.probes.icmp as icmp

    def deny(family: int, kind: str) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(icmp, "open_icmp_socket", deny)

    async def start() -> None:
        async with IcmpEngine():
            pass

    with pytest.raises(IcmpUnavailable, match="ping_group_range"):
        asyncio.run(start())


async def test_missing_ipv6_does_not_break_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import vcmon.measure.probes.icmp as icmp

    real = icmp.open_icmp_socket

    def no_ipv6(family: int, kind: str) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, kind)

    monkeypatch.setattr(icmp, "open_icmp_socket", no_ipv6)
    async with IcmpEngine() as engine:
        v4 = await engine.ping_round("127.0.0.1", FAST, Tally())
        v6 = await engine.ping_round("::1", FAST, Tally())
    assert outcomes(v4) == ["ok"] * 5
    assert v6 == RoundResult(
        (),
        failure="IPv6 ICMP socket unavailable: [Errno 97] Address family not supported by protocol",
    )


async def test_close_ends_running_rounds_with_what_they_have() -> None:
    settings = RoundSettings(count=50, spacing=0.05, timeout=1.0)
    engine = IcmpEngine()
    await engine.start()
    task = asyncio.create_task(engine.ping_round("127.0.0.1", settings, Tally()))
    await wait_until(lambda: engine.tracked >= 2, "two echoes out")
    engine.close()
    async with asyncio.timeout(2):
        result = await task
    assert 2 <= len(result.echoes) < 50
    assert all(e.outcome is Outcome.OK for e in result.echoes[:-1])


# -- in a fresh network namespace, both socket modes --------------------------------------------

MODES = ["raw", "dgram"]


@pytest.mark.parametrize("mode", MODES)
async def test_rounds_in_namespace(mode: str) -> None:
    async def body() -> list[RoundResult]:
        assert detect_mode(mode) == mode
        async with IcmpEngine(mode=mode) as engine:
            assert engine.mode == mode
            return list(
                await asyncio.gather(
                    *(
                        engine.ping_round(a, FAST, Tally())
                        for a in ("127.0.0.1", "127.0.0.2", "::1")
                    )
                )
            )

    for result in await in_netns(body):
        assert outcomes(result) == ["ok"] * 5
        assert all(0 < rtt < 0.1 for rtt in rtts(result))


async def test_attribution_by_scripted_delays() -> None:
    """Each address answers after its own delay; every RTT must show its own address's delay."""
    addresses = [f"127.0.{i // 50}.{i % 50 + 1}" for i in range(100)]
    delay = {a: (i % 5) * 0.05 for i, a in enumerate(addresses)}
    settings = RoundSettings(count=3, spacing=0.05, timeout=1.0)

    async def body() -> list[RoundResult]:
        responder = Responder(lambda dst, n: [("reply", delay[dst])])
        try:
            async with IcmpEngine(mode="raw") as engine:
                return list(
                    await asyncio.gather(
                        *(engine.ping_round(a, settings, Tally()) for a in addresses)
                    )
                )
        finally:
            responder.close()

    results = await in_netns(body, kernel_echo=False)
    for address, result in zip(addresses, results, strict=True):
        assert outcomes(result) == ["ok"] * 3, address
        for rtt in rtts(result):
            # neighbours differ by 50 ms; scheduling slack in the responder stays well below
            assert delay[address] <= rtt < delay[address] + 0.04, (address, rtt)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_late_replies_are_counted_late(mode: str, address: str) -> None:
    # timeout 100 ms; the round ends ~300 ms after it starts (last echo at 200 ms + timeout)
    settings = RoundSettings(count=3, spacing=0.1, timeout=0.1)
    script = {0: [("reply", 0.15)], 1: [("reply", 0.6)]}  # in the round but late; after it

    async def body() -> tuple[RoundResult, Tally, Tally]:
        responder = Responder(lambda dst, n: script.get(n, [("reply", 0.0)]))
        tally = Tally()
        try:
            async with IcmpEngine(mode=mode) as engine:
                result = await engine.ping_round(address, settings, tally)
                at_end = Tally(tally.late, tally.duplicate, Counter(tally.errors))
                await wait_until(lambda: tally.late == 2, "the second late reply")
                assert engine.counters == {}
                return result, at_end, tally
        finally:
            responder.close()

    result, at_end, tally = await in_netns(body, kernel_echo=False)
    assert outcomes(result) == ["timeout", "timeout", "ok"]
    assert at_end.late == 1
    assert tally == Tally(late=2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_duplicates_are_counted(mode: str, address: str) -> None:
    settings = RoundSettings(count=3, spacing=0.1, timeout=1.0)
    script = {1: [("reply", 0.0), ("reply", 0.01)], 2: [("reply", 0.0), ("reply", 0.3)]}

    async def body() -> tuple[RoundResult, Tally]:
        responder = Responder(lambda dst, n: script.get(n, [("reply", 0.0)]))
        tally = Tally()
        try:
            async with IcmpEngine(mode=mode) as engine:
                result = await engine.ping_round(address, settings, tally)
                await wait_until(lambda: tally.duplicate == 2, "the duplicate after the round")
                return result, tally
        finally:
            responder.close()

    result, tally = await in_netns(body, kernel_echo=False)
    assert outcomes(result) == ["ok"] * 3
    assert result.duplicates == 1  # the one inside the round
    assert tally == Tally(duplicate=2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_icmp_errors_answer_echoes_with_a_reason(mode: str, address: str) -> None:
    settings = RoundSettings(count=3, spacing=0.05, timeout=1.0)
    script = {0: [("host-unreachable", 0.0)], 1: [("ttl-exceeded", 0.0)]}

    async def body() -> tuple[RoundResult, Tally]:
        responder = Responder(lambda dst, n: script.get(n, [("reply", 0.0)]))
        tally = Tally()
        try:
            async with IcmpEngine(mode=mode) as engine:
                return await engine.ping_round(address, settings, tally), tally
        finally:
            responder.close()

    result, tally = await in_netns(body, kernel_echo=False)
    assert outcomes(result) == ["host-unreachable", "ttl-exceeded", "ok"]
    assert [e.outcome for e in result.echoes[:2]] == [Outcome.ERROR, Outcome.ERROR]
    assert tally.errors == Counter({"host-unreachable": 1, "ttl-exceeded": 1})


@pytest.mark.parametrize("mode", MODES)
async def test_no_route_is_a_send_error_not_an_exception(mode: str) -> None:
    """With ``lo`` down nothing is routable, 127.0.0.1 included; nothing can leave anyway."""

    async def body() -> tuple[RoundResult, RoundResult, Tally]:
        tally = Tally()
        async with IcmpEngine(mode=mode) as engine:
            v4 = await engine.ping_round("127.0.0.1", RoundSettings(2, 0.01, 0.5), tally)
            v6 = await engine.ping_round("::1", RoundSettings(2, 0.01, 0.5), tally)
            assert engine.tracked == 0
            return v4, v6, tally

    v4, v6, tally = await in_netns(body, lo_up=False)
    assert outcomes(v4) == ["send:ENETUNREACH"] * 2
    assert all(e.outcome is Outcome.ERROR for e in (*v4.echoes, *v6.echoes))
    assert all((e.reason or "").startswith("send:E") for e in v6.echoes)
    assert tally.errors["send:ENETUNREACH"] >= 2


@pytest.mark.parametrize("mode", MODES)
async def test_cancelled_round_without_replies_leaves_nothing(mode: str) -> None:
    async def body() -> tuple[int, int]:
        async with IcmpEngine(mode=mode) as engine:
            settings = RoundSettings(count=5, spacing=0.02, timeout=10.0)
            task = asyncio.create_task(engine.ping_round("127.0.0.1", settings, Tally()))
            await wait_until(lambda: engine.outstanding >= 3, "three echoes out")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return engine.outstanding, engine.tracked

    assert await in_netns(body, kernel_echo=False) == (0, 0)


async def test_garbage_is_counted_never_raised() -> None:
    async def body() -> tuple[dict[str, int], RoundResult]:
        async with IcmpEngine(mode="raw") as engine:
            ours, cookie = engine.ident, engine.payload
            other = (ours + 1) & 0xFFFF
            quote = build_ipv4_header("127.0.0.1", "127.0.0.9", 8 + len(cookie))
            good_reply = build_echo_reply(ours, 4242, cookie)
            crafted = {
                # shorter than an ICMP header: the kernel's ICMP_FILTER check drops it
                "dropped": [b"\x00", b"\x03\x01\x00"],
                "malformed": [
                    build_error(3, 1, b"\x65" + quote[1:] + bytes(8)),  # quotes "IPv6"
                    good_reply[:2] + bytes([good_reply[2] ^ 1]) + good_reply[3:],  # checksum
                    build_error(3, 1, quote[:12]),  # quote cut inside the IP header
                    build_error(11, 0, b""),
                ],
                "foreign_id": [
                    build_echo_reply(other, 0, cookie),
                    build_error(3, 1, quote + build_echo_request(other, 0, cookie)),
                ],
                "foreign_cookie": [build_echo_reply(ours, 0, b"not-ours" + cookie[8:])],
                "unmatched": [
                    good_reply,  # our identifier and cookie, a sequence never sent
                    build_error(3, 1, quote + build_echo_request(ours, 0, cookie)),
                ],
            }
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
                # with our own IP header the kernel sends even a 1-byte "ICMP message"
                s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
                for packets in crafted.values():
                    for icmp in packets:
                        header = build_ipv4_header("127.0.0.1", "127.0.0.1", len(icmp))
                        s.sendto(header + icmp, ("127.0.0.1", 0))
            expected = {k: len(v) for k, v in crafted.items() if k != "dropped"}
            await wait_until(
                lambda: engine.counters == expected,
                f"counters {expected}",
                2,
                lambda: engine.counters,
            )
            result = await engine.ping_round("127.0.0.1", FAST, Tally())
            return dict(engine.counters), result

    counters, result = await in_netns(body)
    assert counters == {"malformed": 4, "foreign_id": 2, "foreign_cookie": 1, "unmatched": 2}
    assert outcomes(result) == ["ok"] * 5


async def test_identifier_and_cookie_filter_exactly() -> None:
    """A foreign pinger on the same address with colliding sequence numbers changes nothing."""
    settings = RoundSettings(count=5, spacing=0.05, timeout=1.0)

    async def body() -> tuple[RoundResult, Tally, dict[str, int]]:
        tally = Tally()
        async with IcmpEngine(mode="raw") as engine:
            other = (engine.ident + 1) & 0xFFFF
            task = asyncio.create_task(engine.ping_round("127.0.0.1", settings, tally))
            # mid-round: sequence 0 is answered, 1…4 are still to come
            await wait_until(lambda: engine.tracked == 1 and not engine.outstanding, "echo 0")
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
                for seq in range(5):
                    s.sendto(build_echo_request(other, seq, engine.payload), ("127.0.0.1", 0))
                    # same identifier as ours (as if it collided), another payload
                    s.sendto(build_echo_request(engine.ident, seq, b"x" * 56), ("127.0.0.1", 0))
            result = await task
            await wait_until(
                lambda: engine.counters == {"foreign_id": 5, "foreign_cookie": 5},
                "10 foreign replies",
                state=lambda: engine.counters,
            )
            return result, tally, dict(engine.counters)

    result, tally, _ = await in_netns(body)
    assert outcomes(result) == ["ok"] * 5
    assert tally == Tally()
    assert result.duplicates == 0
