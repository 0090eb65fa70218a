"""Config files that once crashed or hung the loader: `vcmon check` on each (exit status, CPU
seconds and peak RSS from the child's own rusage), then SIGHUP of a running daemon with each.

Addresses no endpoint can have (multicast, unspecified, broadcast) appear only in files given
to `vcmon check`, which refuses them; no daemon is ever started or reloaded with them."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.attacks.common import (
    FAST,
    Row,
    rss_mb,
    run_vcmon,
    running,
    short,
    wait_until,
)

ROOM = "{id: tinh, name: Trung tâm tỉnh, address: 127.0.0.1, district: Tỉnh, level: province}"
GOOD = FAST + f"endpoints:\n  - {ROOM}\n"
EXTRA = (
    "  - {id: cam-pha, name: UBND TP Cẩm Phả, address: 127.0.0.3, district: Cẩm Phả,"
    " level: district, parent: tinh}\n"
)

Make = Callable[[Path], None]


def _alias_bomb() -> str:
    """A billion laughs: ten levels, each naming the one before ten times (10^10 leaves)."""
    lines = ["x-lol0: &lol0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"x-lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n" + GOOD


def _text(text: str) -> Make:
    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")

    return write


def _cases(tmp: Path) -> list[tuple[str, Make, str]]:
    """The attack files (name, how to make it at a path, what its error says); helper files
    made in ``tmp``."""
    fifo = tmp / "rooms.fifo"
    os.mkfifo(fifo)
    (tmp / "loop-a.yaml").symlink_to(tmp / "loop-b.yaml")
    (tmp / "loop-b.yaml").symlink_to(tmp / "loop-a.yaml")

    def fifo_main(path: Path) -> None:
        os.mkfifo(path)

    def loop_main(path: Path) -> None:
        path.symlink_to(tmp / "loop-a.yaml")

    width = (
        GOOD + "alerts:\n  templates:\n    en:\n"
        '      endpoint_down: {summary: "{place:>1500000000} down"}\n'
    )
    deep = "x-deep: " + "[" * 20_000 + "]" * 20_000 + "\nendpoints:\n"
    return [
        ("billion-laughs alias bomb", _text(_alias_bomb()), "aliases expand"),
        ("20,000-deep nesting", _text(GOOD.replace("endpoints:\n", deep)), "nested more than"),
        ("template {place:>1500000000}", _text(width), "width 1500000000 is too large"),
        ("include of /dev/zero", _text(GOOD + "inventory: /dev/zero\n"), "a character device"),
        ("include of a FIFO", _text(GOOD + f"inventory: {fifo.name}\n"), "is a FIFO"),
        ("include of a symlink loop", _text(GOOD + "inventory: loop-a.yaml\n"), "link loop"),
        ("the config is a FIFO", fifo_main, "is a FIFO"),
        ("the config is a symlink loop", loop_main, "link loop"),
    ]


ADDRESSES = [
    ("multicast", "ff01::1", "is a multicast address"),
    ("unspecified", "0.0.0.0", "is the unspecified address"),
    ("broadcast", "255.255.255.255", "is the broadcast address"),
]


def _replace(path: Path, make: Make) -> None:
    """Put what ``make`` creates at ``path`` in one step, whatever was there."""
    new = path.with_name(path.name + ".new")
    if new.is_symlink() or new.exists():
        new.unlink()
    make(new)
    os.replace(new, path)


def _check_row(name: str, path: Path, phrase: str) -> Row:
    """Held: exit 2 with one line saying ``phrase``, no traceback, < 3 s CPU, < 200 MB."""
    c = run_vcmon("check", "-c", str(path), within=30)
    one_line = len(c.err.strip().splitlines()) == 1
    held = c.code == 2 and one_line and phrase in c.err and "Traceback" not in c.err
    held = held and c.cpu_s < 3 and c.peak_mb < 200
    said = c.first_error[c.first_error.find(phrase) :] if phrase in c.first_error else c.err
    return (
        f"config: {name} → vcmon check",
        held,
        f"exit {c.code}, {c.cpu_s:.2f} s CPU, {c.peak_mb:.0f} MB peak: {short(said, 56)!r}",
    )


def attacks(tmp: Path, duration: float, notes: dict[str, Any]) -> list[Row]:
    """`vcmon check` on every attack file, then SIGHUP of a running daemon with each."""
    cases = _cases(tmp)
    rows: list[Row] = []
    for i, (name, make, phrase) in enumerate(cases):
        path = tmp / f"case-{i}.yaml"
        make(path)
        rows.append(_check_row(name, path, phrase))
    for name, address, phrase in ADDRESSES:
        path = tmp / f"address-{name}.yaml"
        path.write_text(GOOD.replace("address: 127.0.0.1", f"address: '{address}'"), "utf-8")
        rows.append(_check_row(f"endpoint address {address} ({name})", path, phrase))
    rows.append(_sighup(tmp, cases, notes))
    return rows


def _sighup(tmp: Path, cases: list[tuple[str, Make, str]], notes: dict[str, Any]) -> Row:
    """Each bad file in turn as the running daemon's config, SIGHUP, then a good one."""
    failed: list[str] = []
    with running(tmp, GOOD, name="reload") as d:
        listen = d.config.read_text().split("\n", 1)[0] + "\n"

        def failures() -> int:
            return d.log_count("event=config_reload_failed")

        rss0 = rss_mb(d.proc.pid)
        for name, make, phrase in cases:
            before = failures()
            _replace(d.config, make)
            d.proc.send_signal(signal.SIGHUP)
            try:
                wait_until(lambda: failures() > before, 15, f"the reload of {name} refused")  # noqa: B023
            except TimeoutError:
                failed.append(f"{name}: not refused")
            if phrase not in d.log_text().rsplit("event=config_reload_failed", 1)[-1]:
                failed.append(f"{name}: refused without saying {phrase!r}")
            if not d.running() or d.metric("vcmon_config_last_reload_successful") != 0:
                failed.append(f"{name}: daemon down or metric not 0")
                break
        rss1 = rss_mb(d.proc.pid)
        _replace(d.config, _text(listen + GOOD + EXTRA))
        d.proc.send_signal(signal.SIGHUP)
        try:
            wait_until(
                lambda: d.metric("vcmon_config_last_reload_successful") == 1,
                15,
                "the good file reloaded",
            )
            up = wait_until(lambda: d.metric("vcmon_up", endpoint="cam-pha") == 1, 15, "cam-pha")
        except TimeoutError as exc:
            failed.append(str(exc))
            up = False
        traceback = "Traceback" in d.log_text()
    notes["sighup"] = {"failed": failed, "rss_mb": [round(rss0, 1), round(rss1, 1)]}
    return (
        f"config: SIGHUP with each of the {len(cases)} files",
        not failed and not traceback,
        f"{len(cases) - len(failed)}/{len(cases)} refused, daemon serving on, "
        f"last_reload_successful 0; a good file then reloads: {bool(up)}; RSS "
        f"{rss0:.0f} → {rss1:.0f} MB" + (f"; {failed}" if failed else ""),
    )
