"""One place for units: seconds inside vcmon, milliseconds only where a figure is shown.

Documents (the API, event measurements, MQTT status, webhook bodies) carry ms rounded to
3 decimals with ``ms``; thresholds and the E-model compute in ms with ``MS``.
"""

from __future__ import annotations

from typing import Final

MS: Final = 1000.0  # ms per second


def ms(seconds: float | None) -> float | None:
    """``seconds`` in ms, rounded to 3 decimals (µs), as documents carry it; None stays None."""
    return None if seconds is None else round(seconds * MS, 3)
