"""User-space ICMP echo responder for the province namespace, and its controller.

The kernel's own echo replies are switched off in the province namespace; this process
answers instead, holding or dropping each reply as the destination's impairment profile
decides, and writes down what it really did (the ground truth that tests and benchmarks
compare measurements with).

Run inside the province namespace (the controller, :class:`ResponderProcess`, does this)::

    ip netns exec vcmon-prov python -m vcmon_lab.responder --profiles P.yaml --truth T.jsonl

How it works: one raw IPv4 ICMP socket, filtered to echo requests, with ``SO_TIMESTAMPNS``
so every request carries the kernel's receive time (CLOCK_REALTIME). Replies wait in a heap
keyed by due time ``rx + delay``; a plain ``select`` loop sleeps until shortly before the
next one is due, then spins, so replies leave within a few microseconds of their due time
(asyncio's timers have millisecond granularity, too coarse here). Replies are sent with
``IP_HDRINCL`` so their source is the address that was pinged.

Ground truth, one JSON object per line (appended, flushed when no reply is due within a
millisecond, on SIGUSR1 and on exit):

- per echo request: ``{"dst", "src", "id", "seq", "rx_ns", "tx_ns", "delay_ns",
  "planned_ns", "dropped"}`` plus ``"reason"`` when dropped. ``delay_ns`` is what really
  happened: ``time.time_ns()`` immediately before the reply's ``sendto`` minus the kernel's
  receive timestamp, so the responder's own scheduling is part of the truth; ``planned_ns``
  is what the profile asked for. Dropped echoes have null times.
- events: ``{"event": "ready" | "reload" | "stats" | "stop", "t_ns", …}``. ``reload`` carries
  the profiles file's ``sha256`` (first 16 hex digits) so a controller knows which version is
  live; ``stats`` and ``stop`` carry counters and the lateness (``delay_ns − planned_ns``)
  distribution.

With ``--truth-max-bytes`` the file is rotated once it grows past that size: it becomes
``<truth>.1`` (replacing the previous one) and a new file starts, so a lab left running keeps
at most about twice that; :class:`TruthLog` reads across a rotation.

Destinations without a profile and without a ``"*"`` fallback are ignored: no reply and no
truth record, like an address where nothing lives. Signals: SIGTERM/SIGINT stop cleanly
(replies still waiting are recorded as dropped with reason ``shutdown``), SIGHUP reloads the
profiles file (a bad file is logged and the old profiles stay), SIGUSR1 writes a stats event.
IPv4 only; ICMPv6 is not answered yet.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import heapq
import json
import logging
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vcmon.measure.probes.icmp_packet import checksum
from vcmon_lab.process import LabProcessError, NamespaceProcess
from vcmon_lab.profiles import DEFAULT_KEY, Channel, Profile, decide, dump_profiles, load_profiles
from vcmon_lab.truth import TruthReader, rotated

log = logging.getLogger(__name__)

SO_TIMESTAMPNS = 35  # Linux: kernel receive time as struct timespec in ancillary data
SOL_RAW = 255
ICMP_FILTER = 1
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8

#: Wake up this long before a reply is due and spin the rest, beating select()'s wake-up lag.
SPIN_NS = 200_000
#: Flush buffered truth only when no reply is due sooner than this, so writes never delay one.
FLUSH_GAP_NS = 1_000_000
#: …or regardless, once this many lines are waiting.
FLUSH_LINES = 4096
#: Packets read per pass before due replies get their turn again.
DRAIN_BATCH = 64
#: Lateness histogram: 1 µs buckets up to this many µs, then one overflow bucket.
LATENESS_BUCKETS_US = 10_000

_TIMESPEC = struct.Struct("qq")
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_PR_SET_TIMERSLACK = 29
_PR_SET_PDEATHSIG = 1


def profiles_digest(data: bytes) -> str:
    """Short content hash of a profiles file, as reported in ``ready`` and ``reload`` events."""
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """The parts of a received echo request a reply needs."""

    src: bytes  # 4 bytes
    dst: bytes
    tos: int
    ident: int
    seq: int
    icmp: bytes  # the whole ICMP message


def parse_echo_request(packet: bytes) -> EchoRequest | None:
    """Parse an IPv4 packet as read from a raw ICMP socket; None unless it is an echo request."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_ICMP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8 or icmp[0] != ICMP_ECHO_REQUEST or icmp[1] != 0:
        return None
    ident, seq = struct.unpack_from("!HH", icmp, 4)
    return EchoRequest(packet[12:16], packet[16:20], packet[1], ident, seq, bytes(icmp))


