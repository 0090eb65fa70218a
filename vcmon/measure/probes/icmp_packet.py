"""Building and parsing ICMP and ICMPv6 echo packets and the errors that answer them.

Pure functions without sockets or clocks. Parsers never raise on bad input: a packet that is
too short, inconsistent or fails its checksum parses to ``None``; a well-formed message that
is of no interest (someone else's error, a redirect, …) parses to ``Other``.
"""

from __future__ import annotations

import socket
import struct
from typing import Final, NamedTuple

ICMP_ECHO_REPLY: Final = 0
ICMP_DEST_UNREACH: Final = 3
ICMP_ECHO_REQUEST: Final = 8
ICMP_TIME_EXCEEDED: Final = 11
ICMP_PARAMETER_PROBLEM: Final = 12

ICMP6_DEST_UNREACH: Final = 1
ICMP6_PACKET_TOO_BIG: Final = 2
ICMP6_TIME_EXCEEDED: Final = 3
ICMP6_PARAMETER_PROBLEM: Final = 4
ICMP6_ECHO_REQUEST: Final = 128
ICMP6_ECHO_REPLY: Final = 129

IPPROTO_ICMP: Final = 1
IPPROTO_ICMPV6: Final = 58
IPV4_HEADER_MIN: Final = 20
IPV6_HEADER_LEN: Final = 40
ICMP_HEADER_LEN: Final = 8

# sock_extended_err.ee_origin (linux/errqueue.h)
SO_EE_ORIGIN_ICMP: Final = 2
SO_EE_ORIGIN_ICMP6: Final = 3

_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_ID_SEQ = struct.Struct("!HH")
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # errno, origin, type, code, pad, info, data

# Reason labels are shared by both families so dashboards need one vocabulary.
_UNREACH4: Final[dict[int, str]] = {
    0: "net-unreachable",
    1: "host-unreachable",
    2: "protocol-unreachable",
    3: "port-unreachable",
    4: "fragmentation-needed",
    5: "source-route-failed",
    6: "net-unknown",
    7: "host-unknown",
    8: "source-host-isolated",
    9: "net-prohibited",
    10: "host-prohibited",
    11: "net-unreachable-tos",
    12: "host-unreachable-tos",
    13: "admin-prohibited",
    14: "host-precedence-violation",
    15: "precedence-cutoff",
}
_UNREACH6: Final[dict[int, str]] = {
    0: "net-unreachable",  # "no route to destination"
    1: "admin-prohibited",
    2: "beyond-scope",
    3: "host-unreachable",  # "address unreachable"
    4: "port-unreachable",
    5: "source-policy-failed",
    6: "reject-route",
}
_EXCEEDED: Final[dict[int, str]] = {0: "ttl-exceeded", 1: "fragment-reassembly-exceeded"}


class EchoReply(NamedTuple):
    """An echo reply: its identifier, sequence number and payload."""

    ident: int
    seq: int
    payload: bytes


class ErrorReport(NamedTuple):
    """An ICMP error about one of our echo requests, decoded from the embedded original."""

    reason: str  # e.g. "host-unreachable", "ttl-exceeded"
    dst: str  # destination of the original echo request
    ident: int
    seq: int


class Other(NamedTuple):
    """A well-formed ICMP message the engine has no use for."""

    icmp_type: int
    code: int


Parsed = EchoReply | ErrorReport | Other | None


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``, as the 16-bit value to put on the wire."""
    if len(data) & 1:
        data += b"\0"
    # 2**16 ≡ 1 (mod 0xFFFF), so the big integer reduces to the one's-complement word sum.
    value = int.from_bytes(data, "big")
    folded = value % 0xFFFF
    if folded == 0 and value:
        folded = 0xFFFF
    return ~folded & 0xFFFF


def checksum_ok(data: bytes) -> bool:
    """True if ``data`` (checksum field included) sums to 0xFFFF in one's complement."""
    if len(data) & 1:
        data += b"\0"
    value = int.from_bytes(data, "big")
    return value != 0 and value % 0xFFFF == 0


def build_echo_request(ident: int, seq: int, payload: bytes, *, v6: bool = False) -> bytes:
    """An echo request. ICMPv6 leaves the checksum 0: the kernel computes it (pseudo-header)."""
    if v6:
        return _HEADER.pack(ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + payload
    body = _HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq) + payload
    return _HEADER.pack(ICMP_ECHO_REQUEST, 0, checksum(body), ident, seq) + payload


