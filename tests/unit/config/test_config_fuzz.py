"""Fuzzing the config loader (hypothesis): whatever the text, it loads or raises ConfigError,
never any other exception (issue 11, part 9)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcmon.config import ConfigError, load_config

CONFIG = Path(__file__).parents[3] / "config"
SHIPPED = {
    name: (CONFIG / name).read_text(encoding="utf-8") for name in ("vcmon.yaml", "demo.yaml")
}
# Pieces of YAML that reach the loader's corners: anchors, merges, tags, flow, env, numbers.
TOKENS = [
    "&a ", "*a", "<<: *a", "!!int ", "!!str ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ",
    "!custom ", "? ", ": ", "- ", "[", "]", "{", "}", ", ", "'", '"', "|", ">", "#", "\t", "\n",
    "  ", "---\n", "...\n", "${X}", "${X:-d}", "$${", "${", "~", "null", "yes", "1e999", ".nan",
    "0x1F", "2023-02-30", "9" * 5000, "\ud800", "\x00", "\ufeff", "endpoints:", "inventory:",
    "address: ", "224.0.0.1", "::", "{place:>99999}", "127.0.0.1", "id: a", "level: commune",
]  # fmt: skip
yaml_ish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), max_size=40).map(
    "".join
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    """A shipped config with a few random cuts, insertions and repeated lines."""
    name = draw(st.sampled_from(sorted(SHIPPED)))
    text = SHIPPED[name]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["cut", "insert", "repeat"]))
        if op == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 200)) :]
        elif op == "insert":
            text = text[:at] + draw(yaml_ish) + text[at:]
        else:
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            line = text[start : end if end >= 0 else len(text)]
            text = text[:start] + (line + "\n") * draw(st.integers(2, 50)) + text[start:]
    return name, text


def _load(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path, env={"X": "x"})
    except ConfigError as exc:
        said = str(exc)
    else:
        said = "loaded"
    assert said  # an error always says something


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # demo.yaml includes province-231.yaml, which must sit next to it.
    directory = tmp_path_factory.mktemp("fuzz")
    shutil.copy(CONFIG / "province-231.yaml", directory)
    return directory


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=yaml_ish)
def test_random_yaml_loads_or_is_a_config_error(workdir: Path, text: str) -> None:
    _load(workdir, "random.yaml", text)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=mutated())
def test_mutated_shipped_configs_load_or_are_a_config_error(
    workdir: Path, case: tuple[str, str]
) -> None:
    name, text = case
    _load(workdir, name, text)
