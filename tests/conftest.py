"""Shared fixtures. Keep this file to fixtures several test modules use.

Lab fixtures (need root): ``require_root`` skips a test that needs root, or fails it when the
``CI`` environment variable is set; ``lab`` is a factory that brings up an isolated
namespace pair with a user-space responder::

    def test_something(lab: LabFactory) -> None:
        env = lab({"198.18.0.1": Profile(delay=0.002, jitter=0.0002)})
        with env.in_monitor():
            sock = socket.socket(...)        # lives in the monitor namespace from now on
        ...
        truth = env.wait_echoes(lambda echoes: len(echoes) >= 5)
        env.set_profiles({"198.18.0.1": Profile(up=False)})

``province_lab`` builds on it for tests that need an inventory: the rooms' lab addresses, their
generated profiles (or given ones), a daemon config on a free port, and scenario playback::

    async def test_outage(province_lab: ProvinceLabFactory) -> None:
        env = province_lab(INVENTORY_YAML, profiles={"tinh": Profile(delay=0.020)})
        # vcmon run -c env.config_path --netns env.lab.monitor, then:
        await env.play("steps:\n  - {at: 0, uplink: co-to, for: 4}\n")

While a lab is up, its responder (real-time priority, spinning before each due reply) gets the
last CPU of this process's affinity to itself and the test's thread is pinned to the others,
so the responder never preempts the prober between taking a send time and sending; without
this, rare 0.3–1 ms outliers on the request leg are the harness's, not the engine's.

Every lab a test makes is torn down after it; a session finalizer removes anything left (and,
at the start, namespaces of earlier runs that crashed), so no namespace or responder process
outlives the test run.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from tests.support.helpers import free_port, wait_for
from vcmon.config import Config, load_config
from vcmon_lab import netns
from vcmon_lab.netns import Lab, LabNames
from vcmon_lab.profiles import Profile
from vcmon_lab.province import by_address, generate_profiles, lab_config, map_addresses
from vcmon_lab.scenario import BoundScenario, ScenarioRunner, bind, load_scenario, parse_scenario

_live_labs: dict[LabNames, Lab] = {}
_lab_counter = itertools.count(1)


def _root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets)"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    return None


# Markers follow from the fixtures a test uses, so `pytest -m "not root"` (or "not netns",
# "not container") selects by what a test needs without every test repeating it.
ROOT_FIXTURES = frozenset({"require_root"})
NETNS_FIXTURES = frozenset({"lab", "province_lab"})
CONTAINER_FIXTURES = frozenset({"image"})  # tests/system/test_container.py builds it
SYSTEM = Path(__file__).parent / "system"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test root, netns and container from the fixtures it depends on."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        builds_image = bool(used & CONTAINER_FIXTURES) and SYSTEM in item.path.parents
        if used & (ROOT_FIXTURES | NETNS_FIXTURES) or builds_image:
            item.add_marker(pytest.mark.root)
        if used & NETNS_FIXTURES or builds_image:
            item.add_marker(pytest.mark.netns)
        if builds_image:
            item.add_marker(pytest.mark.container)


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every daemon it starts) keeps its alert state in its own directory,
    never in the user's ~/.local/state, so no test sees another's alerts."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def require_root() -> None:
    """Skip unless root; when ``CI`` is set, fail instead, so CI never silently skips."""
    reason = _root_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
    pytest.skip(reason)


class LabFactory(Protocol):
    """Signature of the ``lab`` fixture: profiles in, running lab out."""

    def __call__(
        self, profiles: Mapping[str, Profile], *, seed: int | None = None, realtime: int = 10
    ) -> Lab: ...


@pytest.fixture(scope="session", autouse=True)
def _lab_session_cleanup() -> Iterator[None]:
    """Before the run, clear crashed runs' labs; after it, remove whatever this run left."""
    if _root_missing() is None:
        netns.sweep()
    yield
    if _root_missing() is None:
        for lab in list(_live_labs.values()):
            lab.stop()
        _live_labs.clear()
        netns.sweep(run_pid=os.getpid())


