"""ICMP/ICMPv6 build and parse, against hand-computed values; bad input parses to None."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vcmon.measure.probes.icmp_packet import (
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    EchoReply,
    EchoTemplate,
    ErrorReport,
    Other,
    build_echo_reply,
    build_echo_request,
    build_error,
    build_extended_err,
    build_ipv4_header,
    build_ipv6_header,
    checksum,
    checksum_ok,
    ipv4_header_length,
    parse_echo_request,
    parse_extended_err,
    parse_icmp4,
    parse_icmp6,
    parse_ipv4_packet,
    unreachable_reason,
)

WINDOWS_PAYLOAD = b"abcdefghijklmnopqrstuvwabcdefghi"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # RFC 1071 §3 example: words sum to 0xddf2, so the checksum is its complement.
        (bytes.fromhex("0001f203f4f5f6f7"), 0x220D),
        # echo request id 0x1234 seq 1: 0x0800 + 0x1234 + 0x0001 = 0x1a35 → ~ = 0xe5ca
        (bytes.fromhex("0800000012340001"), 0xE5CA),
        # odd length pads with a zero byte: 0x0100 → 0xfeff
        (b"\x01", 0xFEFF),
        # "abc" after an echo header: 0x0800 + 0x6162 + 0x6300 = 0xcc62 → 0x339d
        (bytes.fromhex("0800000000000000") + b"abc", 0x339D),
        # carries fold back in: 0xffff + 0x0002 = 0x10001 → 0x0002 → 0xfffd
        (bytes.fromhex("ffff0002"), 0xFFFD),
        # a sum of 0xffff (negative zero) gives checksum 0
        (b"\xff\xff", 0x0000),
        (b"", 0xFFFF),
        (b"\x00\x00", 0xFFFF),
    ],
)
def test_checksum_hand_computed(data: bytes, expected: int) -> None:
    assert checksum(data) == expected


@pytest.mark.parametrize(
    ("ident", "seq", "payload", "expected_header"),
    [
        # Windows' ping: id 1, seq 1, 32-byte alphabet payload; checksum 0x4d5a as captured.
        (1, 1, WINDOWS_PAYLOAD, "08004d5a00010001"),
        (1, 5, WINDOWS_PAYLOAD, "08004d5600010005"),
        (0x1234, 1, b"", "0800e5ca12340001"),
        (0, 0, b"abc", "0800339d00000000"),
    ],
)
def test_build_echo_request_v4(ident: int, seq: int, payload: bytes, expected_header: str) -> None:
    packet = build_echo_request(ident, seq, payload)
    assert packet[:8].hex() == expected_header
    assert packet[8:] == payload
    assert checksum_ok(packet)


def test_build_echo_request_v6_leaves_checksum_to_kernel() -> None:
    assert (
        build_echo_request(0xBEEF, 7, b"xy", v6=True) == bytes.fromhex("80000000beef0007") + b"xy"
    )


@pytest.mark.parametrize("payload", [b"", b"x", WINDOWS_PAYLOAD, bytes(range(256)) * 3 + b"odd"])
def test_template_matches_full_build_for_every_sequence(payload: bytes) -> None:
    template = EchoTemplate(0xA5C3, payload, v6=False)
    for seq in range(65536):
        assert template.build(seq) == build_echo_request(0xA5C3, seq, payload), seq


def test_template_v6() -> None:
    template = EchoTemplate(0x0102, b"cookie", v6=True)
    assert template.build(65535) == build_echo_request(0x0102, 65535, b"cookie", v6=True)


def test_template_when_constant_words_sum_to_zero() -> None:
    # 0x0800 + 0xf7ff = 0xffff: the constant part is one's-complement zero.
    template = EchoTemplate(0xF7FF, b"", v6=False)
    for seq in (0, 1, 0xFFFE, 0xFFFF):
        packet = template.build(seq)
        assert packet == build_echo_request(0xF7FF, seq, b"")
        assert checksum_ok(packet)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (build_ipv4_header("127.0.0.1", "127.0.0.2", 8), 20),
        (bytes([0x46]) + bytes(23), 24),  # IHL 6: 24 bytes of header
        (bytes([0x46]) + bytes(19), None),  # claims 24, has 20
        (bytes([0x44]) + bytes(19), None),  # IHL below the minimum
        (bytes([0x65]) + bytes(19), None),  # version 6
        (bytes(19), None),
        (b"", None),
    ],
)
def test_ipv4_header_length(data: bytes, expected: int | None) -> None:
    assert ipv4_header_length(data) == expected


def test_ipv4_header_checksum_is_valid() -> None:
    header = build_ipv4_header("127.0.0.8", "127.0.0.9", 64, ttl=3)
    assert checksum_ok(header)
    assert header[8] == 3
    assert struct.unpack_from("!H", header, 2)[0] == 84


def _ip4(icmp: bytes, src: str = "127.0.0.9", dst: str = "127.0.0.1") -> bytes:
    return build_ipv4_header(src, dst, len(icmp)) + icmp


def _original4(dst: str, ident: int, seq: int, payload: bytes = b"") -> bytes:
    """What an ICMP error quotes: the original IP header and the start of our echo request."""
    request = build_echo_request(ident, seq, payload)
    return build_ipv4_header("127.0.0.1", dst, len(request)) + request


def _original6(dst: str, ident: int, seq: int) -> bytes:
    request = build_echo_request(ident, seq, b"", v6=True)
    return build_ipv6_header("::1", dst, len(request)) + request


def _udp_original(dst: str) -> bytes:
    header = build_ipv4_header("127.0.0.1", dst, 8)
    return header[:9] + b"\x11" + header[10:] + struct.pack("!HHHH", 40000, 33434, 8, 0)


def _bad_checksum(packet: bytes) -> bytes:
    return packet[:20] + packet[20:22] + bytes([packet[22] ^ 0xFF]) + packet[23:]


PARSE_IPV4_CASES = [
    ("echo reply", _ip4(build_echo_reply(0x1234, 9, b"cookie")), EchoReply(0x1234, 9, b"cookie")),
    ("echo reply, no payload", _ip4(build_echo_reply(1, 65535, b"")), EchoReply(1, 65535, b"")),
    ("bad checksum", _bad_checksum(_ip4(build_echo_reply(1, 2, b"abc"))), None),
    ("icmp header cut short", _ip4(build_echo_reply(1, 2, b""))[:26], None),
    ("ip header only", build_ipv4_header("127.0.0.9", "127.0.0.1", 0), None),
    ("not icmp", build_ipv4_header("127.1.1.1", "127.0.0.1", 8)[:9] + b"\x11" + bytes(18), None),
    ("garbage", b"\xde\xad\xbe\xef" * 3, None),
    ("empty", b"", None),
    ("echo request", _ip4(build_echo_request(1, 2, b"")), Other(8, 0)),
    (
        "host unreachable",
        _ip4(build_error(3, 1, _original4("127.0.0.5", 0x1234, 77, b"cookie!!"))),
        ErrorReport("host-unreachable", "127.0.0.5", 0x1234, 77),
    ),
    (
        "net unreachable, only 8 bytes of the original quoted (RFC 792)",
        _ip4(build_error(3, 0, _original4("198.18.9.7", 0x0001, 2))),
        ErrorReport("net-unreachable", "198.18.9.7", 1, 2),
    ),
    (
        "admin prohibited",
        _ip4(build_error(3, 13, _original4("127.0.0.5", 5, 6))),
        ErrorReport("admin-prohibited", "127.0.0.5", 5, 6),
    ),
    (
        "unknown unreachable code",
        _ip4(build_error(3, 99, _original4("127.0.0.5", 5, 6))),
        ErrorReport("unreachable-code-99", "127.0.0.5", 5, 6),
    ),
    (
        "ttl exceeded",
        _ip4(build_error(11, 0, _original4("127.0.0.5", 5, 6))),
        ErrorReport("ttl-exceeded", "127.0.0.5", 5, 6),
    ),
    (
        "parameter problem",
        _ip4(build_error(12, 0, _original4("127.0.0.5", 5, 6))),
        ErrorReport("parameter-problem", "127.0.0.5", 5, 6),
    ),
    (
        "error quoting a UDP datagram is someone else's",
        _ip4(build_error(3, 3, _udp_original("127.0.0.5"))),
        Other(3, 3),
    ),
    (
        "error with the quoted IP header cut short",
        _ip4(build_error(3, 3, _udp_original("127.0.0.5")[:15])),
        None,
    ),
    (
        "error quoting an echo reply, not a request",
        _ip4(
            build_error(
                3,
                1,
                build_ipv4_header("127.0.0.1", "127.0.0.5", 8) + build_echo_reply(1, 2, b""),
            )
        ),
        Other(3, 1),
    ),
    (
        "error with the quoted echo header cut short",
        _ip4(build_error(3, 1, _original4("127.0.0.5", 5, 6)[:24])),
        None,
    ),
    ("error quoting nothing", _ip4(build_error(11, 0, b"")), None),
    ("redirect", _ip4(build_error(5, 1, _original4("127.0.0.5", 5, 6))), Other(5, 1)),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in PARSE_IPV4_CASES], ids=[c[0] for c in PARSE_IPV4_CASES]
)
def test_parse_ipv4_packet(data: bytes, expected: object) -> None:
    assert parse_ipv4_packet(data) == expected


def test_parse_icmp4_without_ip_header_as_a_datagram_socket_delivers() -> None:
    assert parse_icmp4(build_echo_reply(3, 4, b"p")) == EchoReply(3, 4, b"p")
    assert parse_icmp4(b"\x00\x00\x00") is None


def test_parse_ipv4_checksum_check_can_be_skipped_for_truncated_reads() -> None:
    packet = _bad_checksum(_ip4(build_echo_reply(1, 2, b"abc")))
    assert parse_ipv4_packet(packet, verify=False) == EchoReply(1, 2, b"abc")


PARSE_IPV6_CASES = [
    ("echo reply", build_echo_reply(0xBEEF, 3, b"ck", v6=True), EchoReply(0xBEEF, 3, b"ck")),
    ("short", build_echo_reply(1, 2, b"", v6=True)[:7], None),
    ("empty", b"", None),
    ("echo request", build_echo_request(1, 2, b"", v6=True), Other(128, 0)),
    ("neighbour solicitation", bytes([135]) + bytes(23), Other(135, 0)),
    (
        "address unreachable",
        build_error(1, 3, _original6("2001:db8::5", 0x0102, 9), v6=True),
        ErrorReport("host-unreachable", "2001:db8::5", 0x0102, 9),
    ),
    (
        "no route",
        build_error(1, 0, _original6("::1", 7, 8), v6=True),
        ErrorReport("net-unreachable", "::1", 7, 8),
    ),
    (
        "admin prohibited",
        build_error(1, 1, _original6("::1", 7, 8), v6=True),
        ErrorReport("admin-prohibited", "::1", 7, 8),
    ),
    (
        "port unreachable",
        build_error(1, 4, _original6("::1", 7, 8), v6=True),
        ErrorReport("port-unreachable", "::1", 7, 8),
    ),
    (
        "hop limit exceeded",
        build_error(3, 0, _original6("fd00::1", 7, 8), v6=True),
        ErrorReport("ttl-exceeded", "fd00::1", 7, 8),
    ),
    (
        "packet too big",
        build_error(2, 0, _original6("fd00::1", 7, 8), v6=True),
        ErrorReport("packet-too-big", "fd00::1", 7, 8),
    ),
    (
        "quoted header is IPv4",
        build_error(1, 3, bytes([0x45]) + _original6("::1", 7, 8)[1:], v6=True),
        None,
    ),
    ("quote cut short", build_error(1, 3, _original6("::1", 7, 8)[:45], v6=True), None),
    (
        "quote of a UDP datagram",
        build_error(
            1, 4, _original6("::1", 7, 8)[:6] + b"\x11" + _original6("::1", 7, 8)[7:], v6=True
        ),
        Other(1, 4),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in PARSE_IPV6_CASES], ids=[c[0] for c in PARSE_IPV6_CASES]
)
def test_parse_icmp6(data: bytes, expected: object) -> None:
    assert parse_icmp6(data) == expected


@pytest.mark.parametrize(
    ("icmp_type", "code", "v6", "expected"),
    [
        (3, 0, False, "net-unreachable"),
        (3, 1, False, "host-unreachable"),
        (3, 3, False, "port-unreachable"),
        (3, 4, False, "fragmentation-needed"),
        (3, 10, False, "host-prohibited"),
        (3, 13, False, "admin-prohibited"),
        (11, 0, False, "ttl-exceeded"),
        (11, 1, False, "fragment-reassembly-exceeded"),
        (0, 0, False, None),
        (8, 0, False, None),
        (1, 0, True, "net-unreachable"),
        (1, 3, True, "host-unreachable"),
        (1, 1, True, "admin-prohibited"),
        (1, 9, True, "unreachable-code-9"),
        (3, 0, True, "ttl-exceeded"),
        (3, 7, True, "time-exceeded-code-7"),
        (129, 0, True, None),
    ],
)
def test_unreachable_reason(icmp_type: int, code: int, v6: bool, expected: str | None) -> None:
    assert unreachable_reason(icmp_type, code, v6=v6) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (build_extended_err(113, SO_EE_ORIGIN_ICMP, 3, 1), "host-unreachable"),
        (build_extended_err(113, SO_EE_ORIGIN_ICMP, 11, 0), "ttl-exceeded"),
        (build_extended_err(113, SO_EE_ORIGIN_ICMP6, 1, 3), "host-unreachable"),
        (build_extended_err(113, SO_EE_ORIGIN_ICMP6, 1, 4), "port-unreachable"),
        (build_extended_err(90, 1, 0, 0), None),  # SO_EE_ORIGIN_LOCAL, e.g. EMSGSIZE
        (build_extended_err(113, SO_EE_ORIGIN_ICMP, 0, 0), None),
        # with the offender's sockaddr_in after it, as the kernel sends it
        (build_extended_err(113, SO_EE_ORIGIN_ICMP, 3, 13) + bytes(16), "admin-prohibited"),
        (build_extended_err(113, SO_EE_ORIGIN_ICMP, 3, 1)[:15], None),
        (b"", None),
    ],
)
def test_parse_extended_err(data: bytes, expected: str | None) -> None:
    assert parse_extended_err(data) == expected


@pytest.mark.parametrize(
    ("data", "v6", "expected"),
    [
        (build_echo_request(0x0BAD, 12, b"payload"), False, (0x0BAD, 12)),
        (build_echo_request(0x0BAD, 12, b"", v6=True), True, (0x0BAD, 12)),
        (build_echo_request(0x0BAD, 12, b"", v6=True), False, None),
        (build_echo_reply(1, 2, b""), False, None),
        (b"\x08\x00\x00", False, None),
    ],
)
def test_parse_echo_request(data: bytes, v6: bool, expected: tuple[int, int] | None) -> None:
    assert parse_echo_request(data, v6=v6) == expected


@given(st.binary(max_size=200))
def test_garbage_never_raises(data: bytes) -> None:
    for parsed in (
        parse_ipv4_packet(data),
        parse_icmp4(data),
        parse_icmp6(data),
        parse_echo_request(data, v6=False),
        parse_extended_err(data),
    ):
        assert parsed is None or isinstance(parsed, EchoReply | ErrorReport | Other | tuple | str)


@given(st.binary(min_size=8, max_size=120), st.integers(0, 119))
def test_truncated_errors_never_raise(original: bytes, cut: int) -> None:
    for v6 in (False, True):
        for icmp_type in (1, 2, 3, 4) if v6 else (3, 11, 12):
            packet = build_error(icmp_type, 0, original, v6=v6)[: 8 + cut]
            if v6:
                parse_icmp6(packet)
            else:
                parse_icmp4(packet)
                parse_ipv4_packet(_ip4(packet))


def _valid_packets() -> list[bytes]:
    """Well-formed replies and errors as each socket kind delivers them, to mutate."""
    reply4 = build_echo_reply(0x1234, 7, b"vcmon-payload")
    reply6 = build_echo_reply(0x1234, 7, b"vcmon-payload", v6=True)
    inner = _ip4(build_echo_request(0x1234, 7, b"vcmon-payload"))
    return [
        _ip4(reply4),
        reply4,
        reply6,
        _ip4(build_error(3, 1, inner)),
        build_error(11, 0, inner),
        build_error(1, 4, build_echo_request(0x1234, 7, b"x", v6=True), v6=True),
    ]


@given(
    st.sampled_from(_valid_packets()),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
    st.integers(0, 200),
)
def test_mutated_packets_never_raise(packet: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    """Valid packets with bytes changed and tails cut reach the parsers' deeper branches
    (lengths, inner headers, checksums) that random bytes rarely do."""
    data = bytearray(packet)
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    mutated = bytes(data[: max(cut, 1)])
    for parsed in (
        parse_ipv4_packet(mutated),
        parse_ipv4_packet(mutated, verify=False),
        parse_icmp4(mutated),
        parse_icmp6(mutated),
        parse_echo_request(mutated, v6=False),
        parse_echo_request(mutated, v6=True),
    ):
        assert parsed is None or isinstance(parsed, EchoReply | ErrorReport | Other | tuple)
