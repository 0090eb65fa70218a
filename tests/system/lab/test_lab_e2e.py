"""The province lab end to end: the daemon probing through the monitor namespace, scenarios
seen on /metrics, and the `vcmon lab` / `vcmon demo` commands leaving nothing behind."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProvinceLabFactory
from tests.support.helpers import free_port
from vcmon import cli
from vcmon_lab import netns
from vcmon_lab.control import LabHome, LabState
from vcmon_lab.process import pid_alive
from vcmon_lab.profiles import Profile

ROOT = Path(__file__).resolve().parents[3]
TIMING = "defaults: {interval: 1.0, count: 3, spacing: 0.05, timeout: 0.5}\n"

# id → (lab address, parents, profile)
ROOMS: dict[str, tuple[str, tuple[str, ...], Profile]] = {
    "tinh": ("198.18.0.1", (), Profile(delay=0.020, jitter=0.0002)),
    "d1": ("198.18.1.1", ("tinh",), Profile(delay=0.005, jitter=0.0002)),
    "d1-a": ("198.18.1.11", ("d1",), Profile(delay=0.008, jitter=0.0005)),
    "d1-b": ("198.18.1.12", ("d1",), Profile(delay=0.012)),
    "d2": ("198.18.2.1", ("tinh",), Profile(delay=0.030, jitter=0.0005)),
    "d2-a": ("198.18.2.11", ("d2",), Profile(delay=0.002)),
}


def rooms_inventory() -> str:
    lines = [TIMING, "endpoints:\n"]
    for eid, (address, parents, _) in ROOMS.items():
        parent = f", parent: {parents[0]}" if parents else ""
        district = eid.split("-")[0]
        lines.append(
            f"  - {{id: {eid}, name: Room {eid}, address: {address}, district: {district}, "
            f"level: commune{parent}}}\n"
        )
    return "".join(lines)


def rooms_config(port: int) -> str:
    return f"listen: 127.0.0.1:{port}\n" + rooms_inventory()


def metric(text: str, name: str) -> dict[str, float]:
    """endpoint → value of a per-endpoint metric (``stat="avg"`` for round RTT)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels.get("stat", "avg") == "avg":
                out[s.labels["endpoint"]] = s.value
    return out


