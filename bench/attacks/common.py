"""What every attack group needs: a real `vcmon run` started on loopback with a given config,
`vcmon check` measured with its own rusage, metrics read from the daemon, and waiting on a
condition with a deadline (never a bare sleep)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent.parent
INVENTORY = ROOT / "config" / "province-231.yaml"
VCMON = (sys.executable, "-m", "vcmon")

Row = tuple[str, bool | None, str]  # attack, held? (None: skipped), figure
T = TypeVar("T")

# Quick rounds, so a bench of seconds sees many of them.
FAST = "defaults: {interval: 1.0, count: 2, spacing: 0.05, timeout: 0.5}\n"
# Any round trip at all is "high": every endpoint raises a warning on its first round, so
# there are alerts to silence, acknowledge and write.
FIRE = (
    "  quality: {rtt_ms: {warning: {raise: 0, clear: 0}, critical: null, rounds: 1},\n"
    "            jitter_ms: {enabled: false}, mos: {enabled: false}}\n"
)
# A few rooms on loopback (the kernel answers every address of 127.0.0.0/8).
ROOMS = "".join(
    f"  - {{id: room-{i}, name: Phòng {i}, address: 127.0.0.{i}, district: D{i % 2},"
    " level: commune}\n"
    for i in range(1, 5)
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T | None], within: float, what: str, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something true; TimeoutError naming ``what`` if not
    within ``within`` seconds. Transport errors count as "not yet"."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.TransportError):
            got = check()
            if got:
                return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {within:g} s")
        time.sleep(every)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def rss_mb(pid: int) -> float:
    """Resident set size now (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@dataclass
class Daemon:
    """A running `vcmon run` and what the attacks need to reach and measure it."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    config: Path
    auth: tuple[str, str] | None = None  # for reads, when a web config asks for them
    fd_limit: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request on a fresh connection; ``auth`` defaults to the reading user."""
        kw.setdefault("auth", self.auth)
        kw.setdefault("timeout", 30)
        return httpx.request(method, self.base + path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.get("/metrics").text, name, **labels)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def log_count(self, needle: str) -> int:
        return sum(1 for line in self.log_text().splitlines() if needle in line)

    def running(self) -> bool:
        return self.proc.poll() is None

    def reload(self, text: str) -> None:
        """Write ``text`` as the config (the listen line kept) and send SIGHUP."""
        self.config.write_text(self.config.read_text().split("\n", 1)[0] + "\n" + text)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 15 s; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def _limit_fds(limits: tuple[int, int] | None) -> Callable[[], None] | None:
    if limits is None:
        return None

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    return apply


def start_daemon(
    tmp: Path,
    config: str,
    *,
    web: str | None = None,
    auth: tuple[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    fd_limits: tuple[int, int] | None = None,
    wait: str | None = "/-/ready",
    within: float = 40.0,
    name: str = "vcmon",
    log_level: str = "info",
) -> Daemon:
    """`vcmon run -c <tmp>/<name>.yaml` with ``config`` after a listen line on ``host`` (always
    reached through 127.0.0.1); ``web`` is the web config file's text. Waits until ``wait``
    answers 200 (None: until /-/healthy answers 200). The state file defaults to
    $STATE_DIRECTORY = ``<tmp>/<name>-state``."""
    port = port or free_port()
    shown_host = f"[{host}]" if ":" in host else host
    text = f"listen: {shown_host}:{port}\n"
    if web is not None:
        (tmp / f"{name}-web.yml").write_text(web, encoding="utf-8")
        text += f"web_config_file: {name}-web.yml\n"
    path = tmp / f"{name}.yaml"
    path.write_text(text + config, encoding="utf-8")
    log = tmp / f"{name}.log"
    state = tmp / f"{name}-state"
    state.mkdir(mode=0o700, exist_ok=True)
    full_env = {**os.environ, "STATE_DIRECTORY": str(state), **(env or {})}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*VCMON, "run", "-c", str(path), "--log-level", log_level],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=tmp,
            preexec_fn=_limit_fds(fd_limits),
        )
    daemon = Daemon(proc, port, log, path, auth)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"vcmon exited with {proc.returncode}:\n{daemon.log_text()[-2000:]}")
        if wait is None:
            return daemon.get("/-/healthy", timeout=2).status_code == 200
        return daemon.get(wait, timeout=2).status_code == 200

    try:
        wait_until(up, within, f"{name} ready", every=0.2)
    except BaseException:
        daemon.stop()
        raise
    for line in daemon.log_text().splitlines():
        if "event=fd_limit" in line:
            daemon.fd_limit = line.split("event=fd_limit", 1)[1].strip()
    return daemon


@contextlib.contextmanager
def running(tmp: Path, config: str, **kw: Any) -> Iterator[Daemon]:
    """start_daemon as a context: the daemon is stopped on leaving."""
    daemon = start_daemon(tmp, config, **kw)
    try:
        yield daemon
    finally:
        daemon.stop()


@dataclass
class Checked:
    """What a `vcmon` command did: exit status, output and the child's own rusage."""

    code: int
    out: str
    err: str
    cpu_s: float
    peak_mb: float
    wall_s: float

    @property
    def first_error(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[0] if lines else ""


# Runs vcmon as `python -m vcmon` does and, on the way out, writes the process's own peak
# RSS (VmHWM, which execve resets): the rusage of a child forked from this bench counts the
# bench's own size as the child's floor.
_MEASURED = """
import atexit, os, runpy, sys

def _peak() -> None:
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["VCMON_BENCH_PEAK"], "w") as out:
        out.write(kb)

atexit.register(_peak)
sys.argv[0] = "vcmon"
runpy.run_module("vcmon", run_name="__main__", alter_sys=True)
"""


def run_vcmon(*args: str, within: float = 60.0, cwd: Path | None = None) -> Checked:
    """`vcmon <args>` to completion (killed after ``within`` s: code -9), measured: its CPU
    seconds (os.wait4) and its own peak RSS, Python's start-up included."""
    with tempfile.TemporaryDirectory(prefix="vcmon-bench-") as tmp:
        out_path, err_path, peak_path = (Path(tmp) / n for n in ("out", "err", "peak"))
        env = {**os.environ, "VCMON_BENCH_PEAK": str(peak_path)}
        t0 = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", _MEASURED, *args], stdout=out,
                                    stderr=err, cwd=cwd, env=env)  # fmt: skip
        deadline = t0 + within
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        peak = int(peak_path.read_text()) / 1024 if peak_path.exists() else float("nan")
        return Checked(
            proc.returncode,
            out_path.read_text(encoding="utf-8", errors="replace"),
            err_path.read_text(encoding="utf-8", errors="replace"),
            usage.ru_utime + usage.ru_stime,
            peak,
            wall,
        )


def latencies(daemon: Daemon, path: str, n: int, **kw: Any) -> list[float]:
    """``n`` GETs of ``path`` on one keep-alive connection, seconds each."""
    took = []
    with httpx.Client(base_url=daemon.base, auth=kw.pop("auth", daemon.auth), timeout=30) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            c.get(path, **kw).raise_for_status()
            took.append(time.perf_counter() - t0)
    return took


def short(text: str, width: int = 90) -> str:
    """One line of at most ``width`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def skipped(name: str, reason: str) -> Row:
    """A row for an attack this host cannot stage."""
    return (name, None, f"skipped: {reason}")


def is_root() -> bool:
    return os.geteuid() == 0