def build_echo_reply(req: EchoRequest) -> bytes:
    """IPv4 header plus echo reply, from the pinged address back to the sender.

    With IP_HDRINCL the kernel fills in total length, header checksum and packet id.
    """
    body = bytearray(req.icmp)
    body[0] = ICMP_ECHO_REPLY
    body[2:4] = b"\x00\x00"
    struct.pack_into("!H", body, 2, checksum(bytes(body)))
    header = _IPV4_HEADER.pack(0x45, req.tos, 0, 0, 0x4000, 64, socket.IPPROTO_ICMP, 0,
                               req.dst, req.src)  # fmt: skip
    return header + bytes(body)


@dataclass(slots=True)
class Lateness:
    """Histogram of how late replies left against their planned delay, in microseconds."""

    counts: list[int] = field(default_factory=lambda: [0] * (LATENESS_BUCKETS_US + 1))
    total: int = 0
    worst_ns: int = 0

    def add(self, late_ns: int) -> None:
        us = max(0, late_ns) // 1000
        self.counts[min(us, LATENESS_BUCKETS_US)] += 1
        self.total += 1
        self.worst_ns = max(self.worst_ns, late_ns)

    def quantile_us(self, q: float) -> int | None:
        """Upper bound (µs) of the bucket holding quantile ``q``; None when empty."""
        if not self.total:
            return None
        rank = q * self.total
        running = 0
        for us, count in enumerate(self.counts):
            running += count
            if running >= rank:
                return us + 1
        return LATENESS_BUCKETS_US + 1

    def summary(self) -> dict[str, Any]:
        return {
            "replies": self.total,
            "late_p50_us": self.quantile_us(0.5),
            "late_p99_us": self.quantile_us(0.99),
            "late_p999_us": self.quantile_us(0.999),
            "late_max_us": self.worst_ns / 1000.0 if self.total else None,
        }


# One pending reply: (due_ns, order, packet, src, dst, ident, seq, rx_ns, planned_ns).
_Pending = tuple[int, int, bytes, str, str, int, int, int, int]


