"""HTTP surface: /metrics, health and readiness, and the JSON status API."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from vcmon import __version__
from vcmon.results import EndpointRecord, Results

RESULTS_KEY = web.AppKey("results", Results)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
INFO_KEY = web.AppKey("info", dict[str, Any])


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 3)


def endpoint_status(rec: EndpointRecord) -> dict[str, Any]:
    """One endpoint's identity, state and last observation as JSON-ready data."""
    ep = rec.endpoint
    doc: dict[str, Any] = {
        "id": ep.id,
        "name": ep.name,
        "address": ep.address,
        "resolved": rec.resolved,
        "district": ep.district,
        "level": ep.level.value,
        "parent": list(ep.parent),
        "site": ep.site,
        "labels": dict(ep.labels),
        "probe": ep.probe,
        "state": rec.state.value if rec.state else None,
        "last": None,
    }
    obs = rec.last
    if obs is not None:
        doc["last"] = {
            "started_at": obs.started_at,
            "sent": obs.sent,
            "received": obs.received,
            "loss_pct": round(obs.loss_ratio * 100.0, 2),
            "rtt_ms": {
                "min": _ms(obs.rtt_min),
                "avg": _ms(obs.rtt_avg),
                "median": _ms(obs.rtt_median),
                "max": _ms(obs.rtt_max),
            },
            "jitter_ms": _ms(obs.jitter),
            "mos": round(obs.mos, 2),
            "failure": obs.failure,
            "errors": dict(obs.errors),
        }
    return doc


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    # Rendering thousands of series takes a while; keep it off the loop that times probes.
    body = await asyncio.to_thread(encoder, registry)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def _ready(request: web.Request) -> web.Response:
    results = request.app[RESULTS_KEY]
    if results.all_observed():
        return web.Response(text="ready\n")
    pending = sum(1 for rec in results if rec.last is None)
    return web.Response(status=503, text=f"waiting for the first round of {pending} endpoints\n")


async def _status(request: web.Request) -> web.Response:
    results = request.app[RESULTS_KEY]
    info = request.app[INFO_KEY]
    doc = {
        **info,
        "version": __version__,
        "now": time.time(),
        "ready": results.all_observed(),
        "endpoints": [endpoint_status(rec) for rec in results],
    }
    return web.json_response(doc, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def make_app(
    results: Results, registry: CollectorRegistry, info: dict[str, Any]
) -> web.Application:
    """The aiohttp application serving every route."""
    app = web.Application()
    app[RESULTS_KEY] = results
    app[REGISTRY_KEY] = registry
    app[INFO_KEY] = info
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_get("/api/v1/status", _status)
    return app


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9231' or '[::1]:9231' → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(app: web.Application, listen: str) -> web.AppRunner:
    """Start serving ``app`` on ``listen``; the caller cleans up the runner."""
    # A scrape in flight must not hold up a stop for more than a moment.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    host, port = split_listen(listen)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
