"""TCP, SIP OPTIONS, HTTP and UDP echo on every lab address, impaired per endpoint profile.

Runs in the province namespace beside the ICMP responder (:class:`vcmon_lab.netns.Lab` starts
both) and reads the same profiles file. Every endpoint address is local there through an
AnyIP route, so one socket bound to the wildcard address per port serves them all::

    ip netns exec vcmon-prov python -m vcmon_lab.services --profiles P.json --truth S.jsonl

Ports: TCP 5061 (the SIP-TLS port; no TLS is spoken) and 1720 (H.225) accept connections and
discard what they read; SIP on UDP and TCP 5060 answers OPTIONS with ``200 OK`` (RFC 3261
§11), other methods with 405 and ACK with nothing; HTTP on TCP 80 serves ``GET /`` and
``HEAD /`` (then closes); UDP 7 echoes datagrams.

Each message is judged by the profile of the address it was sent to (``IP_PKTINFO`` for UDP,
the accepted socket's own address for TCP) with :func:`vcmon_lab.profiles.decide`: a lost one
gets no answer; a kept one is answered after the drawn delay, counted from the kernel's
receive timestamp (UDP) or from reading the request (TCP), to about a millisecond (asyncio
timers). UDP answers leave from the address that was asked. On one TCP connection answers
keep their order, as a byte stream would. An endpoint that is down, or has no profile, resets
TCP connections and ignores UDP. A malformed SIP message is ignored on UDP and answered 400
at once on TCP (then the connection closes); malformed HTTP gets 400.

Limitations: the kernel completes the TCP handshake before this process sees the connection,
so the handshake is neither delayed nor lost, and a down endpoint resets the connection (seen
by the client at connect() or at its first read) instead of staying silent; fixing that needs
packet-level interception. Loss on TCP withholds the answer instead of costing a retransmission
timeout as on a real link. Timing is asyncio's: answers leave up to ~1 ms after they are due,
never before (the process runs SCHED_FIFO when given ``--realtime`` to stay so on a busy host).

Ground truth (``--truth``), one JSON object per line:

- per connection or message: ``{"service", "dst", "src", "sport", "dport", "rx_ns", "tx_ns",
  "delay_ns", "planned_ns", "dropped"}`` plus ``"reason"`` when dropped (``down``,
  ``profile``, ``overload``, ``closed``, ``send:<errno>``). ``service`` is ``tcp`` (a connection
  accepted, or reset), ``sip-udp``, ``sip-tcp``, ``http`` or ``echo``; ``delay_ns`` is
  ``tx_ns - rx_ns``, with ``tx_ns`` taken just before the answer is handed to the kernel.
- events: ``{"event": "ready" | "reload" | "stats" | "stop", "t_ns", …}`` as the responder's.

Signals: SIGTERM/SIGINT stop cleanly, SIGHUP reloads the profiles file (a bad file is logged and
the old profiles stay), SIGUSR1 writes a stats event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import resource
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, NamedTuple

from vcmon_lab.process import LabProcessError, NamespaceProcess, wait_until
from vcmon_lab.profiles import DEFAULT_KEY, LAB_NET, Channel, Profile, decide, load_profiles
from vcmon_lab.responder import SO_TIMESTAMPNS, profiles_digest
from vcmon_lab.truth import TruthReader

log = logging.getLogger(__name__)

SIP_PORT = 5060
ACCEPT_PORTS = (5061, 1720)
HTTP_PORT = 80
ECHO_PORT = 7
#: The wildcard address: inside the province namespace it covers every lab endpoint.
ANY = "0.0.0.0"

MAX_MESSAGE = 16 * 1024  # bytes buffered per TCP connection before the message counts as bad
MAX_DATAGRAM = 65535
MAX_CONNECTIONS = 4000  # beyond this, new connections are reset (file descriptors are finite)
MAX_PENDING = 50_000  # answers waiting for their delay …
MAX_PENDING_BYTES = 32 << 20  # … and their bytes; beyond either, messages are dropped
IDLE_TIMEOUT = 60.0  # s without data before a TCP connection is closed
DRAIN_BATCH = 64  # datagrams read per wake-up before other work gets its turn
FLUSH_DELAY = 0.01  # s: truth lines are written this soon after the first one is buffered
FLUSH_LINES = 4096

IP_PKTINFO = 8  # Linux; the socket module lacks it. struct in_pktinfo: ifindex, spec_dst, addr
_PKTINFO = struct.Struct("i4s4s")
_TIMESPEC = struct.Struct("qq")
_ANC_SPACE = socket.CMSG_SPACE(_PKTINFO.size) + socket.CMSG_SPACE(_TIMESPEC.size)
_LINGER_RST = struct.pack("ii", 1, 0)  # close() then sends RST instead of FIN
_PR_SET_PDEATHSIG = 1
_PR_SET_TIMERSLACK = 29


# --- SIP and HTTP, pure ---------------------------------------------------------------------

_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) (\S+) SIP/2\.0", re.ASCII | re.IGNORECASE)
_HEADER_NAME = re.compile(_TOKEN, re.ASCII)
_CSEQ = re.compile(rf"(\d{{1,10}})\s+({_TOKEN})", re.ASCII)
_DIGITS = re.compile(r"\d{1,7}", re.ASCII)
_SENT_BY = re.compile(
    r"\s*SIP\s*/\s*2\.0\s*/\s*[A-Za-z]+\s+(\[[^\]]*\]|[^\s:;,]+)(?::\d+)?\s*",
    re.ASCII | re.IGNORECASE,
)
_TAG = re.compile(r";\s*tag\s*=", re.ASCII | re.IGNORECASE)
_HTTP_REQUEST = re.compile(r"([A-Z]+) (\S+) HTTP/1\.[01]", re.ASCII)
_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length"}
#: Headers a response copies from its request (RFC 3261 §8.2.6.2), in output order.
_COPIED = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_KEPT = frozenset(name for name, _ in _COPIED)


@dataclass(frozen=True, slots=True)
class SipRequest:
    """The parts of a SIP request an answer needs; ``error`` says why it is malformed."""

    method: str
    uri: str
    headers: dict[str, list[str]]  # lower-case full name → values in order, copied headers only
    error: str | None = None


def head_end(data: bytes | bytearray) -> tuple[int, int] | None:
    """(end of the header block, start of the body), or None while the blank line is missing."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    found = [(i, i + n) for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    return min(found) if found else None


