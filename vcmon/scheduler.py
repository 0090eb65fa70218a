"""Runs every endpoint's rounds on a fixed cadence, spread evenly over the interval."""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from collections import deque
from collections.abc import Mapping

from vcmon.clock import Clock, SystemClock
from vcmon.config import Endpoint
from vcmon.health import State
from vcmon.logs import event
from vcmon.metrics import SelfMetrics
from vcmon.probes.base import Probe, RoundResult, RoundSettings
from vcmon.resolve import ResolveError, Resolver
from vcmon.results import EndpointRecord, Results
from vcmon.stats import observe

log = logging.getLogger(__name__)


def phase(endpoint_id: str, interval: float) -> float:
    """Stable offset of an endpoint's rounds within the interval.

    A hash of the id, so an endpoint keeps its slot across restarts and inventory edits,
    and 231 endpoints land spread over the interval instead of all at second zero.
    """
    return (zlib.crc32(endpoint_id.encode()) / 2**32) * interval


class Scheduler:
    """Owns one task per endpoint; each sleeps to its next slot, probes, records."""

    def __init__(
        self,
        results: Results,
        probes: Mapping[str, Probe],
        resolver: Resolver,
        self_metrics: SelfMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._results = results
        self._probes = probes
        self._resolver = resolver
        self._metrics = self_metrics
        self._clock = clock or SystemClock()
        # Raw lag samples for benchmarks; the histogram is what operators see.
        self.lag_samples: deque[float] = deque(maxlen=200_000)
        self.rounds_done = 0

    async def run(self) -> None:
        """Probe every endpoint until cancelled."""
        loop = asyncio.get_running_loop()
        anchor = loop.time()
        async with asyncio.TaskGroup() as tg:
            for rec in self._results:
                tg.create_task(self._endpoint_loop(rec, anchor), name=f"probe:{rec.endpoint.id}")

    async def _endpoint_loop(self, rec: EndpointRecord, anchor: float) -> None:
        loop = asyncio.get_running_loop()
        ep = rec.endpoint
        interval = ep.timing.interval
        due = anchor + phase(ep.id, interval)
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = loop.time() - due
            self.lag_samples.append(lag)
            if self._metrics is not None:
                self._metrics.scheduler_lag.observe(lag)
            await self.run_once(rec)
            # Keep the cadence: the next slot is one interval on, skipping slots we overran.
            due += interval
            now = loop.time()
            if now > due:
                missed = math.ceil((now - due) / interval)
                due += missed * interval
                if self._metrics is not None:
                    self._metrics.rounds_skipped.inc(missed)

    async def run_once(self, rec: EndpointRecord) -> None:
        """One round of one endpoint, folded into its record."""
        ep: Endpoint = rec.endpoint
        started = self._clock.time()
        try:
            ip = await self._resolver.resolve(ep.address)
        except ResolveError as exc:
            result = RoundResult(echoes=(), failure=f"resolve: {exc}")
        else:
            rec.resolved = ip
            t = ep.timing
            settings = RoundSettings(count=t.count, spacing=t.spacing, timeout=t.timeout)
            result = await self._probes[ep.probe].run_round(ip, settings, rec.tally)
        obs = observe(result, started)
        previous = rec.state
        rec.record(obs)
        self.rounds_done += 1
        # Startup into "up" is no news; everything else is.
        if rec.state != previous and not (previous is None and rec.state is State.UP):
            event(
                log,
                logging.INFO,
                "state_changed",
                endpoint=ep.id,
                previous=previous.value if previous else "none",
                state=rec.state.value if rec.state else "none",
                loss=f"{obs.loss_ratio:.2f}",
                failure=obs.failure or "",
            )
