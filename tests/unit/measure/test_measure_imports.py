"""Measurement sits below the alerts and the HTTP side: none of its modules imports them
(the shared state vocabulary is vcmon.states, the scheduler's metrics a protocol)."""

from __future__ import annotations

import ast
from pathlib import Path

import vcmon.measure

ABOVE = ("vcmon.alerts", "vcmon.http", "vcmon.delivery", "vcmon.cli", "vcmon.daemon")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_measure_imports_only_point_down() -> None:
    root = Path(vcmon.measure.__file__).parent
    upward = {
        f"{path.relative_to(root)}: {name}"
        for path in sorted(root.rglob("*.py"))
        for name in _imports(path)
        if name.startswith(ABOVE)
    }
    assert not upward
