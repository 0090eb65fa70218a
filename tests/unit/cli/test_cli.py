"""The vcmon command as an admin uses it: exit codes, messages on stderr, tables on stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def vcmon(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vcmon", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_check_summarises_the_demo() -> None:
    r = vcmon("check", "-c", "config/demo.yaml")
    assert r.returncode == 0, r.stderr
    assert "231 endpoints" in r.stdout
    assert "Cô Tô" in r.stdout
    assert "echoes per second: 115.5" in r.stdout
    assert "ICMP socket:" in r.stdout
    assert "config OK" in r.stdout


@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_config_exits_2_with_one_clear_message(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "endpoints:\n"
        "  - {id: a, name: A, address: 127.0.0.1, district: X, level: commune}\n"
        "  - {id: b, name: B, address: 'not an ip', district: X, level: commune}\n",
        encoding="utf-8",
    )
    r = vcmon(command, "-c", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"{bad}:3:31: endpoints[1].address: 'not an ip' is not an IPv4/IPv6 address or "
        "hostname (expected e.g. 127.0.0.1, ::1 or host.example)"
    )


def test_missing_config_exits_2(tmp_path: Path) -> None:
    r = vcmon("check", "-c", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2
    assert "nope.yaml" in r.stderr
    assert "Traceback" not in r.stderr


def test_probe_prints_fping_style_table(require_root: None) -> None:
    r = vcmon("probe", "127.0.0.1", "::1", "-n", "3", "-i", "0.05")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "address",
        "sent/recv/loss",
        "min/avg/med/max",
        "ms",
        "jitter",
        "ms",
        "MOS",
    ]
    assert lines[1].split()[:2] == ["127.0.0.1", "3/3/0%"]
    assert lines[2].split()[:2] == ["::1", "3/3/0%"]
    per_echo = [line for line in lines if line.startswith("127.0.0.1 ")][-1]
    rtts = per_echo.split(":", 1)[1].split()
    assert len(rtts) == 3
    assert all(float(v) > 0 for v in rtts)


def test_inventory_import_writes_yaml_that_loads(tmp_path: Path) -> None:
    out = tmp_path / "rooms.yaml"
    r = vcmon("inventory", "import", "config/rooms-example.csv", "-o", str(out))
    assert r.returncode == 0, r.stderr
    main = tmp_path / "main.yaml"
    main.write_text(f"inventory: {out}\n", encoding="utf-8")
    assert vcmon("check", "-c", str(main)).returncode == 0


def test_inventory_import_reports_bad_rows_by_line(tmp_path: Path) -> None:
    csv = tmp_path / "rooms.csv"
    csv.write_text(
        "id,name,address,district,level,parent\n"
        "tinh,UBND tỉnh,127.0.0.1,Tỉnh,province,\n"
        "x,Xã X,127.0.0.2,Tỉnh,village,tinh\n",
        encoding="utf-8",
    )
    r = vcmon("inventory", "import", str(csv))
    assert r.returncode == 2
    assert f"{csv}:3:" in r.stderr
    assert "village" in r.stderr
    assert r.stdout == ""
