"""The ``alerts:`` config section: thresholds, hysteresis, flapping, group rules, windows.

Every default is chosen for interactive video conferencing; the reason for each number is
in config/vcmon.yaml beside it. Levels and endpoints override any part of ``health`` and
``quality``: only the keys they write replace the inherited ones.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from vcmon.config.fields import NonNegative, NonNegativeSeconds, between, not_bool
from vcmon.config.patterns import compile_pattern

_M = TypeVar("_M", bound=BaseModel)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


_rounds = between(1, 1000, "a number of rounds")
_percent = between(0, 100, "a percentage")


Rounds = Annotated[int, BeforeValidator(not_bool), AfterValidator(_rounds)]
Percent = Annotated[float, BeforeValidator(not_bool), AfterValidator(_percent)]


class FlapPolicy(_Frozen):
    """Nagios-style flap detection over the last ``window`` round results."""

    enabled: bool = True
    window: Annotated[int, BeforeValidator(not_bool), AfterValidator(_rounds)] = 21
    start_pct: Percent = 30.0
    stop_pct: Percent = 20.0

    @model_validator(mode="after")
    def _stop_below_start(self) -> FlapPolicy:
        if self.window < 3:
            raise ValueError(f"window: expected at least 3 results, got {self.window}")
        if self.stop_pct > self.start_pct:
            raise ValueError(
                f"stop_pct ({self.stop_pct:g}) must not be above start_pct ({self.start_pct:g}), "
                "or flapping would stop before it starts"
            )
        return self


class HealthPolicy(_Frozen):
    """Reachability hysteresis: rounds in a row that change the confirmed state."""

    down_after: Rounds = 3
    up_after: Rounds = 2
    flapping: FlapPolicy = FlapPolicy()


class Level(_Frozen):
    """One severity's pair of values: ``raise`` starts it, ``clear`` ends it."""

    raise_: Annotated[NonNegative, Field(alias="raise")]
    clear: NonNegative | None = None  # None: the same as raise, no hysteresis

    @property
    def clear_at(self) -> float:
        """The value at which this severity ends."""
        return self.raise_ if self.clear is None else self.clear


class Metric(enum.StrEnum):
    """The quality figures alerts are raised on, with their alert kinds."""

    LOSS = "loss_pct"
    RTT = "rtt_ms"
    JITTER = "jitter_ms"
    MOS = "mos"

    @property
    def kind(self) -> str:
        return _KINDS[self]

    @property
    def higher_is_worse(self) -> bool:
        return self is not Metric.MOS


_KINDS: Final = {
    Metric.LOSS: "loss_high",
    Metric.RTT: "latency_high",
    Metric.JITTER: "jitter_high",
    Metric.MOS: "mos_low",
}


class QualityRule(_Frozen):
    """Warning and critical levels of one figure, and the rounds in a row each change needs."""

    enabled: bool = True
    warning: Level | None = None  # None: this figure has no such severity
    critical: Level | None = None
    rounds: Rounds = 3  # rounds in a row beyond ``raise`` before the alert starts
    clear_rounds: Rounds = 3  # rounds in a row within ``clear`` before it ends
    # Loss only: rounds pooled into one figure. One round of 5 echoes can only say 0, 20, 40 …
    # per cent; 6 rounds (30 echoes) resolve 3.3 %.
    window: Rounds = 1


def _rule(warn: tuple[float, float], crit: tuple[float, float], **extra: Any) -> QualityRule:
    return QualityRule(
        warning=Level(raise_=warn[0], clear=warn[1]),
        critical=Level(raise_=crit[0], clear=crit[1]),
        **extra,
    )


