"""HTTP surface: /metrics, health and readiness, the JSON status API, alerts and silences."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import json
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from vcmon import __version__
from vcmon.alerts.durations import BadInput, parse_duration, shown
from vcmon.http.auth import ANONYMOUS_WRITER, Access, Identity, Need, load_web_config
from vcmon.http.exposition import EndpointExposition, Fragments, accepts_gzip, negotiate
from vcmon.http.server import Handler, HttpServer, Request, Response, text
from vcmon.measure.results import EndpointRecord, Results
from vcmon.units import ms

if TYPE_CHECKING:
    from vcmon.alerts.model import Alert, Silence
    from vcmon.alerts.runtime import AlertRuntime
    from vcmon.config.alerts import Matchers

DAY: Final = 86400.0  # s of ended alerts listed unless `since` says otherwise
MAX_BODY: Final = 64 * 1024  # bytes of a JSON request; a silence is a few hundred
MAX_JSON_DEPTH: Final = 32  # nested objects and arrays; a silence needs 3
MAX_TEXT: Final = 1024  # bytes (UTF-8) of any text field, the comment included
MAX_NAME: Final = 128  # bytes of created_by and by
MAX_ID: Final = 128  # characters of an id in a path, and of a query value
MAX_AHEAD: Final = 366 * 86400.0  # s; a silence may be planned up to a year ahead
MAX_BEHIND: Final = 86400.0  # s; and may have started up to a day ago


def _iso(ts: float) -> str | None:
    """RFC 3339 of ``ts``; None for a time no calendar holds (a stored row from before the
    API checked times must not break a listing)."""
    from vcmon.alerts.model import rfc3339

    try:
        return rfc3339(ts)
    except (ValueError, OverflowError, OSError):
        return None


def alert_doc(alert: Alert, suppressed_by: str | None, summary: str = "") -> dict[str, Any]:
    """One open alert as the API shows it."""
    from dataclasses import asdict

    ack = alert.detail.get("ack")
    doc: dict[str, Any] = {
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
    if summary:
        doc["summary"] = summary
    return doc


def silence_doc(s: Silence, now: float) -> dict[str, Any]:
    """One silence as the API shows it."""
    return {
        "id": s.id,
        "matchers": {
            k: v
            for k, v in s.matchers.model_dump(by_alias=True, exclude_none=True).items()
            if v != {}
        },
        "starts_at": _iso(s.starts_at),
        "ends_at": _iso(s.ends_at),
        "created_by": s.created_by,
        "comment": s.comment,
        "active": s.active(now),
    }


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
                "min": ms(obs.rtt_min),
                "avg": ms(obs.rtt_avg),
                "median": ms(obs.rtt_median),
                "max": ms(obs.rtt_max),
            },
            "jitter_ms": ms(obs.jitter),
            "mos": round(obs.mos, 2) if obs.mos is not None else None,
            "failure": obs.failure,
            "errors": dict(obs.errors),
        }
    return doc


_EngineHandler = Callable[["Api", "AlertRuntime", Request, Identity], Awaitable[Response]]
_Routed = Callable[[Request, Identity], Awaitable[Response]]


def _engine_route(
    handler: _EngineHandler,
) -> Callable[[Api, Request, Identity], Awaitable[Response]]:
    """Wrap an alerts route: 503 without an alert engine or when the state file cannot be
    written (nothing changed then), 400 with the field for BadInput."""

    @functools.wraps(handler)
    async def route(api: Api, request: Request, who: Identity = ANONYMOUS_WRITER) -> Response:
        from vcmon.alerts.store import StoreError

        if api.alert_runtime is None:
            return json_response({"error": "alert engine not running"}, 503)
        try:
            return await handler(api, api.alert_runtime, request, who)
        except BadInput as exc:
            return json_response({"error": str(exc)}, 400)
        except StoreError as exc:
            error = f"the state file could not be written; nothing was changed: {exc}"
            return json_response({"error": error}, 503)

    return route


class Api:
    """The daemon's HTTP routes, reading the live Results and registry."""

    def __init__(
        self,
        results: Results,
        registry: CollectorRegistry,
        info: dict[str, Any],
        *,
        alerts: AlertRuntime | None = None,
        access: Access | None = None,
        exposition: EndpointExposition | None = None,
    ) -> None:
        self._results = results
        self._registry = registry  # the daemon-wide series
        # The per-endpoint series, kept rendered; the daemon updates it as rounds land.
        self.exposition = exposition if exposition is not None else EndpointExposition(results)
        self._info = info
        self.alert_runtime = alerts
        self._renders: dict[tuple[str, bool], asyncio.Future[bytes]] = {}
        # Who may do what; serve() sets it from the web config and the listen address.
        self.access = access

    def routes(self) -> dict[tuple[str, str], Handler]:
        """Every route this API serves, each behind the access rule of its role."""
        table: dict[tuple[str, str], tuple[Need, _Routed]] = {
            ("GET", "/metrics"): (Need.READ, self.metrics),
            ("GET", "/-/healthy"): (Need.OPEN, self.healthy),  # orchestrators' probes
            ("GET", "/-/ready"): (Need.OPEN, self.ready),
            ("GET", "/api/v1/status"): (Need.READ, self.status),
            ("GET", "/api/v1/alerts"): (Need.READ, self.list_alerts),
            ("POST", "/api/v1/alerts/{id}/ack"): (Need.WRITE, self.ack),
            ("GET", "/api/v1/silences"): (Need.READ, self.list_silences),
            ("POST", "/api/v1/silences"): (Need.WRITE, self.add_silence),
            ("DELETE", "/api/v1/silences/{id}"): (Need.WRITE, self.expire_silence),
        }
        return {key: self._guard(need, handler) for key, (need, handler) in table.items()}

    def _guard(self, need: Need, handler: _Routed) -> Handler:
        async def guarded(request: Request) -> Response:
            access = self.access
            if access is None:  # not served through serve(): nothing to check against
                return await handler(request, ANONYMOUS_WRITER)
            found = await access.admit(request, need)
            response = found if isinstance(found, Response) else await handler(request, found)
            extra = access.headers()
            if extra:
                response = dataclasses.replace(response, headers=(*response.headers, *extra))
            return response

        return guarded

    async def metrics(self, request: Request, who: Identity = ANONYMOUS_WRITER) -> Response:
        fmt = negotiate(request.headers.get("accept", ""))
        gzip = accepts_gzip(request.headers.get("accept-encoding", ""))
        # The per-endpoint part is a join of bytes kept since rounds landed; the registry's
        # daemon-wide series, the join and gzip (megabytes at 10,000 endpoints) run in a
        # thread, off the loop that times probes. Scrapes that arrive while a page is being
        # made share it: a crowd of clients (or an attacker's hundreds) costs one page.
        key = (fmt.content_type, gzip)
        render = self._renders.get(key)
        if render is None:
            snapshot: list[Fragments] = self.exposition.snapshot()
            render = asyncio.ensure_future(
                asyncio.to_thread(fmt.page, snapshot, self._registry, gzip)
            )
            self._renders[key] = render
            render.add_done_callback(lambda _: self._renders.pop(key, None))
        body = await asyncio.shield(render)  # a client that leaves does not cancel the others'
        headers = (("Content-Encoding", "gzip"),) if gzip else ()
        return Response(200, body, fmt.content_type, (*headers, ("Vary", "Accept-Encoding")))

    async def healthy(self, request: Request, who: Identity = ANONYMOUS_WRITER) -> Response:
        return text(200, "OK\n")

    async def ready(self, request: Request, who: Identity = ANONYMOUS_WRITER) -> Response:
        store = self.alert_runtime.store_state() if self.alert_runtime is not None else None
        if store is not None and not store.ok:
            return text(
                503,
                f"the state store is failing ({store.error or 'writes pending'}); probing goes "
                f"on, {store.pending_changes} decisions wait to be written\n",
            )
        if self._results.all_observed():
            return text(200, "ready\n")
        pending = sum(1 for rec in self._results if rec.last is None)
        return text(503, f"waiting for the first round of {pending} endpoints\n")

    async def status(self, request: Request, who: Identity = ANONYMOUS_WRITER) -> Response:
        doc = {
            **self._info,
            "version": __version__,
            "now": time.time(),
            "ready": self._results.all_observed(),
            "endpoints": [endpoint_status(rec) for rec in self._results],
        }
        if self.alert_runtime is not None:
            doc["state_store"] = self.alert_runtime.store_state().to_json()
        return json_response(doc)

    @_engine_route
    async def list_alerts(self, runtime: AlertRuntime, request: Request, who: Identity) -> Response:
        known = (*_ALERT_FILTERS, "state", "since")
        unknown = sorted(set(request.query) - set(known))
        if unknown:
            # A misspelt filter would otherwise answer every alert, which reads as "all of these".
            name = shown(unknown[0]).strip("'")
            raise BadInput(f"{name}: unknown filter, expected one of {', '.join(known)}")
        for name, values in request.query.items():
            for value in values:
                _check_text(value, name, MAX_ID)
        wanted = {k: v[0] for k, v in request.query.items() if k in _ALERT_FILTERS}
        state = request.query.get("state", ["open"])[0] or "open"
        if state not in ("open", "ended", "all"):
            raise BadInput(f"state: expected open, ended or all, got {state!r}")
        since = request.query.get("since", [""])[0]
        if since and state == "open":
            raise BadInput("since: only for state=ended or state=all")
        try:
            window = parse_duration(since) if since else DAY
        except BadInput as exc:
            raise BadInput(str(exc).replace("duration:", "since:", 1)) from None

        def wanted_alert(alert: Alert) -> bool:
            fields = {"kind": alert.kind.value, "severity": alert.severity.value,
                      "district": alert.target.district, "endpoint": alert.target.id}  # fmt: skip
            return all(fields[k] == v for k, v in wanted.items())

        docs = []
        if state != "ended":
            docs += [_open_alert_doc(runtime, a) for a in runtime.alerts() if wanted_alert(a)]
        if state != "open":
            ended = runtime.ended_alerts(runtime.clock.time() - window)
            docs += [_ended_alert_doc(runtime, a, at) for a, at in ended if wanted_alert(a)]
        return json_response({"alerts": docs})

    @_engine_route
    async def ack(self, runtime: AlertRuntime, request: Request, who: Identity) -> Response:
        alert_id = _path_id(request)
        body = _json_body(request, ("by", "comment", "duration"))
        by = _author(body, "by", who)
        comment = body.get("comment", "")
        if not isinstance(comment, str):
            raise BadInput("comment: expected text")
        duration = None if body.get("duration") is None else parse_duration(body["duration"])
        alert = runtime.ack(alert_id, by, comment.strip(), duration)
        if alert is None:
            return json_response({"error": f"no open alert {alert_id}"}, 404)
        return json_response(_open_alert_doc(runtime, alert))

    @_engine_route
    async def list_silences(
        self, runtime: AlertRuntime, request: Request, who: Identity
    ) -> Response:
        expired = request.query.get("expired", ["0"])[0] not in ("0", "false", "")
        now = runtime.clock.time()
        docs = [silence_doc(s, now) for s in runtime.silences(include_expired=expired)]
        return json_response({"silences": docs})

    @_engine_route
    async def add_silence(self, runtime: AlertRuntime, request: Request, who: Identity) -> Response:
        body = _json_body(request, ("matchers", "duration", "created_by", "comment", "starts_at"))
        matchers = _matchers(body.get("matchers"))
        duration = parse_duration(body.get("duration"))
        comment = _text_field(body, "comment")
        created_by = _author(body, "created_by", who)
        starts_at = _time_field(body, "starts_at")
        now = runtime.clock.time()
        if starts_at is not None and starts_at + duration <= now:
            raise BadInput("starts_at: expected a time after now minus the duration; this "
                           "silence would be over before it is created")  # fmt: skip
        if starts_at is not None and not now - MAX_BEHIND <= starts_at <= now + MAX_AHEAD:
            raise BadInput("starts_at: expected a time from a day ago to a year ahead, got "
                           f"{shown(body['starts_at'])}")  # fmt: skip
        silence = runtime.add_silence(matchers, duration, created_by, comment, starts_at)
        return json_response(silence_doc(silence, runtime.clock.time()), 201)

    @_engine_route
    async def expire_silence(
        self, runtime: AlertRuntime, request: Request, who: Identity
    ) -> Response:
        silence_id = _path_id(request)
        silence = runtime.expire_silence(silence_id)
        if silence is None:
            return json_response({"error": f"no active silence {silence_id}"}, 404)
        return json_response(silence_doc(silence, runtime.clock.time()))