async def wait_until(
    check: Callable[[], object], within: float, what: str, poll: float = 0.1
) -> None:
    """Await ``check()`` (sync or async) becoming truthy; fail naming ``what`` after ``within``."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return
        await asyncio.sleep(poll)
    pytest.fail(f"timed out after {within} s waiting for {what} (last: {last!r})")


# -- the daemon through the monitor namespace ------------------------------------------------


async def test_daemon_probes_through_the_lab_and_sees_an_uplink_fail(
    province_lab: ProvinceLabFactory,
) -> None:
    env = province_lab(
        rooms_inventory(), profiles={e: p for e, (_, _, p) in ROOMS.items()}, seed=31
    )
    monitor = env.lab.monitor
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "vcmon", "run", "-c", str(env.config_path), "--netns", monitor],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=env.base_url, timeout=5) as http:

            async def metrics() -> str:
                return (await http.get("/metrics")).text

            async def ready() -> bool:
                try:
                    return (await http.get("/-/ready")).status_code == 200
                except httpx.TransportError:
                    assert proc.returncode is None, "the daemon exited"
                    return False

            await wait_until(ready, 15, "the daemon's first rounds")
            # Served on this host's loopback, measured through the lab: RTT ≈ the profile.
            text = await metrics()
            up = metric(text, "vcmon_up")
            avg = metric(text, "vcmon_round_rtt_seconds")
            assert up == dict.fromkeys(ROOMS, 1.0)
            for eid, (_, _, profile) in ROOMS.items():
                assert abs(avg[eid] - profile.delay) < 0.001, (eid, avg[eid], profile)
            # The echoes really went through the lab: the responder answered them.
            seen = {e.dst for e in env.lab.echoes()}
            assert {address for address, _, _ in ROOMS.values()} <= seen

            # A district uplink fails: exactly that district goes down, then comes back.
            runner = asyncio.create_task(env.play("steps:\n  - {at: 0, uplink: d1, for: 4}\n"))
            outage = {eid: 0.0 if eid.startswith("d1") else 1.0 for eid in ROOMS}

            async def shows(expected: dict[str, float]) -> bool:
                return metric(await metrics(), "vcmon_up") == expected

            await wait_until(lambda: shows(outage), 10, f"vcmon_up = {outage}")
            await asyncio.wait_for(runner, 10)
            await wait_until(lambda: shows(dict.fromkeys(ROOMS, 1.0)), 10, "every room back up")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, raw = await asyncio.wait_for(proc.communicate(), 10)
    stderr = raw.decode()
    assert proc.returncode == 0, stderr
    assert f"event=icmp_netns netns={monitor}" in stderr


def test_run_refuses_lab_addresses_outside_the_lab(tmp_path: Path) -> None:
    config = tmp_path / "vcmon.yaml"
    config.write_text(rooms_config(free_port()), encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "vcmon", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "vcmon: 6 endpoints (tinh, d1, d1-a, …) have lab addresses (198.18.0.0/15), which exist "
        "only inside the province lab; probe them there with --netns (e.g. --netns vcmon-mon), "
        "never through this host's routes"
    )


def test_run_with_a_missing_namespace_says_so(tmp_path: Path, require_root: None) -> None:
    config = tmp_path / "vcmon.yaml"
    config.write_text(rooms_config(free_port()), encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "vcmon", "run", "-c", str(config), "--netns", "vcmon-no-such"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert r.returncode == 1
    assert "network namespace 'vcmon-no-such' does not exist" in r.stderr
    assert "Traceback" not in r.stderr


# -- the commands ----------------------------------------------------------------------------

INVENTORY = """\
endpoints:
  - {id: tinh, name: UBND tỉnh, address: 127.10.0.1, district: Tỉnh, level: province,
     labels: {link: fibre}}
  - {id: ha-long, name: TP Hạ Long, address: 127.10.1.1, district: Hạ Long, level: district,
     parent: tinh, labels: {link: fibre}}
  - {id: co-to, name: Huyện Cô Tô, address: 127.10.8.1, district: Cô Tô, level: district,
     parent: tinh, labels: {link: microwave}}
  - {id: co-to-a, name: Xã Đồng Tiến, address: 127.10.8.11, district: Cô Tô, level: commune,
     parent: co-to, labels: {link: fibre}}
