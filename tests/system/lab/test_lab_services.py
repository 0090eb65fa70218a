"""The lab's TCP, SIP, HTTP and UDP echo services, from the monitor namespace.

Clients are ordinary blocking sockets created inside the monitor namespace (``in_monitor``);
every answer is checked against the endpoint's profile and the services' ground truth. The
pure SIP and HTTP helpers are tested without root as well.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import LabFactory
from vcmon_lab.netns import Lab, netns_pids
from vcmon_lab.profiles import Profile
from vcmon_lab.services import (
    ACCEPT_PORTS,
    ECHO_PORT,
    HTTP_PORT,
    SIP_PORT,
    ServiceRecord,
    ServicesProcess,
    content_length,
    http_response,
    parse_sip,
    sip_response,
    stamp_via,
)

Keep = Callable[[socket.socket], socket.socket]

SLOW = "198.18.5.1"  # 30 ms
FAST = "198.18.5.2"  # 2 ms
DOWN = "198.18.5.3"
LOSSY = "198.18.5.4"  # loses everything
FALLBACK = "198.18.77.7"  # no entry of its own: the "*" profile
MONITOR = "198.19.255.1"  # the monitor end of the veth, where every request comes from
DELAY = 0.030
TOLERANCE = 0.005
TCP_PORTS = (SIP_PORT, *ACCEPT_PORTS, HTTP_PORT)

PROFILES = {
    SLOW: Profile(delay=DELAY),
    FAST: Profile(delay=0.002),
    DOWN: Profile(up=False),
    LOSSY: Profile(loss=1.0),
    "*": Profile(delay=0.001),
}


def options(call_id: str, cseq: int = 1) -> bytes:
    """A SIP OPTIONS request as a monitoring probe would send it."""
    return (
        f"OPTIONS sip:ping@{SLOW} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP probe.invalid:5099;branch=z9hG4bK-{call_id};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:vcmon@probe.invalid>;tag=probe1\r\n"
        f"To: <sip:ping@{SLOW}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def headers(response: bytes) -> tuple[str, dict[str, list[str]]]:
    """Status line and headers (lower-case names) of a SIP or HTTP response."""
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    out: dict[str, list[str]] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return head[0], out


# -- clients in the monitor namespace ----------------------------------------------------------


@pytest.fixture
def env(lab: LabFactory) -> Lab:
    return lab(PROFILES, seed=7)


def services(env: Lab) -> ServicesProcess:
    assert env.services is not None, "the lab was started without services"
    return env.services


def udp(env: Lab, timeout: float = 2.0) -> socket.socket:
    with env.in_monitor():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.bind(("", 0))
    return sock


def tcp(env: Lab, address: str, port: int) -> socket.socket:
    with env.in_monitor():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    sock.connect((address, port))
    return sock


def assert_reset(env: Lab, address: str, port: int) -> int:
    """Connect and expect a reset; return the client's port."""
    with env.in_monitor():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(2.0)
        sock.bind(("", 0))  # the port is known even if connect fails
        sport: int = sock.getsockname()[1]
        # The kernel completes the handshake; the reset follows as soon as the service sees
        # the connection, which may be before connect() returns or only at the first read.
        try:
            sock.connect((address, port))
        except ConnectionResetError:
            return sport
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    return sport


@pytest.fixture
def closing() -> Iterator[Callable[[socket.socket], socket.socket]]:
    """Register sockets to close after the test."""
    socks: list[socket.socket] = []

    def keep(sock: socket.socket) -> socket.socket:
        socks.append(sock)
        return sock

    yield keep
    for sock in socks:
        sock.close()


