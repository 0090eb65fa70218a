"""How many endpoints one vcmon process sustains at 5 echoes per 10 s with lag p99 < 50 ms.

Targets are loopback addresses answered by the kernel, so the figure is vcmon's own capacity
(scheduler, engine, bookkeeping), not a responder's. Each size runs in a fresh process.

    python -m bench.scale [--sizes 1000,2500,5000,10000,15000,20000] [--duration 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import loopback_address, percentile, save

LAG_BUDGET = 0.050


def _write_config(n: int, path: Path) -> None:
    lines = ["listen: 127.0.0.1:9", "endpoints:"]  # never opened here; port 0 is refused
    for i in range(n):
        lines.append(
            f"  - {{id: ep{i}, name: room {i}, address: {loopback_address(i)}, "
            f"district: d{i % 13}, level: commune}}"
        )
    path.write_text("\n".join(lines) + "\n")


async def _measure(n: int, duration: float, warmup: float, tick: float | None) -> dict[str, Any]:
    from vcmon.config import load_config
    from vcmon.http.metrics import build_registry
    from vcmon.measure.probes.base import ProbeContext
    from vcmon.measure.probes.registry import build_probes
    from vcmon.measure.resolver import Resolver
    from vcmon.measure.results import Results
    from vcmon.measure.scheduler import Scheduler

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "scale.yaml"
        _write_config(n, cfg_path)
        config = load_config(cfg_path)
    results = Results(config.endpoints)
    _, self_metrics = build_registry(dict)
    rate = sum(ep.timing.count / ep.timing.interval for ep in config.endpoints)
    ctx = ProbeContext(settings={"icmp": {"socket": "auto", "max_rate": max(5000.0, rate * 2)}})
    probes = build_probes(ctx, {"icmp"})
    async with ctx:
        scheduler = Scheduler(results, probes, Resolver(), self_metrics, tick=tick, grid=ctx.grid)
        task = asyncio.create_task(scheduler.run())
        await asyncio.sleep(warmup)
        scheduler.lag_samples.clear()
        cpu0 = time.process_time()
        wakes0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        sent0 = sum(rec.sent for rec in results)
        await asyncio.sleep(duration)
        cpu1 = time.process_time()
        wakes1 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        sent1 = sum(rec.sent for rec in results)
        received = sum(rec.received for rec in results)
        total_sent = sum(rec.sent for rec in results)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lags = list(scheduler.lag_samples)
    echoes = sent1 - sent0
    return {
        "endpoints": n,
        "echo_rate": round(rate, 1),
        "tick_s": scheduler.tick,
        "rounds": len(lags),
        "lag_p50_ms": round(percentile(lags, 50) * 1000, 2),
        "lag_p99_ms": round(percentile(lags, 99) * 1000, 2),
        "lag_max_ms": round(max(lags) * 1000, 2) if lags else None,
        "cpu_percent": round(100 * (cpu1 - cpu0) / duration, 1),
        "cpu_us_per_echo": round(1e6 * (cpu1 - cpu0) / echoes, 1) if echoes else None,
        "wakeups_per_s": round((wakes1 - wakes0) / duration, 1),
        "answered_ratio": round(received / total_sent, 4) if total_sent else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,2500,5000,10000,15000,20000")
    ap.add_argument("--duration", type=float, default=40.0, help="measured seconds per size")
    ap.add_argument("--warmup", type=float, default=12.0, help="seconds before measuring")
    ap.add_argument("--tick", type=float, help="grid of rounds, sends and reads, s (default: auto)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(_measure(args.one, args.duration, args.warmup, args.tick))))
        return
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, "-m", "bench.scale", "--one", str(n),
             "--duration", str(args.duration), "--warmup", str(args.warmup),
             *(["--tick", str(args.tick)] if args.tick is not None else [])],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        ok = row["lag_p99_ms"] < LAG_BUDGET * 1000
        print(
            f"{n:>6} endpoints  {row['echo_rate']:>7} echo/s  lag p50 {row['lag_p50_ms']:>6} ms  "
            f"p99 {row['lag_p99_ms']:>7} ms  cpu {row['cpu_percent']:>5} %  "
            f"{row['cpu_us_per_echo']} µs/echo  {row['wakeups_per_s']} wake-ups/s  "
            f"tick {row['tick_s']} s  answered {row['answered_ratio']}  "
            f"rss {row['peak_rss_mb']} MB  {'ok' if ok else 'OVER BUDGET'}",
            flush=True,
        )
        if not ok:
            break
    sustained = max(
        (r["endpoints"] for r in rows if r["lag_p99_ms"] < LAG_BUDGET * 1000), default=0
    )
    print(f"largest size with scheduler lag p99 < {LAG_BUDGET * 1000:.0f} ms: {sustained}")
    path = save("scale", {"budget_ms": LAG_BUDGET * 1000, "sustained": sustained, "runs": rows})
    print(f"written {path}")


if __name__ == "__main__":
    main()