def _lines(data: bytes | bytearray) -> list[str]:
    # Latin-1 maps every byte to one character, so copied headers go back out byte for byte.
    cut = head_end(data)
    head = bytes(data[: cut[0]] if cut else data).decode("latin-1")
    lines = [line.rstrip("\r") for line in head.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)  # RFC 3261 §7.5: empty lines before the start line are ignored
    return lines


def content_length(head: bytes | bytearray) -> int | None:
    """Content-Length of a SIP message head (0 when absent), or None when it is invalid."""
    for line in _lines(head)[1:]:
        name, colon, value = line.partition(":")
        if colon and _COMPACT.get(name.strip().lower(), name.strip().lower()) == "content-length":
            digits = value.strip()
            return int(digits) if _DIGITS.fullmatch(digits) else None
    return 0


def parse_sip(data: bytes | bytearray) -> SipRequest:
    """Parse a SIP request leniently; never raises (bad input sets ``error``)."""
    lines = _lines(data)
    if not lines:
        return SipRequest("", "", {}, "empty message")
    headers: dict[str, list[str]] = {}
    error: str | None = None
    last: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # a folded continuation of the previous header
            if last is not None:
                headers[last][-1] += " " + line.strip()
            continue
        raw_name, colon, value = line.partition(":")
        name = raw_name.strip().lower()
        last = None
        if not colon or not _HEADER_NAME.fullmatch(name):
            error = error or "bad header line"
            continue
        name = _COMPACT.get(name, name)
        if name in _KEPT:
            headers.setdefault(name, []).append(value.strip())
            last = name
    start = _REQUEST_LINE.fullmatch(lines[0])
    method, uri = (start.group(1), start.group(2)) if start else ("", "")
    if start is None:
        error = "bad request line"
    for name, label in _COPIED:
        if not headers.get(name):
            error = error or f"missing {label}"
        elif name != "via" and len(headers[name]) > 1:
            error = error or f"repeated {label}"
    cseq = _CSEQ.fullmatch(headers["cseq"][0]) if headers.get("cseq") else None
    if error is None and (cseq is None or cseq.group(2) != method or int(cseq.group(1)) >= 2**31):
        error = "bad CSeq"
    return SipRequest(method, uri, headers, error)


