"""HTTP surface: /metrics, health and readiness, and the JSON status API."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from vcmon import __version__
from vcmon.httpserver import Handler, HttpServer, Request, Response, text
from vcmon.results import EndpointRecord, Results


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


class Api:
    """The daemon's HTTP routes, reading the live Results and registry."""

    def __init__(self, results: Results, registry: CollectorRegistry, info: dict[str, Any]) -> None:
        self._results = results
        self._registry = registry
        self._info = info

    def routes(self) -> dict[tuple[str, str], Handler]:
        """Every route this API serves."""
        return {
            ("GET", "/metrics"): self.metrics,
            ("GET", "/-/healthy"): self.healthy,
            ("GET", "/-/ready"): self.ready,
            ("GET", "/api/v1/status"): self.status,
        }

    async def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        # Rendering thousands of series takes a while; keep it off the loop that times probes.
        body = await asyncio.to_thread(encoder, self._registry)
        return Response(200, body, content_type)

    async def healthy(self, request: Request) -> Response:
        return text(200, "OK\n")

    async def ready(self, request: Request) -> Response:
        if self._results.all_observed():
            return text(200, "ready\n")
        pending = sum(1 for rec in self._results if rec.last is None)
        return text(503, f"waiting for the first round of {pending} endpoints\n")

    async def status(self, request: Request) -> Response:
        doc = {
            **self._info,
            "version": __version__,
            "now": time.time(),
            "ready": self._results.all_observed(),
            "endpoints": [endpoint_status(rec) for rec in self._results],
        }
        return json_response(doc)


def json_response(doc: Any, status: int = 200) -> Response:
    """A JSON response, UTF-8 kept readable."""
    body = json.dumps(doc, ensure_ascii=False).encode()
    return Response(status, body, "application/json; charset=utf-8")


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9231' or '[::1]:9231' → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(api: Api, listen: str) -> HttpServer:
    """Start serving ``api`` on ``listen``; the caller closes the server."""
    server = HttpServer(api.routes())
    host, port = split_listen(listen)
    await server.start(host, port)
    return server
