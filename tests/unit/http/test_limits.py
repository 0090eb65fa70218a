"""raise_fd_limit in a child process, so the test run's own limits stay as they are."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import logging, resource, sys
from vcmon.http.limits import raise_fd_limit
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def _run(soft: int, hard: int) -> str:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run(
        [sys.executable, "-c", CHILD], preexec_fn=limit, capture_output=True, text=True, check=True
    )
    return out.stdout


@pytest.mark.parametrize(("soft", "hard"), [(1024, 4096), (4096, 4096), (256, 1024)])
def test_the_soft_limit_is_raised_to_the_hard_one(soft: int, hard: int) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip(f"this process's hard limit is below {hard}")
    lines = _run(soft, hard).splitlines()
    assert lines[-1] == f"{hard} {hard}"
    assert lines.count("fd_limit") == 1  # logged once


def test_the_systemd_unit_sets_a_descriptor_limit() -> None:
    # Its sandbox (SystemCallFilter=~@resources) forbids setrlimit: the unit must set it.
    unit = (Path(__file__).parents[3] / "deploy" / "systemd" / "vcmon.service").read_text()
    assert "LimitNOFILE=65536" in unit.splitlines()
