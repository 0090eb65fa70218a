"""Matcher regular expressions on RE2, a linear-time engine.

Anyone who may add a silence or edit a maintenance window writes a pattern that runs on the
event loop for every alert and endpoint. Python's backtracking ``re`` takes exponential time
on patterns such as ``(.*.*.*)*Z``: one of them froze the loop for 15 s. RE2 matches in time
linear in the input whatever the pattern, and refuses the few constructs that need
backtracking (backreferences, lookaround) at compile time, where they get a clear error.
"""

from __future__ import annotations

import functools
from typing import Final, Protocol, cast

import re2

MAX_PATTERN: Final = 256  # characters; a matcher names districts or ids, not a grammar
MAX_MEMORY: Final = 1 << 20  # bytes RE2 may use for one compiled pattern


class _Compiled(Protocol):
    def fullmatch(self, text: str) -> object | None: ...


class PatternError(ValueError):
    """A pattern vcmon refuses to run; the message says why."""


def _options() -> object:
    options = re2.Options()
    options.max_mem = MAX_MEMORY
    options.log_errors = False  # the refusal is reported once, by the caller, not on stderr
    return options


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> _Compiled:
    """Compile ``pattern`` (without its ``~``) for full matches; PatternError if refused."""
    if len(pattern) > MAX_PATTERN:
        raise PatternError(
            f"regular expression too long ({len(pattern)} characters, at most {MAX_PATTERN})"
        )
    try:
        return cast(_Compiled, re2.compile(pattern, _options()))
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b"invalid"
        reason = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        raise PatternError(
            f"bad regular expression {pattern!r}: {reason} (RE2 syntax: no backreferences "
            "or lookaround)"
        ) from None


def full_match(pattern: str, value: str) -> bool:
    """True when ``pattern`` (already checked at load) matches the whole of ``value``."""
    return compile_pattern(pattern).fullmatch(value) is not None
