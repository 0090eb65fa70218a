"""Matcher patterns run on RE2: the classic catastrophic ones cannot stall the event loop."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from vcmon.alerts.model import Target, matches
from vcmon.config.alerts import Matchers
from vcmon.config.patterns import MAX_PATTERN, PatternError, compile_pattern, full_match

# Each takes Python's backtracking engine seconds to years on the inputs below.
CATASTROPHIC = [
    "(.*.*.*.*.*.*)*Z",
    "(a+)+$",
    "(a|aa)+b",
    "(a|a?)+b",
    "(x+x+)+y",
    "(.*a){20}",
    "^(([a-z])+.)+[A-Z]([a-z])+$",
    "(\\w+\\s?)+$",
]

EVIL_INPUTS = ["a" * 64 + "!", "x" * 64, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" * 4]


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("Cô Tô|Vân Đồn", "Cô Tô", True),
        ("Cô Tô|Vân Đồn", "Cô Tô 2", False),  # a full match, not a search
        ("qn-.*", "qn-tienyen-01", True),
        ("[0-9]+", "12a", False),
        ("(?i)hạ long", "HẠ LONG", True),
    ],
)
def test_full_match(pattern: str, value: str, expected: bool) -> None:
    assert full_match(pattern, value) is expected


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(a)\\1", "invalid escape sequence"),  # a backreference needs backtracking
        ("(?=a)a", "invalid perl operator"),  # lookahead, likewise
        ("(?<!a)b", "invalid perl operator"),
        ("[", "missing ]"),
        ("a" * (MAX_PATTERN + 1), "too long"),
    ],
)
def test_refused_patterns_say_why(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError, match=reason):
        compile_pattern(pattern)


def test_matchers_refuse_a_pattern_re2_cannot_run_at_validation() -> None:
    with pytest.raises(ValidationError, match="no backreferences or lookaround"):
        Matchers.model_validate({"labels": {"site": "~(a)\\1"}})


async def test_catastrophic_patterns_never_block_the_loop() -> None:
    """Every catastrophic pattern against 231 rooms' worth of hostile values, on the loop,
    while a heartbeat measures the longest the loop was held."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    targets = [
        Target(f"ep{i}", value, "127.0.0.1", value, "commune", {"site": value})
        for i in range(231)
        for value in EVIL_INPUTS[i % len(EVIL_INPUTS) : i % len(EVIL_INPUTS) + 1]
    ]
    for pattern in CATASTROPHIC:
        m = Matchers.model_validate({"district": f"~{pattern}", "labels": {"site": f"~{pattern}"}})
        for target in targets:
            matches(m, target)  # the answer is irrelevant, the time is not
        await asyncio.sleep(0)
    done.set()
    await beat
    assert gaps, "the heartbeat never ran"
    assert max(gaps) < 0.050, f"the loop was held {max(gaps) * 1000:.1f} ms"
