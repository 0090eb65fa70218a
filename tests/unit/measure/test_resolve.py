"""Hostname resolution: cached, re-resolved after its TTL, failures are values not crashes."""

from __future__ import annotations

import pytest

from vcmon.measure.resolver import ResolveError, Resolver, ip_literal


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("localhost", None),
        ("room-12.example", None),
    ],
)
def test_ip_literal(address: str, expected: str | None) -> None:
    assert ip_literal(address) == expected


class FakeDns:
    """A name table the test edits; counts lookups."""

    def __init__(self) -> None:
        self.table: dict[str, str] = {}
        self.lookups = 0

    async def __call__(self, host: str) -> str:
        self.lookups += 1
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return self.table[host]


async def test_literal_needs_no_lookup() -> None:
    dns = FakeDns()
    assert await Resolver(lookup=dns).resolve("127.0.0.5") == "127.0.0.5"
    assert dns.lookups == 0


async def test_cached_until_ttl_then_re_resolved() -> None:
    dns = FakeDns()
    dns.table["room.test"] = "127.0.0.7"
    now = [0.0]
    resolver = Resolver(ttl=300, lookup=dns, monotonic=lambda: now[0])
    assert await resolver.resolve("room.test") == "127.0.0.7"
    dns.table["room.test"] = "127.0.0.8"
    now[0] = 299.0
    assert await resolver.resolve("room.test") == "127.0.0.7"
    now[0] = 300.0
    assert await resolver.resolve("room.test") == "127.0.0.8"
    assert dns.lookups == 2


async def test_failure_raises_and_is_retried_after_negative_ttl() -> None:
    dns = FakeDns()
    now = [0.0]
    resolver = Resolver(negative_ttl=30, lookup=dns, monotonic=lambda: now[0])
    with pytest.raises(ResolveError, match="Name or service not known"):
        await resolver.resolve("gone.test")
    dns.table["gone.test"] = "127.0.0.9"
    now[0] = 10.0
    with pytest.raises(ResolveError):
        await resolver.resolve("gone.test")
    now[0] = 30.0
    assert await resolver.resolve("gone.test") == "127.0.0.9"


async def test_localhost_resolves_with_the_system_resolver() -> None:
    assert await Resolver().resolve("localhost") in {"127.0.0.1", "::1"}
