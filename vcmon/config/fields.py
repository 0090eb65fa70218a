"""Checks shared by the config models of the daemon's parts (alerts, sinks): numbers as YAML
gives them, with errors that say what was expected."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator


def not_bool(value: object) -> object:
    """Refuse a boolean where a number belongs (YAML reads yes/no/on/off as booleans, which
    pydantic would quietly take for 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


def positive_seconds(value: float) -> float:
    """A finite number of seconds above 0."""
    if not value > 0 or math.isinf(value):
        raise ValueError(f"expected a number of seconds > 0, got {value:g}")
    return value


def non_negative(value: float) -> float:
    """A finite number ≥ 0."""
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"expected a value ≥ 0, got {value:g}")
    return value


def non_negative_seconds(value: float) -> float:
    """A finite number of seconds ≥ 0."""
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"expected a number of seconds ≥ 0, got {value:g}")
    return value


PositiveSeconds = Annotated[float, BeforeValidator(not_bool), AfterValidator(positive_seconds)]
NonNegative = Annotated[float, BeforeValidator(not_bool), AfterValidator(non_negative)]
NonNegativeSeconds = Annotated[
    float, BeforeValidator(not_bool), AfterValidator(non_negative_seconds)
]