def _cpu_split() -> tuple[set[int], set[int]] | None:
    """(CPUs for the test thread, CPU for the responder), or None on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:-1]), {cpus[-1]}


@pytest.fixture
def lab(require_root: None, tmp_path: Path) -> Iterator[LabFactory]:
    """Factory: ``lab(profiles)`` starts an isolated lab and returns it; torn down after."""
    made: list[Lab] = []
    affinity = os.sched_getaffinity(0)
    split = _cpu_split()

    def make(
        profiles: Mapping[str, Profile], *, seed: int | None = None, realtime: int = 10
    ) -> Lab:
        index = next(_lab_counter)
        names = LabNames.for_run(str(index))
        env = Lab(
            names,
            tmp_path / f"lab{index}",
            seed=seed,
            realtime=realtime,
            responder_cpus=split[1] if split else None,
            die_with_parent=True,
        )
        _live_labs[names] = env
        made.append(env)
        if split:
            os.sched_setaffinity(0, split[0])  # this thread only: where the prober runs
        return env.start(profiles)

    yield make
    os.sched_setaffinity(0, affinity)
    errors: list[BaseException] = []
    for env in made:
        try:
            env.stop()
        except Exception as exc:  # keep tearing down the others; report after
            errors.append(exc)
        _live_labs.pop(env.names, None)
    if errors:
        raise errors[0]


@dataclass
class ProvinceLab:
    """A running lab for an inventory, with the daemon config that watches it."""

    lab: Lab
    config_path: Path  # the inventory on lab addresses, listening on a free loopback port
    config: Config
    addresses: dict[str, str]  # endpoint id → lab address
    profiles: dict[str, Profile]  # endpoint id → base profile

    @property
    def base_url(self) -> str:
        return f"http://{self.config.listen}"

    def set_profiles(self, profiles: Mapping[str, Profile]) -> None:
        """Make endpoint-id profiles live (waits for the responder)."""
        self.lab.set_profiles(by_address(profiles, self.addresses))

    def scenario(self, scenario: str | Path) -> BoundScenario:
        """A scenario (YAML text or a file) bound to this inventory."""
        loaded = (
            load_scenario(scenario) if isinstance(scenario, Path)
            else parse_scenario(scenario, "<test scenario>")
        )  # fmt: skip
        return bind(loaded, {ep.id: ep.parent for ep in self.config.endpoints})

    async def play(self, scenario: str | Path) -> None:
        """Play a scenario to its end on this lab; the base profiles are restored after."""

        async def apply(profiles: Mapping[str, Profile]) -> None:
            await asyncio.to_thread(self.set_profiles, profiles)

        await ScenarioRunner(self.scenario(scenario), self.profiles, apply).run()


class ProvinceLabFactory(Protocol):
    """Signature of the ``province_lab`` fixture."""

    def __call__(
        self,
        inventory: str | Path,
        *,
        profiles: Mapping[str, Profile] | None = None,
        seed: int = 1,
    ) -> ProvinceLab: ...


@pytest.fixture
def province_lab(lab: LabFactory, tmp_path: Path) -> ProvinceLabFactory:
    """Factory: ``province_lab(inventory)`` — YAML text or a file, addresses in 127.10.0.0/16 or
    198.18.0.0/16 — starts a lab whose profiles are generated (``profiles`` overrides some, by
    endpoint id) and writes the daemon config for it; torn down with the ``lab`` fixture."""
    counter = itertools.count(1)

    def make(
        inventory: str | Path, *, profiles: Mapping[str, Profile] | None = None, seed: int = 1
    ) -> ProvinceLab:
        n = next(counter)
        if isinstance(inventory, str):
            path = tmp_path / f"inventory{n}.yaml"
            path.write_text(inventory, encoding="utf-8")
            inventory = path
        source = load_config(inventory, env={})
        addresses = map_addresses(source.endpoints)
        base = generate_profiles(source.endpoints, seed) | dict(profiles or {})
        config_path = tmp_path / f"vcmon-lab{n}.yaml"
        config_path.write_text(
            lab_config(source, addresses, listen=f"127.0.0.1:{free_port()}"), encoding="utf-8"
        )
        env = lab(by_address(base, addresses), seed=seed)
        return ProvinceLab(env, config_path, load_config(config_path, env={}), addresses, base)

    return make


ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port, clustering off; its base URL."""
    if ALERTMANAGER is None:
        if __import__("os").environ.get("CI"):
            pytest.fail("alertmanager is not installed (make test installs it)")
        pytest.skip("alertmanager is not installed")
    port = free_port()
    config = tmp_path / "am.yml"
    config.write_text(
        "route: {receiver: blackhole}\nreceivers: [{name: blackhole}]\n", encoding="utf-8"
    )
    proc = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/-/ready").status_code == 200, 20, "alertmanager")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