def stamp_via(via: str, src: str, sport: int) -> str:
    """Add ``received`` (RFC 3261 §18.2.1) and fill ``rport`` (RFC 3581) in the topmost Via."""
    top, comma, rest = via.partition(",")
    sent_by = _SENT_BY.match(top)
    if sent_by is None:
        return via
    params = top[sent_by.end() :].split(";")
    rport = False
    for i, param in enumerate(params):
        if param.strip().lower() == "rport":
            params[i] = f"rport={sport}"
            rport = True
    top = top[: sent_by.end()].rstrip() + ";".join(params)
    if rport or sent_by.group(1) != src:
        top += f";received={src}"
    return top + comma + rest


def _with_tag(to: str, call_id: str) -> str:
    # A UAS must tag To (RFC 3261 §8.2.6.2); deriving the tag from Call-ID gives a
    # retransmitted request the same answer.
    params = to[to.rfind(">") + 1 :]
    if _TAG.search(params):
        return to
    return f"{to};tag={hashlib.sha256(call_id.encode('latin-1')).hexdigest()[:10]}"


def sip_response(req: SipRequest, src: str, sport: int) -> bytes | None:
    """The answer to ``req`` from ``src:sport``: 200 to OPTIONS, 405, 400; None for ACK."""
    if req.error is None and req.method == "ACK":
        return None
    if req.error is not None:
        status = "400 Bad Request"
    elif req.method == "OPTIONS":
        status = "200 OK"
    else:
        status = "405 Method Not Allowed"
    out = [f"SIP/2.0 {status}"]
    call_id = req.headers.get("call-id", [""])[0]
    for name, label in _COPIED:
        values = req.headers.get(name, [])
        if name == "via":
            out += [
                f"Via: {stamp_via(v, src, sport) if i == 0 else v}" for i, v in enumerate(values)
            ]
        elif values:
            out.append(f"{label}: {_with_tag(values[0], call_id) if name == 'to' else values[0]}")
    if req.error is not None:
        out.append(f'Warning: 399 vcmon-lab "{req.error}"')
    else:
        out += ["Allow: OPTIONS", "Accept: application/sdp"]
    out += ["Server: vcmon-lab", "Content-Length: 0"]
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


def http_response(head: bytes | bytearray, dst: str) -> tuple[int, bytes]:
    """(status, whole response) for an HTTP request head; ``GET /`` and ``HEAD /`` get 200."""
    lines = _lines(head)
    start = _HTTP_REQUEST.fullmatch(lines[0]) if lines else None
    method = start.group(1) if start else ""
    extra = ""
    if start is None:
        status, reason = 400, "Bad Request"
    elif method not in ("GET", "HEAD"):
        status, reason, extra = 405, "Method Not Allowed", "Allow: GET, HEAD\r\n"
    elif _path(start.group(2)) != "/":
        status, reason = 404, "Not Found"
    else:
        status, reason = 200, "OK"
    body = (f"vcmon lab endpoint {dst}\n" if status == 200 else f"{status} {reason}\n").encode()
    header = (
        f"HTTP/1.1 {status} {reason}\r\nServer: vcmon-lab\r\n{extra}"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return status, header + (b"" if method == "HEAD" else body)


def _path(target: str) -> str:
    # By hand: urlsplit raises on some malformed targets, and this must never raise.
    if "://" in target:  # absolute form, as sent to proxies
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return target.split("?", 1)[0]


# --- the services -----------------------------------------------------------------------------


class Flow(NamedTuple):
    """Who asked what: the service, the endpoint asked, and the asker."""

    service: str
    dst: str
    src: str
    sport: int
    dport: int


def _sendmsg(sock: socket.socket, payload: bytes, flow: Flow) -> bool:
    # IP_PKTINFO's spec_dst picks the source, so the answer comes from the address asked.
    pktinfo = _PKTINFO.pack(0, socket.inet_aton(flow.dst), bytes(4))
    sock.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, (flow.src, flow.sport))
    return True


