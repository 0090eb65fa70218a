"""The probe contract: a probe defined here, in the test suite alone, registered through the
public registry, is scheduled, measured and exported by a real daemon; no ICMP engine starts
when no endpoint uses ICMP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import vcmon.measure.results as results_module
from tests.support.helpers import free_port
from vcmon.config import ConfigError, Endpoint, Level, Timing, load_config
from vcmon.daemon import Daemon
from vcmon.measure.probe_once import probe_addresses
from vcmon.measure.probes import registry
from vcmon.measure.probes.base import (
    Echo,
    Outcome,
    ProbeContext,
    ProbeKind,
    RoundResult,
    RoundSettings,
    Tally,
)
from vcmon.measure.resolver import Resolver
from vcmon.measure.results import Results
from vcmon.measure.scheduler import Scheduler

# What the fake probe's rounds answer, by address: an RTT in seconds, or None for a loss.
ANSWERS: dict[str, tuple[float | None, ...]] = {
    "127.0.0.1": (0.010, 0.012, 0.011),
    "127.0.0.2": (None, 0.020, None),
}


class Memory:
    """A shared resource: counts how often it is opened and closed."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    async def start(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1


class FakeProbe:
    """Answers every round from ANSWERS, at once."""

    name = "fake"
    voice = False  # its RTT is no call's round trip: no MOS

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.rounds = 0

    async def run_round(self, address: str, settings: RoundSettings, tally: Tally) -> RoundResult:
        self.rounds += 1
        answers = ANSWERS.get(address, ())[: settings.count]
        return RoundResult(
            tuple(
                Echo(i, Outcome.TIMEOUT) if rtt is None else Echo(i, Outcome.OK, rtt=rtt)
                for i, rtt in enumerate(answers)
            )
        )

    @classmethod
    def create(cls, ctx: ProbeContext) -> FakeProbe:
        return cls(ctx.shared("fake-memory", Memory, Memory))


@pytest.fixture
def fake() -> Iterator[ProbeKind]:
    kind = registry.register(ProbeKind(name="fake", create=FakeProbe.create, voice=False))
    try:
        yield kind
    finally:
        registry.unregister("fake")


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "vcmon.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"alerts: {{state_file: {tmp_path / 'state.db'}}}\n"
        "defaults: {interval: 0.5, count: 3, spacing: 0.05, timeout: 0.2}\n"
        "endpoints:\n"
        "  - {id: a, name: A, address: 127.0.0.1, district: D, level: province, probe: fake}\n"
        "  - {id: b, name: B, address: 127.0.0.2, district: D, level: district, parent: a,\n"
        "     probe: fake}\n",
        encoding="utf-8",
    )
    return path


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _samples(text: str, name: str, **labels: str) -> list[float]:
    return [
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


async def test_a_probe_from_the_tests_is_scheduled_measured_and_exported(
    tmp_path: Path, fake: ProbeKind
) -> None:
    port = free_port()
    daemon = Daemon(load_config(_config(tmp_path, port)))
    task = asyncio.create_task(daemon.run())
    try:
        await _until(lambda: daemon.started.is_set() or task.done(), 10, "daemon started")
        assert not task.done(), task
        await _until(daemon.results.all_observed, 10, "a round of every endpoint")
        ctx = daemon.probe_context
        assert ctx is not None
        assert daemon._icmp_engine() is None  # no ICMP endpoint: no ICMP socket opened
        memory = ctx.existing("fake-memory", Memory)
        assert memory is not None
        assert memory.opened == 1  # asked for by the probe, opened once by the context
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    assert memory.closed == 1
    assert _samples(text, "vcmon_up", endpoint="a", probe="fake") == [1.0]
    assert _samples(text, "vcmon_round_rtt_seconds", endpoint="a", probe="fake", stat="avg") == [
        pytest.approx(0.011)
    ]
    assert _samples(text, "vcmon_loss_ratio", endpoint="b", probe="fake") == [pytest.approx(2 / 3)]
    sent = _samples(text, "vcmon_packets_sent_total", endpoint="a", probe="fake")
    assert len(sent) == 1
    assert sent[0] >= 3
    assert _samples(text, "vcmon_mos") == []  # MOS only where it means something
    assert _samples(text, "vcmon_endpoint_info", endpoint="b", probe="fake") == [1.0]


async def test_several_probes_per_endpoint_are_scheduled_and_kept_apart(
    fake: ProbeKind, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "endpoint_probes", lambda ep: ("icmp", "fake"))
    room = Endpoint(id="r", name="R", address="127.0.0.1", district="D", level=Level.COMMUNE,
                    timing=Timing(interval=0.2, count=3, spacing=0.01, timeout=0.05))  # fmt: skip
    results = Results([room])
    assert [rec.key for rec in results] == [("r", "icmp"), ("r", "fake")]
    assert results["r"].probe == "icmp"  # by id: the endpoint's primary probe
    ctx = ProbeContext()
    first, second = FakeProbe.create(ctx), FakeProbe.create(ctx)
    assert first.memory is second.memory  # one shared resource per context
    scheduler = Scheduler(results, {"icmp": first, "fake": second}, Resolver(), grid=ctx.grid)
    task = asyncio.create_task(scheduler.run())
    try:
        await _until(results.all_observed, 5, "both probes of the room observed")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    icmp, other = results.get("r", "icmp"), results.get("r", "fake")
    assert icmp is not None
    assert other is not None
    assert icmp is not other
    assert icmp.last is not None
    assert other.last is not None
    assert icmp.last.mos is None  # voice is the probe's: this stand-in says no
    assert ctx.grid.tick == scheduler.tick


async def test_probe_command_runs_any_registered_probe(fake: ProbeKind) -> None:
    rows = await probe_addresses(["127.0.0.1", "127.0.0.2"], RoundSettings(3, 0.01, 0.1),
                                 "auto", "fake")  # fmt: skip
    assert [r.received for r in rows] == [3, 1]
    assert rows[0].cells()[-1] == "-"  # no MOS for a probe that is not a voice path
    assert rows[1].echo_line() == "- 20.000 -"


def test_registry_names_follow_registration(tmp_path: Path) -> None:
    path = tmp_path / "vcmon.yaml"
    path.write_text(
        "endpoints:\n"
        "  - {id: a, name: A, address: 127.0.0.1, district: D, level: province, probe: fake}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="unknown probe 'fake'"):
        load_config(path)
    kind = registry.register(ProbeKind(name="fake", create=FakeProbe.create, voice=False))
    try:
        assert "fake" in registry.probe_names()
        assert load_config(path).endpoints[0].probe == "fake"
        with pytest.raises(ValueError, match="already registered"):
            registry.register(kind)
    finally:
        registry.unregister("fake")
    assert registry.probe_names() == frozenset({"icmp"})
