"""Attacks on a running daemon, on loopback, each bounded in count and time: did the bounds hold?

`vcmon run` is started as users run it (province-231 inventory on 127.10.x.x plus one room
named `localhost`, resolved by the system resolver) under a soft descriptor limit of 1024 and
a hard one of 4096; the daemon raises the soft limit itself. Then, all at once for --duration
seconds: 3,000 slow-header clients (a byte a second; dropped or refused ones come back after
a second), 300 clients each sending 900 kB of a header that never ends, and 300 clients that
pipeline `GET /metrics` and never read (each reconnects after 11 s). Meanwhile a keep-alive
client scrapes /metrics every 0.5 s, as Prometheus would, and reads /api/v1/status.

Each attack is a function returning rows (attack, held?, figure); add more to ATTACKS.

    python -m bench.attacks [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import percentile, save

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "config" / "province-231.yaml"
SOFT, HARD = 1024, 4096

Row = tuple[str, bool, str]


@dataclass
class Daemon:
    """A running `vcmon run` and what the attacks need to reach and measure it."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    fd_limit: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


Attack = Callable[[Daemon, float], Awaitable[list[Row]]]


def rss_mb(pid: int) -> float:
    """Resident set size now (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _metric(text: str, name: str) -> float:
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


def start_daemon(tmp: Path) -> Daemon:
    """`vcmon run` on loopback under a 1024 soft / 4096 hard descriptor limit, once ready."""
    port = _free_port()
    cfg = tmp / "attacks.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\ninventory: {INVENTORY}\nresolve_interval: 5\n"
        "endpoints:\n  - {id: dns-localhost, name: a room by host name, address: localhost,\n"
        "     district: Tỉnh, level: department, parent: tinh-ubnd}\n"
    )
    log = tmp / "vcmon.log"
    env = {**os.environ, "STATE_DIRECTORY": str(tmp)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vcmon", "run", "-c", str(cfg), "--log-level", "info"],
            stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_limit_fds, cwd=tmp,
        )  # fmt: skip
    daemon = Daemon(proc, port, log)
    deadline = time.monotonic() + 40
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(daemon.base + "/-/ready", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.terminate()
            raise RuntimeError(f"vcmon did not become ready:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    for line in log.read_text().splitlines():
        if "event=fd_limit" in line:
            daemon.fd_limit = line.split("event=fd_limit", 1)[1].strip()
    return daemon


# ── attackers ───────────────────────────────────────────────────────────────────────────


@dataclass
class Tally:
    connections: int = 0
    dropped: int = 0


async def _connect(port: int, rcvbuf: int | None = None) -> tuple[Any, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def slow_header(port: int, stop: float, tally: Tally) -> None:
    """A byte of header a second, for as long as the server keeps the connection."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop:
        with contextlib.suppress(OSError):
            reader, writer = await _connect(port)
            tally.connections += 1
            try:
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                while loop.time() < stop and not reader.at_eof():
                    writer.write(b"a")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1):
                            await reader.read(4096)  # a 408/503 or the close
            except OSError:
                pass
            finally:
                writer.close()
            tally.dropped += loop.time() < stop
        await asyncio.sleep(1)


