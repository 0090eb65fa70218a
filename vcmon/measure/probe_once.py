"""One-off measurement of a few addresses, for ``vcmon probe`` (like ``fping -C``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from vcmon.measure.probes.base import Echo, Outcome, ProbeContext, RoundResult, RoundSettings, Tally
from vcmon.measure.probes.registry import kind
from vcmon.measure.resolver import ResolveError, Resolver
from vcmon.measure.stats import Observation, observe
from vcmon.units import MS


@dataclass(frozen=True, slots=True)
class ProbeRow:
    """The outcome for one address."""

    address: str
    result: RoundResult
    obs: Observation

    @property
    def received(self) -> int:
        return self.obs.received

    def cells(self) -> list[str]:
        """Summary cells: address, counts, RTT stats in ms, jitter in ms, MOS."""
        o = self.obs
        return [
            self.address,
            f"{o.sent}/{o.received}/{o.loss_ratio * 100:.0f}%",
            "/".join(_ms(v) for v in (o.rtt_min, o.rtt_avg, o.rtt_median, o.rtt_max)),
            _ms(o.jitter),
            "-" if o.mos is None else f"{o.mos:.2f}",
        ]

    def echo_line(self) -> str:
        """Per-echo RTTs in ms as ``fping -C`` prints them: ``-`` lost, ``!reason`` an error."""
        if self.result.failure:
            return self.result.failure
        return " ".join(_echo_cell(e) for e in self.result.echoes)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * MS:.3f}"


def _echo_cell(echo: Echo) -> str:
    if echo.outcome is Outcome.OK:
        return _ms(echo.rtt)
    if echo.outcome is Outcome.ERROR:
        return "!" + (echo.reason or "error")
    return "-"


async def probe_addresses(
    addresses: list[str], settings: RoundSettings, mode: str, probe_name: str = "icmp"
) -> list[ProbeRow]:
    """Measure every address once with the registered probe ``probe_name``, concurrently, and
    return one row each in input order. ``mode`` is the ICMP socket mode (``icmp: socket``)."""
    resolver = Resolver()
    ctx = ProbeContext(resolver=resolver, settings={"icmp": {"socket": mode}})
    probe = kind(probe_name).create(ctx)
    async with ctx:

        async def one(address: str) -> ProbeRow:
            started = time.time()
            try:
                ip = await resolver.resolve(address)
            except ResolveError as exc:
                result = RoundResult(echoes=(), failure=f"resolve: {exc}")
            else:
                result = await probe.run_round(ip, settings, Tally())
            return ProbeRow(address, result, observe(result, started, probe.voice))

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(a)) for a in addresses]
        return [t.result() for t in tasks]
