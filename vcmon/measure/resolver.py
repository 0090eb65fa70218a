"""Address resolution for endpoints given by hostname, re-resolved periodically."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vcmon.logs import event

log = logging.getLogger(__name__)


class ResolveError(Exception):
    """The name could not be resolved; the round fails, the daemon goes on."""


def ip_literal(address: str) -> str | None:
    """The normalised IP if ``address`` is an IP literal, else None."""
    try:
        return str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        return None


@dataclass(slots=True)
class _Entry:
    ip: str | None
    expires: float
    error: str | None


Lookup = Callable[[str], Awaitable[str]]


async def system_lookup(host: str) -> str:
    """The first address the system resolver gives for ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_RAW)
    return str(infos[0][4][0])


class Resolver:
    """Caches each hostname's address for ``ttl`` seconds; failures are cached briefly too."""

    def __init__(
        self,
        ttl: float = 300.0,
        negative_ttl: float = 30.0,
        lookup: Lookup = system_lookup,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._lookup_fn = lookup
        self._monotonic = monotonic
        self._cache: dict[str, _Entry] = {}

    async def resolve(self, address: str) -> str:
        """The IP to probe for ``address``; raises ResolveError when the name does not resolve."""
        literal = ip_literal(address)
        if literal is not None:
            return literal
        now = self._monotonic()
        entry = self._cache.get(address)
        if entry is None or entry.expires <= now:
            entry = await self._lookup(address, now, entry)
            self._cache[address] = entry
        if entry.ip is None:
            raise ResolveError(entry.error or "no address")
        return entry.ip

    async def _lookup(self, host: str, now: float, previous: _Entry | None) -> _Entry:
        try:
            ip = await self._lookup_fn(host)
        except OSError as exc:
            error = exc.strerror or str(exc)
            # Log the transition into failure once, not every round while it lasts.
            if previous is None or previous.error is None:
                event(log, logging.WARNING, "resolve_failed", host=host, error=error)
            return _Entry(None, now + self._negative_ttl, error)
        if previous is None or previous.ip != ip:
            event(log, logging.INFO, "resolved", host=host, ip=ip)
        return _Entry(ip, now + self._ttl, None)