class QualityPolicy(_Frozen):
    """Quality thresholds; see config/vcmon.yaml for why each default is what it is."""

    loss_pct: QualityRule = _rule((5.0, 2.0), (15.0, 8.0), window=6)
    rtt_ms: QualityRule = _rule((150.0, 100.0), (300.0, 250.0))
    jitter_ms: QualityRule = _rule((30.0, 20.0), (50.0, 40.0))
    mos: QualityRule = _rule((3.6, 3.8), (3.1, 3.3))

    @model_validator(mode="after")
    def _ordered(self) -> QualityPolicy:
        for metric in Metric:
            rule: QualityRule = getattr(self, metric.value)
            worse = "above" if metric.higher_is_worse else "below"
            sign = 1.0 if metric.higher_is_worse else -1.0
            for name in ("warning", "critical"):
                level: Level | None = getattr(rule, name)
                if level is not None and sign * (level.clear_at - level.raise_) > 0:
                    raise ValueError(
                        f"{metric.value}.{name}: clear ({level.clear_at:g}) must not be {worse} "
                        f"raise ({level.raise_:g}); the gap between them is the hysteresis"
                    )
            if (
                rule.warning is not None
                and rule.critical is not None
                and sign * (rule.warning.raise_ - rule.critical.raise_) > 0
            ):
                raise ValueError(
                    f"{metric.value}: warning.raise ({rule.warning.raise_:g}) must not be "
                    f"{worse} critical.raise ({rule.critical.raise_:g})"
                )
        return self

    def rule(self, metric: Metric) -> QualityRule:
        """The rule for ``metric``."""
        rule: QualityRule = getattr(self, metric.value)
        return rule


class Override(_Frozen):
    """Per level or per endpoint: the parts of ``health`` and ``quality`` that differ."""

    health: HealthPolicy = HealthPolicy()
    quality: QualityPolicy = QualityPolicy()


class Policy(_Frozen):
    """The resolved health and quality policy of one endpoint."""

    health: HealthPolicy = HealthPolicy()
    quality: QualityPolicy = QualityPolicy()


def overlay(base: _M, override: BaseModel) -> _M:
    """``base`` with the fields ``override`` sets explicitly, recursively."""
    update: dict[str, Any] = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        current = getattr(base, name, None)
        if isinstance(value, BaseModel) and isinstance(current, BaseModel):
            update[name] = overlay(current, value)
        else:
            update[name] = value
    if not update:
        return base
    # Re-validate the combination: inherited and overridden values must still fit together.
    merged = base.model_copy(update=update)
    return type(base).model_validate(merged.model_dump(by_alias=True))


class DistrictRule(_Frozen):
    """Alert once when a large share of a district fails at once, with no shared parent."""

    enabled: bool = True
    down_pct: Percent = 50.0
    clear_pct: Percent = 25.0
    min_endpoints: Annotated[int, BeforeValidator(not_bool), AfterValidator(_rounds)] = 4

    @model_validator(mode="after")
    def _clear_below_down(self) -> DistrictRule:
        if self.clear_pct > self.down_pct:
            raise ValueError(
                f"clear_pct ({self.clear_pct:g}) must not be above down_pct ({self.down_pct:g})"
            )
        return self


class Matchers(_Frozen):
    """Which alerts or endpoints something applies to; every given field must match.

    Values are exact, or a regular expression when written ``~pattern`` (full match).
    """

    endpoint: str | None = None
    district: str | None = None
    level: str | None = None
    kind: str | None = None
    severity: str | None = None
    labels: Mapping[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_patterns(self) -> Matchers:
        for value in (self.endpoint, self.district, self.level, self.kind, self.severity,
                      *self.labels.values()):  # fmt: skip
            if value is not None and value.startswith("~"):
                compile_pattern(value[1:])  # a PatternError is a ValueError: pydantic names it
        return self

    def empty(self) -> bool:
        """True when nothing is constrained (matches everything)."""
        return not self.labels and all(
            v is None for v in (self.endpoint, self.district, self.level, self.kind, self.severity)
        )


DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM: Final = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::00)?$")