_ALERT_FILTERS: Final = ("kind", "severity", "district", "endpoint")


def _open_alert_doc(runtime: AlertRuntime, alert: Alert) -> dict[str, Any]:
    """alert_doc with what the runtime knows now: why it is held back, its summary."""
    from vcmon.alerts.model import Status

    summary = runtime.summary(alert, Status.FIRING, runtime.clock.time())
    return alert_doc(alert, runtime.suppressed_by(alert), summary)


def _ended_alert_doc(runtime: AlertRuntime, alert: Alert, ended_at: float) -> dict[str, Any]:
    """alert_doc of an alert that ended, worded as its resolve."""
    from vcmon.alerts.model import Status

    summary = runtime.summary(alert, Status.RESOLVED, ended_at)
    return alert_doc(alert, None, summary) | {"status": "resolved", "ended_at": _iso(ended_at)}


_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET: Final = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """How deeply the objects and arrays of the JSON text ``raw`` nest (strings skipped); found
    without parsing, so a hostile depth is refused before the parser recurses into it."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b"", raw)):
        depth += 1 if m.group() in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


def _json_body(request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
    raw = request.body or b"{}"
    if len(raw) > MAX_BODY:
        raise BadInput(f"body: expected a JSON object of at most {MAX_BODY // 1024} kB")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise BadInput(f"body: expected a JSON object nested at most {MAX_JSON_DEPTH} deep")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadInput("body: expected a JSON object") from None
    if not isinstance(doc, dict):
        raise BadInput("body: expected a JSON object")
    for name in doc:
        if name not in fields:
            # Typos such as "author" for "created_by" get named rather than silently dropped.
            raise BadInput(f"{shown(name).strip(chr(39))}: unknown field, expected one of "
                           f"{', '.join(fields)}")  # fmt: skip
    _check_tree(doc, "")
    return doc


def _check_tree(value: object, where: str) -> None:
    """Every text in a request (keys too) is valid Unicode without control characters and at
    most MAX_TEXT bytes; a newline or tab is allowed in a comment only."""
    if isinstance(value, str):
        _check_text(value, where or "body", MAX_TEXT, multiline=where == "comment")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{where or 'body'} (a key)", MAX_ID)
            _check_tree(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_tree(item, f"{where}[{i}]")


def _check_text(value: str, where: str, limit: int, multiline: bool = False) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadInput(f"{where}: expected valid Unicode text, got a lone surrogate") from None
    if size > limit:
        raise BadInput(f"{where}: expected at most {limit} bytes of text, got {size}")
    allowed = "\n\t" if multiline else ""
    if any(unicodedata.category(c) == "Cc" and c not in allowed for c in value):
        raise BadInput(f"{where}: expected text without control characters")


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{name}: required, expected non-empty text")
    return value.strip()


def _author(body: dict[str, Any], name: str, who: Identity) -> str:
    """Who a write is recorded as: the authenticated name, else (a loopback listen without a
    web config) the body's ``name`` field. A body naming someone else is refused."""
    if who.name is None:
        author = _text_field(body, name)
        _check_text(author, name, MAX_NAME)
        return author
    given = body.get(name)
    if given is not None and (not isinstance(given, str) or given.strip() != who.name):
        raise BadInput(f"{name}: this request is authenticated as {who.name!r}; leave {name} "
                       "out or give that name")  # fmt: skip
    return who.name