def build_echo_reply(ident: int, seq: int, payload: bytes, *, v6: bool = False) -> bytes:
    """An echo reply (used by tests and user-space responders)."""
    if v6:
        return _HEADER.pack(ICMP6_ECHO_REPLY, 0, 0, ident, seq) + payload
    body = _HEADER.pack(ICMP_ECHO_REPLY, 0, 0, ident, seq) + payload
    return _HEADER.pack(ICMP_ECHO_REPLY, 0, checksum(body), ident, seq) + payload


class EchoTemplate:
    """Builds our echo requests fast: the payload is fixed, only the sequence number varies.

    The IPv4 checksum is updated incrementally from the precomputed sum of the constant
    words, which keeps the send path free of a per-packet pass over the payload.
    """

    __slots__ = ("_base", "_ident", "_payload", "_request_type", "_v6")

    def __init__(self, ident: int, payload: bytes, *, v6: bool) -> None:
        self._ident = ident
        self._payload = payload
        self._v6 = v6
        self._request_type = ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
        constant = _HEADER.pack(self._request_type, 0, 0, ident, 0) + payload
        if len(constant) & 1:
            constant += b"\0"
        # The constant words are never all zero (the type is not), so a sum ≡ 0 is 0xFFFF.
        self._base = int.from_bytes(constant, "big") % 0xFFFF or 0xFFFF

    def build(self, seq: int) -> bytes:
        """The echo request with sequence number ``seq`` (0…65535)."""
        if self._v6:
            return _HEADER.pack(self._request_type, 0, 0, self._ident, seq) + self._payload
        total = self._base + seq
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        return (
            _HEADER.pack(self._request_type, 0, ~total & 0xFFFF, self._ident, seq) + self._payload
        )


def ipv4_header_length(data: bytes) -> int | None:
    """Length of the IPv4 header that starts ``data`` (raw IPv4 sockets deliver it), or None."""
    if len(data) < IPV4_HEADER_MIN or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    if ihl < IPV4_HEADER_MIN or len(data) < ihl:
        return None
    return ihl


def unreachable_reason(icmp_type: int, code: int, *, v6: bool) -> str | None:
    """The reason label for an ICMP error type/code, or None if it is not an error we report."""
    if v6:
        if icmp_type == ICMP6_DEST_UNREACH:
            return _UNREACH6.get(code, f"unreachable-code-{code}")
        if icmp_type == ICMP6_TIME_EXCEEDED:
            return _EXCEEDED.get(code, f"time-exceeded-code-{code}")
        if icmp_type == ICMP6_PACKET_TOO_BIG:
            return "packet-too-big"
        if icmp_type == ICMP6_PARAMETER_PROBLEM:
            return "parameter-problem"
        return None
    if icmp_type == ICMP_DEST_UNREACH:
        return _UNREACH4.get(code, f"unreachable-code-{code}")
    if icmp_type == ICMP_TIME_EXCEEDED:
        return _EXCEEDED.get(code, f"time-exceeded-code-{code}")
    if icmp_type == ICMP_PARAMETER_PROBLEM:
        return "parameter-problem"
    return None


def parse_ipv4_packet(data: bytes, *, verify: bool = True) -> Parsed:
    """Parse what a raw IPv4 ICMP socket delivers: an IPv4 header, then the ICMP message."""
    ihl = ipv4_header_length(data)
    if ihl is None or data[9] != IPPROTO_ICMP:
        return None
    return parse_icmp4(data, ihl, verify=verify)


def parse_icmp4(data: bytes, offset: int = 0, *, verify: bool = False) -> Parsed:
    """Parse an ICMP message starting at ``offset``; ``verify`` checks its checksum."""
    if len(data) - offset < ICMP_HEADER_LEN:
        return None
    if verify and not checksum_ok(data[offset:] if offset else data):
        return None
    icmp_type = data[offset]
    code = data[offset + 1]
    if icmp_type == ICMP_ECHO_REPLY:
        ident, seq = _ID_SEQ.unpack_from(data, offset + 4)
        return EchoReply(ident, seq, data[offset + ICMP_HEADER_LEN :])
    reason = unreachable_reason(icmp_type, code, v6=False)
    if reason is None:
        return Other(icmp_type, code)
    inner = offset + ICMP_HEADER_LEN
    ihl = ipv4_header_length(data[inner:])
    if ihl is None or len(data) < inner + ihl + ICMP_HEADER_LEN:
        return None
    if data[inner + 9] != IPPROTO_ICMP or data[inner + ihl] != ICMP_ECHO_REQUEST:
        return Other(icmp_type, code)
    dst = socket.inet_ntop(socket.AF_INET, data[inner + 16 : inner + 20])
    ident, seq = _ID_SEQ.unpack_from(data, inner + ihl + 4)
    return ErrorReport(reason, dst, ident, seq)


