"""The daemon: wires config, probes, scheduler and HTTP together and runs until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from vcmon import __version__
from vcmon.alerts.runtime import AlertRuntime
from vcmon.config import Config, ConfigError, load_config
from vcmon.delivery.dispatch import Delivery
from vcmon.http.api import Api, serve
from vcmon.http.auth import web_config_path
from vcmon.http.exposition import EndpointExposition
from vcmon.http.limits import raise_fd_limit
from vcmon.http.metrics import AlertCollector, HttpCollector, StoreCollector, build_registry
from vcmon.logs import event
from vcmon.measure.probes.base import Probe, ProbeContext, Resource
from vcmon.measure.probes.icmp import ENGINE, IcmpEngine
from vcmon.measure.probes.registry import build_probes
from vcmon.measure.resolver import Resolver
from vcmon.measure.results import EndpointRecord, Results
from vcmon.measure.scheduler import Scheduler
from vcmon.measure.stats import Observation

log = logging.getLogger(__name__)


class Daemon:
    """One monitoring process: probes every endpoint and serves what it learns."""

    def __init__(self, config: Config, *, icmp_netns: str | None = None) -> None:
        self.config = config
        # Named network namespace the ICMP sockets are opened in (HTTP stays in ours).
        self.icmp_netns = icmp_netns
        self.results = Results(config.endpoints)
        self.probe_context: ProbeContext | None = None  # made by run(); holds shared sockets
        self.exposition = EndpointExposition(self.results)
        self.registry, self.self_metrics = build_registry(self._engine_counters)
        self.self_metrics.config_reload_ok.set(1)
        self.self_metrics.config_reload_time.set(time.time())
        self.resolver = Resolver(ttl=config.resolve_interval)
        self.alerts: AlertRuntime | None = None
        self.delivery: Delivery | None = None
        self.started = asyncio.Event()  # set once probing and serving have begun
        # One wake-up for both requests, so the supervisor waits on a single thing.
        self._wake = asyncio.Event()
        self._stopping = False
        self._reload_wanted = False
        self.on_stop: Callable[[], None] | None = None  # told, in the loop, when asked to stop

    def _icmp_engine(self) -> IcmpEngine | None:
        """The shared ICMP engine, if some endpoint's probe asked for one."""
        ctx = self.probe_context
        return ctx.existing(ENGINE, IcmpEngine) if ctx is not None else None

    def _engine_counters(self) -> dict[str, int]:
        engine = self._icmp_engine()
        return dict(engine.counters) if engine is not None else {}

    def _probe_context(self, cfg: Config) -> ProbeContext:
        netns = self.icmp_netns

        async def open_in_netns(resource: Resource) -> None:
            assert netns is not None
            _start_in_netns(resource, netns)

        return ProbeContext(
            resolver=self.resolver,
            settings=dict(cfg),  # a probe's block is the top-level key it names (``icmp:``)
            opener=open_in_netns if netns is not None else None,
        )

    def _add_probes(self, probes: dict[str, Probe]) -> None:
        """Build the probes the inventory uses and has not got yet (they ask for their
        shared resources; ProbeContext.start() opens those)."""
        assert self.probe_context is not None
        wanted = {rec.probe for rec in self.results} - probes.keys()
        probes.update(build_probes(self.probe_context, wanted))

    def stop(self) -> None:
        """Ask the daemon to finish; safe to call from a signal handler."""
        self._stopping = True
        if self.on_stop is not None:
            self.on_stop()
        self._wake.set()

    def reload(self) -> None:
        """Ask the daemon to re-read its config file."""
        self._reload_wanted = True
        self._wake.set()

    async def run(self) -> None:
        """Run until stop() or SIGINT/SIGTERM; SIGHUP reloads the inventory."""
        raise_fd_limit()
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGINT, self.stop), (signal.SIGTERM, self.stop),
                             (signal.SIGHUP, self.reload)):  # fmt: skip
            loop.add_signal_handler(sig, handler)
        cfg = self.config
        self.alerts = AlertRuntime.open(cfg)
        self.registry.register(AlertCollector(self.alerts.firing_by_severity))
        self.registry.register(StoreCollector(self.alerts.store_state))
        # Delivery follows what the runtime commits; acks come back through ack_from.
        changes = self.alerts.changes.subscribe(statuses=True)
        self.delivery = Delivery(
            cfg, self.alerts.store, self.registry, changes=changes, acks=self.alerts
        )
        self.alerts.sink_status = self.delivery.failing
        self.delivery.count_acks(self.self_metrics.acks)
        try:
            ctx = self.probe_context = self._probe_context(cfg)
            probes: dict[str, Probe] = {}
            self._add_probes(probes)
            async with ctx:  # opens the shared resources the probes asked for, closes them
                engine = self._icmp_engine()
                icmp_mode = engine.mode if engine is not None else "none"  # no ICMP endpoint
                info = {
                    "instance": cfg.instance,
                    "config": str(cfg.source),
                    "icmp_mode": icmp_mode,
                }
                api = Api(
                    self.results,
                    self.registry,
                    info,
                    alerts=self.alerts,
                    exposition=self.exposition,
                )
                server = await serve(api, cfg.listen, web_config_path(cfg))
                self.registry.register(HttpCollector(server.stats))
                try:
                    event(log, logging.INFO, "started", version=__version__, listen=cfg.listen,
                          endpoints=len(self.results), icmp_mode=icmp_mode)  # fmt: skip
                    self.started.set()
                    await self._supervise(probes)
                finally:
                    await server.close()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.alerts.close()
        event(log, logging.INFO, "stopped")

    async def _supervise(self, probes: dict[str, Probe]) -> None:
        alerts = self.alerts
        assert alerts is not None

        async def schedule() -> None:
            await self._start_probes(probes)
            scheduler = Scheduler(
                self.results,
                probes,
                self.resolver,
                self.self_metrics,
                on_round=self._on_round,
                grid=self.probe_context.grid if self.probe_context is not None else None,
            )
            await scheduler.run()

        def start() -> asyncio.Task[None]:
            return tg.create_task(schedule(), name="scheduler")

        async with asyncio.TaskGroup() as tg:
            background = [tg.create_task(alerts.run(), name="alerts")]
            if self.delivery is not None:
                for d in self.delivery.dispatchers:
                    background.append(tg.create_task(d.run(), name=f"sink:{d.sink.name}"))
                for upkeep in self.delivery.upkeep:
                    background.append(tg.create_task(upkeep(), name="sink-upkeep"))
            task = start()
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    task.cancel()
                    for t in background:
                        t.cancel()
                    return
                if self._reload_wanted:
                    self._reload_wanted = False
                    if self._apply_reload():
                        task.cancel()
                        task = start()

    async def _start_probes(self, probes: dict[str, Probe]) -> None:
        """After a reload: build the probes new to the inventory and open what they share.
        One that cannot start (e.g. no ICMP privileges) is left out and logged, not fatal."""
        assert self.probe_context is not None
        had = set(probes)
        self._add_probes(probes)
        try:
            await self.probe_context.start()
        except (OSError, RuntimeError) as exc:
            for name in set(probes) - had:
                del probes[name]
            event(log, logging.ERROR, "probe_start_failed", error=str(exc))

    def _on_round(self, rec: EndpointRecord, obs: Observation) -> None:
        """A round landed: the alert engine decides the state, then its series are rendered."""
        try:
            if self.alerts is not None:
                self.alerts.on_round(rec, obs)
        finally:
            self.exposition.update(rec)

    def _apply_reload(self) -> bool:
        """Re-read the config; keep the running one if the new one is wrong."""
        try:
            new = load_config(Path(self.config.source))
        except ConfigError as exc:
            self.self_metrics.config_reload_ok.set(0)
            event(log, logging.ERROR, "config_reload_failed", error=str(exc))
            return False
        except (MemoryError, RecursionError, OSError) as exc:
            # The loader turns these into ConfigError; should one escape, the daemon must
            # still keep its config and go on. Only the type: the text may quote the file.
            said = f"{type(exc).__name__} while loading; the running config is kept"
            self.self_metrics.config_reload_ok.set(0)
            event(log, logging.ERROR, "config_reload_failed", error=said)
            return False
        for warning in new.warnings:
            event(log, logging.WARNING, "config_warning", warning=warning)
        restart_needed = [
            name
            for name in ("listen", "icmp", "sinks")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if restart_needed:
            event(log, logging.WARNING, "config_reload_partial",
                  unchanged_until_restart=",".join(restart_needed))  # fmt: skip
        self.config = new
        self.results.replace(new.endpoints)
        self.exposition.sync()
        if self.alerts is not None:
            self.alerts.reload(new)
        self.resolver = Resolver(ttl=new.resolve_interval)
        if self.probe_context is not None:
            self.probe_context.resolver = self.resolver
        self.self_metrics.config_reload_ok.set(1)
        self.self_metrics.config_reload_time.set(time.time())
        event(log, logging.INFO, "config_reloaded", endpoints=len(new.endpoints))
        return True


def _start_in_netns(engine: Resource, name: str) -> None:
    """Open a shared probe resource's sockets inside network namespace ``name`` (the lab's
    monitor side).

    A socket keeps the namespace it was created in, so probes go through the lab while HTTP
    is served on this host's loopback. Only this thread switches, and only for the synchronous
    part of ``start()``: were it ever to suspend, other coroutines would run in the namespace,
    so that is refused instead of awaited.
    """
    from vcmon_lab.netns import in_netns  # only here: the lab is otherwise no part of the daemon

    with in_netns(name):
        step = engine.start()
        try:
            step.send(None)
        except StopIteration:
            pass
        else:
            step.close()
            engine.close()
            raise RuntimeError(
                f"{type(engine).__name__}.start() suspended; cannot open it in a netns"
            )
    event(log, logging.INFO, "icmp_netns", netns=name)


async def run_daemon(config: Config, *, icmp_netns: str | None = None) -> None:
    """Run a daemon for ``config`` until a signal stops it; probe from ``icmp_netns`` if given."""
    await Daemon(config, icmp_netns=icmp_netns).run()
