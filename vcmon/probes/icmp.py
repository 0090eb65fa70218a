"""The ICMP echo engine: one shared socket per address family, kernel receive timestamps.

Why it is built this way (DESIGN.md §2, "Measuring honestly"):

- One socket per family for every endpoint. A raw socket per target is O(n²): every raw
  socket receives every echo reply on the host.
- Replies are matched by (destination, sequence) against a table of outstanding echoes, with
  sequence numbers counted per destination, so there is no global 65,535-outstanding limit.
  A raw socket sees every echo reply on the host (ping's and fping's too), so there replies
  must also carry our identifier and our payload cookie.
- The receive time is the kernel's (``SO_TIMESTAMPNS``) and the send time is read just before
  ``sendto`` from the same clock, so neither a busy event loop nor pacing delays show up in the
  RTT. Whether a reply is late is decided by those timestamps, never by when the loop woke up:
  the socket is drained once more before a round is finalised.
- Sends go through a global token bucket so thousands of endpoints never burst at once. One
  engine-wide timer sends every due echo from a heap of absolute send times (no task wakeup
  or timer per echo); a round awaits one future, completed by its last answer or by its one
  deadline timer.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import os
import random
import socket
import struct
import sys
import time
from collections import deque
from types import TracebackType
from typing import Final

from vcmon.probes.base import Echo, Outcome, RoundResult, RoundSettings, Tally
from vcmon.probes.icmp_packet import (
    ICMP6_DEST_UNREACH,
    ICMP6_ECHO_REPLY,
    ICMP6_PACKET_TOO_BIG,
    ICMP6_PARAMETER_PROBLEM,
    ICMP6_TIME_EXCEEDED,
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REPLY,
    ICMP_PARAMETER_PROBLEM,
    ICMP_TIME_EXCEEDED,
    EchoReply,
    EchoTemplate,
    ErrorReport,
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
_RCVBUF: Final = 4 << 20  # rides out a loop stall of ~1 s at 5,000 replies/s
_ANCBUFSIZE: Final = 256  # a timespec, or a sock_extended_err plus the offender's address
_BATCH: Final = 4096  # packets per readable event; level-triggered epoll calls again
_GRACE: Final = 0.002  # s; the round timer may fire a hair early against the realtime clock
_EARLY: Final = 0.0002  # s; echoes due this soon go out with the current batch
_COOKIE_LEN: Final = 8

# Round states of one echo.
_PENDING: Final = 0
_OK: Final = 1
_LATE: Final = 2  # answered after its timeout
_ERROR: Final = 3  # an ICMP error answered it, or it could not be sent


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

    __slots__ = ("bufsize", "fd", "raw", "sock", "template", "v6")

    def __init__(self, sock: socket.socket, raw: bool, template: EchoTemplate, bufsize: int):
        self.sock = sock
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
        self.table: dict[int, tuple[_Round, int]] = {}
        self.active = 0  # rounds running against this address


class _Round:
    """The echoes of one round, by index in send order."""

    __slots__ = (
        "all_sent",
        "count",
        "deadline",
        "dest",
        "duplicates",
        "finished",
        "last_sent_at",
        "pending",
        "reasons",
        "rtt_ns",
        "sent",
        "sent_mono",
        "sent_ns",
        "seqs",
        "state",
        "tally",
        "timeout",
        "timeout_ns",
        "waiter",
    )

    def __init__(
        self, dest: _Dest, tally: Tally, count: int, timeout: float, waiter: asyncio.Future[None]
    ) -> None:
        self.dest = dest
        self.tally = tally
        self.count = count
        self.timeout = timeout
        self.timeout_ns = int(timeout * 1e9)
        self.seqs = [0] * count
        self.sent_ns = [0] * count
        self.sent_mono = [0] * count
        self.state = [_PENDING] * count
        self.rtt_ns = [0] * count
        self.reasons: list[str | None] = [None] * count
        self.sent = 0  # echoes handed to sendto, successfully or not
        self.pending = 0  # sent and not yet answered, errored or late
        self.duplicates = 0
        self.all_sent = False
        self.last_sent_at = -1.0  # loop time of the last echo that went out
        self.finished = False
        self.waiter = waiter  # done when every echo is answered or the last deadline passed
        self.deadline: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(None)

    def result(self) -> RoundResult:
        echoes = []
        for i in range(self.sent):
            state = self.state[i]
            if state == _OK:
                echoes.append(Echo(self.seqs[i], Outcome.OK, rtt=self.rtt_ns[i] / 1e9))
            elif state == _ERROR:
                echoes.append(Echo(self.seqs[i], Outcome.ERROR, reason=self.reasons[i]))
            else:
                echoes.append(Echo(self.seqs[i], Outcome.TIMEOUT))
        return RoundResult(tuple(echoes), duplicates=self.duplicates)


class IcmpEngine:
    """Sends echo rounds to any number of addresses over one socket per address family.

    Use as ``async with IcmpEngine(...) as engine`` (or ``await start()`` / ``close()``).
    ``mode`` is "auto" (raw if permitted, else dgram), "raw" or "dgram"; after start,
    ``engine.mode`` says which one is in use. ``counters`` counts received packets the engine
    could not use, by reason ("unmatched", "malformed", "foreign_id", "foreign_cookie",
    "other_type"), for self-metrics.
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
        self._pacer = _Pacer(max_rate, burst or max(1, round(max_rate * 0.005)))
        self._retention = retention
        self._families: dict[int, _Family] = {}
        self._unavailable: dict[int, str] = {}
        self._dests: dict[str, _Dest] = {}
        self._rounds: set[_Round] = set()
        self._retired: deque[tuple[float, _Round]] = deque()
        self._queue: list[tuple[float, int, _Round, int]] = []  # (due, order, round, index)
        self._order = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._warned_bug = False
        self._recv_errors_logged: set[int | None] = set()

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
            loop.add_reader(fam.fd, self._drain, fam)
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
                self._loop.remove_reader(fam.fd)
            fam.sock.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
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
        return sum(r.pending for r in self._rounds)

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
        try:
            family, key, sockaddr = _target(address)
        except ValueError as exc:
            return RoundResult((), failure=str(exc))
        fam = self._families.get(family)
        if fam is None:
            return RoundResult((), failure=self._unavailable.get(family, "no ICMP socket"))
        count = settings.count
        if count <= 0:
            return RoundResult(())
        dest = self._dests.get(key)
        if dest is None:
            dest = self._dests[key] = _Dest(key, fam, sockaddr)
        r = _Round(dest, tally, count, settings.timeout, loop.create_future())
        dest.active += 1
        self._rounds.add(r)
        try:
            # Absolute send times, so spacing does not drift; one shared timer sends them all.
            start = loop.time()
            queue = self._queue
            for i in range(count):
                self._order += 1
                heapq.heappush(queue, (start + i * settings.spacing, self._order, r, i))
            self._pump()
            await r.waiter
            if not self._closed:
                # A busy loop may wake up late: take whatever the kernel already stamped.
                self._drain(fam)
            r.finished = True
            result = r.result()
            self._retire(r, loop.time())
            return result
        finally:
            dest.active -= 1
            self._rounds.discard(r)
            if r.deadline is not None:
                r.deadline.cancel()
            if not r.finished:  # cancelled or failed: nothing of it stays outstanding
                r.finished = True  # its queued sends are skipped
                self._forget(r)

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
        self._timer = None
        self._pump()

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
                return
            wait = pacer.wait(now)
            if wait > 0.0:
                self._arm(now + wait)
                return
            heapq.heappop(queue)
            pacer.take(now)
            if self._send(r, i):
                r.last_sent_at = loop.time()
            if i == r.count - 1:
                r.all_sent = True
                if not r.pending:
                    r.wake()
                elif r.deadline is None:
                    r.deadline = loop.call_at(r.last_sent_at + r.timeout + _GRACE, r.wake)

    def _send(self, r: _Round, i: int) -> bool:
        dest = r.dest
        seq = dest.next_seq
        dest.next_seq = (seq + 1) & 0xFFFF
        r.seqs[i] = seq
        r.sent = i + 1
        packet = dest.fam.template.build(seq)
        entry = (r, i)
        dest.table[seq] = entry
        r.sent_mono[i] = time.monotonic_ns()
        # Same clock as SO_TIMESTAMPNS, read as late as possible before the packet leaves.
        r.sent_ns[i] = time.time_ns()
        try:
            dest.fam.sock.sendto(packet, dest.sockaddr)
        except OSError as exc:
            if dest.table.get(seq) is entry:
                del dest.table[seq]  # nothing went out, so nothing can answer it
            name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else "unknown"
            reason = f"send:{name}"
            r.state[i] = _ERROR
            r.reasons[i] = reason
            r.tally.errors[reason] += 1
            log.debug("echo to %s not sent: %s", dest.key, exc)
            return False
        r.pending += 1
        return True

    def _retire(self, r: _Round, now: float) -> None:
        """Keep a finished round's echoes a while for late replies and duplicates, then prune."""
        retired = self._retired
        retired.append((now + self._retention, r))
        while retired and retired[0][0] <= now:
            self._forget(retired.popleft()[1])

    def _forget(self, r: _Round) -> None:
        dest = r.dest
        table = dest.table
        for i in range(r.sent):
            entry = table.get(r.seqs[i])
            if entry is not None and entry[0] is r:
                del table[r.seqs[i]]
        if not table and not dest.active and self._dests.get(dest.key) is dest:
            del self._dests[dest.key]

    # -- receiving -------------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _drain(self, fam: _Family) -> None:
        """Read everything queued on ``fam``'s socket: on readable, and before a round ends."""
        recvmsg = fam.sock.recvmsg
        bufsize = fam.bufsize
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
        entry = dest.table.get(seq) if dest is not None else None
        if entry is None:
            self._count("unmatched")
            return
        r, i = entry
        state = r.state[i]
        if state != _PENDING:
            # A second answer to the same echo (an error followed by a reply counts too).
            r.tally.duplicate += 1
            if not r.finished:
                r.duplicates += 1
            return
        rtt = rx_ns - r.sent_ns[i] if rx_ns else -1
        if rtt < 0:  # no kernel stamp, or the wall clock stepped back: time it ourselves
            rtt = time.monotonic_ns() - r.sent_mono[i]
            self.clock_fallbacks += 1
        if rtt <= r.timeout_ns and not r.finished:
            r.state[i] = _OK
            r.rtt_ns[i] = rtt
        else:
            r.state[i] = _LATE
            r.tally.late += 1
        if not r.finished:
            r.pending -= 1
            if not r.pending and r.all_sent:
                r.wake()

    def _on_error(self, dst: str, seq: int, reason: str) -> None:
        dest = self._dests.get(dst)
        entry = dest.table.get(seq) if dest is not None else None
        if entry is None:
            self._count("unmatched")
            return
        r, i = entry
        r.tally.errors[reason] += 1
        if r.state[i] != _PENDING:
            return
        r.state[i] = _ERROR
        r.reasons[i] = reason
        if not r.finished:
            r.pending -= 1
            if not r.pending and r.all_sent:
                r.wake()


class IcmpProbe:
    """The "icmp" probe: echo rounds through the shared engine."""

    name = "icmp"

    def __init__(self, engine: IcmpEngine) -> None:
        self._engine = engine

    async def run_round(self, address: str, settings: RoundSettings, tally: Tally) -> RoundResult:
        """Run one echo round against ``address`` (an IP literal)."""
        return await self._engine.ping_round(address, settings, tally)