async def big_header(port: int, stop: float, tally: Tally) -> None:
    """900 kB of a header that never ends, held open until the server lets go."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop:
        with contextlib.suppress(OSError):
            reader, writer = await _connect(port)
            tally.connections += 1
            try:
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 900_000)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, stop - loop.time())):
                        while await reader.read(65536):
                            pass
            except OSError:
                pass
            finally:
                writer.transport.abort()
            tally.dropped += loop.time() < stop
        await asyncio.sleep(1)


async def pipeliner(port: int, stop: float, tally: Tally) -> None:
    """100 pipelined GET /metrics, never read; a new connection every 11 s."""
    loop = asyncio.get_running_loop()
    while loop.time() < stop:
        with contextlib.suppress(OSError):
            _, writer = await _connect(port, rcvbuf=4096)
            tally.connections += 1
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
            await asyncio.sleep(min(11.0, max(0.0, stop - loop.time())))
            writer.transport.abort()
        await asyncio.sleep(0.1)


# ── the measured attack ─────────────────────────────────────────────────────────────────


async def _scrape(client: httpx.AsyncClient, daemon: Daemon) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = await client.get(daemon.base + "/metrics")
    return time.perf_counter() - t0, r.text if r.status_code == 200 else ""


async def _down(client: httpx.AsyncClient, daemon: Daemon) -> list[str]:
    doc = (await client.get(daemon.base + "/api/v1/status")).json()
    return [e["id"] for e in doc["endpoints"] if e["state"] != "up"]


def _log_lines(daemon: Daemon, event: str) -> int:
    return sum(1 for line in daemon.log.read_text().splitlines() if f"event={event}" in line)


async def combined_flood(daemon: Daemon, duration: float) -> list[Row]:
    """Slow headers, huge headers and non-reading pipeliners at once."""
    pid = daemon.proc.pid
    async with httpx.AsyncClient(timeout=30) as client:  # keep-alive, like Prometheus
        _, text = await _scrape(client, daemon)
        skipped0 = _metric(text, "vcmon_rounds_skipped_total")
        down0 = await _down(client, daemon)
        baseline = [(await _scrape(client, daemon))[0] for _ in range(10)]
        rss0 = rss_mb(pid)
        loop = asyncio.get_running_loop()
        stop = loop.time() + duration
        # The scraping client runs in a process of its own: the attackers' thousands of
        # coroutines would otherwise starve it here and its latency would be theirs. It connects
        # before the attack, as a Prometheus already scraping would.
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.attacks", "--scrape", daemon.base, str(duration),
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        await asyncio.sleep(1)
        tallies = {"slow": Tally(), "big": Tally(), "pipe": Tally()}
        attackers = [
            *(slow_header(daemon.port, stop, tallies["slow"]) for _ in range(3000)),
            *(big_header(daemon.port, stop, tallies["big"]) for _ in range(300)),
            *(pipeliner(daemon.port, stop, tallies["pipe"]) for _ in range(300)),
        ]
        tasks = [asyncio.create_task(a) for a in attackers]
        rss_peak = rss0
        while loop.time() < stop:
            rss_peak = max(rss_peak, rss_mb(pid))
            await asyncio.sleep(0.5)
        out, _ = await probe.communicate()
        scraped = json.loads(out)
        latencies, healthy = scraped["metrics"], scraped["healthy"]
        down_seen, failures = set(down0) | set(scraped["down"]), scraped["failures"]
        await asyncio.gather(*tasks, return_exceptions=True)
        _, text = await _scrape(client, daemon)
    skipped = _metric(text, "vcmon_rounds_skipped_total") - skipped0
    rejected = {
        s.labels["reason"]: int(s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "vcmon_http_connections_rejected_total" and s.value
    }
    accept_errors = int(_metric(text, "vcmon_http_accept_errors_total"))
    growth = rss_peak - rss0
    p99 = percentile(latencies, 99) * 1000
    healthy_p99 = percentile(healthy, 99) * 1000
    base_p99 = percentile(baseline, 99) * 1000
    falsely_down = sorted(down_seen - set(down0))
    daemon.notes.update(
        rss_before_mb=round(rss0, 1), rss_peak_mb=round(rss_peak, 1),
        metrics_p99_ms=round(p99, 1), metrics_p50_ms=round(percentile(latencies, 50) * 1000, 1),
        metrics_baseline_p99_ms=round(base_p99, 1), scrapes=len(latencies),
        healthy_p99_ms=round(healthy_p99, 1),
        scrape_failures=failures, rounds_skipped=int(skipped), falsely_down=falsely_down,
        rejected=rejected, accept_errors=accept_errors,
        accept_error_log_lines=_log_lines(daemon, "http_accept_failed"),
        attackers={k: vars(v) for k, v in tallies.items()},
    )  # fmt: skip
    conns = ", ".join(f"{k} {v.connections}" for k, v in tallies.items())
    return [
        ("flood: daemon RSS growth", growth <= 30, f"{growth:.1f} MB (≤ 30); {conns} connections"),
        ("flood: /metrics p99, keep-alive client", p99 <= 250 and failures == 0,
         f"{p99:.0f} ms (≤ 250; {base_p99:.0f} ms before), {failures} failed"),
        ("flood: /-/healthy p99, keep-alive client", healthy_p99 <= 250,
         f"{healthy_p99:.0f} ms"),
        ("flood: probe rounds skipped", skipped == 0, f"{int(skipped)}"),
        ("flood: endpoints falsely down", not falsely_down,
         f"{len(falsely_down)} of 232" + (f" {falsely_down}" if falsely_down else "")),
        ("flood: connections refused/dropped", True,
         ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"),
        ("flood: accept errors logged", daemon.notes["accept_error_log_lines"] <= 1 + duration / 10,
         f"{accept_errors} errors, {daemon.notes['accept_error_log_lines']} log lines"),
    ]  # fmt: skip


ATTACKS: list[Attack] = [combined_flood]


def scrape_loop(base: str, duration: float) -> None:
    """The measuring client: every 0.5 s /metrics, /-/healthy and /api/v1/status, keep-alive."""
    metrics: list[float] = []
    healthy: list[float] = []
    down: set[str] = set()
    failures = 0
    stop = time.monotonic() + duration
    with httpx.Client(timeout=30) as client:
        while (t0 := time.monotonic()) < stop:
            try:
                for path, into in (("/metrics", metrics), ("/-/healthy", healthy)):
                    start = time.perf_counter()
                    client.get(base + path).raise_for_status()
                    into.append(time.perf_counter() - start)
                doc = client.get(base + "/api/v1/status").json()
                down.update(e["id"] for e in doc["endpoints"] if e["state"] != "up")
            except httpx.HTTPError:
                failures += 1
            time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    json.dump({"metrics": metrics, "healthy": healthy, "down": sorted(down),
               "failures": failures}, sys.stdout)  # fmt: skip


async def _attack(attack: Attack, daemon: Daemon, duration: float) -> list[Row]:
    return await attack(daemon, duration)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--scrape":
        scrape_loop(sys.argv[2], float(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=30.0)
    args = ap.parse_args()
    # The attackers need some 4,000 descriptors of their own.
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp))
        try:
            for attack in ATTACKS:
                rows += asyncio.run(_attack(attack, daemon, args.duration))
        finally:
            daemon.proc.terminate()
            daemon.proc.wait(10)
    width = max(len(r[0]) for r in rows)
    print(f"daemon started with soft/hard descriptor limit {SOFT}/{HARD}: {daemon.fd_limit}")
    print(f"{'attack':<{width}} | held? | figure")
    for attack_name, held, figure in rows:
        print(f"{attack_name:<{width}} | {'yes' if held else 'NO':<5} | {figure}")
    save("attacks", {
        "duration_s": args.duration, "fd_limit": {"soft": SOFT, "hard": HARD,
                                                  "daemon": daemon.fd_limit},
        "rows": [{"attack": a, "held": h, "figure": f} for a, h, f in rows],
        "details": json.loads(json.dumps(daemon.notes)),
    })  # fmt: skip


if __name__ == "__main__":
    main()
