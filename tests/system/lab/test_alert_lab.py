"""The alert engine end to end on the lab: a real daemon probing through the monitor
namespace, scenarios failing a district uplink and flapping a link, and SIGKILL mid-outage.

What is checked is the durable event log, read from the daemon's state file while it runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ProvinceLab, ProvinceLabFactory
from vcmon.alerts.runtime import state_path
from vcmon.alerts.store import Store
from vcmon_lab.profiles import Profile

INTERVAL = 1.0
DOWN_AFTER = 3

INVENTORY = f"""
defaults: {{interval: {INTERVAL}, count: 3, spacing: 0.05, timeout: 0.4}}
alerts:
  health: {{down_after: {DOWN_AFTER}, up_after: 2}}
endpoints:
  - {{id: tinh, name: UBND tỉnh, address: 127.10.0.1, district: Tỉnh, level: province}}
  - {{id: co-to, name: UBND huyện Cô Tô, address: 127.10.8.1, district: Cô Tô,
      level: district, parent: tinh}}
  - {{id: co-to-co-to, name: UBND thị trấn Cô Tô, address: 127.10.8.11, district: Cô Tô,
      level: commune, parent: co-to, labels: {{unit_type: thị trấn}}}}
  - {{id: co-to-dong-tien, name: UBND xã Đồng Tiến, address: 127.10.8.12, district: Cô Tô,
      level: commune, parent: co-to}}
  - {{id: co-to-thanh-lan, name: UBND xã Thanh Lân, address: 127.10.8.13, district: Cô Tô,
      level: commune, parent: co-to}}
  - {{id: van-don, name: UBND huyện Vân Đồn, address: 127.10.7.1, district: Vân Đồn,
      level: district, parent: tinh}}
  - {{id: van-don-quan-lan, name: UBND xã Quan Lạn, address: 127.10.7.11,
      district: Vân Đồn, level: commune, parent: van-don}}
"""
CO_TO_CHILDREN = ("co-to-co-to", "co-to-dong-tien", "co-to-thanh-lan")
# Clean links: these tests are about reachability; quality alerts have their own tests.
CLEAN = {
    eid: Profile(delay=0.004, jitter=0.0002)
    for eid in ("tinh", "co-to", *CO_TO_CHILDREN, "van-don", "van-don-quan-lan")
}

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]  # ~45 s a test: scenarios in real time


class Daemon:
    """``vcmon run`` as a child process, which a test may SIGKILL and start again."""

    def __init__(self, env: ProvinceLab) -> None:
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.state = state_path(env.config)
        self.log = env.config_path.with_suffix(".log")  # its stderr: logs and console sink

    async def start(self) -> None:
        argv = [sys.executable, "-m", "vcmon", "run", "-c", str(self.env.config_path),
                "--netns", self.env.lab.monitor]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ)
            )

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    def events(self) -> list[dict[str, Any]]:
        if not self.state.exists():
            return []
        with Store.open(self.state) as store:
            return store.events(0, 10_000)

    def alive(self) -> None:
        assert self.proc is not None
        assert self.proc.returncode is None, "the daemon exited"


@asynccontextmanager
async def running(env: ProvinceLab) -> AsyncIterator[Daemon]:
    daemon = Daemon(env)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def until(
    check: Callable[[], Any], within: float, what: str, daemon: Daemon | None = None
) -> Any:
    """Poll ``check`` until truthy; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        if daemon is not None:
            daemon.alive()
        last = check()
        if last:
            return last
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {within} s waiting for {what} (last: {last!r})")


def of(events: list[dict[str, Any]], kind: str, status: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind and e["status"] == status]


def status(env: ProvinceLab) -> list[dict[str, Any]]:
    try:
        doc = httpx.get(f"{env.base_url}/api/v1/status", timeout=2).json()
    except httpx.TransportError:
        return []
    return list(doc["endpoints"])


async def healthy(daemon: Daemon, env: ProvinceLab, within: float = 20) -> None:
    """Wait until every endpoint is up and has had two more rounds (so it is confirmed up
    and a failure from now on is news)."""

    def all_up() -> float | None:
        eps = status(env)
        if eps and all(e["state"] == "up" and e["last"] for e in eps):
            return float(max(e["last"]["started_at"] for e in eps))
        return None

    since = await until(all_up, within, "every endpoint up", daemon)

    def two_more_rounds() -> bool:
        eps = status(env)
        return bool(eps) and all(
            e["state"] == "up" and e["last"]["started_at"] > since + INTERVAL for e in eps
        )

    await until(two_more_rounds, within, "two more good rounds", daemon)


