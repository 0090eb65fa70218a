"""CPU per 1,000 echoes and peak memory: the vcmon daemon against fping on the same targets.

Both probe the 231 rooms of config/province-231.yaml (loopback addresses, kernel answers) at
the same rate, 5 echoes per 10 s per room. vcmon is the whole daemon (HTTP server, metrics,
scheduler), measured over a window after start-up; fping runs `-C 30 -p 2000`, i.e. one echo
per room every 2 s for 60 s. The two /metrics scrapes that count vcmon's echoes lie outside
its CPU window; then the daemon is scraped as Prometheus scrapes (its Accept and
Accept-Encoding headers, one keep-alive connection): CPU and wall time per scrape, the
daemon's background CPU taken out, and what scraping every 15 s would add per echo. Wake-ups
are voluntary context switches (the process went to sleep).

With --endpoints N the daemon probes N generated loopback endpoints instead (13 districts);
fping is then left out unless --fping is given (at 10,000 targets its -i 1 cannot keep pace).

    python -m bench.cost [--duration 60] [--endpoints 10000] [--scrapes 5]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import cpu_seconds, loopback_address, peak_rss_mb, percentile, save

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "config" / "province-231.yaml"
# What Prometheus 2.x sends by default: it prefers OpenMetrics, and takes gzip.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wakeups(pid: int) -> int:
    """Voluntary context switches so far: each is the process going to sleep, so one wake-up."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise RuntimeError("no voluntary_ctxt_switches")


def _sent(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=120).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "vcmon_packets_sent_total"
    )


def _generated_inventory(n: int, path: Path) -> None:
    lines = ["endpoints:"]
    for i in range(n):
        lines.append(
            f"  - {{id: ep{i}, name: room {i}, address: {loopback_address(i)}, "
            f"district: d{i % 13}, level: commune}}"
        )
    path.write_text("\n".join(lines) + "\n")