class Services:
    """All listeners and their bookkeeping; construct inside the running loop, then :meth:`run`."""

    def __init__(self, profiles_path: Path, truth_path: Path | None, rng: random.Random) -> None:
        self.loop = asyncio.get_running_loop()
        self.profiles_path = profiles_path
        self.truth_path = truth_path
        self.rng = rng
        self.profiles: dict[str, Profile] = {}
        self.digest = ""
        self.channels: dict[str, Channel] = {}
        self.counts = dict.fromkeys(
            ("received", "answered", "dropped", "reset", "ignored", "malformed", "send_errors"), 0
        )
        self.pending = 0
        self.pending_bytes = 0
        self.connections: set[Connection] = set()
        self.stopping = asyncio.Event()
        self._buffer: list[str] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._truth: IO[str] | None = None
        self._warned: set[str] = set()

    # -- profiles and decisions ---------------------------------------------------------------

    def load(self) -> None:
        """(Re)read the profiles file; raise ValueError/OSError and keep the old ones on error."""
        raw = self.profiles_path.read_bytes()
        self.profiles = load_profiles(self.profiles_path)
        self.digest = profiles_digest(raw)

    def profile_for(self, dst: str) -> Profile | None:
        """The endpoint's profile, else the ``*`` fallback for lab addresses, else None."""
        profile = self.profiles.get(dst)
        if profile is None and _in_lab(dst):
            profile = self.profiles.get(DEFAULT_KEY)
        return profile

    def judge(self, flow: Flow, rx_ns: int) -> int | None:
        """Planned delay (ns) for a message, or None when it goes unanswered (and is recorded)."""
        self.counts["received"] += 1
        profile = self.profile_for(flow.dst)
        if profile is None:
            self.counts["ignored"] += 1
            return None
        drop, delay, state = decide(profile, self.channels.get(flow.dst, Channel.GOOD), self.rng)
        self.channels[flow.dst] = state
        if drop:
            self.record(flow, rx_ns, reason="profile" if profile.up else "down")
            return None
        return round(delay * 1e9)

    def answer(
        self, flow: Flow, rx_ns: int, planned_ns: int, size: int, send: Callable[[], bool]
    ) -> None:
        """Call ``send`` at ``rx_ns + planned_ns`` and record what happened."""
        if self.pending >= MAX_PENDING or self.pending_bytes + size > MAX_PENDING_BYTES:
            self.warn_once("overload", "too many answers waiting; dropping until some leave")
            self.record(flow, rx_ns, reason="overload")
            return
        self.pending += 1
        self.pending_bytes += size
        wait = (rx_ns + planned_ns - time.time_ns()) / 1e9
        self.loop.call_later(max(0.0, wait), self._fire, flow, rx_ns, planned_ns, size, send)

    def _fire(
        self, flow: Flow, rx_ns: int, planned_ns: int, size: int, send: Callable[[], bool]
    ) -> None:
        self.pending -= 1
        self.pending_bytes -= size
        tx_ns = time.time_ns()
        try:
            sent = send()
        except OSError as exc:
            self.counts["send_errors"] += 1
            self.warn_once("send", "answer to %s:%d failed: %s", flow.src, flow.sport, exc)
            self.record(flow, rx_ns, reason=f"send:{exc.errno}")
            return
        if not sent:
            self.record(flow, rx_ns, reason="closed")
            return
        self.counts["answered"] += 1
        self.record(flow, rx_ns, tx_ns=tx_ns, planned_ns=planned_ns)

    def malformed(self, service: str, why: str) -> None:
        """Count a malformed message; log only the first of each service."""
        self.counts["malformed"] += 1
        self.warn_once(
            f"malformed:{service}",
            "malformed %s message (%s); further ones are only counted",
            service,
            why,
        )

    def warn_once(self, key: str, msg: str, *args: object) -> None:
        """Log a warning the first time ``key`` comes up, so garbage cannot flood the log."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # -- truth --------------------------------------------------------------------------------

    def record(
        self,
        flow: Flow,
        rx_ns: int,
        *,
        tx_ns: int | None = None,
        planned_ns: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Write one truth line; a reason marks the message (or connection) as dropped."""
        if reason is not None:
            self.counts["dropped"] += 1
        if self._truth is None:
            return
        line: dict[str, Any] = {
            **flow._asdict(),
            "rx_ns": rx_ns,
            "tx_ns": tx_ns,
            "delay_ns": None if tx_ns is None else tx_ns - rx_ns,
            "planned_ns": planned_ns,
            "dropped": reason is not None,
        }
        if reason is not None:
            line["reason"] = reason
        self._buffer.append(json.dumps(line, separators=(",", ":")) + "\n")
        if len(self._buffer) >= FLUSH_LINES:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_later(FLUSH_DELAY, self.flush)

    def event(self, kind: str, **fields: Any) -> None:
        """Write an event line and flush at once (controllers wait for these)."""
        if self._truth is not None:
            self._buffer.append(
                json.dumps({"event": kind, "t_ns": time.time_ns(), **fields}) + "\n"
            )
        self.flush()

    def flush(self) -> None:
        """Write buffered truth lines to the file."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._buffer and self._truth is not None:
            self._truth.write("".join(self._buffer))
            self._truth.flush()
        self._buffer.clear()

    def stats(self) -> dict[str, Any]:
        """Counters for the stats and stop events."""
        return {
            **self.counts,
            "pending": self.pending,
            "connections": len(self.connections),
            "cpu_s": round(time.process_time(), 3),
        }

    # -- UDP ----------------------------------------------------------------------------------

    def _open_udp(
        self, port: int, service: str, handler: Callable[[socket.socket, Flow, bytes, int], None]
    ) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((ANY, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.loop.add_reader(sock.fileno(), self._drain_udp, sock, service, port, handler)
        return sock

    def _drain_udp(
        self,
        sock: socket.socket,
        service: str,
        port: int,
        handler: Callable[[socket.socket, Flow, bytes, int], None],
    ) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(MAX_DATAGRAM, _ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.warn_once(f"recv:{service}", "%s receive failed: %s", service, exc)
                return
            dst, rx_ns = None, 0
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                    dst = socket.inet_ntoa(value[8:12])  # ipi_addr: the header's destination
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    rx_ns = sec * 1_000_000_000 + nsec
            if dst is None:
                continue  # cannot happen with IP_PKTINFO on; nothing to judge it by
            handler(sock, Flow(service, dst, addr[0], addr[1], port), data, rx_ns or time.time_ns())

    def _on_echo(self, sock: socket.socket, flow: Flow, data: bytes, rx_ns: int) -> None:
        planned = self.judge(flow, rx_ns)
        if planned is not None:
            self.answer(flow, rx_ns, planned, len(data), partial(_sendmsg, sock, data, flow))

    def _on_sip_udp(self, sock: socket.socket, flow: Flow, data: bytes, rx_ns: int) -> None:
        if not data.strip(b"\r\n"):
            return  # a CRLF keep-alive (RFC 5626 §4.4.1)
        req = parse_sip(data)
        if req.error is not None:
            self.malformed(flow.service, req.error)
            return
        reply = sip_response(req, flow.src, flow.sport)
        if reply is None:
            return
        planned = self.judge(flow, rx_ns)
        if planned is not None:
            self.answer(flow, rx_ns, planned, len(reply), partial(_sendmsg, sock, reply, flow))

    # -- TCP ----------------------------------------------------------------------------------

    def accepted(self, conn: Connection) -> bool:
        """Judge a new connection by its endpoint's profile; reset it and return False if not up."""
        flow = conn.flow._replace(service="tcp")
        rx_ns = time.time_ns()
        self.connections.add(conn)
        profile = self.profile_for(flow.dst)
        reason = None
        if profile is None:
            self.counts["ignored"] += 1
        elif not profile.up:
            reason = "down"
        elif len(self.connections) > MAX_CONNECTIONS:
            self.warn_once(
                "connections", "more than %d connections; resetting new ones", MAX_CONNECTIONS
            )
            reason = "overload"
        else:
            self.record(flow, rx_ns)
            return True
        if reason is not None:
            self.record(flow, rx_ns, reason=reason)
        self.counts["reset"] += 1
        conn.reset()
        return False

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        self.load()
        if self.truth_path is not None:
            self._truth = self.truth_path.open("a", encoding="utf-8")
        servers: list[asyncio.Server] = []
        udp: list[socket.socket] = []
        try:
            tcp: list[tuple[int, type[Connection]]] = [
                (SIP_PORT, SipConnection),
                (HTTP_PORT, HttpConnection),
            ]
            tcp += [(port, Connection) for port in ACCEPT_PORTS]
            for port, kind in tcp:
                factory = partial(kind, self, port)
                servers.append(await self.loop.create_server(factory, ANY, port, backlog=1024))
            udp.append(self._open_udp(SIP_PORT, "sip-udp", self._on_sip_udp))
            udp.append(self._open_udp(ECHO_PORT, "echo", self._on_echo))
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self.stopping.set)
            self.loop.add_signal_handler(signal.SIGHUP, self._reload)
            self.loop.add_signal_handler(
                signal.SIGUSR1, lambda: self.event("stats", **self.stats())
            )
            self.event("ready", pid=os.getpid(), sha256=self.digest, profiles=len(self.profiles))
            log.info("services ready: pid %d, %d profiles", os.getpid(), len(self.profiles))
            await self.stopping.wait()
        finally:
            for server in servers:
                server.close()
            for conn in list(self.connections):
                conn.close()
            for sock in udp:
                self.loop.remove_reader(sock.fileno())
                sock.close()
            await asyncio.sleep(0)  # let the closed connections run connection_lost
            self.event("stop", **self.stats())
            log.info("services stopped: %s", self.stats())
            if self._truth is not None:
                self._truth.close()
                self._truth = None

    def _reload(self) -> None:
        try:
            self.load()
        except (OSError, ValueError) as exc:
            log.error("profiles reload failed, keeping the old ones: %s", exc)
            self.event("reload", ok=False, error=str(exc), sha256=self.digest)
        else:
            log.info("profiles reloaded: %d profiles", len(self.profiles))
            self.event("reload", ok=True, sha256=self.digest, profiles=len(self.profiles))