class Messages:
    """SIP messages read one at a time from a stream (one recv may carry several)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def next(self) -> bytes:
        while b"\r\n\r\n" not in self.data:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed mid-message: {self.data!r}"
            self.data += chunk
        end = self.data.index(b"\r\n\r\n") + 4
        end += int(headers(self.data[:end])[1].get("content-length", ["0"])[0])
        while len(self.data) < end:
            self.data += self.sock.recv(4096)
        message, self.data = self.data[:end], self.data[end:]
        return message


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def truth_for(env: Lab, service: str, sport: int, count: int = 1) -> list[ServiceRecord]:
    """Wait until the services recorded ``count`` messages of ``service`` from ``sport``."""

    def mine(records: list[ServiceRecord]) -> list[ServiceRecord]:
        return [r for r in records if r.service == service and r.sport == sport]

    return mine(services(env).wait_records(lambda rs: len(mine(rs)) >= count))


def assert_delay(measured: list[float], expected: float) -> None:
    assert min(measured) >= expected, measured
    assert max(measured) <= expected + TOLERANCE, measured


# -- root: the services in the lab -------------------------------------------------------------


def test_tcp_ports_accept_on_an_up_endpoint(env: Lab, closing: Keep) -> None:
    socks = {port: closing(tcp(env, SLOW, port)) for port in TCP_PORTS}
    for port, sock in socks.items():
        (record,) = truth_for(env, "tcp", sock.getsockname()[1])
        assert (record.dst, record.dport, record.dropped) == (SLOW, port, False)
    # Still open: what a plain port reads is discarded and it does not hang up.
    for port in ACCEPT_PORTS:
        socks[port].sendall(b"\x03\x00\x00\x13garbage")
    socks[SIP_PORT].sendall(options("still-open"))
    assert headers(Messages(socks[SIP_PORT]).next())[0] == "SIP/2.0 200 OK"


def test_a_down_endpoint_resets_every_tcp_port_and_ignores_udp(env: Lab, closing: Keep) -> None:
    for port in TCP_PORTS:
        (record,) = truth_for(env, "tcp", assert_reset(env, DOWN, port))
        assert (record.dst, record.dropped, record.reason) == (DOWN, True, "down")
    client = closing(udp(env, timeout=0.2))
    client.sendto(options("down"), (DOWN, SIP_PORT))
    client.sendto(b"ping", (DOWN, ECHO_PORT))
    sport = client.getsockname()[1]
    assert truth_for(env, "sip-udp", sport)[0].reason == "down"
    assert truth_for(env, "echo", sport)[0].reason == "down"
    with pytest.raises(TimeoutError):
        client.recv(4096)  # recorded as dropped above, so nothing can still be on its way


def test_sip_options_over_udp(env: Lab, closing: Keep) -> None:
    client = closing(udp(env))
    rtts = []
    for seq in range(1, 6):
        started = time.perf_counter()
        client.sendto(options(f"udp-{seq}", seq), (SLOW, SIP_PORT))
        data, source = client.recvfrom(4096)
        rtts.append(time.perf_counter() - started)
        assert source == (SLOW, SIP_PORT)  # answered from the address that was asked
        status, hdrs = headers(data)
        assert status == "SIP/2.0 200 OK"
        assert hdrs["call-id"] == [f"udp-{seq}"]
        assert hdrs["cseq"] == [f"{seq} OPTIONS"]
        assert hdrs["from"] == ["<sip:vcmon@probe.invalid>;tag=probe1"]
        assert hdrs["to"][0].startswith(f"<sip:ping@{SLOW}>;tag=")
        sport = client.getsockname()[1]
        assert hdrs["via"] == [
            f"SIP/2.0/UDP probe.invalid:5099;branch=z9hG4bK-udp-{seq};rport={sport};"
            f"received={MONITOR}"
        ]
        assert "OPTIONS" in hdrs["allow"][0]
    assert_delay(rtts, DELAY)
    truth = truth_for(env, "sip-udp", client.getsockname()[1], count=5)
    assert all(r.planned_ns == DELAY * 1e9 and not r.dropped for r in truth)
    assert_delay([r.delay or 0.0 for r in truth], DELAY)


def test_each_address_has_its_own_profile(env: Lab, closing: Keep) -> None:
    client = closing(udp(env))
    for address, expected in ((FAST, 0.002), (FALLBACK, 0.001), (SLOW, DELAY)):
        started = time.perf_counter()
        client.sendto(b"x", (address, ECHO_PORT))
        assert client.recvfrom(16) == (b"x", (address, ECHO_PORT))
        assert_delay([time.perf_counter() - started], expected)


def test_sip_options_over_tcp(env: Lab, closing: Keep) -> None:
    sock = closing(tcp(env, SLOW, SIP_PORT))
    messages = Messages(sock)
    # Two requests in one segment, the second with a body and compact headers.
    compact = (
        f"OPTIONS sip:ping@{SLOW} SIP/2.0\r\nv: SIP/2.0/TCP {MONITOR}:5099;branch=z9hG4bK-c\r\n"
        f"f: <sip:a@b>;tag=x\r\nt: <sip:ping@{SLOW}>;tag=given\r\ni: tcp-2\r\nCSeq: 2 OPTIONS\r\n"
        "Content-Type: text/plain\r\nl: 5\r\n\r\nhello"
    ).encode()
    started = time.perf_counter()
    sock.sendall(options("tcp-1", 1) + b"\r\n\r\n" + compact)
    first = messages.next()
    elapsed = time.perf_counter() - started
    second = messages.next()
    assert_delay([elapsed], DELAY)
    status, hdrs = headers(first)
    assert (status, hdrs["call-id"], hdrs["cseq"]) == ("SIP/2.0 200 OK", ["tcp-1"], ["1 OPTIONS"])
    status, hdrs = headers(second)
    assert (status, hdrs["call-id"], hdrs["cseq"]) == ("SIP/2.0 200 OK", ["tcp-2"], ["2 OPTIONS"])
    assert hdrs["to"] == [f"<sip:ping@{SLOW}>;tag=given"]  # an existing tag is kept
    assert hdrs["via"] == [f"SIP/2.0/TCP {MONITOR}:5099;branch=z9hG4bK-c"]  # same host: as is
    # Another method gets 405; garbage gets 400 at once, then the connection closes.
    sock.sendall(options("tcp-3", 3).replace(b"OPTIONS", b"INVITE"))
    status, hdrs = headers(messages.next())
    assert (status, hdrs["allow"]) == ("SIP/2.0 405 Method Not Allowed", ["OPTIONS"])
    sock.sendall(b"HELLO THERE\r\nCall-ID: junk\r\n\r\n")
    status, hdrs = headers(recv_all(sock))
    assert (status, hdrs["call-id"]) == ("SIP/2.0 400 Bad Request", ["junk"])


def test_http_get_and_head(env: Lab, closing: Keep) -> None:
    sock = closing(tcp(env, SLOW, HTTP_PORT))
    started = time.perf_counter()
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {SLOW}\r\n\r\n".encode())
    response = recv_all(sock)  # the server closes after one answer
    assert_delay([time.perf_counter() - started], DELAY)
    status, hdrs = headers(response)
    body = response.split(b"\r\n\r\n", 1)[1]
    assert status == "HTTP/1.1 200 OK"
    assert body == f"vcmon lab endpoint {SLOW}\n".encode()
    assert hdrs["content-length"] == [str(len(body))]

    sock = closing(tcp(env, FAST, HTTP_PORT))
    sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
    response = recv_all(sock)
    assert headers(response)[0] == "HTTP/1.1 200 OK"
    assert response.endswith(b"\r\n\r\n")  # no body
    for request, code in (
        (b"GET /x HTTP/1.1\r\n\r\n", "404"),
        (b"POST / HTTP/1.1\r\n\r\n", "405"),
        (b"\x16\x03\x01\x00\xa5\x01\r\n\r\n", "400"),
    ):
        sock = closing(tcp(env, FAST, HTTP_PORT))
        sock.sendall(request)
        assert headers(recv_all(sock))[0].split()[1] == code


def test_udp_echo_returns_the_payload(env: Lab, closing: Keep) -> None:
    client = closing(udp(env))
    payloads = [b"", b"\x00" * 1, bytes(range(256)) * 4, b"z" * 8000]
    rtts = []
    for payload in payloads:
        started = time.perf_counter()
        client.sendto(payload, (SLOW, ECHO_PORT))
        assert client.recvfrom(65535) == (payload, (SLOW, ECHO_PORT))
        rtts.append(time.perf_counter() - started)
    assert_delay(rtts, DELAY)
    truth = truth_for(env, "echo", client.getsockname()[1], count=len(payloads))
    assert [r.dst for r in truth] == [SLOW] * len(payloads)


def test_total_loss_gets_no_answer(env: Lab, closing: Keep) -> None:
    client = closing(udp(env, timeout=0.2))
    client.sendto(options("lost"), (LOSSY, SIP_PORT))
    client.sendto(b"lost", (LOSSY, ECHO_PORT))
    stream = closing(tcp(env, LOSSY, SIP_PORT))
    stream.settimeout(0.2)
    stream.sendall(options("lost-tcp"))
    sport, stream_port = client.getsockname()[1], stream.getsockname()[1]
    for service, port in (("sip-udp", sport), ("echo", sport), ("sip-tcp", stream_port)):
        (record,) = truth_for(env, service, port)
        assert (record.dst, record.dropped, record.reason) == (LOSSY, True, "profile")
    # The drops are on record, so an answer could only come from a bug, and at once.
    with pytest.raises(TimeoutError):
        client.recv(4096)
    with pytest.raises(TimeoutError):
        stream.recv(4096)


def test_garbage_is_counted_and_survived(env: Lab, closing: Keep) -> None:
    client = closing(udp(env))
    garbage = [
        b"\xff" * 100,
        b"OPTIONS\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"\r\n\r\n",  # a keep-alive, not garbage
        options("x").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"),
        b"\x00" * 60000,
    ]
    for junk in garbage:
        client.sendto(junk, (SLOW, SIP_PORT))
    # Datagrams are read in order: the first answer after the garbage must be this one's.
    client.sendto(options("after-garbage"), (SLOW, SIP_PORT))
    assert headers(client.recv(4096))[1]["call-id"] == ["after-garbage"]
    for port, status in ((SIP_PORT, "SIP/2.0 400 Bad Request"), (HTTP_PORT, "HTTP/1.1 400")):
        sock = closing(tcp(env, SLOW, port))
        sock.sendall(b"\x00\xff" * 20_000)  # more than any message may be
        assert headers(recv_all(sock))[0].startswith(status)
    stats = services(env).stats()
    assert stats["malformed"] >= 5 + 2  # the keep-alive is not garbage
    log = services(env).log_path.read_text()
    assert log.count("malformed sip-udp message") == 1  # logged once, then only counted


def test_new_profiles_reach_the_services(env: Lab, closing: Keep) -> None:
    env.set_profiles({**PROFILES, SLOW: Profile(up=False), DOWN: Profile(delay=0.001)})
    assert_reset(env, SLOW, SIP_PORT)
    client = closing(udp(env))
    client.sendto(b"back", (DOWN, ECHO_PORT))
    assert client.recv(16) == b"back"


def test_services_stop_cleanly(env: Lab) -> None:
    proc = services(env)
    pid = proc.pid
    assert proc.stop() == 0
    stop = next(e for e in proc.truth.events if e["event"] == "stop")
    assert stop["pending"] == 0
    assert pid is not None
    assert pid not in netns_pids(env.province)


# -- no root: the pure protocol helpers --------------------------------------------------------


def test_parse_sip_reads_compact_and_folded_headers() -> None:
    req = parse_sip(
        b"\r\nOPTIONS sip:a@b SIP/2.0\nv: SIP/2.0/UDP h;branch=z9hG4bK1\nVia: SIP/2.0/UDP g\n"
        b"f: <sip:x@y>\n ;tag=1\nt: <sip:a@b>\ni: c1\nCSeq: 9\n  OPTIONS\n\n"
    )
    assert req.error is None
    assert (req.method, req.uri) == ("OPTIONS", "sip:a@b")
    assert req.headers["via"] == ["SIP/2.0/UDP h;branch=z9hG4bK1", "SIP/2.0/UDP g"]
    assert req.headers["from"] == ["<sip:x@y> ;tag=1"]
    assert req.headers["cseq"] == ["9 OPTIONS"]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "empty message"),
        (b"OPTIONS sip:a@b HTTP/1.1\r\n\r\n", "bad request line"),
        (options("x").replace(b"Call-ID: x\r\n", b""), "missing Call-ID"),
        (options("x").replace(b"Call-ID: x\r\n", b"Call-ID: x\r\ni: y\r\n"), "repeated Call-ID"),
        (options("x").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), "bad CSeq"),
        (options("x").replace(b"CSeq: 1 OPTIONS", b"CSeq: 4294967296 OPTIONS"), "bad CSeq"),
        (options("x").replace(b"Max-Forwards: 70", b"no colon here"), "bad header line"),
    ],
)
def test_parse_sip_rejects(data: bytes, error: str) -> None:
    assert parse_sip(data).error == error


def test_sip_response_to_ack_is_nothing() -> None:
    ack = options("x").replace(b"OPTIONS", b"ACK")
    assert sip_response(parse_sip(ack), MONITOR, 5099) is None


@pytest.mark.parametrize(
    ("via", "stamped"),
    [
        ("SIP/2.0/UDP 198.19.255.1:5099;branch=b", "SIP/2.0/UDP 198.19.255.1:5099;branch=b"),
        ("SIP/2.0/UDP h;branch=b", "SIP/2.0/UDP h;branch=b;received=198.19.255.1"),
        ("SIP/2.0/UDP 198.19.255.1;rport;branch=b",
         "SIP/2.0/UDP 198.19.255.1;rport=5099;branch=b;received=198.19.255.1"),
        ("SIP/2.0/TCP h , SIP/2.0/UDP g", "SIP/2.0/TCP h;received=198.19.255.1, SIP/2.0/UDP g"),
        ("garbage", "garbage"),
    ],
)  # fmt: skip
def test_stamp_via(via: str, stamped: str) -> None:
    assert stamp_via(via, MONITOR, 5099) == stamped


def test_content_length() -> None:
    assert content_length(b"X sip:a SIP/2.0\r\nl: 12\r\n") == 12
    assert content_length(b"X sip:a SIP/2.0\r\nFrom: a\r\n") == 0
    assert content_length(b"X sip:a SIP/2.0\r\nContent-Length: \xb2\r\n") is None
    assert content_length(b"X sip:a SIP/2.0\r\nContent-Length: 99999999\r\n") is None


@given(st.binary(max_size=300))
def test_parsers_never_raise(data: bytes) -> None:
    for message in (data, b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP " + data):
        sip_response(parse_sip(message), MONITOR, 1)
        content_length(message)
    http_response(data, SLOW)
    http_response(b"GET " + data + b" HTTP/1.1\r\n\r\n", SLOW)


def test_http_response_codes() -> None:
    assert http_response(b"GET http://x/?q=1 HTTP/1.1\r\nHost: x", SLOW)[0] == 200
    assert http_response(b"GET http://x HTTP/1.1", SLOW)[0] == 200
    assert http_response(b"GET http://[x/y HTTP/1.1", SLOW)[0] == 404
    assert http_response(b"GET /a HTTP/1.1", SLOW)[0] == 404
    assert http_response(b"DELETE / HTTP/1.1", SLOW)[0] == 405
    assert http_response(b"GET / HTTP/2", SLOW)[0] == 400
