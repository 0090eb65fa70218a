"""The lab ships apart from the runtime: its data is package data, a non-editable install finds
it from any directory, and without the lab the runtime and its CLI still work."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vcmon_lab
from vcmon import cli
from vcmon.cli import lab as lab_cli
from vcmon_lab.profiles import LAB_NET

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config"
SHIPPED_SCENARIOS = sorted(p.stem for p in vcmon_lab.data_file("scenarios").glob("*.yaml"))


@pytest.mark.parametrize(
    "name", ["province-231.yaml", "demo.yaml", *(f"scenarios/{s}.yaml" for s in SHIPPED_SCENARIOS)]
)
def test_the_repository_config_is_the_lab_data(name: str) -> None:
    # config/ holds links to the package data; should one become a copy, it must not drift.
    assert filecmp.cmp(CONFIG / name, vcmon_lab.data_file(name), shallow=False), name


def test_the_scenarios_are_shipped() -> None:
    assert {"demo", "co-to-uplink", "flap", "latency-ramp", "loss-burst"} <= set(SHIPPED_SCENARIOS)


def test_the_runtime_knows_the_lab_range() -> None:
    assert lab_cli.LAB_NET == LAB_NET


@pytest.mark.parametrize(
    ("given", "shipped"),
    [
        ("co-to-uplink", "co-to-uplink.yaml"),
        ("flap.yaml", "flap.yaml"),
        ("no-such-scenario", None),  # returned as given, so the error names it
        ("./co-to-uplink", None),  # a path, never looked up among the shipped ones
    ],
)
def test_scenario_file(given: str, shipped: str | None, tmp_path: Path) -> None:
    expected = vcmon_lab.data_file("scenarios", shipped) if shipped else Path(given)
    assert vcmon_lab.scenario_file(given) == expected


def test_a_scenario_file_by_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flap").write_text("name: mine\nsteps: []\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert vcmon_lab.scenario_file("flap") == Path("flap")


@pytest.mark.parametrize(
    "command",
    [["lab", "up"], ["lab", "status"], ["lab", "down"], ["lab", "scenario", "flap"], ["demo"]],
)
def test_without_the_lab_its_commands_say_how_to_get_it(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "vcmon_lab", None)  # import vcmon_lab now fails
    assert cli.main(command) == 1
    said = capsys.readouterr().err
    assert "not installed" in said
    assert "pip install 'vcmon[lab]'" in said


def test_without_the_lab_run_netns_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "vcmon_lab", None)
    assert cli.main(["run", "-c", str(CONFIG / "demo.yaml"), "--netns", "vcmon-mon"]) == 1
    assert "pip install 'vcmon[lab]'" in capsys.readouterr().err


def test_the_runtime_imports_without_the_lab() -> None:
    # Every vcmon module, with vcmon_lab made unimportable: only lazy imports may name it.
    script = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['vcmon_lab'] = None\n"
        "import vcmon\n"
        "for m in pkgutil.walk_packages(vcmon.__path__, 'vcmon.'):\n"
        "    if m.name != 'vcmon.__main__':\n"
        "        importlib.import_module(m.name)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


# What a non-editable install of the wheel finds, run from a directory with no config/ in it.
PROBE = """
import json, vcmon, vcmon_lab
from vcmon.config import load_config
from vcmon_lab.control import DEFAULT_INVENTORY
from vcmon_lab.demo import DEFAULT_SCENARIO, prepare_loopback
from vcmon_lab.scenario import bind, load_scenario

inventory = load_config(DEFAULT_INVENTORY)
parents = {ep.id: ep.parent for ep in inventory.endpoints}
names = sorted(p.stem for p in vcmon_lab.data_file("scenarios").glob("*.yaml"))
for name in names:
    bind(load_scenario(vcmon_lab.scenario_file(name)), parents)
print(json.dumps({
    "vcmon": vcmon.__file__,
    "vcmon_lab": vcmon_lab.__file__,
    "inventory": str(DEFAULT_INVENTORY),
    "endpoints": len(inventory.endpoints),
    "scenarios": names,
    "demo_scenario": str(DEFAULT_SCENARIO),
    "loopback_endpoints": len(prepare_loopback().config.endpoints),
}))
"""


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_finds_the_lab_data(tmp_path: Path) -> None:
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(REPO), "--no-deps", "-w", str(wheels)], check=True,
                   cwd=tmp_path, timeout=120)  # fmt: skip
    (wheel,) = wheels.glob("vcmon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "vcmon_lab/data/province-231.yaml" in names
    assert "vcmon_lab/data/scenarios/co-to-uplink.yaml" in names
    assert not any(n.startswith(("config/", "tests/", "bench/")) for n in names)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=60)  # fmt: skip
    # The target comes first on the path, ahead of this checkout's editable install.
    found = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=elsewhere, env={"PYTHONPATH": str(target)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    got = json.loads(found.stdout)
    for key in ("vcmon", "vcmon_lab", "inventory", "demo_scenario"):
        assert Path(got[key]).is_relative_to(target), (key, got[key])
    assert got["endpoints"] == 231
    assert got["loopback_endpoints"] == 231
    assert got["scenarios"] == SHIPPED_SCENARIOS