def _hhmm(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 22:00 as the sexagesimal number 1320.
        return f"{value // 60:02d}:{value % 60:02d}"
    if isinstance(value, str):
        if value == "24:00":
            return dt.time.max
        m = _HHMM.match(value.strip())
        if not m:
            raise ValueError(f"expected a time of day as HH:MM, got {value!r}")
        return dt.time(int(m.group(1)), int(m.group(2)))
    return value


def _day(value: object) -> object:
    if isinstance(value, str) and value.strip().lower()[:3] in DAYS:
        return value.strip().lower()[:3]
    raise ValueError(f"expected a day of the week ({', '.join(DAYS)}), got {value!r}")


Day = Annotated[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], BeforeValidator(_day)]
TimeOfDay = Annotated[dt.time, BeforeValidator(_hhmm)]


class WeeklyRange(_Frozen):
    """From ``start`` to ``end`` on each of ``days`` (local time); ending before it starts
    runs past midnight into the next day."""

    days: tuple[Day, ...] = DAYS
    start: TimeOfDay
    end: TimeOfDay

    @model_validator(mode="after")
    def _not_empty(self) -> WeeklyRange:
        if self.start == self.end:
            raise ValueError("start and end are the same time: the window would be empty")
        if not self.days:
            raise ValueError("days: expected at least one day")
        return self


class MaintenanceWindow(_Frozen):
    """A recurring window in which matching endpoints raise no alerts."""

    name: str
    match: Matchers
    weekly: tuple[WeeklyRange, ...]
    comment: str = ""

    @model_validator(mode="after")
    def _constrained(self) -> MaintenanceWindow:
        if self.match.empty():
            raise ValueError(
                "match: expected at least one of endpoint, district, level or labels "
                "(a window over everything would silence the whole network)"
            )
        if not self.weekly:
            raise ValueError("weekly: expected at least one time range")
        return self


class Template(_Frozen):
    """An admin's wording for one kind of alert; ``{placeholders}`` as in the README."""

    summary: str | None = None
    description: str | None = None
    resolved: str | None = None  # summary of the resolve


Locale = Literal["vi", "en"]


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (expected e.g. Asia/Ho_Chi_Minh)") from None
    return value


class AlertsConfig(_Frozen):
    """The ``alerts:`` section."""

    locale: Locale = "vi"
    timezone: Annotated[str, AfterValidator(_timezone)] = "Asia/Ho_Chi_Minh"
    state_file: str | None = None  # SQLite database; relative to the config file
    health: HealthPolicy = HealthPolicy()
    quality: QualityPolicy = QualityPolicy()
    levels: Mapping[Literal["province", "department", "district", "commune"], Override] = Field(
        default_factory=dict
    )
    districts: DistrictRule = DistrictRule()
    # Seconds a sink may fail to deliver before a `sink_failing` alert goes out (through the
    # other sinks). Default 300
    sink_failing_after: NonNegativeSeconds = 300.0
    # Days ended alerts, their events and expired silences are kept in the state file before
    # they are pruned; 0 keeps them for ever. Events a sink has not delivered yet are kept
    # whatever their age.
    retention_days: NonNegative = 90.0
    maintenance: tuple[MaintenanceWindow, ...] = ()
    templates: Mapping[Locale, Mapping[str, Template]] = Field(default_factory=dict)

    @field_validator("health", "quality")
    @classmethod
    def _inherit_defaults(cls, value: BaseModel) -> BaseModel:
        # `quality: {rtt_ms: {warning: …}}` changes the warning only, as a level or endpoint
        # override does; otherwise it would drop the critical level it did not mention.
        return overlay(type(value)(), value)

    def base_policy(self) -> Policy:
        """The global policy, before level and endpoint overrides."""
        return Policy(health=self.health, quality=self.quality)

    def policy_for(self, level: str, override: Override | None) -> Policy:
        """The policy of an endpoint at ``level`` with its own ``override``."""
        policy = self.base_policy()
        by_level = self.levels.get(level)  # type: ignore[call-overload]
        if by_level is not None:
            policy = overlay(policy, by_level)
        if override is not None:
            policy = overlay(policy, override)
        return policy
