"""The endpoint tree: duplicate ids, unknown or self parents, cycles."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from vcmon.config.problems import did_you_mean

# ---------------------------------------------------------------------------------------------
# The endpoint tree


@dataclass(frozen=True, slots=True)
class TreeIssue:
    """A problem in the parent tree: at node ``index``, its id or its ``parent_pos``-th parent.

    For a duplicate id, ``first`` is the node that used the id first.
    """

    index: int
    parent_pos: int | None
    message: str
    first: int | None = None


def tree_issues(ids: Sequence[str], parents: Sequence[Sequence[str]]) -> list[TreeIssue]:
    """Duplicate ids, unknown or self parents and cycles among nodes ``ids``."""
    issues: list[TreeIssue] = []
    first: dict[str, int] = {}
    for i, id_ in enumerate(ids):
        if id_ in first:
            issues.append(TreeIssue(i, None, f"duplicate id '{id_}'", first[id_]))
        else:
            first[id_] = i
    for i, id_ in enumerate(ids):
        for j, parent in enumerate(parents[i]):
            if parent == id_:
                issues.append(
                    TreeIssue(
                        i, j, f"'{parent}' is this endpoint itself; it cannot be its own parent"
                    )
                )
            elif parent not in first:
                hint = did_you_mean(parent, first)
                issues.append(TreeIssue(i, j, f"unknown endpoint id '{parent}'{hint}"))
    # Cycles, by depth-first search over the first endpoint of each id.
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in first:
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(parents[first[start]]))]
        state[start] = 1
        path.append(start)
        while stack:
            node, todo = stack[-1]
            nxt = next((p for p in todo if p in first and p != node), None)
            if nxt is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                i = first[cycle[0]]
                pos = list(parents[i]).index(cycle[1])
                issues.append(
                    TreeIssue(
                        i, pos, f"dependency cycle {' → '.join(cycle)} (parents must form a tree)"
                    )
                )
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(parents[first[nxt]])))
    return issues
