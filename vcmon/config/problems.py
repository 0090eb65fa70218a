"""Problems: one thing wrong with a config, located, and the error that lists them."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

Loc: TypeAlias = tuple[str | int, ...]

MAX_PROBLEMS: Final = 20

# ---------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config, located as precisely as the source allows."""

    file: str  # as the user would write it, e.g. config/province-231.yaml
    path: str  # field path such as endpoints[17].address; "" for the file as a whole
    message: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used; ``str(err)`` is the complete message, one problem a line."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        self.problems: tuple[Problem, ...] = () if isinstance(problems, str) else tuple(problems)
        if isinstance(problems, str):
            text = problems
        else:
            lines = [str(p) for p in self.problems[:MAX_PROBLEMS]]
            if len(self.problems) > MAX_PROBLEMS:
                lines.append(f"... and {len(self.problems) - MAX_PROBLEMS} more problems")
            text = "\n".join(lines)
        super().__init__(text)


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """' (did you mean 'x'?)' when a choice is close to ``word``, else ''."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_path(loc: Loc) -> str:
    """('endpoints', 17, 'address') → 'endpoints[17].address'."""
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", seg):
            out += f".{seg}" if out else seg
        else:
            out += f'["{seg}"]'
    return out