def _lag_buckets(base: str) -> dict[float, float]:
    """The daemon's scheduler lag histogram: rounds that started within each bound."""
    text = httpx.get(base + "/metrics", timeout=120).text
    return {
        float(s.labels["le"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "vcmon_scheduler_lag_seconds_bucket"
    }


def measure_scrapes(pid: int, base: str, count: int) -> dict[str, Any]:
    """``count`` back-to-back scrapes as Prometheus sends them, on one keep-alive connection.

    CPU per scrape is the daemon's CPU over the scrapes less its background rate over as long
    just before (/proc counts in 10 ms ticks, so many small scrapes are summed)."""
    quiet = 5.0
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(quiet)
    background = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    walls: list[float] = []
    wire = body = 0
    lag0 = _lag_buckets(base)
    with httpx.Client(timeout=120, headers=PROMETHEUS_HEADERS) as client:
        client.get(base + "/-/healthy")  # connect outside the measure
        c0, t0 = cpu_seconds(pid), time.monotonic()
        for _ in range(count):
            start = time.perf_counter()
            r = client.get(base + "/metrics")
            walls.append(time.perf_counter() - start)
            r.raise_for_status()
            wire, body = int(r.headers["content-length"]), len(r.content)
        cpu = cpu_seconds(pid) - c0 - background * (time.monotonic() - t0)
    # Rounds that started during the scrapes (and the two lag reads), by lateness.
    lag = {le: n - lag0.get(le, 0.0) for le, n in _lag_buckets(base).items()}
    rounds = lag[math.inf]
    return {
        "scrapes": count,
        "scrape_cpu_s": round(max(0.0, cpu) / count, 4),
        "scrape_wall_p50_s": round(percentile(walls, 50), 4),
        "scrape_wall_max_s": round(max(walls), 4),
        "scrape_bytes": body,
        "scrape_wire_bytes": wire,
        "content_type": r.headers["content-type"],
        "content_encoding": r.headers.get("content-encoding", "identity"),
        "rounds_during_scrapes": int(rounds),
        "rounds_later_than_10ms": int(rounds - lag[0.01]),
        "rounds_later_than_50ms": int(rounds - lag[0.05]),
    }


def measure_vcmon(duration: float, endpoints: int | None, scrapes: int) -> dict[str, Any]:
    """Run the daemon, wait until every room has had a round, then measure a window."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cost.yaml"
        inventory = INVENTORY
        if endpoints is not None:
            inventory = Path(tmp) / "generated.yaml"
            _generated_inventory(endpoints, inventory)
        cfg.write_text(f"listen: 127.0.0.1:{port}\ninventory: {inventory}\n")
        env = {**os.environ, "STATE_DIRECTORY": tmp}
        proc = subprocess.Popen(
            [sys.executable, "-m", "vcmon", "run", "-c", str(cfg), "--log-level", "warning"],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(base + "/-/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("vcmon did not become ready")
                time.sleep(0.2)
            # The scrapes that count the echoes stay outside the CPU window.
            sent0 = _sent(base)
            cpu0, wake0 = cpu_seconds(proc.pid), wakeups(proc.pid)
            time.sleep(duration)
            cpu1, wake1 = cpu_seconds(proc.pid), wakeups(proc.pid)
            sent1 = _sent(base)
            scraped = measure_scrapes(proc.pid, base, scrapes)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    echoes = int(sent1 - sent0)
    row = _row(echoes, cpu1 - cpu0, rss, (wake1 - wake0) / duration)
    row.update(scraped)
    # What Prometheus scraping every 15 s would add to each echo.
    row["cpu_s_per_1000_scraped_15s"] = round(
        1000 * (cpu1 - cpu0 + scraped["scrape_cpu_s"] * duration / 15) / echoes, 4
    )
    return row


def _row(echoes: int, cpu: float, rss_mb: float, wakeups_per_s: float) -> dict[str, Any]:
    return {
        "echoes": echoes,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1000": round(1000 * cpu / echoes, 4),
        "peak_rss_mb": round(rss_mb, 1),
        "wakeups_per_s": round(wakeups_per_s, 1),
    }


def measure_fping(addresses: list[str], duration: float) -> dict[str, Any]:
    """fping at the same per-target rate: CPU from its own rusage (wait4 on its pid).

    Not RUSAGE_CHILDREN: its ru_maxrss is the largest of all reaped children, the vcmon
    daemon measured before included.
    """
    fping = shutil.which("fping")
    if fping is None:
        raise SystemExit("fping is not installed (apt-get install fping)")
    count = int(duration / 2)
    started = time.monotonic()
    proc = subprocess.Popen(
        [fping, "-C", str(count), "-p", "2000", "-i", "1", "-t", "1000", "-q", *addresses],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Peak RSS from fping's own VmHWM while it runs: even its own ru_maxrss counts the
    # pages of this Python process it was forked from before it exec'd.
    rss = 0.0
    while True:
        with contextlib.suppress(OSError, RuntimeError):
            rss = max(rss, peak_rss_mb(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.25)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    elapsed = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    echoes = count * len(addresses)
    return _row(echoes, cpu, rss, usage.ru_nvcsw / elapsed)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--endpoints", type=int, help="generated loopback endpoints instead of 231")
    ap.add_argument("--scrapes", type=int, default=40, help="scrapes measured back to back")
    ap.add_argument("--fping", action="store_true", help="run fping with --endpoints too")
    args = ap.parse_args()
    from vcmon.config import load_config

    if args.endpoints is None:
        addresses = [ep.address for ep in load_config(INVENTORY).endpoints]
    else:
        addresses = [loopback_address(i) for i in range(args.endpoints)]
    v = measure_vcmon(args.duration, args.endpoints, args.scrapes)
    f = measure_fping(addresses, args.duration) if args.endpoints is None or args.fping else None
    print(f"targets: {len(addresses)} rooms, 5 echoes / 10 s each, {args.duration:.0f} s")
    for name, r in (("vcmon", v), ("fping", f)):
        if r is None:
            continue
        print(
            f"{name:6} {r['echoes']:>6} echoes  {r['cpu_s']:>7} CPU s  "
            f"{r['cpu_s_per_1000']:>7} CPU s/1000 echoes  peak RSS {r['peak_rss_mb']} MB  "
            f"{r['wakeups_per_s']} wake-ups/s"
        )
    ratio = None
    if f is not None:
        ratio = v["cpu_s_per_1000"] / f["cpu_s_per_1000"] if f["cpu_s_per_1000"] else float("inf")
        print(f"CPU per echo, vcmon / fping: {ratio:.2f}x")
        if f["wakeups_per_s"] > 3 * f["echoes"] / args.duration:
            # A raw ICMP socket sees every echo reply on the host: fping woke for someone else's.
            print("warning: fping woke far more often than it sent; other ICMP traffic on this "
                  "host (another benchmark?) inflated its figure: run again")  # fmt: skip
    print(
        f"/metrics as Prometheus scrapes it ({v['content_type']}, {v['content_encoding']}): "
        f"{v['scrape_cpu_s']} CPU s per scrape, wall p50 {v['scrape_wall_p50_s']} s, max "
        f"{v['scrape_wall_max_s']} s, {v['scrape_bytes'] / 1e6:.2f} MB "
        f"({v['scrape_wire_bytes'] / 1e6:.2f} MB sent); scraped every 15 s, vcmon would use "
        f"{v['cpu_s_per_1000_scraped_15s']} CPU s/1000 echoes"
        + (f" ({v['cpu_s_per_1000_scraped_15s'] / f['cpu_s_per_1000']:.2f}x fping)" if f else "")
    )
    print(
        f"rounds started during the scrapes: {v['rounds_during_scrapes']}, later than 10 ms: "
        f"{v['rounds_later_than_10ms']}, later than 50 ms: {v['rounds_later_than_50ms']}"
    )
    doc = {"targets": len(addresses), "duration_s": args.duration, "vcmon": v, "fping": f}
    name = "cost" if args.endpoints is None else f"cost-{args.endpoints}"
    save(name, {**doc, "cpu_ratio": round(ratio, 2) if ratio is not None else None})


if __name__ == "__main__":
    main()
