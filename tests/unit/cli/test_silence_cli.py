"""`vcmon silence add|list|expire` and `vcmon alerts list` through the CLI's main function,
against the API served from a background thread with a real alert runtime and store."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from tests.support.helpers import free_port
from vcmon import cli
from vcmon.alerts.model import Silence
from vcmon.alerts.runtime import AlertRuntime
from vcmon.cli import alerts as silence_cli
from vcmon.cli.alerts import Cell
from vcmon.clock import FakeClock
from vcmon.config import load_config
from vcmon.http.api import Api, serve
from vcmon.http.server import HttpServer
from vcmon.measure.results import Results
from vcmon.measure.stats import Observation

T = TypeVar("T")

CONFIG = """
listen: 127.0.0.1:{port}
alerts: {{state_file: state.db}}
endpoints:
  - {{id: hub, name: UBND huyện Cô Tô, address: 127.0.0.1, district: Cô Tô, level: district}}
  - {{id: c1, name: UBND xã Đồng Tiến, address: 127.0.0.1, district: Cô Tô, level: commune,
      parent: hub, labels: {{link: microwave}}}}
  - {{id: x, name: UBND xã Hạ Long, address: 127.0.0.1, district: Hạ Long, level: commune}}
"""
START = 1_800_000_000.0  # the daemon's (fake) clock at the start of each test


class Daemon:
    """The API and an alert runtime on their own thread and event loop, as a running daemon.

    The runtime's SQLite connection belongs to that thread: touch the runtime only via do().
    """

    def __init__(self, config_path: Path, *, engine: bool = True) -> None:
        self.config = load_config(config_path, env={})
        self.url = f"http://{self.config.listen}"
        self.clock = FakeClock(START)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runtime: AlertRuntime | None = None
        self.results = Results(self.config.endpoints)
        self.server: HttpServer = self._run(self._start(engine))

    async def _start(self, engine: bool) -> HttpServer:
        if engine:
            self.runtime = AlertRuntime.open(self.config, self.clock)
        api = Api(self.results, CollectorRegistry(), {"instance": "t"}, alerts=self.runtime)
        return await serve(api, self.config.listen)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def do(self, fn: Callable[[AlertRuntime], T]) -> T:
        """``fn(runtime)`` on the daemon's thread, between requests."""

        async def call() -> T:
            assert self.runtime is not None
            return fn(self.runtime)

        return self._run(call())

    def rounds(self, n: int, **ok: bool) -> None:
        """``n`` rounds of the named endpoints, answered or not, 10 s apart."""

        def feed(runtime: AlertRuntime) -> None:
            for _ in range(n):
                for eid, answered in ok.items():
                    rec = self.results[eid]
                    at = self.clock.time()
                    obs = Observation(at, 5, 5 if answered else 0, (0.01,) * 5 if answered else ())
                    rec.record(obs)
                    runtime.on_round(rec, obs)
                self.clock.advance(10)

        self.do(feed)

    def events(self) -> list[tuple[str, str, str]]:
        """(status, kind, endpoint) of every event the engine wrote."""
        docs = self.do(lambda runtime: runtime.store.events())
        return [(e["status"], e["kind"], e["endpoint"]["id"]) for e in docs]

    def silences(self) -> list[Silence]:
        return self.do(lambda runtime: runtime.silences(include_expired=True))

    def close(self) -> None:
        self._run(self.server.close())
        if self.runtime is not None:
            self.do(lambda runtime: runtime.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "vcmon.yaml"
    path.write_text(CONFIG.format(port=free_port()), encoding="utf-8")
    return path


@pytest.fixture
def daemon(config_path: Path) -> Iterator[Daemon]:
    d = Daemon(config_path)
    try:
        yield d
    finally:
        d.close()


def vcmon(*argv: str) -> int:
    return cli.main(list(argv))


def add(daemon: Daemon, *matchers: str, comment: str = "bảo trì viba") -> None:
    """`vcmon silence add` for 2 hours."""
    rc = vcmon("silence", "add", "--url", daemon.url, *matchers, "--duration", "2h",
               "--comment", comment, "--author", "Lan")  # fmt: skip
    assert rc == 0


def ns(daemon: Daemon, **options: Any) -> argparse.Namespace:
    return argparse.Namespace(url=daemon.url, config=None, **options)


# --- silence add ------------------------------------------------------------------------------


def test_add_prints_the_id_of_the_silence_it_made(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = vcmon("silence", "add", "--url", daemon.url, "--district", "Cô Tô", "--kind", "~loss.*",
               "--label", "link=microwave", "--label", "room=a=b", "--duration", "1h30m",
               "--comment", "bảo trì [bold]viba[/] :fire:", "--author", "Lan")  # fmt: skip
    out = capsys.readouterr()
    assert (rc, out.err) == (0, "")
    (silence,) = daemon.silences()
    assert out.out == f"{silence.id}\n"
    labels = {"link": "microwave", "room": "a=b"}
    assert silence.matchers.model_dump(exclude_defaults=True) == {
        "district": "Cô Tô", "kind": "~loss.*", "labels": labels}  # fmt: skip
    assert (silence.starts_at, silence.ends_at) == (START, START + 5400)
    assert silence.comment == "bảo trì [bold]viba[/] :fire:"  # not read as markup
    assert silence.created_by == "Lan"


@pytest.mark.parametrize(("user", "author"), [("minh", "minh"), (None, "unknown")])
def test_the_author_defaults_to_the_user(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, user: str | None, author: str
) -> None:
    if user is None:
        monkeypatch.delenv("USER", raising=False)
    else:
        monkeypatch.setenv("USER", user)
    rc = vcmon("silence", "add", "--url", daemon.url, "--endpoint", "x", "--duration", "90s",
               "--comment", "thử")  # fmt: skip
    assert rc == 0
    assert [s.created_by for s in daemon.silences()] == [author]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--duration", "2h"], "a silence must match something: give --endpoint"),
        (["--district", "X", "--duration", "forever"], "--duration: expected e.g. 2h"),
        (["--district", "X", "--duration", "31d"], "--duration: expected more than 0 and at most"),
        (["--district", "X", "--duration", "2h", "--label", "link"], "--label link: expected"),
        (["--district", "X", "--duration", "2h", "--label", "=v"], "--label =v: expected"),
    ],
)
def test_add_refuses_bad_input_without_asking_the_daemon(
    capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # asking it would be exit 1, "cannot reach"
    assert vcmon("silence", "add", "--url", nobody, "--comment", "c", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vcmon: {error}")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--kind", "~(("], "vcmon: matchers: bad regular expression '(('"),
        (["--district", "X", "--comment", "  "], "vcmon: comment: required"),
    ],
)
def test_add_passes_on_what_the_daemon_refuses(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    rc = vcmon("silence", "add", "--url", daemon.url, "--duration", "2h", "--comment", "c", *argv)
    assert rc == 2
    assert capsys.readouterr().err.startswith(error)
    assert daemon.silences() == []


# --- silence list and expire --------------------------------------------------------------------


def test_list_and_expire(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    add(daemon, "--district", "Cô Tô", "--kind", "~loss.*", "--label", "link=microwave")
    (silence,) = daemon.silences()
    capsys.readouterr()

    assert vcmon("silence", "list", "--url", daemon.url) == 0
    table = capsys.readouterr().out
    assert "1 silence in force" in table
    row = next(line for line in table.splitlines() if silence.id in line)
    assert 'district="Cô Tô" kind=~loss.* link="microwave"' in row
    assert "Lan" in row
    assert "bảo trì viba" in row

    assert vcmon("silence", "list", "--url", daemon.url, "--json") == 0
    (doc,) = json.loads(capsys.readouterr().out)["silences"]
    assert (doc["id"], doc["active"], doc["comment"]) == (silence.id, True, "bảo trì viba")

    assert vcmon("silence", "expire", "--url", daemon.url, silence.id) == 0
    assert capsys.readouterr().out == f"silence {silence.id} expired\n"
    (ended,) = daemon.silences()
    assert ended.ends_at == START

    assert vcmon("silence", "list", "--url", daemon.url) == 0
    assert "no silences in force" in capsys.readouterr().out
    assert vcmon("silence", "list", "--url", daemon.url, "--expired", "--json") == 0
    (doc,) = json.loads(capsys.readouterr().out)["silences"]
    assert (doc["id"], doc["active"]) == (silence.id, False)

    assert vcmon("silence", "expire", "--url", daemon.url, silence.id) == 1
    assert capsys.readouterr().err == f"vcmon: no active silence {silence.id}\n"
    assert vcmon("silence", "expire", "--url", daemon.url, "no/such id") == 1
    assert capsys.readouterr().err == "vcmon: no active silence no/such id\n"


def test_the_list_as_a_table(daemon: Daemon) -> None:
    add(daemon, "--endpoint", "x")
    add(daemon, "--severity", "critical", comment="đêm")
    by_comment = {s.comment: s for s in daemon.silences()}  # made in the same instant
    first, second = by_comment["bảo trì viba"], by_comment["đêm"]
    daemon.do(lambda runtime: runtime.expire_silence(second.id))
    daemon.clock.advance(600)

    grid = silence_cli.silence_list(ns(daemon, expired=True, json=False), now=START + 600)
    assert isinstance(grid, silence_cli.Grid)
    assert grid.title == "2 silences (with those that ended)"
    assert grid.columns == ("id", "matchers", "ends in", "by", "comment")
    assert list(grid.rows) == [  # in force first
        (Cell(first.id), Cell('endpoint="x"'), Cell("1h 50m"), Cell("Lan"), Cell("bảo trì viba")),
        (Cell(second.id), Cell('severity="critical"'), Cell("ended 10m ago", "dim"), Cell("Lan"),
         Cell("đêm")),
    ]  # fmt: skip


# --- alerts list --------------------------------------------------------------------------------


def test_alerts_list(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.rounds(3, hub=True, c1=True, x=False)
    assert vcmon("alerts", "list", "--url", daemon.url) == 0
    table = capsys.readouterr().out
    assert "1 open alert" in table
    row = next(line for line in table.splitlines() if "endpoint_down" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[:4] == ["critical", "endpoint_down", "x", "Hạ Long"]
    assert cells[5:] == ["", ""]  # nothing affected, nothing holds it back

    assert vcmon("alerts", "list", "--url", daemon.url, "--json") == 0
    (alert,) = json.loads(capsys.readouterr().out)["alerts"]
    assert (alert["kind"], alert["endpoint"]["id"]) == ("endpoint_down", "x")


def test_the_alerts_as_a_table(daemon: Daemon) -> None:
    daemon.rounds(3, hub=False, c1=False, x=True)
    add(daemon, "--district", "Cô Tô")
    (silence,) = daemon.silences()
    started = START + 20  # down from the third round
    grid = silence_cli.alerts_list(ns(daemon, json=False, ended=False), now=started + 125)
    assert isinstance(grid, silence_cli.Grid)
    assert grid.columns == ("severity", "kind", "endpoint", "district", "since", "affected",
                            "held back by")  # fmt: skip
    assert [[c.text for c in row[:4]] for row in grid.rows] == [
        ["critical", "group_down", "hub", "Cô Tô"]
    ]
    ((severity, _, _, _, since, affected, held),) = grid.rows
    assert severity.style == "bold red"
    assert since.text.endswith(" (2m ago)")
    assert affected.text == "1"
    assert held.text == f"silence {silence.id}"


def test_what_ended_lately(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.rounds(3, hub=True, c1=True, x=False)  # x fails from START, fires at START + 20
    daemon.rounds(2, hub=True, c1=True, x=True)  # and is up again at START + 40
    grid = silence_cli.alerts_list(
        ns(daemon, json=False, ended=True, since="2h"), now=START + 40 + 300
    )
    assert isinstance(grid, silence_cli.Grid)
    assert grid.title == "1 alert ended in the last 2h"
    assert grid.columns == ("severity", "kind", "endpoint", "district", "started", "lasted",
                            "affected")  # fmt: skip
    ((severity, kind, endpoint, district, started, lasted, affected),) = grid.rows
    assert [c.text for c in (severity, kind, endpoint, district)] == [
        "critical", "endpoint_down", "x", "Hạ Long"
    ]  # fmt: skip
    assert started.text.endswith(f"({silence_cli.span(340)} ago)")
    assert lasted.text == "40s"
    assert affected.text == ""
    assert vcmon("alerts", "list", "--url", daemon.url, "--ended", "--since", "1d", "--json") == 0
    (alert,) = json.loads(capsys.readouterr().out)["alerts"]
    assert alert["status"] == "resolved"
    assert vcmon("alerts", "list", "--url", daemon.url, "--ended", "--since", "soon") == 2
    assert "since: expected e.g. 2h" in capsys.readouterr().err


# --- where the daemon is ------------------------------------------------------------------------


def test_the_config_gives_the_address(
    daemon: Daemon,
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert vcmon("silence", "list", "-c", str(config_path), "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"silences": []}
    # Without -c: config/vcmon.yaml of the working directory.
    (config_path.parent / "config").mkdir()
    (config_path.parent / "config" / "vcmon.yaml").write_text(config_path.read_text("utf-8"))
    monkeypatch.chdir(config_path.parent)
    assert vcmon("alerts", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"alerts": []}


def test_without_a_config_or_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert vcmon("silence", "list") == 2
    assert capsys.readouterr().err == (
        "vcmon: no config/vcmon.yaml here; give the daemon's config with -c or its address "
        "with --url\n"
    )
    (tmp_path / "bad.yaml").write_text("listen: [\n")
    assert vcmon("alerts", "list", "-c", "bad.yaml") == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert vcmon("alerts", "list", "--url", "127.0.0.1:9231") == 2
    assert "expected http://HOST:PORT" in capsys.readouterr().err


def test_config_and_url_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        vcmon("silence", "list", "-c", "a.yaml", "--url", "http://127.0.0.1:9231")
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["alerts", "list"],
        ["silence", "list"],
        ["silence", "expire", "abc"],
        ["silence", "add", "--district", "X", "--duration", "2h", "--comment", "c"],
    ],
)
def test_when_the_daemon_is_not_there(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert vcmon(*argv, "--url", url) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"vcmon: cannot reach vcmon at {url}: ")
    assert err.endswith("; is the daemon running?\n")
    assert err.count("\n") == 1


def test_a_daemon_without_its_alert_engine(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = Daemon(config_path, engine=False)
    try:
        assert vcmon("silence", "list", "--url", d.url) == 1
    finally:
        d.close()
    assert capsys.readouterr().err == "vcmon: alert engine not running\n"


def test_the_installed_command_prints_no_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    exe = Path(sys.executable).parent / "vcmon"
    done = subprocess.run(
        [str(exe), "silence", "list", "--url", url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"vcmon: cannot reach vcmon at {url}")


# --- a silence made on the command line mutes -------------------------------------------------


def test_a_silence_from_the_cli_mutes_until_expired(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    add(daemon, "--district", "Hạ Long")
    sid = capsys.readouterr().out.strip()
    daemon.rounds(4, x=False)
    assert daemon.events() == []
    assert vcmon("silence", "expire", "--url", daemon.url, sid) == 0
    assert daemon.events() == [("firing", "endpoint_down", "x")]


# --- shaping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matchers", "text"),
    [
        ({"district": "Cô Tô", "kind": "~loss.*"}, 'district="Cô Tô" kind=~loss.*'),
        ({"kind": "~loss.*", "district": "Cô Tô"}, 'district="Cô Tô" kind=~loss.*'),
        ({"labels": {"b": "2", "a": "~x|y"}, "endpoint": "e"}, 'endpoint="e" a=~x|y b="2"'),
        ({"comment": 'say "hi"'}, ""),
        ({"level": 'say "hi"'}, 'level="say \\"hi\\""'),
    ],
)
def test_matchers_text(matchers: dict[str, Any], text: str) -> None:
    assert silence_cli.matchers_text(matchers) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-5, "0s"), (45.4, "45s"), (60, "1m"), (119, "1m"), (3600, "1h"),
     (7140, "1h 59m"), (86400 + 3 * 3600 + 59, "1d 3h"), (2 * 86400 + 60, "2d")],
)  # fmt: skip
def test_span(seconds: float, text: str) -> None:
    assert silence_cli.span(seconds) == text
