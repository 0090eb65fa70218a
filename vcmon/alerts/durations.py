"""Durations people type (silences, acks, `since`): parsed with bounds, refused with the field.

Shared by the HTTP API, the MQTT ack path and the CLI, so one duration means the same
everywhere and the alert runtime does not reach up into the HTTP layer for it.
"""

from __future__ import annotations

import math
import re
from typing import Final

MAX_SILENCE: Final = 30 * 86400.0  # s; longer than a month is forgetting, not silencing
MAX_DURATION_TEXT: Final = 32  # characters of a duration such as 1d2h3m4s
_DURATION: Final = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)


class BadInput(ValueError):
    """A request the API refuses; the message says which field and what was expected."""


def parse_duration(value: object) -> float:
    """'90s', '15m', '2h', '1d', '1h30m' or a number of seconds → seconds (> 0, ≤ 30 days)."""
    if isinstance(value, bool) or value is None:
        raise BadInput("duration: required, expected e.g. 2h, 30m, 1h30m or seconds")
    written = shown(value)
    if isinstance(value, int | float):
        # Compared before any conversion: a 400-digit integer has no float.
        if (isinstance(value, float) and not math.isfinite(value)) or not 0 < value <= MAX_SILENCE:
            raise BadInput(f"duration: expected more than 0 and at most 30 days, got {written}")
        return float(value)
    if not isinstance(value, str):
        raise BadInput(f"duration: expected e.g. 2h, 30m, 1h30m or seconds, got {written}")
    text = value.strip()
    if len(text) > MAX_DURATION_TEXT:
        raise BadInput(f"duration: expected e.g. 2h, 30m, 1h30m or seconds, got {written}")
    if text.isascii() and text.isdigit():
        total = int(text)
    else:
        m = _DURATION.fullmatch(text)
        if not m or not any(m.groups()):
            raise BadInput(f"duration: expected e.g. 2h, 30m, 1h30m or seconds, got {written}")
        d, h, mi, se = (int(g or 0) for g in m.groups())
        total = ((d * 24 + h) * 60 + mi) * 60 + se
    if not 0 < total <= MAX_SILENCE:
        raise BadInput(f"duration: expected more than 0 and at most 30 days, got {written}")
    return float(total)


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"a number of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
