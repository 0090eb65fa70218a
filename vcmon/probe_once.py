"""One-off measurement of a few addresses, for ``vcmon probe`` (like ``fping -C``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from vcmon.probes.base import Outcome, RoundResult, RoundSettings, Tally
from vcmon.probes.icmp import IcmpEngine
from vcmon.resolve import ResolveError, Resolver
from vcmon.stats import Observation, observe


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
        """Table cells: address, counts, RTT stats in ms, jitter, MOS, per-echo RTTs."""
        o = self.obs

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.3f}"

        echoes = " ".join(
            ms(e.rtt) if e.outcome is Outcome.OK else ("!" + (e.reason or "err"))
            if e.outcome is Outcome.ERROR else "-"
            for e in self.result.echoes
        )  # fmt: skip
        return [self.address, str(o.sent), str(o.received), f"{o.loss_ratio * 100:.0f}",
                ms(o.rtt_min), ms(o.rtt_avg), ms(o.rtt_median), ms(o.rtt_max), ms(o.jitter),
                f"{o.mos:.2f}", o.failure or echoes]  # fmt: skip


async def probe_addresses(
    addresses: list[str], settings: RoundSettings, mode: str
) -> list[ProbeRow]:
    """Measure every address once, concurrently, and return one row each in input order."""
    resolver = Resolver()
    async with IcmpEngine(mode=mode) as engine:

        async def one(address: str) -> ProbeRow:
            started = time.time()
            try:
                ip = await resolver.resolve(address)
            except ResolveError as exc:
                result = RoundResult(echoes=(), failure=f"resolve: {exc}")
            else:
                result = await engine.ping_round(ip, settings, Tally())
            return ProbeRow(address, result, observe(result, started))

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(a)) for a in addresses]
        return [t.result() for t in tasks]
