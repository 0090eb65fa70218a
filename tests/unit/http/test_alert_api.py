"""The alerts and silences API on a real HTTP server backed by a real alert runtime and store
(rounds are fed in, not probed). The CLI over the same API: test_silence_cli.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.support.helpers import free_port
from vcmon.alerts.durations import MAX_SILENCE, BadInput, parse_duration
from vcmon.alerts.runtime import AlertRuntime
from vcmon.clock import FakeClock
from vcmon.config import load_config
from vcmon.http.api import Api, serve
from vcmon.http.server import HttpServer
from vcmon.measure.results import Results
from vcmon.measure.stats import Observation

CONFIG = """
listen: 127.0.0.1:{port}
alerts: {{state_file: state.db}}
endpoints:
  - {{id: hub, name: UBND huyện Cô Tô, address: 127.0.0.1, district: Cô Tô, level: district}}
  - {{id: c1, name: UBND xã Đồng Tiến, address: 127.0.0.1, district: Cô Tô, level: commune,
      parent: hub, labels: {{link: microwave}}}}
  - {{id: x, name: UBND xã Hạ Long, address: 127.0.0.1, district: Hạ Long, level: commune}}
"""


@dataclass
class Env:
    runtime: AlertRuntime
    results: Results
    clock: FakeClock
    server: HttpServer
    url: str

    def rounds(self, n: int, **ok: bool) -> None:
        """``n`` rounds of the named endpoints, answered or not, 10 s apart."""
        for _ in range(n):
            for eid, answered in ok.items():
                rec = self.results[eid]
                at = self.clock.time()
                obs = Observation(at, 5, 5 if answered else 0, (0.01,) * 5 if answered else ())
                rec.record(obs)
                self.runtime.on_round(rec, obs)
            self.clock.advance(10)

    def events(self) -> list[tuple[str, str, str]]:
        """(status, kind, endpoint) of every event the engine wrote."""
        return [(e["status"], e["kind"], e["endpoint"]["id"]) for e in self.runtime.store.events()]

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            return await http.request(method, path, json=body)

    async def silence(self, **body: Any) -> dict[str, Any]:
        """Create a silence (district Hạ Long for an hour unless told otherwise)."""
        doc = {"matchers": {"district": "Hạ Long"}, "duration": "1h", "comment": "đổi thiết bị",
               "created_by": "Lan", **body}  # fmt: skip
        resp = await self.call("POST", "/api/v1/silences", doc)
        assert resp.status_code == 201, resp.text
        created: dict[str, Any] = resp.json()
        return created


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    path = tmp_path / "vcmon.yaml"
    path.write_text(CONFIG.format(port=free_port()), encoding="utf-8")
    config = load_config(path, env={})
    clock = FakeClock()
    runtime = AlertRuntime.open(config, clock)
    results = Results(config.endpoints)
    api = Api(results, CollectorRegistry(), {"instance": "t"}, alerts=runtime)
    server = await serve(api, config.listen)
    try:
        yield Env(runtime, results, clock, server, f"http://{config.listen}")
    finally:
        await server.close()
        runtime.close()


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# --- alerts -------------------------------------------------------------------------------------


async def test_an_open_alert_as_the_api_shows_it(env: Env) -> None:
    started = env.clock.time()
    env.rounds(3, hub=True, c1=True, x=False)
    resp = await env.call("GET", "/api/v1/alerts")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    (alert,) = resp.json()["alerts"]
    assert alert["kind"] == "endpoint_down"
    assert alert["severity"] == "critical"
    assert alert["status"] == "firing"
    assert alert["endpoint"] == {"id": "x", "name": "UBND xã Hạ Long", "address": "127.0.0.1",
                                 "district": "Hạ Long", "level": "commune"}  # fmt: skip
    assert alert["started_at"] == rfc3339(started)
    assert alert["notified"] is True
    assert alert["suppressed_by"] is None
    assert alert["affected"] == []
    assert set(alert["measurements"]) == {"rtt_ms", "jitter_ms", "loss_pct", "mos"}
    assert "Hạ Long" in alert["summary"]
    assert len(alert["alert_id"]) == 16


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("", ["x"]),
        ("?kind=endpoint_down", ["x"]),
        ("?kind=loss_high", []),
        ("?severity=critical&district=H%E1%BA%A1%20Long", ["x"]),
        ("?severity=warning", []),
        ("?district=Cô Tô", []),
        ("?endpoint=x", ["x"]),
        ("?endpoint=X", []),  # exact, not case-folded
        ("?kind=", ["x"]),  # an empty filter filters nothing
    ],
)
async def test_alert_filters(env: Env, query: str, found: list[str]) -> None:
    env.rounds(3, hub=True, c1=True, x=False)
    resp = await env.call("GET", "/api/v1/alerts" + query)
    assert [a["endpoint"]["id"] for a in resp.json()["alerts"]] == found


async def test_a_misspelt_filter_is_refused_not_ignored(env: Env) -> None:
    resp = await env.call("GET", "/api/v1/alerts?sev=critical")
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "sev: unknown filter, expected one of kind, severity, district, endpoint, "
        "state, since"
    }


async def test_ended_alerts_are_listed_with_their_end(env: Env) -> None:
    started = env.clock.time()
    env.rounds(3, x=False)  # x down: fires
    env.rounds(2, x=True)  # up again: resolves
    ended = env.clock.time() - 10  # the second good round decided it
    env.rounds(3, hub=True, c1=True, x=False)  # down again: a new alert, open
    docs = (await env.call("GET", "/api/v1/alerts?state=ended")).json()["alerts"]
    (old,) = docs
    assert old["status"] == "resolved"
    assert old["started_at"] == rfc3339(started)
    assert old["ended_at"] == rfc3339(ended)
    assert "Hạ Long" in old["summary"]
    everything = (await env.call("GET", "/api/v1/alerts?state=all")).json()["alerts"]
    assert [a["status"] for a in everything] == ["firing", "resolved"]
    assert len((await env.call("GET", "/api/v1/alerts")).json()["alerts"]) == 1  # open only
    # Filters apply to ended alerts too; `since` bounds how far back.
    assert (await env.call("GET", "/api/v1/alerts?state=ended&district=Cô Tô")).json() == {
        "alerts": []
    }
    env.clock.advance(2 * 3600)
    assert (await env.call("GET", "/api/v1/alerts?state=ended&since=1h")).json() == {"alerts": []}
    assert len((await env.call("GET", "/api/v1/alerts?state=ended")).json()["alerts"]) == 1


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("state=closed", "state: expected open, ended or all, got 'closed'"),
        ("since=1h", "since: only for state=ended or state=all"),
        ("state=ended&since=yesterday", "since: expected e.g. 2h, 30m, 1h30m or seconds, got"),
    ],
)
async def test_bad_history_queries(env: Env, query: str, error: str) -> None:
    resp = await env.call("GET", "/api/v1/alerts?" + query)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(error)


async def test_ack(env: Env) -> None:
    env.rounds(3, x=False)
    (alert,) = (await env.call("GET", "/api/v1/alerts")).json()["alerts"]
    path = f"/api/v1/alerts/{alert['alert_id']}/ack"
    resp = await env.call("POST", path, {"by": "Lan", "comment": "đang xử lý", "duration": "2h"})
    assert resp.status_code == 200
    assert resp.json()["acknowledged"]["by"] == "Lan"
    assert [e[0] for e in env.events()] == ["firing", "acknowledged"]
    assert (await env.call("POST", "/api/v1/alerts/nope/ack", {"by": "Lan"})).status_code == 404
    resp = await env.call("POST", path, {"comment": "no one"})
    assert (resp.status_code, resp.json()) == (
        400,
        {"error": "by: required, expected non-empty text"},
    )
    resp = await env.call("POST", path, {"by": "Lan", "duration": 0})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("duration: ")
    assert (await env.call("GET", path)).status_code == 405


# --- silences -----------------------------------------------------------------------------------


async def test_a_silence_as_the_api_shows_it(env: Env) -> None:
    now = env.clock.time()
    silence = await env.silence(
        matchers={"district": "Cô Tô", "kind": "~loss.*", "labels": {"link": "microwave"}},
        duration=5400,
    )
    assert silence == {
        "id": silence["id"],
        "matchers": {"district": "Cô Tô", "kind": "~loss.*", "labels": {"link": "microwave"}},
        "starts_at": rfc3339(now),
        "ends_at": rfc3339(now + 5400),
        "created_by": "Lan",
        "comment": "đổi thiết bị",
        "active": True,
    }
    listed = (await env.call("GET", "/api/v1/silences")).json()["silences"]
    assert listed == [silence]


async def test_a_silence_created_over_http_mutes_and_its_end_fires(env: Env) -> None:
    silence = await env.silence()
    assert silence["matchers"] == {"district": "Hạ Long"}  # no empty labels, no nulls
    env.rounds(4, x=False)
    assert env.events() == []
    (alert,) = (await env.call("GET", "/api/v1/alerts")).json()["alerts"]
    assert alert["suppressed_by"] == f"silence {silence['id']}"
    assert alert["notified"] is False

    resp = await env.call("DELETE", f"/api/v1/silences/{silence['id']}")
    assert resp.status_code == 200
    assert resp.json()["active"] is False
    assert resp.json()["ends_at"] == rfc3339(env.clock.time())
    assert env.events() == [("firing", "endpoint_down", "x")]
    assert (await env.call("GET", "/api/v1/silences")).json()["silences"] == []
    expired = (await env.call("GET", "/api/v1/silences?expired=1")).json()["silences"]
    assert [(s["id"], s["active"]) for s in expired] == [(silence["id"], False)]

    resp = await env.call("DELETE", f"/api/v1/silences/{silence['id']}")
    assert (resp.status_code, resp.json()) == (404, {"error": f"no active silence {silence['id']}"})


@pytest.mark.parametrize(
    ("matchers", "muted"),
    [
        ({"endpoint": "x"}, True),
        ({"kind": "~endpoint_.*"}, True),
        ({"severity": "critical", "level": "commune"}, True),
        ({"kind": "~loss.*"}, False),
        ({"district": "Cô Tô"}, False),
        ({"endpoint": "x", "severity": "warning"}, False),
        ({"labels": {"link": "microwave"}}, False),  # x has no such label
    ],
)
async def test_what_a_silence_mutes(env: Env, matchers: dict[str, Any], muted: bool) -> None:
    await env.silence(matchers=matchers)
    env.rounds(3, x=False)
    assert env.events() == ([] if muted else [("firing", "endpoint_down", "x")])


@pytest.mark.parametrize(("starts_in", "muted"), [(15, True), (3600, False)])
async def test_a_silence_that_starts_later_mutes_from_then(
    env: Env, starts_in: float, muted: bool
) -> None:
    later = env.clock.time() + starts_in
    silence = await env.silence(starts_at=rfc3339(later), duration="30m")
    assert silence["active"] is False
    assert (silence["starts_at"], silence["ends_at"]) == (rfc3339(later), rfc3339(later + 1800))
    listed = (await env.call("GET", "/api/v1/silences")).json()["silences"]
    assert [s["id"] for s in listed] == [silence["id"]]
    env.rounds(3, x=False)  # down from the third round, 20 s from now
    assert env.events() == ([] if muted else [("firing", "endpoint_down", "x")])


async def test_expiring_an_id_that_needs_quoting(env: Env) -> None:
    resp = await env.call("DELETE", "/api/v1/silences/n%C3%B4pe%2Fx")
    assert (resp.status_code, resp.json()) == (404, {"error": "no active silence nôpe/x"})


_OK: dict[str, Any] = {"matchers": {"district": "X"}, "duration": "1h", "comment": "c",
                       "created_by": "a"}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({**_OK, "matchers": {}}, "matchers: a silence must match something"),
        ({**_OK, "matchers": {"labels": {}}}, "matchers: a silence must match something"),
        ({**_OK, "matchers": None}, "matchers: required, expected an object"),
        ({**_OK, "matchers": "district=X"}, "matchers: required, expected an object"),
        ({**_OK, "matchers": {"colour": "X"}}, "matchers.colour: Extra inputs are not permitted"),
        ({**_OK, "matchers": {"district": 5}}, "matchers.district: Input should be a valid string"),
        ({**_OK, "matchers": {"labels": {"a": 1}}}, "matchers.labels.a: "),
        ({**_OK, "matchers": {"kind": "~(("}}, "matchers: bad regular expression '(('"),
        ({**_OK, "duration": "forever"}, "duration: expected e.g. 2h"),
        ({**_OK, "duration": "40d"}, "duration: expected more than 0 and at most 30 days"),
        ({**_OK, "duration": -5}, "duration: expected more than 0"),
        ({**_OK, "duration": True}, "duration: required"),
        ({k: v for k, v in _OK.items() if k != "duration"}, "duration: required"),
        ({**_OK, "comment": ""}, "comment: required, expected non-empty text"),
        ({**_OK, "comment": "   "}, "comment: required, expected non-empty text"),
        ({k: v for k, v in _OK.items() if k != "created_by"}, "created_by: required"),
        ({**_OK, "created_by": 7}, "created_by: required, expected non-empty text"),
        ({**_OK, "starts_at": "tomorrow"}, "starts_at: expected an RFC 3339 time with its zone"),
        ({**_OK, "starts_at": "2027-01-15T08:00:00"}, "starts_at: expected an RFC 3339 time with"),
        ({**_OK, "starts_at": "2020-01-01T00:00:00Z"}, "would be over before it is created"),
        ({**_OK, "author": "a"}, "author: unknown field, expected one of matchers, duration"),
        ([1, 2], "body: expected a JSON object"),
    ],
)  # fmt: skip
async def test_bad_silences_are_refused_with_the_field(env: Env, body: Any, error: str) -> None:
    resp = await env.call("POST", "/api/v1/silences", body)
    assert resp.status_code == 400
    assert error in resp.json()["error"]
    assert (await env.call("GET", "/api/v1/silences?expired=1")).json()["silences"] == []


async def test_a_body_that_is_not_json(env: Env) -> None:
    async with httpx.AsyncClient(base_url=env.url, timeout=5) as http:
        resp = await http.post("/api/v1/silences", content=b"{matchers: 1")
    assert (resp.status_code, resp.json()) == (400, {"error": "body: expected a JSON object"})


async def test_methods_of_the_silence_paths(env: Env) -> None:
    resp = await env.call("GET", "/api/v1/silences/abc")
    assert (resp.status_code, resp.headers["allow"]) == (405, "DELETE")
    resp = await env.call("PUT", "/api/v1/silences")
    assert (resp.status_code, resp.headers["allow"]) == (405, "GET, POST")
    assert (await env.call("DELETE", "/api/v1/silences/a/b")).status_code == 404


# --- without an engine --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/alerts", None),
        ("POST", "/api/v1/alerts/abc/ack", {"by": "Lan"}),
        ("GET", "/api/v1/silences", None),
        ("POST", "/api/v1/silences", _OK),
        ("DELETE", "/api/v1/silences/abc", None),
    ],
)
async def test_without_an_engine_the_routes_say_so(method: str, path: str, body: Any) -> None:
    server = await serve(Api(Results([]), CollectorRegistry(), {}), f"127.0.0.1:{free_port()}")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            resp = await http.request(method, path, json=body)
            assert (await http.get("/-/healthy")).status_code == 200
    finally:
        await server.close()
    assert (resp.status_code, resp.json()) == (503, {"error": "alert engine not running"})


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
     ("1d2h3m4s", 93784), (" 2h ", 7200), (600, 600), (0.5, 0.5), ("600", 600),
     ("30d", MAX_SILENCE)],
)  # fmt: skip
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "h", "2x", "1m2h", "2 h", "-1h", "0s", "0", 0, -1, "31d", MAX_SILENCE + 1,
     float("nan"), float("inf"), None, True, "²", "١h"],
)  # fmt: skip
def test_bad_durations(text: object) -> None:
    with pytest.raises(BadInput, match=r"^duration: "):
        parse_duration(text)


# --- edge checks: every field at the API's edge -------------------------------------------------


def _with(*fields: str) -> bytes:
    """A good silence as raw JSON with ``fields`` (raw JSON members) put over its own: a later
    member wins, and escapes such as \\ud800 reach the server as a hostile client sends them."""
    good = '"matchers": {"district": "X"}, "duration": "1h", "created_by": "a", "comment": "c"'
    return ("{" + ", ".join((good, *fields)) + "}").encode()


_NINES = "9" * 400


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/api/v1/silences", _with('"comment": "\\ud800"'),
         "comment: expected valid Unicode text, got a lone surrogate"),
        ("/api/v1/silences", _with('"matchers": {"district": "\\udfff"}'),
         "matchers.district: expected valid Unicode text"),
        ("/api/v1/silences", _with('"starts_at": "9999-12-31T23:00:00Z"'),
         "starts_at: expected a time from a day ago"),
        ("/api/v1/silences", _with('"starts_at": "0001-01-01T00:00:00+01:00"'), "starts_at: "),
        ("/api/v1/silences", _with(f'"duration": "{_NINES}s"'), "duration: expected"),
        ("/api/v1/silences", _with(f'"duration": {_NINES}'),
         "duration: expected more than 0 and at most 30 days, got a number of 400 digits"),
        ("/api/v1/silences", b"[" * 100_000 + b"]" * 100_000, "body: expected a JSON object of"),
        ("/api/v1/silences", b'{"matchers": ' + b"[" * 40 + b"]" * 40 + b"}",
         "body: expected a JSON object nested at most 32 deep"),
        ("/api/v1/silences", _with('"comment": "' + "x" * 2048 + '"'),
         "comment: expected at most 1024 bytes of text, got 2048"),
        ("/api/v1/silences", _with('"created_by": "a\\u0007"'),
         "created_by: expected text without control characters"),
        ("/api/v1/silences", b'{"comment": "\xff"}', "body: expected a JSON object"),
        ("/api/v1/alerts/abc/ack", b'{"by": "Lan", "comment": "\\ud800"}',
         "comment: expected valid Unicode text"),
        ("/api/v1/alerts/abc/ack", b'{"by": "Lan", "duration": "' + b"1" * 400 + b'd"}',
         "duration: expected"),
        ("/api/v1/alerts/" + "a" * 300 + "/ack", b'{"by": "Lan"}', "id: expected at most 128"),
    ],
)  # fmt: skip
async def test_edge_checks_name_the_field(env: Env, path: str, body: bytes, error: str) -> None:
    async with httpx.AsyncClient(base_url=env.url, timeout=5) as http:
        resp = await http.post(path, content=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith(error), resp.json()
    assert (await env.call("GET", "/api/v1/silences?expired=1")).json()["silences"] == []


async def test_a_comment_may_hold_lines(env: Env) -> None:
    silence = await env.silence(comment="đổi thiết bị\nrồi kiểm tra\tlại")
    assert silence["comment"] == "đổi thiết bị\nrồi kiểm tra\tlại"


@pytest.mark.parametrize("query", ["district=" + "x" * 300, "state=%07", "since=" + "9" * 400])
async def test_edge_checks_of_queries(env: Env, query: str) -> None:
    resp = await env.call("GET", f"/api/v1/alerts?{query}")
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(query.split("=")[0] + ": ")


async def test_a_stored_silence_out_of_range_cannot_break_a_listing(env: Env) -> None:
    from vcmon.config.alerts import Matchers

    # Written before the API checked times: it must list, not answer 500.
    env.runtime.add_silence(Matchers(district="X"), 1e13, "old", "from before the checks")
    resp = await env.call("GET", "/api/v1/silences")
    assert resp.status_code == 200
    (silence,) = resp.json()["silences"]
    assert (silence["created_by"], silence["ends_at"]) == ("old", None)


async def test_a_write_the_state_file_refuses_is_503_and_changes_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vcmon.alerts.store import StoreError

    def refuse(*args: object, **kwargs: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(env.runtime, "add_silence", refuse)
    resp = await env.call("POST", "/api/v1/silences", {**_OK})
    assert resp.status_code == 503
    assert resp.json()["error"] == (
        "the state file could not be written; nothing was changed: disk full"
    )