def _path_id(request: Request) -> str:
    value = request.params["id"]
    if len(value) > MAX_ID or not value.isprintable():
        raise BadInput(f"id: expected at most {MAX_ID} printable characters")
    return value


def _time_field(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        moment = (
            dt.datetime.fromisoformat(value)
            if isinstance(value, str) and len(value) <= 64
            else None
        )
    except ValueError:
        moment = None
    # A time without its zone would be read in the daemon's zone, not the sender's.
    if moment is None or moment.tzinfo is None:
        raise BadInput(
            f"{name}: expected an RFC 3339 time with its zone, e.g. 2026-11-28T06:00:00Z"
        )
    try:
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):
        raise BadInput(f"{name}: expected a time from a day ago to a year ahead") from None


def _matchers(raw: object) -> Matchers:
    from vcmon.config.alerts import Matchers

    if not isinstance(raw, dict):
        raise BadInput('matchers: required, expected an object such as {"district": "Cô Tô"}')
    try:
        matchers = Matchers.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(["matchers", *(str(part) for part in first["loc"])])
        raise BadInput(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    if matchers.empty():
        raise BadInput("matchers: a silence must match something")
    return matchers


def json_response(doc: Any, status: int = 200) -> Response:
    """A JSON response, UTF-8 kept readable."""
    body = json.dumps(doc, ensure_ascii=False).encode()
    return Response(status, body, "application/json; charset=utf-8")


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9231' or '[::1]:9231' → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(api: Api, listen: str, web_config: Path | None = None) -> HttpServer:
    """Start serving ``api`` on ``listen`` with the rules of ``web_config`` (TLS, users,
    tokens; without one: writes from loopback listens only); the caller closes the server.
    ConfigError when the web config is wrong, OSError when the address is taken."""
    web = load_web_config(web_config) if web_config is not None else None
    if api.access is None:
        api.access = Access(web, listen)
    ssl_context = web.tls.context() if web is not None and web.tls is not None else None
    server = HttpServer(api.routes())
    host, port = split_listen(listen)
    await server.start(host, port, ssl=ssl_context)
    return server
