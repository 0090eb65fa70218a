"""One writer of endpoint state: a record's state is the alert engine's, written by the
runtime after each round, which logs the change (``state_changed``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vcmon.alerts.runtime import AlertRuntime
from vcmon.clock import FakeClock
from vcmon.config import load_config
from vcmon.logs import _FIELDS
from vcmon.measure.results import Results
from vcmon.measure.stats import Observation
from vcmon.states import State

CONFIG = """
listen: 127.0.0.1:9
alerts: {state_file: state.db, health: {down_after: 2}}
endpoints:
  - {id: x, name: UBND xã Hạ Long, address: 127.0.0.1, district: Hạ Long, level: commune}
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[AlertRuntime, Results, FakeClock]]:
    path = tmp_path / "vcmon.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    config = load_config(path, env={})
    clock = FakeClock()
    rt = AlertRuntime.open(config, clock)
    yield rt, Results(config.endpoints), clock
    rt.close()


def _round(at: float, answered: bool) -> Observation:
    return Observation(at, 5, 5 if answered else 0, (0.01,) * 5 if answered else ())


def _changes(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [getattr(r, _FIELDS) for r in caplog.records if r.getMessage() == "state_changed"]


def test_a_record_shows_no_state_until_the_engine_decides(
    runtime: tuple[AlertRuntime, Results, FakeClock],
) -> None:
    rt, results, clock = runtime
    rec = results["x"]
    obs = _round(clock.time(), answered=False)
    rec.record(obs)
    assert rec.state is None  # counting a round decides nothing
    rt.on_round(rec, obs)
    assert rec.state is State.UP  # one failed round of two needed: not yet down


def test_state_changes_are_logged_where_they_are_written(
    runtime: tuple[AlertRuntime, Results, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    rt, results, clock = runtime
    rec = results["x"]
    caplog.set_level(logging.INFO, logger="vcmon.alerts.runtime")
    states = []
    for answered in (True, True, False, False, False, True, True):
        obs = _round(clock.time(), answered)
        rec.record(obs)
        rt.on_round(rec, obs)
        states.append(rec.state)
        clock.advance(10)
    assert states == [State.UP] * 3 + [State.DOWN] * 3 + [State.UP]
    # Startup into up is no news; down and back up are, once each, with the round's figures.
    assert _changes(caplog) == [
        {"endpoint": "x", "probe": "icmp", "previous": "up", "state": "down", "loss": "1.00",
         "failure": ""},
        {"endpoint": "x", "probe": "icmp", "previous": "down", "state": "up", "loss": "0.00",
         "failure": ""},
    ]  # fmt: skip
