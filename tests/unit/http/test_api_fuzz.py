"""Hypothesis fuzzing of the alerts API's handlers (the routes the server dispatches to, with
their access rule): random JSON bodies, raw bytes, query strings and ids never answer 500, and
a refused write changes nothing. The HTTP framing itself: test_httpserver.py."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from vcmon.alerts.runtime import AlertRuntime
from vcmon.clock import FakeClock
from vcmon.config import load_config
from vcmon.http.api import Api
from vcmon.http.auth import Access
from vcmon.http.server import Handler, Request, Response
from vcmon.measure.results import Results

CONFIG = """
listen: 127.0.0.1:9231
alerts: {state_file: state.db}
endpoints:
  - {id: x, name: UBND xã Hạ Long, address: 127.0.0.1, district: Hạ Long, level: commune}
"""

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Any code point, lone surrogates and control characters included.
_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
_FIELDS = ["matchers", "duration", "comment", "created_by", "starts_at", "by", "district",
           "endpoint", "kind", "labels", "severity", "level"]  # fmt: skip
_WORDS = st.sampled_from(_FIELDS)
_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT
    | st.sampled_from(["1h", "90s", "0", "-1h", "9" * 400, "2026-11-28T06:00:00Z",
                       "9999-12-31T23:00:00Z", "~.*", "~((", "Hạ Long", "\ud800"])
)  # fmt: skip
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_WORDS | _TEXT, inner, max_size=5),
    max_leaves=20,
)


_VALUES = _TEXT | st.sampled_from(["ended", "all", "open", "12h", "9" * 400])


class Routes:
    def __init__(self, api: Api, runtime: AlertRuntime) -> None:
        self.handlers: dict[tuple[str, str], Handler] = api.routes()
        self.runtime = runtime

    def call(self, method: str, route: str, *, body: bytes = b"",
             query: dict[str, list[str]] | None = None,
             params: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        request = Request(method, route, query or {}, {}, body, params or {}, client="127.0.0.1")
        handler = self.handlers[(method, route)]

        async def answer() -> Response:
            return await handler(request)

        response = asyncio.run(answer())
        assert response.status != 500, response.body
        doc = json.loads(response.body)
        if response.status >= 400:
            assert isinstance(doc["error"], str)
            assert doc["error"]
        return response.status, doc


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routes]:
    path = tmp_path_factory.mktemp("fuzz") / "vcmon.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_config(path, env={})
    runtime = AlertRuntime.open(config, FakeClock())
    # Loopback without a web config: writes allowed; a clock that leaps keeps the write limit
    # (tested in test_webauth.py) from answering for the handlers.
    access = Access(None, config.listen, clock=itertools.count(0.0, 1000.0).__next__)
    api = Api(Results(config.endpoints), CollectorRegistry(), {}, alerts=runtime, access=access)
    yield Routes(api, runtime)
    runtime.close()


def _encode(doc: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \ud800 escapes, as a hostile client sends them.
    return json.dumps(doc, ensure_ascii=True).encode()


@FUZZ
@given(body=_JSON | st.dictionaries(_WORDS, _JSON, max_size=5))
def test_add_silence_never_fails(routes: Routes, body: Any) -> None:
    before = len(routes.runtime.silences(include_expired=True))
    status, doc = routes.call("POST", "/api/v1/silences", body=_encode(body))
    after = routes.runtime.silences(include_expired=True)
    if status == 201:
        assert doc["id"] in {s.id for s in after}
        assert all(isinstance(doc[k], str) for k in ("starts_at", "ends_at"))
    else:
        assert status == 400
        assert len(after) == before
    assert routes.call("GET", "/api/v1/silences", query={"expired": ["1"]})[0] == 200


@FUZZ
@given(body=st.binary(max_size=200) | st.sampled_from([b"[" * 5000, b"{" * 100_000, b"\xff"]))
def test_raw_bodies_never_fail(routes: Routes, body: bytes) -> None:
    status, _ = routes.call("POST", "/api/v1/silences", body=body)
    assert status in (201, 400)


@FUZZ
@given(alert_id=_TEXT, body=_JSON | st.dictionaries(_WORDS, _JSON, max_size=4))
def test_ack_never_fails(routes: Routes, alert_id: str, body: Any) -> None:
    status, _ = routes.call("POST", "/api/v1/alerts/{id}/ack", body=_encode(body),
                            params={"id": alert_id})  # fmt: skip
    assert status in (400, 404)


@FUZZ
@given(silence_id=_TEXT)
def test_expire_never_fails(routes: Routes, silence_id: str) -> None:
    status, _ = routes.call("DELETE", "/api/v1/silences/{id}", params={"id": silence_id})
    assert status in (400, 404)


@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(["state", "since", "kind", "severity", "district", "endpoint"]) | _TEXT,
        st.lists(_VALUES, min_size=1, max_size=2),
        max_size=3,
    )
)
def test_list_alerts_never_fails(routes: Routes, query: dict[str, list[str]]) -> None:
    status, _ = routes.call("GET", "/api/v1/alerts", query=query)
    assert status in (200, 400)


def test_the_fuzzer_reaches_the_handlers(routes: Routes, tmp_path: Path) -> None:
    """A valid body gets through, so the fuzz tests above exercise more than the refusals."""
    body = {"matchers": {"district": "Hạ Long"}, "duration": "1h", "comment": "c",
            "created_by": "a"}  # fmt: skip
    assert routes.call("POST", "/api/v1/silences", body=_encode(body))[0] == 201
