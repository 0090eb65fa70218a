"""The alerts and silences API, and the CLI commands that use it, on a real HTTP server
backed by a real alert runtime and store (rounds are fed in, not probed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from vcmon import cli
from vcmon.alerts.runtime import AlertRuntime
from vcmon.api import Api, parse_duration, serve
from vcmon.clock import FakeClock
from vcmon.config import load_config
from vcmon.httpserver import HttpServer
from vcmon.results import Results
from vcmon.stats import Observation

from .helpers import free_port

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
    config_path: Path

    def rounds(self, n: int, **ok: bool) -> None:
        for _ in range(n):
            for eid, answered in ok.items():
                rec = self.results[eid]
                at = self.clock.time()
                obs = Observation(at, 5, 5 if answered else 0, (0.01,) * 5 if answered else ())
                rec.record(obs)
                self.runtime.on_round(rec, obs)
            self.clock.advance(10)

    def events(self) -> list[dict[str, Any]]:
        return self.runtime.store.events()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    port = free_port()
    path = tmp_path / "vcmon.yaml"
    path.write_text(CONFIG.format(port=port), encoding="utf-8")
    config = load_config(path, env={})
    clock = FakeClock()
    runtime = AlertRuntime.open(config, clock)
    results = Results(config.endpoints)
    server = await serve(
        Api(results, CollectorRegistry(), {"instance": "t"}, alerts=runtime), config.listen
    )
    try:
        yield Env(runtime, results, clock, server, f"http://{config.listen}", path)
    finally:
        await server.close()
        runtime.close()


async def call(env: Env, method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=env.url, timeout=5) as http:
        return await http.request(method, path, json=body)


async def test_open_alerts_with_filters(env: Env) -> None:
    env.rounds(3, hub=True, c1=True, x=False)
    resp = await call(env, "GET", "/api/v1/alerts")
    assert resp.status_code == 200
    (alert,) = resp.json()["alerts"]
    assert alert["kind"] == "endpoint_down"
    assert alert["endpoint"]["id"] == "x"
    assert alert["notified"] is True
    assert alert["suppressed_by"] is None
    assert (await call(env, "GET", "/api/v1/alerts?district=Cô Tô")).json()["alerts"] == []
    assert len((await call(env, "GET", "/api/v1/alerts?kind=endpoint_down")).json()["alerts"]) == 1


async def test_silence_created_over_http_mutes_and_its_end_fires(env: Env) -> None:
    resp = await call(env, "POST", "/api/v1/silences", {
        "matchers": {"district": "Hạ Long"}, "duration": "1h", "comment": "đổi thiết bị",
        "created_by": "Lan"})  # fmt: skip
    assert resp.status_code == 201
    silence = resp.json()
    assert silence["active"] is True
    assert silence["matchers"] == {"district": "Hạ Long"}
    env.rounds(4, x=False)
    assert env.events() == []
    (alert,) = (await call(env, "GET", "/api/v1/alerts")).json()["alerts"]
    assert alert["suppressed_by"] == f"silence {silence['id']}"
    listed = (await call(env, "GET", "/api/v1/silences")).json()["silences"]
    assert [s["id"] for s in listed] == [silence["id"]]
    resp = await call(env, "DELETE", f"/api/v1/silences/{silence['id']}")
    assert resp.status_code == 200
    assert [(e["status"], e["kind"]) for e in env.events()] == [("firing", "endpoint_down")]
    assert (await call(env, "DELETE", f"/api/v1/silences/{silence['id']}")).status_code == 404
    expired = (await call(env, "GET", "/api/v1/silences?expired=1")).json()["silences"]
    assert expired[0]["active"] is False


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"matchers": {}, "duration": "1h", "comment": "c", "created_by": "a"},
         "matchers: a silence must match something"),
        ({"matchers": {"district": "X"}, "duration": "forever", "comment": "c", "created_by": "a"},
         "duration: expected e.g. 2h"),
        ({"matchers": {"district": "X"}, "duration": "40d", "comment": "c", "created_by": "a"},
         "at most 30 days"),
        ({"matchers": {"district": "X"}, "duration": "1h", "comment": "", "created_by": "a"},
         "comment: required"),
        ({"matchers": {"colour": "X"}, "duration": "1h", "comment": "c", "created_by": "a"},
         "matchers.colour"),
        ({"matchers": {"kind": "~(("}, "duration": "1h", "comment": "c", "created_by": "a"},
         "bad regular expression"),
        ([1, 2], "body: expected a JSON object"),
    ],
)  # fmt: skip
async def test_bad_silences_are_refused_with_the_field(env: Env, body: Any, error: str) -> None:
    resp = await call(env, "POST", "/api/v1/silences", body)
    assert resp.status_code == 400
    assert error in resp.json()["error"]


async def test_ack_over_http(env: Env) -> None:
    env.rounds(3, x=False)
    (alert,) = (await call(env, "GET", "/api/v1/alerts")).json()["alerts"]
    path = f"/api/v1/alerts/{alert['alert_id']}/ack"
    resp = await call(env, "POST", path, {"by": "Lan", "comment": "đang xử lý", "duration": "2h"})
    assert resp.status_code == 200
    assert resp.json()["acknowledged"]["by"] == "Lan"
    assert [e["status"] for e in env.events()] == ["firing", "acknowledged"]
    assert (await call(env, "POST", "/api/v1/alerts/nope/ack", {"by": "Lan"})).status_code == 404
    assert (await call(env, "POST", path, {"comment": "no one"})).status_code == 400
    assert (await call(env, "GET", path)).status_code == 405


async def test_without_an_engine_the_routes_say_so(tmp_path: Path) -> None:
    server = await serve(Api(Results([]), CollectorRegistry(), {}), f"127.0.0.1:{free_port()}")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            resp = await http.get("/api/v1/alerts")
        assert resp.status_code == 503
        assert resp.json() == {"error": "alert engine not running"}
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), (600, 600)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


# -- the CLI against the same server -----------------------------------------------------------


async def test_silence_commands(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    async def run(*argv: str) -> int:
        return await asyncio.to_thread(cli.main, list(argv))

    rc = await run("silence", "add", "--url", env.url, "--district", "Cô Tô", "--label",
                   "link=microwave", "--duration", "30m", "--comment", "bảo trì viba",
                   "--author", "Lan")  # fmt: skip
    assert rc == 0
    sid = capsys.readouterr().out.strip()
    assert len(sid) == 12
    assert await run("silence", "list", "-c", str(env.config_path), "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)["silences"]
    assert listed["id"] == sid
    assert listed["comment"] == "bảo trì viba"
    assert listed["matchers"] == {"district": "Cô Tô", "labels": {"link": "microwave"}}
    assert await run("silence", "list", "--url", env.url) == 0
    assert "1 silences" in capsys.readouterr().out
    assert await run("silence", "expire", "--url", env.url, sid) == 0
    assert await run("silence", "expire", "--url", env.url, sid) == 1
    assert f"no active silence {sid}" in capsys.readouterr().err
    rc = await run("silence", "add", "--url", env.url, "--duration", "30m", "--comment", "x")
    assert rc == 1
    assert "a silence must match something" in capsys.readouterr().err


async def test_alerts_list_command(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.rounds(3, x=False)
    assert await asyncio.to_thread(cli.main, ["alerts", "list", "--url", env.url]) == 0
    assert "1 open alerts" in capsys.readouterr().out
    rc = await asyncio.to_thread(cli.main, ["alerts", "list", "--url", env.url, "--json"])
    assert rc == 0
    (alert,) = json.loads(capsys.readouterr().out)["alerts"]
    assert (alert["kind"], alert["endpoint"]["district"]) == ("endpoint_down", "Hạ Long")


def test_cli_when_the_daemon_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["alerts", "list", "--url", url]) == 1
    assert "is the daemon running?" in capsys.readouterr().err
