"""Number checks shared by every section's models (endpoints, alerts, sinks): numbers as YAML
gives them, with errors that say what was expected."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

N = TypeVar("N", int, float)


def not_bool(value: object) -> object:
    """Refuse a boolean where a number belongs (YAML reads yes/no/on/off as booleans, which
    pydantic would quietly take for 1 and 0)."""
    if isinstance(value, bool):
        # Its own error type, so the config's explainer can quote the word as written (yes).
        raise PydanticCustomError(
            "bool_not_number", "expected a number, got {value}", {"value": str(value).lower()}
        )
    return value


def _shown(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def positive(unit: str) -> Callable[[N], N]:
    """A check for a finite number of ``unit`` above 0."""

    def check(value: N) -> N:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"expected a number of {unit} greater than 0, got {value:g}")
        return value

    return check


def at_least_zero(unit: str | None = None) -> Callable[[N], N]:
    """A check for a finite number (of ``unit``) ≥ 0."""
    what = f"a number of {unit}" if unit else "a value"

    def check(value: N) -> N:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected {what} ≥ 0, got {value:g}")
        return value

    return check


def between(
    low: int, high: int, what: str, unit: str = "", above: bool = False
) -> Callable[[N], N]:
    """A check for ``low`` ≤ value ≤ ``high`` (``low`` < value when ``above``), worded as
    'expected {what} from {low} to {high}{unit}, got …'."""

    def check(value: N) -> N:
        inside = (low < value if above else low <= value) and value <= high
        if not inside:  # NaN is never inside
            start = f"above {low}" if above else str(low)
            raise ValueError(f"expected {what} from {start} to {high}{unit}, got {_shown(value)}")
        return value

    return check


PositiveSeconds = Annotated[float, BeforeValidator(not_bool), AfterValidator(positive("seconds"))]
NonNegative = Annotated[float, BeforeValidator(not_bool), AfterValidator(at_least_zero())]
NonNegativeSeconds = Annotated[
    float, BeforeValidator(not_bool), AfterValidator(at_least_zero("seconds"))
]