def parse_icmp6(data: bytes, offset: int = 0) -> Parsed:
    """Parse an ICMPv6 message (the kernel has verified its checksum; no IPv6 header)."""
    if len(data) - offset < ICMP_HEADER_LEN:
        return None
    icmp_type = data[offset]
    code = data[offset + 1]
    if icmp_type == ICMP6_ECHO_REPLY:
        ident, seq = _ID_SEQ.unpack_from(data, offset + 4)
        return EchoReply(ident, seq, data[offset + ICMP_HEADER_LEN :])
    reason = unreachable_reason(icmp_type, code, v6=True)
    if reason is None:
        return Other(icmp_type, code)
    inner = offset + ICMP_HEADER_LEN
    if len(data) < inner + IPV6_HEADER_LEN + ICMP_HEADER_LEN or data[inner] >> 4 != 6:
        return None
    # Our requests carry no extension headers, so anything else is not ours.
    if data[inner + 6] != IPPROTO_ICMPV6 or data[inner + IPV6_HEADER_LEN] != ICMP6_ECHO_REQUEST:
        return Other(icmp_type, code)
    dst = socket.inet_ntop(socket.AF_INET6, data[inner + 24 : inner + 40])
    ident, seq = _ID_SEQ.unpack_from(data, inner + IPV6_HEADER_LEN + 4)
    return ErrorReport(reason, dst, ident, seq)


def parse_echo_request(data: bytes, *, v6: bool) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo request's ICMP header, e.g. from the error queue."""
    if len(data) < ICMP_HEADER_LEN:
        return None
    if data[0] != (ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST):
        return None
    ident, seq = _ID_SEQ.unpack_from(data, 4)
    return ident, seq


def parse_extended_err(cmsg_data: bytes) -> str | None:
    """The reason label from an IP_RECVERR/IPV6_RECVERR ``sock_extended_err``, or None.

    Only errors that came from an ICMP message are reported; local errors (e.g. EMSGSIZE)
    surface at ``sendto`` instead.
    """
    if len(cmsg_data) < _EXTENDED_ERR.size:
        return None
    _errno, origin, icmp_type, code, _pad, _info, _data = _EXTENDED_ERR.unpack_from(cmsg_data)
    if origin == SO_EE_ORIGIN_ICMP:
        return unreachable_reason(icmp_type, code, v6=False)
    if origin == SO_EE_ORIGIN_ICMP6:
        return unreachable_reason(icmp_type, code, v6=True)
    return None


def build_extended_err(errno_: int, origin: int, icmp_type: int, code: int) -> bytes:
    """A ``sock_extended_err`` as the kernel writes it (for tests)."""
    return _EXTENDED_ERR.pack(errno_, origin, icmp_type, code, 0, 0, 0)


def build_ipv4_header(src: str, dst: str, payload_len: int, *, ttl: int = 64) -> bytes:
    """A minimal IPv4 header carrying ICMP (for crafting the original inside an error)."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        IPV4_HEADER_MIN + payload_len,
        0,
        0,
        ttl,
        IPPROTO_ICMP,
        0,
        socket.inet_pton(socket.AF_INET, src),
        socket.inet_pton(socket.AF_INET, dst),
    )
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


def build_ipv6_header(src: str, dst: str, payload_len: int, *, hop_limit: int = 64) -> bytes:
    """A minimal IPv6 header carrying ICMPv6 (for crafting the original inside an error)."""
    return struct.pack(
        "!IHBB16s16s",
        6 << 28,
        payload_len,
        IPPROTO_ICMPV6,
        hop_limit,
        socket.inet_pton(socket.AF_INET6, src),
        socket.inet_pton(socket.AF_INET6, dst),
    )


def build_error(icmp_type: int, code: int, original: bytes, *, v6: bool = False) -> bytes:
    """An ICMP error message quoting ``original`` (IP header + start of the offending packet).

    ICMPv6 leaves the checksum to the kernel, as for echo requests.
    """
    if v6:
        return _HEADER.pack(icmp_type, code, 0, 0, 0) + original
    body = _HEADER.pack(icmp_type, code, 0, 0, 0) + original
    return _HEADER.pack(icmp_type, code, checksum(body), 0, 0) + original
