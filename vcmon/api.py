"""HTTP surface: /metrics, health and readiness, the JSON status API, alerts and silences."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from pydantic import ValidationError

from vcmon import __version__
from vcmon.httpserver import Handler, HttpServer, Request, Response, text
from vcmon.results import EndpointRecord, Results

if TYPE_CHECKING:
    from vcmon.alerts.model import Alert, Silence
    from vcmon.alerts.runtime import AlertRuntime

MAX_SILENCE: Final = 30 * 86400.0  # s; longer than a month is forgetting, not silencing
_DURATION: Final = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class BadInput(ValueError):
    """A request the API refuses; the message says which field and what was expected."""


def parse_duration(value: object) -> float:
    """'90s', '15m', '2h', '1d', '1h30m' or a number of seconds → seconds (> 0, ≤ 30 days)."""
    if isinstance(value, bool) or value is None:
        raise BadInput("duration: expected e.g. 2h, 30m, 1h30m or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.fullmatch(str(value).strip())
        if not m or not any(m.groups()):
            raise BadInput(f"duration: expected e.g. 2h, 30m, 1h30m or seconds, got {value!r}")
        d, h, mi, se = (int(g or 0) for g in m.groups())
        seconds = float(((d * 24 + h) * 60 + mi) * 60 + se)
    if not 0 < seconds <= MAX_SILENCE:
        raise BadInput(f"duration: expected more than 0 and at most 30 days, got {value!r}")
    return seconds


def _iso(ts: float) -> str:
    from vcmon.alerts.model import rfc3339

    return rfc3339(ts)


def alert_doc(alert: Alert, suppressed_by: str | None) -> dict[str, Any]:
    """One open alert as the API shows it."""
    from dataclasses import asdict

    ack = alert.detail.get("ack")
    return {
        "alert_id": alert.alert_id,
        "kind": alert.kind.value,
        "severity": alert.severity.value,
        "status": "firing",
        "endpoint": alert.target.to_json(),
        "affected": list(alert.affected),
        "measurements": asdict(alert.measurements),
        "started_at": _iso(alert.started_at),
        "notified": alert.notified,
        "suppressed_by": suppressed_by,
        "acknowledged": dict(ack) if isinstance(ack, dict) else None,
    }


def silence_doc(s: Silence, now: float) -> dict[str, Any]:
    """One silence as the API shows it."""
    return {
        "id": s.id,
        "matchers": s.matchers.model_dump(exclude_defaults=True),
        "starts_at": _iso(s.starts_at),
        "ends_at": _iso(s.ends_at),
        "created_by": s.created_by,
        "comment": s.comment,
        "active": s.active(now),
    }


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

    def __init__(
        self,
        results: Results,
        registry: CollectorRegistry,
        info: dict[str, Any],
        *,
        alerts: AlertRuntime | None = None,
    ) -> None:
        self._results = results
        self._registry = registry
        self._info = info
        self._alerts = alerts

    def routes(self) -> dict[tuple[str, str], Handler]:
        """Every route this API serves."""
        return {
            ("GET", "/metrics"): self.metrics,
            ("GET", "/-/healthy"): self.healthy,
            ("GET", "/-/ready"): self.ready,
            ("GET", "/api/v1/status"): self.status,
            ("GET", "/api/v1/alerts"): self.list_alerts,
            ("POST", "/api/v1/alerts/{id}/ack"): self.ack,
            ("GET", "/api/v1/silences"): self.list_silences,
            ("POST", "/api/v1/silences"): self.add_silence,
            ("DELETE", "/api/v1/silences/{id}"): self.expire_silence,
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

    def _engine(self) -> AlertRuntime:
        if self._alerts is None:
            raise _Unavailable
        return self._alerts

    async def list_alerts(self, request: Request) -> Response:
        try:
            runtime = self._engine()
        except _Unavailable:
            return json_response({"error": "alert engine not running"}, 503)
        wanted = {k: v[0] for k, v in request.query.items() if k in _ALERT_FILTERS and v}
        docs = []
        for alert in runtime.alerts():
            doc = alert_doc(alert, runtime.suppressed_by(alert))
            fields = {"kind": doc["kind"], "severity": doc["severity"],
                      "district": alert.target.district, "endpoint": alert.target.id}  # fmt: skip
            if all(fields[k] == v for k, v in wanted.items()):
                docs.append(doc)
        return json_response({"alerts": docs})

    async def ack(self, request: Request) -> Response:
        try:
            runtime = self._engine()
            body = _json_body(request)
            by = _text_field(body, "by")
            comment = str(body.get("comment", ""))
            duration = parse_duration(body["duration"]) if body.get("duration") else None
        except _Unavailable:
            return json_response({"error": "alert engine not running"}, 503)
        except BadInput as exc:
            return json_response({"error": str(exc)}, 400)
        alert = runtime.ack(request.params["id"], by, comment, duration)
        if alert is None:
            return json_response({"error": f"no open alert {request.params['id']}"}, 404)
        return json_response(alert_doc(alert, runtime.suppressed_by(alert)))

    async def list_silences(self, request: Request) -> Response:
        try:
            runtime = self._engine()
        except _Unavailable:
            return json_response({"error": "alert engine not running"}, 503)
        expired = request.query.get("expired", ["0"])[0] not in ("0", "false", "")
        now = runtime.clock.time()
        docs = [silence_doc(s, now) for s in runtime.silences(include_expired=expired)]
        return json_response({"silences": docs})

    async def add_silence(self, request: Request) -> Response:
        from vcmon.alerts.policy import Matchers

        try:
            runtime = self._engine()
            body = _json_body(request)
            raw = body.get("matchers")
            if not isinstance(raw, dict):
                raise BadInput('matchers: expected an object such as {"district": "Cô Tô"}')
            try:
                matchers = Matchers.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise BadInput(f"matchers.{where}: {first['msg']}") from None
            if matchers.empty():
                raise BadInput("matchers: a silence must match something")
            duration = parse_duration(body.get("duration"))
            comment = _text_field(body, "comment")
            created_by = _text_field(body, "created_by")
            starts_at = None
            if body.get("starts_at"):
                try:
                    starts_at = dt.datetime.fromisoformat(str(body["starts_at"])).timestamp()
                except ValueError:
                    raise BadInput("starts_at: expected an RFC 3339 time") from None
        except _Unavailable:
            return json_response({"error": "alert engine not running"}, 503)
        except BadInput as exc:
            return json_response({"error": str(exc)}, 400)
        silence = runtime.add_silence(matchers, duration, created_by, comment, starts_at)
        return json_response(silence_doc(silence, runtime.clock.time()), 201)

    async def expire_silence(self, request: Request) -> Response:
        try:
            runtime = self._engine()
        except _Unavailable:
            return json_response({"error": "alert engine not running"}, 503)
        silence = runtime.expire_silence(request.params["id"])
        if silence is None:
            return json_response({"error": f"no active silence {request.params['id']}"}, 404)
        return json_response(silence_doc(silence, runtime.clock.time()))


_ALERT_FILTERS: Final = ("kind", "severity", "district", "endpoint")


class _Unavailable(Exception):
    pass


def _json_body(request: Request) -> dict[str, Any]:
    try:
        doc = json.loads(request.body or b"{}")
    except ValueError:
        raise BadInput("body: expected a JSON object") from None
    if not isinstance(doc, dict):
        raise BadInput("body: expected a JSON object")
    return doc


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{name}: required, expected non-empty text")
    return value.strip()


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