def _in_lab(address: str) -> bool:
    try:
        return ipaddress.IPv4Address(address) in LAB_NET
    except ValueError:
        return False


class Connection(asyncio.Protocol):
    """An accepted TCP connection that only discards what it reads (5061, 1720)."""

    service = "tcp"

    def __init__(self, owner: Services, port: int) -> None:
        self.owner = owner
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.flow = Flow(self.service, "", "", 0, port)
        self.buffer = bytearray()
        self.last_due = 0  # ns: answers on one connection never overtake each other
        self.outbox: deque[tuple[bytes, bool]] = deque()  # (answer, close after it)
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        if not local or not peer:  # gone before we saw it
            transport.abort()
            return
        self.flow = Flow(self.service, local[0], peer[0], peer[1], self.port)
        if self.owner.accepted(self):
            self._touch()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._touch()
        self.buffer += data
        self.consume(time.time_ns())
        # What is left is an incomplete message; past the limit it will not become a good one.
        if len(self.buffer) > MAX_MESSAGE and not self.transport.is_closing():
            self.bad("message too large")

    def consume(self, rx_ns: int) -> None:
        """Act on buffered data; this plain service discards it."""
        self.buffer.clear()

    def bad(self, why: str) -> None:
        """A malformed request: count it and close; services with a protocol answer first."""
        self.owner.malformed(self.service, why)
        self.close()

    def send_later(self, rx_ns: int, planned_ns: int, payload: bytes, *, close: bool) -> None:
        """Answer after the planned delay, but never before the previous answer."""
        due = max(rx_ns + planned_ns, self.last_due)
        self.last_due = due
        self.outbox.append((payload, close))
        self.owner.answer(self.flow, rx_ns, due - rx_ns, len(payload), self._write_next)

    def _write_next(self) -> bool:
        # asyncio runs timers due at the same instant in any order; taking the oldest answer
        # here, whichever timer fires, keeps the answers in the order of their requests.
        if not self.outbox:
            return False
        payload, close = self.outbox.popleft()
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(payload)
        if close:
            self.transport.close()
        return True

    def reset(self) -> None:
        """Abort with RST (SO_LINGER 0) rather than an orderly FIN."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self.transport.abort()

    def close(self) -> None:
        """Close after writing whatever is queued."""
        if self.transport is not None:
            self.transport.close()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = self.owner.loop.call_later(IDLE_TIMEOUT, self.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None
        self.buffer.clear()
        self.outbox.clear()


class SipConnection(Connection):
    """SIP over TCP: Content-Length framed requests, answered in order."""

    service = "sip-tcp"

    def consume(self, rx_ns: int) -> None:
        while self.transport is not None and not self.transport.is_closing():
            start = 0
            while start < len(self.buffer) and self.buffer[start] in b"\r\n":
                start += 1  # CRLF keep-alives between messages
            del self.buffer[:start]
            cut = head_end(self.buffer)
            if cut is None:
                return
            length = content_length(self.buffer[: cut[0]])
            if length is None:
                self.bad("bad Content-Length")
                return
            end = cut[1] + length
            if end > MAX_MESSAGE:
                self.bad("message too large")
                return
            if len(self.buffer) < end:
                return
            req = parse_sip(self.buffer[:end])
            if req.error is not None:
                self.bad(req.error)  # with the message still buffered, to copy its headers
                return
            del self.buffer[:end]
            reply = sip_response(req, self.flow.src, self.flow.sport)
            planned = None if reply is None else self.owner.judge(self.flow, rx_ns)
            if reply is not None and planned is not None:
                self.send_later(rx_ns, planned, reply, close=False)

    def bad(self, why: str) -> None:
        if self.transport is not None:
            # Answered at once: the stream cannot be trusted past this point.
            req = parse_sip(self.buffer[:MAX_MESSAGE])
            if req.error is None:
                req = dataclasses.replace(req, error=why)
            reply = sip_response(req, self.flow.src, self.flow.sport)
            if reply is not None:
                self.transport.write(reply)
        super().bad(why)


class HttpConnection(Connection):
    """HTTP/1.1 with one request per connection: ``GET /`` and ``HEAD /``."""

    service = "http"
    done = False

    def consume(self, rx_ns: int) -> None:
        if self.done:
            self.buffer.clear()  # one request per connection: what follows is ignored
            return
        cut = head_end(self.buffer)
        if cut is None:
            return
        status, response = http_response(self.buffer[: cut[0]], self.flow.dst)
        self.buffer.clear()
        self.done = True
        if status == 400:
            self.bad("bad request line")
            return
        planned = self.owner.judge(self.flow, rx_ns)
        if planned is not None:
            self.send_later(rx_ns, planned, response, close=True)

    def bad(self, why: str) -> None:
        if self.transport is not None:
            self.transport.write(http_response(b"", self.flow.dst)[1])
        super().bad(why)


# --- reading the truth ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """What the services did with one connection or message."""

    service: str
    dst: str
    src: str
    sport: int
    dport: int
    rx_ns: int
    tx_ns: int | None
    delay_ns: int | None
    planned_ns: int | None
    dropped: bool
    reason: str | None = None

    @property
    def delay(self) -> float | None:
        """Applied delay in seconds; None when nothing was sent."""
        return None if self.delay_ns is None else self.delay_ns / 1e9


class ServicesTruth(TruthReader[ServiceRecord]):
    """The services' truth: :class:`ServiceRecord` records and events, read across rotation."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, ServiceRecord)


