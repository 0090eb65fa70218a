"""One place for units: seconds inside, ms (3 decimals) where a document shows them."""

from __future__ import annotations

import pytest

from vcmon.units import MS, ms


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, None),
        (0.0, 0.0),
        (0.0315, 31.5),
        (0.0123456, 12.346),  # rounded to the µs
        (1.5, 1500.0),
    ],
)
def test_ms(seconds: float | None, expected: float | None) -> None:
    assert ms(seconds) == expected


def test_ms_matches_the_arithmetic_factor() -> None:
    assert ms(0.25) == 0.25 * MS