class Responder:
    """The responder's event loop; construct, then :meth:`run` until a stop signal."""

    def __init__(
        self,
        profiles_path: Path,
        truth_path: Path,
        rng: random.Random,
        *,
        spin_ns: int = SPIN_NS,
        truth_max_bytes: int = 0,
    ) -> None:
        self.profiles_path = profiles_path
        self.truth_max_bytes = truth_max_bytes  # 0: never rotate
        self.spin_ns = spin_ns
        self.truth_path = truth_path
        self.rng = rng
        self.profiles: dict[str, Profile] = {}
        self.digest = ""
        self.channels: dict[str, Channel] = {}
        self.heap: list[_Pending] = []
        self.order = 0
        self.buffer: list[str] = []
        self.lateness = Lateness()
        self.received = 0
        self.ignored = 0
        self.dropped = 0
        self.send_errors = 0
        self.stopping = False
        self._truth: IO[str] | None = None

    # -- setup --------------------------------------------------------------------------------

    def load(self) -> None:
        """(Re)read the profiles file; raise ValueError/OSError and keep the old ones on error."""
        raw = self.profiles_path.read_bytes()
        profiles = load_profiles(self.profiles_path)
        self.profiles = profiles
        self.digest = profiles_digest(raw)

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # Only echo requests wake us: every other ICMP type is filtered in the kernel.
        mask = ~(1 << ICMP_ECHO_REQUEST) & 0xFFFFFFFF
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", mask))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setblocking(False)
        return sock

    # -- truth --------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> None:
        self.buffer.append(json.dumps({"event": kind, "t_ns": time.time_ns(), **fields}) + "\n")

    def _flush(self) -> None:
        if self.buffer and self._truth is not None:
            self._truth.write("".join(self.buffer))
            self._truth.flush()
            self.buffer.clear()
            if self.truth_max_bytes and self._truth.tell() >= self.truth_max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        # Whole lines only were written, so readers finish the old file under its new name.
        assert self._truth is not None
        self._truth.close()
        os.replace(self.truth_path, rotated(self.truth_path))
        self._truth = self.truth_path.open("a", encoding="utf-8")

    def _stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "ignored": self.ignored,
            "dropped": self.dropped,
            "send_errors": self.send_errors,
            "pending": len(self.heap),
            "cpu_s": round(time.process_time(), 3),
            **self.lateness.summary(),
        }

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Answer echoes until SIGTERM or SIGINT."""
        self.load()
        self._set_timer_slack()
        sock = self._open_socket()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        # Signals only write their number to the wake socket; the loop acts on it, so a
        # handler never runs in the middle of a send.
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, lambda _s, _f: None)
        self._truth = self.truth_path.open("a", encoding="utf-8")
        try:
            self._event("ready", pid=os.getpid(), sha256=self.digest, profiles=len(self.profiles))
            self._flush()
            log.info("responder ready: pid %d, %d profiles", os.getpid(), len(self.profiles))
            self._loop(sock, wake_r)
            for item in sorted(self.heap):
                self._record_drop(item[4], item[3], item[5], item[6], item[7], "shutdown")
            self.heap.clear()
            self._event("stop", **self._stats())
            self._flush()
            log.info("responder stopped: %s", self._stats())
        finally:
            signal.set_wakeup_fd(-1)
            self._truth.close()
            self._truth = None
            sock.close()
            wake_r.close()
            wake_w.close()

    def _loop(self, sock: socket.socket, wake: socket.socket) -> None:
        fds = [sock, wake]
        heap = self.heap
        now_ns = time.time_ns
        spin_ns = self.spin_ns
        while not self.stopping:
            self._send_due(sock)
            now = now_ns()
            gap = heap[0][0] - now if heap else None
            if self.buffer and (
                gap is None or gap > FLUSH_GAP_NS or len(self.buffer) > FLUSH_LINES
            ):
                self._flush()
                now = now_ns()
                gap = heap[0][0] - now if heap else None
            if gap is None:
                timeout: float | None = None
            elif gap <= spin_ns:
                due = heap[0][0]
                while now_ns() < due:
                    pass
                timeout = 0.0
            else:
                timeout = (gap - spin_ns) / 1e9
            readable, _, _ = select.select(fds, [], [], timeout)
            if readable:
                if sock in readable:
                    self._drain(sock)
                if wake in readable:
                    self._on_signals(wake)

    def _drain(self, sock: socket.socket) -> None:
        heap = self.heap
        for _ in range(DRAIN_BATCH):
            if heap and heap[0][0] <= time.time_ns():
                return  # a reply is due: it goes first, the kernel keeps the rest queued
            try:
                packet, ancdata, _flags, _addr = sock.recvmsg(65535, _CMSG_SPACE)
            except BlockingIOError:
                return
            rx_ns = 0
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    rx_ns = sec * 1_000_000_000 + nsec
            if not rx_ns:
                rx_ns = time.time_ns()  # no kernel stamp (should not happen): best we have
            self._on_request(packet, rx_ns)

    def _on_request(self, packet: bytes, rx_ns: int) -> None:
        req = parse_echo_request(packet)
        if req is None:
            return
        self.received += 1
        dst = socket.inet_ntoa(req.dst)
        profile = self.profiles.get(dst)
        if profile is None:
            # The fallback covers lab addresses only (198.18.0.0/15).
            if req.dst[0] == 198 and req.dst[1] in (18, 19):
                profile = self.profiles.get(DEFAULT_KEY)
            if profile is None:
                self.ignored += 1
                return
        src = socket.inet_ntoa(req.src)
        drop, delay, state = decide(profile, self.channels.get(dst, Channel.GOOD), self.rng)
        self.channels[dst] = state
        if drop:
            self._record_drop(dst, src, req.ident, req.seq, rx_ns, "profile")
            return
        planned = round(delay * 1e9)
        self.order += 1
        heapq.heappush(
            self.heap,
            (rx_ns + planned, self.order, build_echo_reply(req), src, dst, req.ident, req.seq,
             rx_ns, planned),
        )  # fmt: skip

    def _send_due(self, sock: socket.socket) -> None:
        heap = self.heap
        while heap:
            tx_ns = time.time_ns()
            if heap[0][0] > tx_ns:
                return
            _due, _order, packet, src, dst, ident, seq, rx_ns, planned = heapq.heappop(heap)
            try:
                sock.sendto(packet, (src, 0))
            except OSError as exc:
                self.send_errors += 1
                log.warning("reply to %s from %s failed: %s", src, dst, exc)
                self._record_drop(dst, src, ident, seq, rx_ns, f"send:{exc.errno}")
                continue
            delay = tx_ns - rx_ns
            self.lateness.add(delay - planned)
            self.buffer.append(
                f'{{"dst":"{dst}","src":"{src}","id":{ident},"seq":{seq},"rx_ns":{rx_ns},'
                f'"tx_ns":{tx_ns},"delay_ns":{delay},"planned_ns":{planned},"dropped":false}}\n'
            )

    def _record_drop(self, dst: str, src: str, ident: int, seq: int, rx: int, why: str) -> None:
        self.dropped += 1
        self.buffer.append(
            f'{{"dst":"{dst}","src":"{src}","id":{ident},"seq":{seq},"rx_ns":{rx},'
            f'"tx_ns":null,"delay_ns":null,"planned_ns":null,"dropped":true,"reason":"{why}"}}\n'
        )

    def _on_signals(self, wake: socket.socket) -> None:
        try:
            signums = wake.recv(4096)
        except BlockingIOError:
            return
        for signum in signums:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            elif signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGUSR1:
                self._event("stats", **self._stats())
                self._flush()

    def _reload(self) -> None:
        try:
            self.load()
        except (OSError, ValueError) as exc:
            log.error("profiles reload failed, keeping the old ones: %s", exc)
            self._event("reload", ok=False, error=str(exc), sha256=self.digest)
        else:
            log.info("profiles reloaded: %d profiles", len(self.profiles))
            self._event("reload", ok=True, sha256=self.digest, profiles=len(self.profiles))
        self._flush()

    @staticmethod
    def _set_timer_slack() -> None:
        # The default 50 µs timer slack would make every select() wake-up that much later.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(1), 0, 0, 0)
        except (OSError, AttributeError) as exc:
            log.debug("could not lower timer slack: %s", exc)


# --- reading the truth ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EchoTruth:
    """What the responder did with one echo request."""

    dst: str
    src: str
    id: int
    seq: int
    rx_ns: int
    tx_ns: int | None
    delay_ns: int | None
    planned_ns: int | None
    dropped: bool
    reason: str | None = None

    @property
    def delay(self) -> float | None:
        """Applied delay in seconds (kernel receive to reply send); None when dropped."""
        return None if self.delay_ns is None else self.delay_ns / 1e9


class TruthLog(TruthReader[EchoTruth]):
    """The responder's truth: :class:`EchoTruth` records (``echoes``) and events, read across
    rotation. With ``keep_echoes`` off only events are kept."""

    def __init__(self, path: Path, *, keep_echoes: bool = True) -> None:
        super().__init__(path, EchoTruth, keep_records=keep_echoes)

    @property
    def echoes(self) -> list[EchoTruth]:
        return self.records


# --- controlling a responder process ----------------------------------------------------------


class ResponderError(LabProcessError):
    """The responder did not start, reload or stop as asked."""


class ResponderProcess(NamespaceProcess):
    """Start, reconfigure and stop a responder inside a (province) network namespace."""

    name = "responder"
    error = ResponderError

    def __init__(
        self,
        netns: str,
        profiles_path: Path,
        truth_path: Path,
        *,
        seed: int | None = None,
        log_path: Path | None = None,
        realtime: int = 10,
        spin_us: int | None = None,
        cpus: Collection[int] | None = None,
        die_with_parent: bool = False,
        truth_max_bytes: int = 0,
    ) -> None:
        self.truth: TruthLog = TruthLog(truth_path)
        super().__init__(netns, log_path or truth_path.with_suffix(".log"), self.truth)
        self.die_with_parent = die_with_parent
        self.truth_max_bytes = truth_max_bytes
        self.cpus = sorted(cpus) if cpus else None
        self.realtime = realtime
        self.spin_us = spin_us
        self.profiles_path = profiles_path
        self.truth_path = truth_path
        self.seed = seed

    def write_profiles(self, profiles: Mapping[str, Profile]) -> str:
        """Atomically replace the profiles file; return its digest."""
        data = dump_profiles(profiles).encode()
        tmp = self.profiles_path.with_name(self.profiles_path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.profiles_path)
        return profiles_digest(data)

    def command(self) -> list[str]:
        """The command line that runs the responder in the namespace."""
        cmd = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "vcmon_lab.responder",
               "--profiles", str(self.profiles_path), "--truth", str(self.truth_path)]  # fmt: skip
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        if self.realtime:
            cmd += ["--realtime", str(self.realtime)]
        if self.spin_us is not None:
            cmd += ["--spin-us", str(self.spin_us)]
        if self.cpus:
            cmd += ["--cpus", ",".join(map(str, self.cpus))]
        if self.die_with_parent:
            cmd += ["--die-with-parent", str(os.getpid())]
        if self.truth_max_bytes:
            cmd += ["--truth-max-bytes", str(self.truth_max_bytes)]
        return cmd

    def start(self, profiles: Mapping[str, Profile], *, timeout: float = 10.0) -> None:
        """Write ``profiles``, start the process and wait for its ``ready`` event."""
        if self._proc is not None:
            raise ResponderError("responder already started")
        digest = self.write_profiles(profiles)
        before = len(self.truth.poll().events)
        self._spawn(self.command())
        self._wait_event(before, "ready", digest, timeout)

    def set_profiles(self, profiles: Mapping[str, Profile], *, timeout: float = 5.0) -> None:
        """Replace the live profiles (SIGHUP) and wait until the responder uses them."""
        self._require()
        digest = self.write_profiles(profiles)
        before = len(self.truth.poll().events)
        self._signal(signal.SIGHUP)
        self._wait_event(before, "reload", digest, timeout)

    def stats(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Ask for a ``stats`` event (SIGUSR1) and return it."""
        self._require()
        before = len(self.truth.poll().events)
        self._signal(signal.SIGUSR1)
        return self._wait_event(before, "stats", None, timeout)