# --- controlling a services process -----------------------------------------------------------


class ServicesError(LabProcessError):
    """The services process did not start, reload or stop as asked."""


class ServicesProcess(NamespaceProcess):
    """Start, reload and stop the services inside a (province) network namespace."""

    name = "services"
    error = ServicesError

    def __init__(
        self,
        netns: str,
        profiles_path: Path,
        truth_path: Path,
        *,
        seed: int | None = None,
        realtime: int = 0,
        die_with_parent: bool = False,
    ) -> None:
        self.truth: ServicesTruth = ServicesTruth(truth_path)
        super().__init__(netns, truth_path.with_suffix(".log"), self.truth)
        self.realtime = realtime
        self.profiles_path = profiles_path
        self.truth_path = truth_path
        self.seed = seed
        self.die_with_parent = die_with_parent

    def command(self) -> list[str]:
        """The command line that runs the services in the namespace."""
        cmd = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "vcmon_lab.services",
               "--profiles", str(self.profiles_path), "--truth", str(self.truth_path)]  # fmt: skip
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        if self.realtime:
            cmd += ["--realtime", str(self.realtime)]
        if self.die_with_parent:
            cmd += ["--die-with-parent", str(os.getpid())]
        return cmd

    def start(self, *, timeout: float = 10.0) -> None:
        """Start on the profiles file as it is now and wait for the ``ready`` event."""
        if self.pid is not None:
            raise ServicesError("services already started")
        digest = profiles_digest(self.profiles_path.read_bytes())
        before = len(self.truth.poll().events)
        self._spawn(self.command())
        self._wait_event(before, "ready", digest, timeout)

    def reload(self, *, timeout: float = 5.0) -> None:
        """SIGHUP, and wait until the profiles file as it is now is live."""
        self._require()
        digest = profiles_digest(self.profiles_path.read_bytes())
        before = len(self.truth.poll().events)
        self._signal(signal.SIGHUP)
        self._wait_event(before, "reload", digest, timeout)

    def stats(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Ask for a ``stats`` event (SIGUSR1) and return it."""
        self._require()
        before = len(self.truth.poll().events)
        self._signal(signal.SIGUSR1)
        return self._wait_event(before, "stats", None, timeout)

    def records(self) -> list[ServiceRecord]:
        """Every record written so far."""
        return list(self.truth.poll().records)

    def wait_records(
        self, predicate: Callable[[list[ServiceRecord]], bool], *, timeout: float = 5.0
    ) -> list[ServiceRecord]:
        """Poll the truth until ``predicate(records)`` holds; raise after ``timeout``."""
        found: list[ServiceRecord] = []

        def ready() -> bool:
            found[:] = self.records()
            return predicate(found)

        wait_until(ready, timeout, "services ground truth")
        return found


# --- command line -----------------------------------------------------------------------------


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0)


def _raise_fd_limit() -> None:
    # Every open connection holds a descriptor; the default soft limit of 1024 is too low.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_CONNECTIONS + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


async def _serve(profiles: Path, truth: Path | None, seed: int | None) -> None:
    await Services(profiles, truth, random.Random(seed)).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m vcmon_lab.services --profiles FILE [--truth FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m vcmon_lab.services",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profiles", type=Path, required=True, help="JSON or YAML profiles file")
    parser.add_argument("--truth", type=Path, default=None, help="JSON-lines ground truth output")
    parser.add_argument("--seed", type=int, default=None, help="seed the impairment RNG")
    parser.add_argument(
        "--die-with-parent",
        type=int,
        default=0,
        metavar="PID",
        help="exit (SIGTERM) when the process PID that started us dies",
    )
    parser.add_argument(
        "--realtime",
        type=int,
        default=0,
        metavar="PRIO",
        help="SCHED_FIFO priority (0, the default, keeps the normal scheduler)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s services %(levelname)s %(message)s"
    )
    if args.die_with_parent:
        # A test run that is killed outright must not leave this process behind.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != args.die_with_parent:
            log.error("parent %d is already gone", args.die_with_parent)
            return 1
    _prctl(_PR_SET_TIMERSLACK, 1)  # the default 50 µs slack would add to every delay
    if args.realtime:
        try:
            # On a busy host a normal task wakes up to a few ms late; an answer due now must not
            # wait for that. It sleeps between answers, so it takes little from others.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.realtime))
        except OSError as exc:
            log.warning("cannot run with real-time priority %d: %s", args.realtime, exc)
    _raise_fd_limit()
    try:
        asyncio.run(_serve(args.profiles, args.truth, args.seed))
    except (OSError, ValueError) as exc:
        log.error("services failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
