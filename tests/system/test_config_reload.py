"""SIGHUP with any bad file keeps the running config and never stops the daemon (issue 11):
one real `vcmon run` on loopback is sent every file that once crashed or hung the loader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import free_port, wait_for

BAD = Path(__file__).parents[1] / "unit" / "config" / "bad_configs"
ROOM = "{id: tinh, name: Trung tâm tỉnh, address: 127.0.0.1, district: Tỉnh, level: province}"
EXTRA = (
    "  - {id: cam-pha, name: UBND TP Cẩm Phả, address: 127.0.0.3, district: Cẩm Phả,"
    " level: district, parent: tinh}\n"
)

UNSPECIFIED = "  - {id: z, name: Z, address: '::', district: D, level: commune, parent: tinh}\n"


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, path: Path, log: Path) -> None:
        self.proc, self.port, self.path, self.log = proc, port, path, log

    def head(self, port: int | None = None) -> str:
        return (
            f"listen: 127.0.0.1:{port or self.port}\n"
            "defaults: {interval: 1.0, count: 2, spacing: 0.05, timeout: 0.5}\n"
        )

    def good(self, extra: str = "") -> str:
        return f"{self.head()}endpoints:\n  - {ROOM}\n{extra}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def metric(self, name: str, **labels: str) -> list[float]:
        return [
            s.value
            for fam in text_string_to_metric_families(self.get("/metrics").text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def failures(self) -> list[str]:
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [line for line in lines if "event=config_reload_failed" in line]


@pytest.fixture
def daemon(tmp_path: Path, require_root: None) -> Iterator[Daemon]:
    port = free_port()
    path = tmp_path / "vcmon.yaml"
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vcmon", "run", "-c", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    d = Daemon(proc, port, path, log)
    path.write_text(d.good(), encoding="utf-8")
    try:
        wait_for(lambda: d.get("/-/ready").status_code == 200, 15, "daemon ready")
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    """Put what ``make`` creates at ``path`` in one step, whatever was there (a FIFO, a link)."""
    new = path.with_name(path.name + ".new")
    if new.is_symlink() or new.exists():
        new.unlink()
    make(new)
    os.replace(new, path)


def _text(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")

    return write


def test_every_bad_file_is_refused_on_sighup_and_the_daemon_serves_on(
    daemon: Daemon, tmp_path: Path
) -> None:
    d = daemon
    fifo = tmp_path / "rooms.fifo"
    os.mkfifo(fifo)
    (tmp_path / "loop-a.yaml").symlink_to(tmp_path / "loop-b.yaml")
    (tmp_path / "loop-b.yaml").symlink_to(tmp_path / "loop-a.yaml")

    def fifo_main(p: Path) -> None:
        os.mkfifo(p)

    def loop_main(p: Path) -> None:
        p.symlink_to(tmp_path / "loop-a.yaml")

    def with_body(name: str) -> Callable[[Path], None]:
        body = (BAD / name).read_text(encoding="utf-8")
        return _text(d.head() + body.replace("endpoints: []\n", f"endpoints: [{ROOM}]\n"))

    cases: list[tuple[str, Callable[[Path], None], str]] = [
        ("alias bomb", with_body("alias-bomb.yaml"), "is it an alias bomb?"),
        ("merge bomb", with_body("merge-bomb.yaml"), "is it an alias bomb?"),
        ("20,000-deep nesting", with_body("deep-nesting.yaml"), "nested more than 64 levels"),
        ("huge template width", with_body("template-width.yaml"), "width 1500000000 is too"),
        ("include of /dev/zero", _text(d.good() + "inventory: /dev/zero\n"), "character device"),
        ("include of a FIFO", _text(d.good() + f"inventory: {fifo}\n"), "is a FIFO"),
        ("include of a symlink loop", _text(d.good() + "inventory: loop-a.yaml\n"), "link loop"),
        ("config is a FIFO", fifo_main, "is a FIFO"),
        ("config is a symlink loop", loop_main, "symbolic link loop"),
        # ff01::1 is interface-local: had it been taken, no echo would leave this host.
        (
            "multicast address",
            _text(d.good().replace("address: 127.0.0.1", "address: 'ff01::1'")),
            "multicast",
        ),
        ("unspecified address", _text(d.good(UNSPECIFIED)), "the unspecified address"),
    ]
    for what, make, expected in cases:
        before = len(d.failures())
        _replace(d.path, make)
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(d.failures()) > before, 10, f"reload of {what} to fail")  # noqa: B023
        line = d.failures()[-1]
        assert expected in line, (what, line)
        assert d.proc.poll() is None, what
        assert d.get("/-/healthy").status_code == 200, what
        assert d.metric("vcmon_config_last_reload_successful") == [0.0], what
        assert d.metric("vcmon_up", endpoint="tinh") == [1.0], what  # the old config runs on

    # A good file after all that is taken.
    _replace(d.path, _text(d.good(EXTRA)))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.metric("vcmon_config_last_reload_successful") == [1.0], 10, "reload")
    wait_for(lambda: d.metric("vcmon_up", endpoint="cam-pha") == [1.0], 10, "new endpoint up")
    log = d.log.read_text(encoding="utf-8")
    assert "Traceback" not in log
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
