"""The HTTP server's resource bounds, all at once: on loopback, bounded in count and time.

`vcmon run` is started as users run it (province-231 inventory on 127.10.x.x plus one room
named `localhost`, resolved by the system resolver) under a soft descriptor limit of 1024 and
a hard one of 4096; the daemon raises the soft limit itself. Then, all at once for --duration
seconds: 3,000 slow-header clients (a byte a second; dropped or refused ones come back after
a second), 300 clients each sending 900 kB of a header that never ends, and 300 clients that
pipeline `GET /metrics` and never read (each reconnects after 11 s). Meanwhile a keep-alive
client in a process of its own scrapes /metrics every 0.5 s, as Prometheus would, and reads
/api/v1/status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.attacks.common import INVENTORY, ROOT, Daemon, Row, metric_sum, rss_mb, start_daemon
from bench.common import percentile

SOFT, HARD = 1024, 4096
CONFIG = (
    f"inventory: {INVENTORY}\nresolve_interval: 5\n"
    "endpoints:\n  - {id: dns-localhost, name: a room by host name, address: localhost,\n"
    "     district: Tỉnh, level: department, parent: tinh-ubnd}\n"
)


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
        skipped0 = metric_sum(text, "vcmon_rounds_skipped_total")
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
    skipped = metric_sum(text, "vcmon_rounds_skipped_total") - skipped0
    rejected = {
        s.labels["reason"]: int(s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "vcmon_http_connections_rejected_total" and s.value
    }
    accept_errors = int(metric_sum(text, "vcmon_http_accept_errors_total"))
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


def flood(tmp: Path, duration: float, notes: dict[str, Any]) -> list[Row]:
    """The combined flood against the province under a 1024/4096 descriptor limit."""
    daemon = start_daemon(tmp, CONFIG, fd_limits=(SOFT, HARD))
    try:
        rows = asyncio.run(combined_flood(daemon, duration))
    finally:
        daemon.stop()
    notes.update(daemon.notes, fd_limit={"soft": SOFT, "hard": HARD, "daemon": daemon.fd_limit})
    return rows