# --- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m vcmon_lab.responder --profiles FILE --truth FILE``."""
    parser = argparse.ArgumentParser(
        prog="python -m vcmon_lab.responder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profiles", type=Path, required=True, help="JSON or YAML profiles file")
    parser.add_argument("--truth", type=Path, required=True, help="JSON-lines ground truth output")
    parser.add_argument("--seed", type=int, default=None, help="seed the impairment RNG")
    parser.add_argument(
        "--realtime",
        type=int,
        default=0,
        metavar="PRIO",
        help="SCHED_FIFO priority (1-99; 0, the default, keeps the normal scheduler)",
    )
    parser.add_argument(
        "--die-with-parent",
        type=int,
        default=0,
        metavar="PID",
        help="exit (SIGTERM) when the process PID that started us dies",
    )
    parser.add_argument(
        "--cpus",
        type=lambda text: {int(c) for c in text.split(",")},
        default=None,
        help="comma-separated CPUs to run on (keeps a spinning responder off the prober's CPU)",
    )
    parser.add_argument(
        "--spin-us",
        type=int,
        default=SPIN_NS // 1000,
        help="wake this many µs before a reply is due and spin the rest",
    )
    parser.add_argument(
        "--truth-max-bytes",
        type=int,
        default=0,
        metavar="N",
        help="rotate the truth file to <truth>.1 past this size (0, the default: never)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s responder %(levelname)s %(message)s"
    )
    if args.die_with_parent:
        # A test run that is killed outright must not leave a responder behind.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != args.die_with_parent:
            log.error("parent %d is already gone", args.die_with_parent)
            return 1
    if args.cpus:
        try:
            os.sched_setaffinity(0, args.cpus)
        except OSError as exc:
            log.warning("cannot pin to CPUs %s: %s", args.cpus, exc)
    if args.realtime:
        try:
            # Ordinary tasks then cannot preempt a reply that is due; the kernel's RT throttle
            # (sched_rt_runtime_us) still bounds what a spinning responder can take.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.realtime))
        except OSError as exc:
            log.warning("cannot run with real-time priority %d: %s", args.realtime, exc)
    responder = Responder(
        args.profiles,
        args.truth,
        random.Random(args.seed),
        spin_ns=args.spin_us * 1000,
        truth_max_bytes=args.truth_max_bytes,
    )
    try:
        responder.run()
    except (OSError, ValueError) as exc:
        log.error("responder failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