"""


Env = tuple[LabHome, dict[str, str]]


@pytest.fixture
def lab_env(tmp_path: Path, require_root: None) -> Iterator[tuple[LabHome, dict[str, str]]]:
    """A lab name of this test run (swept if left behind) and a private state directory."""
    env = {**os.environ, "VCMON_LAB_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    name = f"t{os.getpid()}-cli"
    home = LabHome.named(name, env)
    yield home, env
    subprocess.run([sys.executable, "-m", "vcmon", "lab", "down", "--lab", name], env=env,
                   capture_output=True, timeout=30, check=False)  # fmt: skip


def vcmon(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vcmon", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=dict(env),
    )


def assert_nothing_left(home: LabHome, state: LabState) -> None:
    assert not set(home.names.both) & set(netns.list_lab_namespaces())
    assert not pid_alive(state.responder_pid)
    assert state.services_pid is None or not pid_alive(state.services_pid)
    assert not home.dir.exists()


def test_lab_up_status_scenario_down(lab_env: Env, tmp_path: Path) -> None:
    home, env = lab_env
    inventory = tmp_path / "rooms.yaml"
    inventory.write_text(INVENTORY, encoding="utf-8")
    name = home.name

    r = vcmon(env, "lab", "up", "--lab", name, "--inventory", str(inventory), "--seed", "5")
    assert r.returncode == 0, r.stderr
    state = LabState.read(home)
    assert state is not None
    assert f"vcmon run -c {home.config_path} --netns {home.names.monitor}" in r.stdout
    # The responder outlives the command that started it, in a session of its own.
    assert pid_alive(state.responder_pid)
    assert os.getsid(state.responder_pid) != os.getsid(0)
    assert netns.verify(home.names) == []
    lab_config = home.config_path.read_text(encoding="utf-8")
    assert "address: 198.18.8.11" in lab_config
    assert "listen: 127.0.0.1:9231" in lab_config

    r = vcmon(env, "lab", "status", "--lab", name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"responder: pid {state.responder_pid} running" in r.stdout
    assert "scenario:  none" in r.stdout
    rows = [line for line in r.stdout.splitlines() if "co-to-a" in line]
    assert len(rows) == 1
    assert "198.18.8.11" in rows[0]
    assert " up " in rows[0]

    scenario = tmp_path / "blip.yaml"
    scenario.write_text("name: blip\nsteps:\n  - {at: 0, uplink: co-to, for: 0.5}\n")
    r = vcmon(env, "lab", "scenario", "--lab", name, str(scenario))
    assert r.returncode == 0, r.stderr
    assert "uplink of co-to down (2 endpoints) for 0.5 s" in r.stdout
    assert r.stdout.rstrip().endswith("scenario finished")
    # Restored afterwards: live profiles equal the generated ones again.
    assert home.path("profiles.json").read_text() == home.path("base-profiles.json").read_text()

    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {at: 0, uplink: co-too, for: 1}\n")
    r = vcmon(env, "lab", "scenario", "--lab", name, str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"{bad}:2:21: steps[0].uplink: unknown endpoint 'co-too' (did you mean 'co-to'?)"
    )

    r = vcmon(env, "lab", "down", "--lab", name)
    assert r.returncode == 0, r.stderr
    assert f"namespace {home.names.monitor}" in r.stdout
    assert_nothing_left(home, state)
    r = vcmon(env, "lab", "down", "--lab", name)
    assert (r.returncode, r.stdout.strip()) == (
        0,
        f"lab down: nothing to remove ({home.names.monitor} is not up)",
    )
    r = vcmon(env, "lab", "status", "--lab", name)
    assert r.returncode == 1
    assert "no lab is up" in r.stdout


def test_lab_down_after_a_crash(lab_env: Env, tmp_path: Path) -> None:
    home, env = lab_env
    inventory = tmp_path / "rooms.yaml"
    inventory.write_text(INVENTORY, encoding="utf-8")
    r = vcmon(env, "lab", "up", "--lab", home.name, "--inventory", str(inventory))
    assert r.returncode == 0, r.stderr
    state = LabState.read(home)
    assert state is not None
    os.kill(state.responder_pid, signal.SIGKILL)  # the responder crashed …
    home.path("state.json").unlink()  # … and its state was lost
    r = vcmon(env, "lab", "down", "--lab", home.name)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(home, state)


def test_lab_up_refuses_what_it_cannot_map(lab_env: Env, tmp_path: Path) -> None:
    home, env = lab_env
    inventory = tmp_path / "rooms.yaml"
    inventory.write_text(
        INVENTORY + "  - {id: v6, name: V6, address: '::1', district: X, level: commune}\n",
        encoding="utf-8",
    )
    r = vcmon(env, "lab", "up", "--lab", home.name, "--inventory", str(inventory))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"{inventory}: cannot map these endpoints into the lab:",
        "  endpoint v6: ::1 cannot be mapped into the lab (expected an address in 127.10.0.0/16,"
        " which becomes 198.18.X.Y, or one already in 198.18.0.0/16, excluding the first and "
        "last)",
    ]
    assert not set(home.names.both) & set(netns.list_lab_namespaces())


@pytest.mark.parametrize("command", [["lab", "up"], ["lab", "down"], ["lab", "status"],
                                     ["lab", "scenario", "x.yaml"]])  # fmt: skip
def test_lab_commands_need_root(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(command) == 1
    assert capsys.readouterr().err.strip() == (
        "vcmon: the lab needs root (network namespaces, raw sockets); run it with sudo"
    )


# -- the demo --------------------------------------------------------------------------------


class Lines:
    """Lines of a process's stream, collected by a thread, awaited with deadlines."""

    def __init__(self, stream: object) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait(self, predicate: Callable[[str], bool], within: float, what: str) -> str:
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.0, left))
            except queue.Empty:
                line = None
                left = 0.0
            if line is None and left <= 0:
                pytest.fail(f"no line {what} within {within} s; got:\n" + "\n".join(self.seen))
            if line is None:
                pytest.fail(f"stream ended before a line {what}; got:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if predicate(line):
                return line


def test_demo_runs_lab_scenario_and_daemon_then_cleans_up(lab_env: Env, tmp_path: Path) -> None:
    home, env = lab_env
    inventory = tmp_path / "rooms.yaml"
    inventory.write_text(INVENTORY.replace("endpoints:", TIMING + "endpoints:"), encoding="utf-8")
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(
        "name: test loop\nloop: true\nduration: 8\nsteps:\n  - {at: 2, uplink: co-to, for: 4}\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vcmon", "demo", "--lab", home.name, "--inventory", str(inventory),
         "--scenario", str(scenario), "--listen", f"127.0.0.1:{port}", "--summary-every", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    out = Lines(proc.stdout)
    try:
        out.wait(lambda line: line == f"metrics: http://127.0.0.1:{port}/metrics", 20, "metrics")
        out.wait(lambda line: "4 rooms: 4 up, 0 not answering" in line, 20, "all up")
        # Non-tty: plain summary lines, naming what the scenario took down.
        line = out.wait(lambda line: "2 not answering (co-to, co-to-a)" in line, 20, "outage")
        assert "uplink of co-to down (2 endpoints)" in line
        state = LabState.read(home)
        assert state is not None
        assert state.owner_pid == proc.pid
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert set(metric(text, "vcmon_up")) == {"tinh", "ha-long", "co-to", "co-to-a"}
    finally:
        # Ctrl-C, then a SIGTERM on its heels (as `timeout` sends to the process and then its
        # group, or an impatient second Ctrl-C): the teardown still runs to the end.
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    out.wait(lambda line: line == "lab down", 5, "lab down")
    assert_nothing_left(home, state)


def test_demo_without_root_falls_back_to_loopback(
    require_root: None, request: pytest.FixtureRequest
) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop root")
    port = free_port()
    # Where the unprivileged demo keeps its alert state (pytest's tmp is root's alone).
    state = Path(tempfile.mkdtemp(prefix="vcmon-nobody-"))
    state.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    proc = subprocess.Popen(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "vcmon", "demo", "--listen", f"127.0.0.1:{port}", "--summary-every", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "COLUMNS": "300", "XDG_STATE_HOME": str(state)},
    )  # fmt: skip
    out = Lines(proc.stdout)
    try:
        out.wait(lambda line: line.startswith("status:"), 20, "the status URL")
        try:
            proc.wait(3)  # exits at once when this host allows nobody no ICMP socket at all
        except subprocess.TimeoutExpired:
            out.wait(lambda line: "231 rooms: 231 up" in line, 30, "the loopback rooms up")
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    note = "note: the lab needs root (network namespaces, raw sockets); run it with sudo, so no "
    assert note + "province lab: the 231 rooms are loopback addresses" in stderr
    assert "NOT simulated" in stderr
    if proc.returncode == 1:
        assert "cannot open an ICMP socket" in stderr
        assert "ping_group_range" in stderr
    else:
        assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "lab down" not in out.seen
