"""Delivery latency: from the round that decides an alert to the receiver's acknowledgement.

The whole alert path of the daemon, in one process on loopback: the engine decides on a
round, the decision is committed to SQLite (WAL, synchronous=FULL), the sink's dispatcher
wakes, sends, and the receiver — a real HTTP server here — answers 200. Measured per event
from the moment the deciding round is handed to the engine to the moment the sink has the
200. Two cases: one endpoint failing and recovering, again and again; and 30 endpoints of a
district failing at once (district roll-up off, no shared parent, so 30 alerts in one burst).
Flap detection is off: the same outage repeated is the point here, not a pattern.

    python -m bench.delivery [--rounds 100] [--sink alertmanager|webhook]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import h11
from prometheus_client import CollectorRegistry

from bench.common import percentile, save
from vcmon.alerts.runtime import AlertRuntime
from vcmon.config import load_config
from vcmon.delivery.dispatch import Delivery
from vcmon.measure.results import Results
from vcmon.measure.stats import Observation


async def receiver() -> tuple[asyncio.Server, int, list[float]]:
    """An HTTP/1.1 server on a free loopback port that answers every request 200."""
    arrivals: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(ev, h11.EndOfMessage):
                    arrivals.append(time.perf_counter())
                    body = b"{}"
                    writer.write(conn.send(h11.Response(status_code=200, headers=[
                        ("content-type", "application/json"),
                        ("content-length", str(len(body)))])) or b"")  # fmt: skip
                    writer.write(conn.send(h11.Data(data=body)) or b"")
                    writer.write(conn.send(h11.EndOfMessage()) or b"")
                    await writer.drain()
                    conn.start_next_cycle()
                elif isinstance(ev, h11.ConnectionClosed):
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, arrivals


def config_text(port: int, n: int, sink: str, state: Path) -> str:
    sinks = {
        "alertmanager": f"[{{type: alertmanager, url: 'http://127.0.0.1:{port}'}}]",
        "webhook": f"[{{type: webhook, url: 'http://127.0.0.1:{port}/hook'}}]",
    }[sink]
    eps = "\n".join(
        f"  - {{id: r{i}, name: UBND xã R{i}, address: 127.0.0.1, district: Cô Tô, level: commune}}"
        for i in range(n)
    )
    return (
        f"instance: bench\nalerts: {{state_file: {state}, districts: {{enabled: false}}, "
        "health: {flapping: {enabled: false}}}\n"
        f"sinks: {sinks}\nendpoints:\n{eps}\n"
    )


def failed(at: float) -> Observation:
    return Observation(started_at=at, sent=5, received=0, rtts=())


def answered(at: float) -> Observation:
    return Observation(started_at=at, sent=5, received=5, rtts=(0.001,) * 5)


async def run_case(n: int, cycles: int, sink: str) -> list[float]:
    """Latencies (s) of every event of ``cycles`` outages of ``n`` endpoints at once."""
    server, port, _ = await receiver()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vcmon.yaml"
        path.write_text(config_text(port, n, sink, Path(tmp) / "state.db"), encoding="utf-8")
        config = load_config(path, env={})
        runtime = AlertRuntime.open(config)
        results = Results(config.endpoints)
        changes = runtime.changes.subscribe()
        delivery = Delivery(config, runtime.store, CollectorRegistry(), changes=changes)
        dispatcher = delivery.dispatchers[0]
        latencies: list[float] = []
        decided_at: dict[int, float] = {}
        done = asyncio.Event()
        expected = 0

        def acked(name: str, seconds: float) -> None:
            # The dispatcher reports decision→ack from wall time; take our own, finer clock.
            latencies.append(time.perf_counter() - decided_at[dispatcher.stats.sent])
            if dispatcher.stats.sent >= expected:
                done.set()

        dispatcher.on_latency = acked
        task = asyncio.create_task(dispatcher.run())
        following = asyncio.create_task(delivery.follow(changes))
        await asyncio.sleep(0.1)  # let the dispatcher take its cursor (a warm-up, not a sync)
        t = time.time()
        records = list(results)
        down_after, up_after = 3, 2
        for _ in range(cycles):
            for ok, rounds in ((False, down_after), (True, up_after)):
                for r in range(rounds):
                    t += 10.0
                    deciding = r == rounds - 1
                    if deciding:
                        expected += n
                        for k in range(n):
                            decided_at[dispatcher.stats.sent + k + 1] = time.perf_counter()
                    for rec in records:
                        obs = answered(t) if ok else failed(t)
                        rec.record(obs)
                        runtime.on_round(rec, obs)
                    if deciding:
                        try:
                            await asyncio.wait_for(done.wait(), 5)
                        except TimeoutError:
                            raise SystemExit(
                                f"no acknowledgement within 5 s: {dispatcher.stats}"
                            ) from None
                        done.clear()
        task.cancel()
        following.cancel()
        await asyncio.gather(task, following, return_exceptions=True)
        runtime.close()
    server.close()
    await server.wait_closed()
    return latencies


def summary(latencies: list[float]) -> dict[str, Any]:
    ms = [x * 1000.0 for x in latencies]
    return {
        "events": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    single = await run_case(1, args.rounds, args.sink)
    district = await run_case(30, max(1, args.rounds // 5), args.sink)
    return {
        "sink": args.sink,
        "single_endpoint": summary(single),
        "district_of_30": summary(district),
        "target_p99_ms": 250,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="outages of the single endpoint")
    parser.add_argument("--sink", default="alertmanager", choices=["alertmanager", "webhook"])
    args = parser.parse_args()
    # Thousands of decisions are logged at warning level; the figures are what matters here.
    logging.getLogger("vcmon").setLevel(logging.ERROR)
    doc = asyncio.run(main_async(args))
    path = save(f"delivery-{args.sink}", doc)
    for case in ("single_endpoint", "district_of_30"):
        s = doc[case]
        print(f"{case:16} events {s['events']:5}  p50 {s['p50_ms']:7.2f} ms  "
              f"p99 {s['p99_ms']:7.2f} ms  max {s['max_ms']:7.2f} ms")  # fmt: skip
    print(f"written to {path}")


if __name__ == "__main__":
    main()