async def test_district_uplink_down_is_one_roll_up_and_one_resolve(
    province_lab: ProvinceLabFactory,
) -> None:
    env = province_lab(INVENTORY, profiles=CLEAN, seed=7)
    async with running(env) as daemon:
        await healthy(daemon, env)
        failed_at = time.time()
        play = asyncio.create_task(env.play("steps:\n  - {at: 0, uplink: co-to, for: 8}\n"))
        fired = await until(
            lambda: of(daemon.events(), "group_down", "firing"), 15, "the roll-up", daemon
        )
        # Within the failure threshold × interval + 1 s (the bound), plus one round:
        # the outage can start just after a round began.
        first = fired[0]
        started = first["started_at"]
        assert first["endpoint"]["id"] == "co-to"
        assert sorted(first["affected"]) == sorted(CO_TO_CHILDREN)
        assert "3/3" in first["summary"] or "3 of 3" in first["summary"]
        decided = time.time()
        assert decided - failed_at <= (DOWN_AFTER + 1) * INTERVAL + 1.0 + 1.0, started
        await play
        await until(
            lambda: of(daemon.events(), "group_down", "resolved"), 15, "the resolve", daemon
        )
        await healthy(daemon, env)  # the children came back too, without events
        events = daemon.events()
    kinds = Counter((e["status"], e["kind"], e["endpoint"]["id"]) for e in events)
    assert kinds == {("firing", "group_down", "co-to"): 1, ("resolved", "group_down", "co-to"): 1}
    assert events[0]["alert_id"] == events[1]["alert_id"]
    # With no sink configured, the console sink shows both on the terminal.
    lines = [ln for ln in daemon.log.read_text().splitlines() if "group_down" in ln]
    console = [ln for ln in lines if ln.split(" ", 2)[1:2] in (["FIRING"], ["RESOLVED"])]
    assert [ln.split()[1] for ln in console] == ["FIRING", "RESOLVED"], lines


async def test_flapping_link_is_one_flapping_alert(province_lab: ProvinceLabFactory) -> None:
    env = province_lab(INVENTORY, profiles=CLEAN, seed=8)
    async with running(env) as daemon:
        await healthy(daemon, env)
        # Down 2 s, up 2 s with 1 s rounds: half the results change.
        await env.play("steps:\n  - {at: 0, flap: van-don-quan-lan, every: 2, for: 30}\n")
        await healthy(daemon, env, within=60)  # settled
        events = daemon.events()
    flapping = [e for e in events if e["kind"] == "flapping"]
    assert [e["status"] for e in flapping if e["status"] == "firing"] == ["firing"]
    downs = of(events, "endpoint_down", "firing")
    assert len(downs) <= 2, downs  # a couple before the pattern shows, never a storm
    assert {e["endpoint"]["id"] for e in events} == {"van-don-quan-lan"}


async def test_sigkill_mid_outage_neither_loses_nor_repeats(
    province_lab: ProvinceLabFactory, tmp_path: Path
) -> None:
    env = province_lab(INVENTORY, profiles=CLEAN, seed=9)
    async with running(env) as daemon:
        await healthy(daemon, env)
        play = asyncio.create_task(env.play("steps:\n  - {at: 0, uplink: co-to, for: 14}\n"))
        await until(lambda: of(daemon.events(), "group_down", "firing"), 15, "the roll-up", daemon)
        await daemon.kill()  # in the middle of the outage
        await daemon.start()
        await play
        await until(
            lambda: of(daemon.events(), "group_down", "resolved"), 20, "the resolve", daemon
        )
        # Killed again right after the resolve was written, then once more started: nothing
        # re-fires, nothing resolves twice.
        await daemon.kill()
        await daemon.start()
        await healthy(daemon, env)
        events = daemon.events()
    firing = of(events, "group_down", "firing")
    resolved = of(events, "group_down", "resolved")
    assert len(firing) == 1
    assert len(resolved) == 1
    assert firing[0]["alert_id"] == resolved[0]["alert_id"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["endpoint"]["id"] for e in events} == {"co-to"}
