"""The ICMP echo engine: one shared socket per address family, kernel receive timestamps.

Why it is built this way (docs/architecture.md, "Measuring honestly"):

- One socket per family for every endpoint. A raw socket per target is O(n²): every raw
  socket receives every echo reply on the host.
- Replies are matched by (destination, sequence) against a table of outstanding echoes, with
  sequence numbers counted per destination, so there is no global 65,535-outstanding limit.
  A raw socket sees every echo reply on the host (ping's and fping's too), so there replies
  must also carry our identifier and our payload cookie.
- The receive time is the kernel's (``SO_TIMESTAMPNS``) and the send time is read just before
  ``sendto`` from the same clock, so neither a busy event loop nor pacing delays show up in the
  RTT. Whether a reply is late is decided by those timestamps, never by when the loop woke up:
  the socket is drained once more before a round is timed out.
- Sends go through a global token bucket so thousands of endpoints never burst at once. One
  engine-wide timer sends every due echo from a heap of absolute send times and ends rounds
  from a heap of deadlines (no task wakeup or timer per echo or per round); a round awaits
  one future, completed by its last answer or by its deadline.
- The engine works on a grid of ``tick`` seconds on the loop clock (DEFAULT_TICK on its own;
  built through a ProbeContext it follows the shared grid, vcmon.measure.grid, that the
  scheduler starts rounds on). Since both timestamps come from the kernel's clock, *when*
  the loop reads a reply changes nothing, and neither does when on the grid an echo leaves.
  So while echoes are outstanding a socket is drained once per tick instead of waking the
  loop for every reply; sends (when the spacing is a whole number of
  ticks), round deadlines and round starts fall on the same grid points, and asyncio runs
  every timer due at one point in one loop iteration. Wake-ups per second are then about
  ticks per second, however many endpoints there are: at low rates a wake-up, not per-packet
  work, is what an echo costs. A round ends at most one tick after its last answer or its
  deadline. With ``tick=0``, or for a socket no round is using (so late replies and
  strangers' packets are still read promptly), a socket is read whenever it is readable.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import math
import os
import random
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Final

from vcmon.config import IcmpSettings
from vcmon.measure.grid import grid_after, grid_up, send_time
from vcmon.measure.probes.base import (
    Echo,
    Outcome,
    ProbeContext,
    ProbeKind,
    RoundResult,
    RoundSettings,
    Tally,
)
from vcmon.measure.probes.icmp_packet import (
    ICMP6_DEST_UNREACH,
    ICMP6_ECHO_REPLY,
    ICMP6_PACKET_TOO_BIG,
    ICMP6_PARAMETER_PROBLEM,
    ICMP6_TIME_EXCEEDED,
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REPLY,
    ICMP_PARAMETER_PROBLEM,
    ICMP_TIME_EXCEEDED,
    IPPROTO_ICMP,
    EchoReply,
    EchoTemplate,
    ErrorReport,
    checksum_ok,
    parse_echo_request,
    parse_extended_err,
    parse_icmp4,
    parse_icmp6,
    parse_ipv4_packet,
)

log = logging.getLogger(__name__)

MODES: Final = ("auto", "raw", "dgram")

# Linux constants the socket module does not export (or not on every Python version).
SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
SOL_RAW: Final = 255
ICMP_FILTER: Final = 1
ICMP6_FILTER: Final = 1
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25

_MSG_TRUNC: Final = int(socket.MSG_TRUNC)  # a plain int: IntFlag arithmetic is slow
_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
_TIMESPEC = struct.Struct("@ll")  # struct timespec: two native longs
# An option-less IPv4 header, then an ICMP header: version/IHL, protocol, type, id, sequence.
_V4_ICMP = struct.Struct("!B8xB10xB3xHH")
_RCVBUF: Final = 4 << 20  # rides out a loop stall of ~1 s at 5,000 replies/s
_ANCBUFSIZE: Final = 256  # a timespec, or a sock_extended_err plus the offender's address
_BATCH: Final = 4096  # packets per readable event; level-triggered epoll calls again
_GRACE: Final = 0.002  # s; the round timer may fire a hair early against the realtime clock
_EARLY: Final = 0.0002  # s; echoes due this soon go out with the current batch
DEFAULT_TICK: Final = 0.02  # s; the grid of an engine on its own (the scheduler sets its own)
_COOKIE_LEN: Final = 8
_MAX_DESTS: Final = 65536  # remembered destinations, before idle ones are dropped
_BUSY_READ: Final = 64  # packets in one tick's read: read again a quarter tick later

# Round states of one echo, where its RTT goes once answered in time (RTTs are >= 0).
_PENDING: Final = -1
_LATE: Final = -2  # answered after its timeout
_ERROR: Final = -3  # an ICMP error answered it, or it could not be sent


class IcmpUnavailable(RuntimeError):
    """Neither a raw nor a datagram ICMP socket can be opened; the message names the fixes."""


def _fixes() -> str:
    python = os.path.realpath(sys.executable)
    return (
        "fix one of: run vcmon as root; "
        f"grant the raw-socket capability with `setcap cap_net_raw+ep {python}` "
        "(or on the vcmon binary); "
        "or allow unprivileged ping sockets with "
        '`sysctl -w net.ipv4.ping_group_range="0 2147483647"` '
        f"(this process runs as gid {os.getgid()})"
    )


def _icmp6_filter(allowed: tuple[int, ...]) -> bytes:
    """Linux ICMP6_FILTER: a 256-bit bitmap in which a set bit BLOCKS that type."""
    words = [0xFFFFFFFF] * 8
    for t in allowed:
        words[t >> 5] &= ~(1 << (t & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


_ICMP4_PASS: Final = (
    ICMP_ECHO_REPLY,
    ICMP_DEST_UNREACH,
    ICMP_TIME_EXCEEDED,
    ICMP_PARAMETER_PROBLEM,
)
_ICMP4_FILTER: Final = struct.pack("=I", ~sum(1 << t for t in _ICMP4_PASS) & 0xFFFFFFFF)
_ICMP6_FILTER: Final = _icmp6_filter(
    (
        ICMP6_ECHO_REPLY,
        ICMP6_DEST_UNREACH,
        ICMP6_PACKET_TOO_BIG,
        ICMP6_TIME_EXCEEDED,
        ICMP6_PARAMETER_PROBLEM,
    )
)


def open_icmp_socket(family: int, kind: str) -> socket.socket:
    """A non-blocking ICMP socket of ``kind`` ("raw" or "dgram"), set up for the engine.

    Raises OSError (PermissionError when not allowed, EAFNOSUPPORT without that stack).
    """
    v6 = family == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    stype = socket.SOCK_RAW if kind == "raw" else socket.SOCK_DGRAM
    sock = socket.socket(family, stype, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RCVBUF)
        except OSError:  # needs CAP_NET_ADMIN; the plain option is capped by rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        if kind == "raw":
            # Without a filter a raw socket on loopback also reads our own echo requests.
            if v6:
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _ICMP6_FILTER)
            else:
                sock.setsockopt(SOL_RAW, ICMP_FILTER, _ICMP4_FILTER)
        elif v6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_sockets(requested: str) -> tuple[str, dict[int, socket.socket], dict[int, OSError]]:
    """Open the sockets of the first mode that works: (mode, sockets, per-family failures)."""
    if requested not in MODES:
        raise ValueError(f"ICMP socket mode must be one of {', '.join(MODES)}, not {requested!r}")
    kinds = ("raw", "dgram") if requested == "auto" else (requested,)
    problems: list[str] = []
    for kind in kinds:
        socks: dict[int, socket.socket] = {}
        failures: dict[int, OSError] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socks[family] = open_icmp_socket(family, kind)
            except OSError as exc:
                failures[family] = exc
        if socks:
            return kind, socks, failures
        problems.extend(
            f"{kind} {_family_name(f)}: {exc.strerror or exc}" for f, exc in failures.items()
        )
    raise IcmpUnavailable(f"cannot open an ICMP socket ({'; '.join(problems)}); {_fixes()}")


def _family_name(family: int) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


def detect_mode(requested: str = "auto") -> str:
    """The socket mode ("raw" or "dgram") the engine would use; raises IcmpUnavailable."""
    mode, socks, _ = _open_sockets(requested)
    for sock in socks.values():
        sock.close()
    return mode


def _target(address: str) -> tuple[int, str, tuple[str, int] | tuple[str, int, int, int]]:
    """(family, canonical address, sockaddr) of an IP literal; raises ValueError otherwise.

    The canonical form is the one the kernel hands back in ``recvmsg``, so replies find their
    destination with one dict lookup.
    """
    text = address.strip()
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except OSError:
        pass
    else:
        key = socket.inet_ntop(socket.AF_INET, packed)
        return socket.AF_INET, key, (key, 0)
    host, _, scope = text.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        raise ValueError(f"not an IP address: {address!r}") from None
    if packed[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped: ICMPv6 cannot reach it
        key = socket.inet_ntop(socket.AF_INET, packed[12:])
        return socket.AF_INET, key, (key, 0)
    key = socket.inet_ntop(socket.AF_INET6, packed)
    try:
        scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope) if scope else 0
    except OSError:
        raise ValueError(f"unknown interface in {address!r}") from None
    return socket.AF_INET6, key, (key, 0, 0, scope_id)


class _Pacer:
    """Global token bucket as a GCRA: a send may go when ``wait`` is 0, then ``take`` it."""

    __slots__ = ("_interval", "_tat", "_tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = 0.0  # theoretical arrival time of the next send

    def wait(self, now: float) -> float:
        """Seconds until a token is free (0.0 if one is free now)."""
        delay = (self._tat if self._tat > now else now) - self._tolerance - now
        return delay if delay > 0.0 else 0.0

    def take(self, now: float) -> None:
        """Spend one token."""
        self._tat = (self._tat if self._tat > now else now) + self._interval


class _Family:
    """The shared socket of one address family and how to read it."""

    __slots__ = (
        "active",
        "bufsize",
        "drained_at",
        "fd",
        "raw",
        "reading",
        "sock",
        "template",
        "v6",
    )

    def __init__(self, sock: socket.socket, raw: bool, template: EchoTemplate, bufsize: int):
        self.sock = sock
        self.drained_at = -1.0  # loop time the last drain started: all stamped before is read
        self.active = 0  # rounds running on this socket
        self.reading = False  # registered with the loop (read when readable), else read on ticks
        self.fd = sock.fileno()
        self.raw = raw
        self.v6 = sock.family == socket.AF_INET6
        self.template = template
        self.bufsize = bufsize


class _Dest:
    """One destination address: its sequence counter and its echoes by sequence number."""

    __slots__ = ("active", "fam", "key", "next_seq", "sockaddr", "table")

    def __init__(
        self, key: str, fam: _Family, sockaddr: tuple[str, int] | tuple[str, int, int, int]
    ) -> None:
        self.key = key
        self.fam = fam
        self.sockaddr = sockaddr
        self.next_seq = 0
        self.table: dict[int, _Round] = {}  # by sequence number
        self.active = 0  # rounds running against this address


class _Round:
    """The echoes of one round, by index in send order.

    Kept to a few plain lists: thousands of rounds in flight are objects the cyclic garbage
    collector walks, and its pauses are scheduler lag.
    """

    __slots__ = (
        "all_sent",
        "count",
        "deadline_at",
        "dest",
        "duplicates",
        "finished",
        "last_sent_at",
        "mono_offset",
        "pending",
        "reasons",
        "retire_at",
        "rtt_ns",
        "sent",
        "sent_ns",
        "seqs",
        "spacing",
        "start",
        "tally",
        "tick",
        "timeout",
        "timeout_ns",
        "waiter",
    )

    def __init__(
        self,
        dest: _Dest,
        tally: Tally,
        settings: RoundSettings,
        start: float,
        tick: float,
        waiter: asyncio.Future[None],
    ) -> None:
        count = settings.count
        self.dest = dest
        self.tally = tally
        self.count = count
        self.start = start  # loop time the round started: send_time() of each echo from it
        self.spacing = settings.spacing
        self.tick = tick
        self.timeout = settings.timeout
        self.timeout_ns = int(settings.timeout * 1e9)
        self.seqs = [0] * count
        self.sent_ns = [0] * count  # wall clock (the kernel stamps' clock) before sendto
        self.rtt_ns = [_PENDING] * count  # the RTT once answered in time, else a state
        self.reasons: dict[int, str] | None = None  # by index, for echoes in state _ERROR
        # For the rare reply without a usable kernel stamp: monotonic = wall + offset.
        self.mono_offset = time.monotonic_ns() - time.time_ns()
        self.sent = 0  # echoes handed to sendto, successfully or not
        self.pending = 0  # sent and not yet answered, errored or late
        self.duplicates = 0
        self.all_sent = False
        self.last_sent_at = -1.0  # loop time of the last echo that went out
        self.finished = False
        self.waiter = waiter  # done when every echo is answered or the last deadline passed
        self.deadline_at = math.inf  # loop time after which unanswered echoes are lost
        self.retire_at = math.inf  # loop time its echoes are forgotten

    def due(self, i: int) -> float:
        return send_time(self.start, i, self.spacing, self.tick)

    def wake(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(None)

    def result(self) -> RoundResult:
        echoes = []
        for i in range(self.sent):
            rtt = self.rtt_ns[i]
            if rtt >= 0:
                echoes.append(Echo(self.seqs[i], Outcome.OK, rtt=rtt / 1e9))
            elif rtt == _ERROR:
                reason = self.reasons.get(i) if self.reasons else None
                echoes.append(Echo(self.seqs[i], Outcome.ERROR, reason=reason))
            else:
                echoes.append(Echo(self.seqs[i], Outcome.TIMEOUT))
        return RoundResult(tuple(echoes), duplicates=self.duplicates)


class IcmpEngine:
    """Sends echo rounds to any number of addresses over one socket per address family.

    Use as ``async with IcmpEngine(...) as engine`` (or ``await start()`` / ``close()``).
    ``mode`` is "auto" (raw if permitted, else dgram), "raw" or "dgram"; after start,
    ``engine.mode`` says which one is in use. ``counters`` counts received packets the engine
    could not use, by reason ("unmatched", "malformed", "foreign_id", "foreign_cookie",
    "other_type"), for self-metrics. ``tick`` is the grid in seconds on which sends, reads
    and round deadlines are batched (see the module docstring); 0 reads every reply as it
    comes and sends at exact times.
    """

    def __init__(
        self,
        mode: str = "auto",
        max_rate: float = 5000.0,
        payload_size: int = 56,
        *,
        burst: int | None = None,
        retention: float = 5.0,
        rng: random.Random | None = None,
        tick: float = DEFAULT_TICK,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"ICMP socket mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not max_rate > 0:
            raise ValueError(f"max_rate must be positive, not {max_rate!r}")
        if not 0 <= payload_size <= 65000:
            raise ValueError(f"payload_size must be 0…65000 bytes, not {payload_size!r}")
        self.requested_mode = mode
        self.mode = mode  # "raw" or "dgram" once started
        self.max_rate = max_rate
        self.counters: dict[str, int] = {}
        self.clock_fallbacks = 0  # replies timed without a usable kernel timestamp
        rng = rng or random.Random()
        self._ident = rng.getrandbits(16)
        self._cookie = rng.randbytes(min(_COOKIE_LEN, payload_size))
        self._payload = self._cookie + bytes(
            (0x10 + i) & 0xFF for i in range(payload_size - len(self._cookie))
        )
        self._bufsize = min(65535, max(2048, payload_size + 1024))
        self._burst = burst or max(1, round(max_rate * 0.005))
        self._pacer = _Pacer(max_rate, self._burst)
        self._tick = 0.0
        self._pace_gap = 0.0
        self._retention = retention
        self._families: dict[int, _Family] = {}
        self._unavailable: dict[int, str] = {}
        self._dests: dict[str, _Dest] = {}
        self._targets: dict[str, tuple[int, str, tuple[str, int] | tuple[str, int, int, int]]] = {}
        self._rounds: set[_Round] = set()
        self._retired: deque[_Round] = deque()
        # (due, order, round, index): the next echo of each round that has one left to send.
        self._queue: list[tuple[float, int, _Round, int]] = []
        self._deadlines: list[tuple[float, int, _Round]] = []  # (deadline, order, round)
        self._order = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pending = 0  # echoes of running rounds awaiting an answer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._warned_bug = False
        self._recv_errors_logged: set[int | None] = set()
        self.tick = tick

    @property
    def tick(self) -> float:
        """The grid in seconds (0: none). It follows the shared grid the scheduler starts
        rounds on (``follow_grid``); a change applies to rounds started afterwards."""
        return self._tick

    @tick.setter
    def tick(self, tick: float) -> None:
        if not 0.0 <= tick <= 1.0:
            raise ValueError(f"tick must be 0…1 s, not {tick!r}")
        self._tick = tick
        # Held back by the token bucket, the next batch waits until half the bucket is full
        # again rather than waking for every token.
        self._pace_gap = min(tick, max(1, self._burst // 2) / self.max_rate)
        if not tick:
            for fam in self._families.values():
                if fam.active:  # rounds running: no more ticks to read for them
                    self._set_reading(fam, True)

    def follow_grid(self, tick: float) -> None:
        """Adopt the shared grid's tick (a Grid follower)."""
        self.tick = tick

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the sockets (raises IcmpUnavailable) and start reading them."""
        if self._loop is not None:
            return
        loop = asyncio.get_running_loop()
        mode, socks, failures = _open_sockets(self.requested_mode)
        self.mode = mode
        raw = mode == "raw"
        for family, sock in socks.items():
            v6 = family == socket.AF_INET6
            # A datagram ICMP socket gets its identifier from the kernel; ours is ignored.
            template = EchoTemplate(self._ident, self._payload, v6=v6)
            fam = _Family(sock, raw, template, self._bufsize)
            self._families[family] = fam
            self._set_reading(fam, True)
        for family, exc in failures.items():
            self._unavailable[family] = f"{_family_name(family)} ICMP socket unavailable: {exc}"
            log.warning("%s ICMP disabled: %s", _family_name(family), exc)
        self._loop = loop
        log.info(
            "ICMP engine started: mode=%s families=%s identifier=%s max_rate=%g/s",
            mode,
            ",".join(_family_name(f) for f in socks),
            f"{self._ident:#06x}" if raw else "kernel",
            self.max_rate,
        )

    def close(self) -> None:
        """Stop reading, close the sockets; rounds still running finish with what they have."""
        if self._closed:
            return
        self._closed = True
        for fam in self._families.values():
            if self._loop is not None and not self._loop.is_closed():
                self._set_reading(fam, False)
            fam.sock.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._deadlines.clear()
        for r in self._rounds:
            r.wake()
        self._retired.clear()
        self._dests.clear()
        log.info("ICMP engine closed; ignored packets: %s", self.counters or "none")

    async def __aenter__(self) -> IcmpEngine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- introspection (tests, self-metrics) ---------------------------------------------------

    @property
    def ident(self) -> int:
        """The ICMP identifier on the wire (the kernel's on a datagram socket, once sent)."""
        fam = self._families.get(socket.AF_INET) or self._families.get(socket.AF_INET6)
        if fam is not None and not fam.raw and not self._closed:
            try:
                return int(fam.sock.getsockname()[1])
            except OSError:
                pass
        return self._ident

    @property
    def payload(self) -> bytes:
        """The payload of our echo requests; it starts with the per-engine cookie."""
        return self._payload

    @property
    def outstanding(self) -> int:
        """Echoes of running rounds still waiting for an answer."""
        return self._pending

    @property
    def tracked(self) -> int:
        """Echoes remembered (outstanding or retained to recognise late replies and duplicates)."""
        return sum(len(d.table) for d in self._dests.values())

    # -- rounds ----------------------------------------------------------------------------

    async def ping_round(self, address: str, settings: RoundSettings, tally: Tally) -> RoundResult:
        """Send ``settings.count`` echoes to ``address`` (an IP literal) and report each one.

        Echoes go out ``settings.spacing`` apart; the round ends when all are answered or the
        last one's timeout has passed. ``tally`` counts every late reply, duplicate and error
        for this target, including those that arrive after the round has ended;
        ``RoundResult.duplicates`` counts only the duplicates seen during the round.
        """
        loop = self._loop
        if loop is None or self._closed:
            raise RuntimeError("IcmpEngine is not running; use `async with IcmpEngine()`")
        target = self._targets.get(address)
        if target is None:
            try:
                target = _target(address)
            except ValueError as exc:
                return RoundResult((), failure=str(exc))
            if len(self._targets) >= 65536:  # addresses come and go with DNS; stay bounded
                self._targets.clear()
            if "%" not in address:  # an interface's index may change: look it up each time
                self._targets[address] = target
        family, key, sockaddr = target
        fam = self._families.get(family)
        if fam is None:
            return RoundResult((), failure=self._unavailable.get(family, "no ICMP socket"))
        count = settings.count
        if count <= 0:
            return RoundResult(())
        dest = self._dests.get(key)
        if dest is None:
            if len(self._dests) >= _MAX_DESTS:  # addresses come and go with DNS
                self._dests = {k: d for k, d in self._dests.items() if d.table or d.active}
            # Kept once idle: its sequence numbers go on from round to round, and the next
            # round does not build it again.
            dest = self._dests[key] = _Dest(key, fam, sockaddr)
        # Absolute send times, so spacing does not drift; one shared timer sends them all.
        r = _Round(dest, tally, settings, loop.time(), self.tick, loop.create_future())
        dest.active += 1
        fam.active += 1
        self._rounds.add(r)
        if self.tick:
            self._set_reading(fam, False)  # from now on the ticks read the socket
        try:
            self._order += 1
            heapq.heappush(self._queue, (r.start, self._order, r, 0))
            self._pump()
            # Done by the last answer, or by the deadline once the socket has been read
            # past it (so an answer stamped in time is never lost to a late loop).
            await r.waiter
            self._finish(r)
            result = r.result()
            self._retire(r, loop.time())
            return result
        finally:
            dest.active -= 1
            fam.active -= 1
            self._rounds.discard(r)
            if not r.finished:  # cancelled or failed: nothing of it stays outstanding
                if not fam.reading and not self._closed:
                    # Answers already queued are its, not strangers' ("unmatched") packets.
                    self._drain(fam)
                self._finish(r)  # its queued sends are skipped
                self._forget(r)
            if not fam.active and not self._closed:
                # Nothing to tick for: late replies and strangers' packets wake the loop.
                self._set_reading(fam, True)

    def _finish(self, r: _Round) -> None:
        r.finished = True
        self._pending -= r.pending
        r.pending = 0

    def _set_reading(self, fam: _Family, on: bool) -> None:
        """Register a socket with the loop (read when readable) or not (read on ticks)."""
        loop = asyncio.get_running_loop() if self._loop is None else self._loop
        if on == fam.reading:
            return
        fam.reading = on
        if on:
            loop.add_reader(fam.fd, self._drain, fam)
        else:
            loop.remove_reader(fam.fd)

    def _arm(self, when: float) -> None:
        """Make sure the send timer fires no later than ``when``."""
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        assert self._loop is not None
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """A tick: read what arrived since the last one, end the rounds whose deadline has
        passed, then send what is due."""
        self._timer = None
        if self._closed or self._loop is None:
            return
        read = 0
        for fam in self._families.values():
            if not fam.reading:
                read += self._drain(fam)
        deadlines = self._deadlines
        now = self._loop.time()
        while deadlines and deadlines[0][0] <= now:
            r = heapq.heappop(deadlines)[2]
            if r.waiter.done():
                continue
            fam = r.dest.fam
            if fam.drained_at < r.deadline_at:  # take what the kernel stamped before it
                self._drain(fam)
            r.wake()
        self._pump()
        if read >= _BUSY_READ and self._pending:
            # Heavy traffic: read more often than the grid, so that a socket buffer capped
            # by net.core.rmem_max (datagram mode, no CAP_NET_ADMIN) cannot overflow.
            self._arm(now + self.tick / 4)

    def _pump(self) -> None:
        """Send every queued echo that is due, as fast as the token bucket allows."""
        loop = self._loop
        if loop is None or self._closed:
            return
        queue = self._queue
        pacer = self._pacer
        now = loop.time()
        while queue:
            due, _, r, i = queue[0]
            if r.finished:
                heapq.heappop(queue)
                continue
            if due > now + _EARLY:
                self._arm(due)
                break
            wait = pacer.wait(now)
            if wait > 0.0:
                self._arm(now + (wait if wait > self._pace_gap else self._pace_gap))
                break
            pacer.take(now)
            if i + 1 < r.count:  # the round's next echo takes this one's place
                self._order += 1
                heapq.heapreplace(queue, (r.due(i + 1), self._order, r, i + 1))
            else:
                heapq.heappop(queue)
            if self._send(r, i):
                r.last_sent_at = loop.time()
            if i == r.count - 1:
                r.all_sent = True
                if not r.pending:
                    r.wake()
                elif r.deadline_at == math.inf:
                    r.deadline_at = grid_up(r.last_sent_at + r.timeout + _GRACE, self.tick)
                    self._order += 1
                    heapq.heappush(self._deadlines, (r.deadline_at, self._order, r))
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].waiter.done():  # answered in time: forget it
            heapq.heappop(deadlines)
        if deadlines:
            self._arm(deadlines[0][0])
        if self._pending and self.tick:
            # Answers are read on the next tick (one wake-up for all of them).
            self._arm(grid_after(now, self.tick))

    def _send(self, r: _Round, i: int) -> bool:
        dest = r.dest
        seq = dest.next_seq
        dest.next_seq = (seq + 1) & 0xFFFF
        r.seqs[i] = seq
        r.sent = i + 1
        packet = dest.fam.template.build(seq)
        dest.table[seq] = r
        # Same clock as SO_TIMESTAMPNS, read as late as possible before the packet leaves.
        r.sent_ns[i] = time.time_ns()
        try:
            dest.fam.sock.sendto(packet, dest.sockaddr)
        except OSError as exc:
            if dest.table.get(seq) is r:
                del dest.table[seq]  # nothing went out, so nothing can answer it
            name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else "unknown"
            reason = f"send:{name}"
            r.rtt_ns[i] = _ERROR
            if r.reasons is None:
                r.reasons = {}
            r.reasons[i] = reason
            r.tally.errors[reason] += 1
            log.debug("echo to %s not sent: %s", dest.key, exc)
            return False
        r.pending += 1
        self._pending += 1
        return True

    def _retire(self, r: _Round, now: float) -> None:
        """Keep a finished round's echoes a while for late replies and duplicates, then prune."""
        retired = self._retired
        r.retire_at = now + self._retention
        retired.append(r)
        while retired and retired[0].retire_at <= now:
            self._forget(retired.popleft())

    def _forget(self, r: _Round) -> None:
        dest = r.dest
        table = dest.table
        for i in range(r.sent):
            seq = r.seqs[i]
            if table.get(seq) is r:
                del table[seq]

    # -- receiving -------------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _drain(self, fam: _Family) -> int:
        """Read everything queued on ``fam``'s socket: on a tick (or when readable, while the
        sockets are registered), and at a round's deadline. Returns the packets read."""
        if self._loop is not None:
            fam.drained_at = self._loop.time()
        recvmsg = fam.sock.recvmsg
        bufsize = fam.bufsize
        read = 0
        for _ in range(_BATCH):
            try:
                data, ancdata, flags, addr = recvmsg(bufsize, _ANCBUFSIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if fam.raw or self._closed:
                    if exc.errno not in self._recv_errors_logged:
                        self._recv_errors_logged.add(exc.errno)
                        log.warning("ICMP receive failed: %s", exc)
                    break
                # A datagram socket reports an ICMP error as a pending socket error; its
                # details wait on the error queue.
                self._drain_errqueue(fam)
                continue
            read += 1
            rx_ns = 0
            for level, ctype, cdata in ancdata:
                if ctype == SO_TIMESTAMPNS and level == _SOL_SOCKET:
                    sec, nsec = _TIMESPEC.unpack_from(cdata)
                    rx_ns = sec * 1_000_000_000 + nsec
            try:
                self._on_packet(fam, data, addr[0], rx_ns, flags)
            except Exception:  # a bad packet must never take the engine down
                self._count("malformed")
                if not self._warned_bug:
                    self._warned_bug = True
                    log.warning("ICMP packet could not be handled", exc_info=True)
        if not fam.raw and not self._closed:
            self._drain_errqueue(fam)
        return read

    def _drain_errqueue(self, fam: _Family) -> None:
        for _ in range(_BATCH):
            try:
                data, ancdata, _flags, addr = fam.sock.recvmsg(
                    fam.bufsize, _ANCBUFSIZE, socket.MSG_ERRQUEUE
                )
            except OSError:  # EAGAIN: empty
                return
            reason = None
            for level, ctype, cdata in ancdata:
                if (level == socket.IPPROTO_IP and ctype == IP_RECVERR) or (
                    level == socket.IPPROTO_IPV6 and ctype == IPV6_RECVERR
                ):
                    reason = parse_extended_err(cdata)
            request = parse_echo_request(data, v6=fam.v6)
            if reason is None or request is None or not addr:
                self._count("other_type" if request is not None else "malformed")
                continue
            dst = addr[0]
            if fam.v6 and "%" in dst:
                dst = dst.partition("%")[0]
            self._on_error(dst, request[1], reason)

    def _on_packet(self, fam: _Family, data: bytes, src: str, rx_ns: int, flags: int) -> None:
        if fam.raw and not fam.v6 and len(data) >= 28 and not flags & _MSG_TRUNC:
            # The common case, without building a parse result: an echo reply on the raw
            # IPv4 socket (no IP options), checked exactly as parse_ipv4_packet would.
            vihl, proto, icmp_type, ident, seq = _V4_ICMP.unpack_from(data)
            if vihl == 0x45 and proto == IPPROTO_ICMP and icmp_type == ICMP_ECHO_REPLY:
                if not checksum_ok(data[20:]):
                    self._count("malformed")
                elif ident != self._ident:
                    self._count("foreign_id")
                elif not data.startswith(self._cookie, 28):
                    self._count("foreign_cookie")
                else:
                    self._on_reply(src, seq, rx_ns)
                return
        if fam.v6:
            parsed = parse_icmp6(data)
            if "%" in src:
                src = src.partition("%")[0]
        elif fam.raw:
            # The kernel does not check ICMP checksums before raw delivery; a truncated
            # read cannot be checked.
            parsed = parse_ipv4_packet(data, verify=not flags & _MSG_TRUNC)
        else:
            parsed = parse_icmp4(data)
        if isinstance(parsed, EchoReply):
            if fam.raw:
                if parsed.ident != self._ident:
                    self._count("foreign_id")
                    return
                if not parsed.payload.startswith(self._cookie):
                    self._count("foreign_cookie")
                    return
            self._on_reply(src, parsed.seq, rx_ns)
        elif isinstance(parsed, ErrorReport):
            if fam.raw and parsed.ident != self._ident:
                self._count("foreign_id")
                return
            self._on_error(parsed.dst, parsed.seq, parsed.reason)
        elif parsed is None:
            self._count("malformed")
        else:
            self._count("other_type")

    def _on_reply(self, src: str, seq: int, rx_ns: int) -> None:
        dest = self._dests.get(src)
        r = dest.table.get(seq) if dest is not None else None
        if r is None:
            self._count("unmatched")
            return
        i = r.seqs.index(seq, 0, r.sent)
        if r.rtt_ns[i] != _PENDING:
            # A second answer to the same echo (an error followed by a reply counts too).
            r.tally.duplicate += 1
            if not r.finished:
                r.duplicates += 1
            return
        rtt = rx_ns - r.sent_ns[i] if rx_ns else -1
        if rtt < 0:  # no kernel stamp, or the wall clock stepped back: time it ourselves
            rtt = max(0, time.monotonic_ns() - (r.sent_ns[i] + r.mono_offset))
            self.clock_fallbacks += 1
        if rtt <= r.timeout_ns and not r.finished:
            r.rtt_ns[i] = rtt
        else:
            r.rtt_ns[i] = _LATE
            r.tally.late += 1
        if not r.finished:
            r.pending -= 1
            self._pending -= 1
            if not r.pending and r.all_sent:
                r.wake()

    def _on_error(self, dst: str, seq: int, reason: str) -> None:
        dest = self._dests.get(dst)
        r = dest.table.get(seq) if dest is not None else None
        if r is None:
            self._count("unmatched")
            return
        i = r.seqs.index(seq, 0, r.sent)
        r.tally.errors[reason] += 1
        if r.rtt_ns[i] != _PENDING:
            return
        r.rtt_ns[i] = _ERROR
        if r.reasons is None:
            r.reasons = {}
        r.reasons[i] = reason
        if not r.finished:
            r.pending -= 1
            self._pending -= 1
            if not r.pending and r.all_sent:
                r.wake()


ENGINE: Final = "icmp-engine"  # the shared resource's key in a ProbeContext


def shared_engine(ctx: ProbeContext) -> IcmpEngine:
    """The context's ICMP engine, made from the ``icmp:`` block on first request; it sends,
    reads and ends rounds on the context's grid."""

    def make() -> IcmpEngine:
        s = ctx.settings("icmp", IcmpSettings)
        engine = IcmpEngine(mode=s.socket, max_rate=s.max_rate, payload_size=s.payload_size)
        ctx.grid.follow(engine.follow_grid)
        return engine

    return ctx.shared(ENGINE, IcmpEngine, make)


class IcmpProbe:
    """The "icmp" probe: echo rounds through the shared engine."""

    name = "icmp"
    voice = True  # an echo's round trip is the one a call's packets make

    def __init__(self, engine: IcmpEngine) -> None:
        self._engine = engine

    @classmethod
    def create(cls, ctx: ProbeContext) -> IcmpProbe:
        """The probe on the context's shared engine (asking for it starts it)."""
        return cls(shared_engine(ctx))

    @property
    def engine(self) -> IcmpEngine:
        """The shared engine."""
        return self._engine

    def run_round(
        self, address: str, settings: RoundSettings, tally: Tally
    ) -> Coroutine[Any, Any, RoundResult]:
        """Run one echo round against ``address`` (an IP literal).

        Hands back the engine's coroutine itself rather than awaiting it in one of its own:
        a frame less to resume at each wake-up of each round.
        """
        return self._engine.ping_round(address, settings, tally)


KIND: Final = ProbeKind(
    name=IcmpProbe.name,
    create=IcmpProbe.create,
    voice=IcmpProbe.voice,
    settings_key="icmp",
    settings_model=IcmpSettings,
)
