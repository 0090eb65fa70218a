"""CPU per 1,000 echoes and peak memory: the vcmon daemon against fping on the same targets.

Both probe the 231 rooms of config/province-231.yaml (loopback addresses, kernel answers) at
the same rate, 5 echoes per 10 s per room. vcmon is the whole daemon (HTTP server, metrics,
scheduler), measured over a window after start-up; fping runs `-C 30 -p 2000`, i.e. one echo
per room every 2 s for 60 s.

    python -m bench.cost [--duration 60]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import cpu_seconds, peak_rss_mb, save

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "config" / "province-231.yaml"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sent(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "vcmon_packets_sent_total"
    )


def measure_vcmon(duration: float) -> dict[str, Any]:
    """Run the daemon, wait until every room has had a round, then measure a window."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cost.yaml"
        cfg.write_text(f"listen: 127.0.0.1:{port}\ninventory: {INVENTORY}\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "vcmon", "run", "-c", str(cfg), "--log-level", "warning"]
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/-/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("vcmon did not become ready")
                time.sleep(0.2)
            cpu0, sent0 = cpu_seconds(proc.pid), _sent(base)
            time.sleep(duration)
            cpu1, sent1 = cpu_seconds(proc.pid), _sent(base)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
    echoes = sent1 - sent0
    return _row(int(echoes), cpu1 - cpu0, rss)


def _row(echoes: int, cpu: float, rss_mb: float) -> dict[str, Any]:
    return {
        "echoes": echoes,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1000": round(1000 * cpu / echoes, 4),
        "peak_rss_mb": round(rss_mb, 1),
    }


def measure_fping(addresses: list[str], duration: float) -> dict[str, Any]:
    """fping at the same per-target rate, accounted through RUSAGE_CHILDREN."""
    fping = shutil.which("fping")
    if fping is None:
        raise SystemExit("fping is not installed (apt-get install fping)")
    count = int(duration / 2)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [fping, "-C", str(count), "-p", "2000", "-i", "1", "-t", "1000", "-q", *addresses],
        check=False, capture_output=True,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    echoes = count * len(addresses)
    return _row(echoes, cpu, after.ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=60.0)
    args = ap.parse_args()
    from vcmon.config import load_config

    addresses = [ep.address for ep in load_config(INVENTORY).endpoints]
    v = measure_vcmon(args.duration)
    f = measure_fping(addresses, args.duration)
    ratio = v["cpu_s_per_1000"] / f["cpu_s_per_1000"] if f["cpu_s_per_1000"] else float("inf")
    print(f"targets: {len(addresses)} rooms, 5 echoes / 10 s each, {args.duration:.0f} s")
    for name, r in (("vcmon", v), ("fping", f)):
        print(
            f"{name:6} {r['echoes']:>6} echoes  {r['cpu_s']:>7} CPU s  "
            f"{r['cpu_s_per_1000']:>7} CPU s/1000 echoes  peak RSS {r['peak_rss_mb']} MB"
        )
    print(f"CPU per echo, vcmon / fping: {ratio:.2f}x")
    doc = {"targets": len(addresses), "duration_s": args.duration, "vcmon": v, "fping": f}
    save("cost", {**doc, "cpu_ratio": round(ratio, 2)})


if __name__ == "__main__":
    main()
