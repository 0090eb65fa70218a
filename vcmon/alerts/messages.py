"""Alert summaries and descriptions in Vietnamese and English, from overridable templates.

The summary names the place as people say it ("Xã Đồng Tiến, huyện Cô Tô: mất kết nối
3 phút"). Templates are ``str.format`` strings over the placeholders of ``placeholders()``;
an admin's template replaces only the fields it sets and is checked when the config loads.
"""

from __future__ import annotations

import datetime as dt
import string
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any, Final

from vcmon.alerts.model import Kind, Measurements, Severity, Status, Target
from vcmon.alerts.policy import Template

_PLACEHOLDERS: Final = {
    "place": "the place as people say it: 'Xã Đồng Tiến, huyện Cô Tô'",
    "name": "the endpoint's name from the inventory",
    "id": "the endpoint's id",
    "district": "its district",
    "level": "its level (province, department, district, commune)",
    "address": "its address",
    "kind": "the alert kind (endpoint_down, loss_high, …)",
    "severity": "critical or warning, in the message's language",
    "duration": "how long the problem has lasted, in words ('3 phút', '3 min')",
    "started_local": "when it started, local time",
    "affected_count": "how many endpoints are rolled up under the alert",
    "total": "how many endpoints depend on it (group_down) or are in the district",
    "children": "what the affected are, in words ('xã', 'communes')",
    "value": "the measured figure of a quality alert, with its unit",
    "threshold": "the raise value it crossed, with its unit",
    "flap_pct": "the share of state changes of a flapping endpoint, in %",
    "settled": "the state a flapping endpoint settled in, in words",
    "rtt_ms": "round-trip time of the deciding round, ms",
    "jitter_ms": "jitter of the deciding round, ms",
    "loss_pct": "loss of the deciding round, %",
    "mos": "estimated MOS of the deciding round",
}

_BUILTIN: Final[dict[str, dict[str, Template]]] = {
    "vi": {
        "endpoint_down": Template(
            summary="{place}: mất kết nối {duration}",
            resolved="{place}: đã kết nối lại sau {duration}",
        ),
        "group_down": Template(
            summary=(
                "{place}: mất kết nối — {affected_count}/{total} {children} không liên lạc được"
            ),
            resolved="{place}: đã kết nối lại sau {duration}, {total} {children} trở lại",
        ),
        "district_down": Template(
            summary="{place}: {affected_count}/{total} điểm mất kết nối cùng lúc",
            resolved="{place}: các điểm đã kết nối lại sau {duration}",
        ),
        "flapping": Template(
            summary="{place}: kết nối chập chờn ({flap_pct}% đổi trạng thái)",
            resolved="{place}: hết chập chờn, hiện {settled}",
        ),
        "loss_high": Template(
            summary="{place}: mất gói {value} (ngưỡng {threshold}, {severity})",
            resolved="{place}: mất gói đã giảm, hiện {value}",
        ),
        "latency_high": Template(
            summary="{place}: độ trễ cao {value} (ngưỡng {threshold}, {severity})",
            resolved="{place}: độ trễ đã bình thường, hiện {value}",
        ),
        "jitter_high": Template(
            summary="{place}: jitter cao {value} (ngưỡng {threshold}, {severity})",
            resolved="{place}: jitter đã bình thường, hiện {value}",
        ),
        "mos_low": Template(
            summary="{place}: chất lượng cuộc gọi thấp, MOS {value} (ngưỡng {threshold})",
            resolved="{place}: chất lượng cuộc gọi đã ổn, MOS {value}",
        ),
        "*": Template(summary="{place}: {kind} ({severity})", resolved="{place}: hết {kind}"),
    },
    "en": {
        "endpoint_down": Template(
            summary="{place}: down for {duration}",
            resolved="{place}: back up after {duration}",
        ),
        "group_down": Template(
            summary="{place} uplink down — {affected_count} of {total} {children} unreachable",
            resolved="{place} uplink back after {duration}; {total} {children} reachable again",
        ),
        "district_down": Template(
            summary="{place}: {affected_count} of {total} endpoints down at once",
            resolved="{place}: endpoints back after {duration}",
        ),
        "flapping": Template(
            summary="{place}: flapping ({flap_pct}% state changes)",
            resolved="{place}: stopped flapping, {settled}",
        ),
        "loss_high": Template(
            summary="{place}: packet loss {value} (threshold {threshold}, {severity})",
            resolved="{place}: packet loss back to {value}",
        ),
        "latency_high": Template(
            summary="{place}: latency {value} (threshold {threshold}, {severity})",
            resolved="{place}: latency back to {value}",
        ),
        "jitter_high": Template(
            summary="{place}: jitter {value} (threshold {threshold}, {severity})",
            resolved="{place}: jitter back to {value}",
        ),
        "mos_low": Template(
            summary="{place}: call quality low, MOS {value} (threshold {threshold})",
            resolved="{place}: call quality back, MOS {value}",
        ),
        "*": Template(summary="{place}: {kind} ({severity})", resolved="{place}: {kind} ended"),
    },
}

_WORDS: Final = {
    "vi": {
        "critical": "nghiêm trọng",
        "warning": "cảnh báo",
        "up": "hoạt động bình thường",
        "down": "mất kết nối",
        "commune": "xã",
        "district": "huyện",
        "department": "đơn vị",
        "mixed": "đơn vị",
        "more": "… và {n} điểm khác",
        "since": "Bắt đầu",
        "affected": "Ảnh hưởng",
        "measured": "Đo được",
    },
    "en": {
        "critical": "critical",
        "warning": "warning",
        "up": "now up",
        "down": "now down",
        "commune": "communes",
        "district": "districts",
        "department": "units",
        "mixed": "endpoints",
        "more": "… and {n} more",
        "since": "Since",
        "affected": "Affected",
        "measured": "Measured",
    },
}

_UNITS: Final = {"loss_pct": "%", "rtt_ms": " ms", "jitter_ms": " ms", "mos": ""}
_PREFIXES: Final = ("UBND ", "Phòng họp ", "Ủy ban nhân dân ")
_UNIT_TYPES_EN: Final = {
    "xã": "commune",
    "phường": "ward",
    "thị trấn": "township",
    "huyện": "district",
    "thành phố": "city",
    "thị xã": "town",
}


class TemplateError(ValueError):
    """An admin's template that cannot be rendered."""


def placeholders() -> dict[str, str]:
    """Every placeholder a template may use, with its meaning."""
    return dict(_PLACEHOLDERS)


def _check(locale: str, kind: str, field: str, text: str) -> None:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"alerts.templates.{locale}.{kind}.{field}: {exc}") from None
    for _, name, _, _ in parsed:
        if name is not None and name not in _PLACEHOLDERS:
            known = ", ".join(sorted(_PLACEHOLDERS))
            raise TemplateError(
                f"alerts.templates.{locale}.{kind}.{field}: unknown placeholder {{{name}}} "
                f"(expected one of: {known})"
            )


def _number(value: float, locale: str) -> str:
    text = f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    return text.replace(".", ",") if locale == "vi" else text


def duration_words(seconds: float, locale: str) -> str:
    """'45 giây', '3 phút', '1 giờ 5 phút' (vi) or '45 s', '3 min', '1 h 5 min' (en)."""
    s = max(0, round(seconds))
    sec, minute, hour = ("giây", "phút", "giờ") if locale == "vi" else ("s", "min", "h")
    if s < 60:
        return f"{s} {sec}"
    hours, minutes = divmod(s // 60, 60)
    if hours == 0:
        return f"{minutes} {minute}"
    return f"{hours} {hour}" + (f" {minutes} {minute}" if minutes else "")


def place(target: Target, locale: str) -> str:
    """The place as people say it: 'Xã Đồng Tiến, huyện Cô Tô' / 'Đồng Tiến commune, …'."""
    name = target.name
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if target.level == "commune":
        unit = target.labels.get("unit_type", "")
        if unit and name.lower().startswith(unit.lower() + " "):
            name = name[len(unit) + 1 :]
        elif not unit:
            first = name.split(" ")[0].lower()
            unit = first if first in ("xã", "phường") else "xã"
            if first in ("xã", "phường"):
                name = name[len(first) + 1 :]
        if locale == "vi":
            return f"{unit[:1].upper()}{unit[1:]} {name}, huyện {target.district}"
        return f"{name} {_UNIT_TYPES_EN.get(unit, 'commune')}, {target.district} district"
    if target.level == "district":
        if target.id.startswith("district:"):
            return f"Huyện {target.district}" if locale == "vi" else f"{target.district} district"
        return name[:1].upper() + name[1:] if locale == "vi" else f"{target.district} district"
    return name


class Messages:
    """Renders events in one locale, with an admin's templates over the built-in ones."""

    def __init__(
        self,
        locale: str = "vi",
        overrides: Mapping[Any, Mapping[str, Template]] | None = None,
        timezone: str = "Asia/Ho_Chi_Minh",
    ) -> None:
        self.locale = locale if locale in _BUILTIN else "vi"
        self.zone = zoneinfo.ZoneInfo(timezone)
        for loc, kinds in (overrides or {}).items():
            for kind, template in kinds.items():
                for field in ("summary", "description", "resolved"):
                    text = getattr(template, field)
                    if text is not None:
                        _check(loc, kind, field, text)
        self._overrides = dict((overrides or {}).get(self.locale, {}))

    def _template(self, kind: str, field: str) -> str | None:
        own = self._overrides.get(kind)
        if own is not None and getattr(own, field) is not None:
            text: str | None = getattr(own, field)
            return text
        builtin = _BUILTIN[self.locale]
        template = builtin.get(kind) or builtin["*"]
        text = getattr(template, field)
        return text

    def render(
        self,
        *,
        kind: Kind,
        status: Status,
        severity: Severity,
        target: Target,
        affected: Sequence[str],
        measurements: Measurements,
        started_at: float,
        at: float,
        detail: Mapping[str, Any],
    ) -> tuple[str, str]:
        """(summary, description) of one event."""
        words = _WORDS[self.locale]
        values = self._values(kind, severity, target, affected, measurements, started_at, at,
                              detail)  # fmt: skip
        field = "summary" if status is Status.FIRING else "resolved"
        summary = (self._template(kind.value, field) or "").format(**values)
        own = self._template(kind.value, "description")
        if own is not None:
            return summary, own.format(**values)
        lines = [summary, f"{words['since']}: {values['started_local']}"]
        figures = [
            f"{name} {values[name]}"
            for name in ("rtt_ms", "jitter_ms", "loss_pct", "mos")
            if values[name] != "—"
        ]
        if figures:
            lines.append(f"{words['measured']}: " + ", ".join(figures))
        if affected:
            shown = ", ".join(affected[:20])
            if len(affected) > 20:
                shown += " " + words["more"].format(n=len(affected) - 20)
            lines.append(f"{words['affected']} ({len(affected)}): {shown}")
        return summary, "\n".join(lines)

    def _values(
        self,
        kind: Kind,
        severity: Severity,
        target: Target,
        affected: Sequence[str],
        measurements: Measurements,
        started_at: float,
        at: float,
        detail: Mapping[str, Any],
    ) -> dict[str, Any]:
        loc = self.locale
        words = _WORDS[loc]
        since = detail.get("failing_since") or started_at
        local = dt.datetime.fromtimestamp(started_at, self.zone)
        metric = str(detail.get("metric", ""))
        unit = _UNITS.get(metric, "")

        def fig(value: object, unit: str = "") -> str:
            return f"{_number(float(value), loc)}{unit}" if isinstance(value, int | float) else "—"

        return {
            "place": place(target, loc),
            "name": target.name,
            "id": target.id,
            "district": target.district,
            "level": target.level,
            "address": target.address,
            "kind": kind.value,
            "severity": words[severity.value],
            "duration": duration_words(at - float(since), loc),
            "started_local": local.strftime("%H:%M %d/%m/%Y" if loc == "vi" else "%Y-%m-%d %H:%M"),
            "affected_count": len(affected),
            "total": detail.get("total", len(affected)),
            "children": words.get(str(detail.get("child_level", "mixed")), words["mixed"]),
            "value": fig(detail.get("value"), unit),
            "threshold": fig(detail.get("threshold"), unit),
            "flap_pct": detail.get("flap_pct", "—"),
            "settled": words.get(str(detail.get("settled", "up")), words["up"]),
            "rtt_ms": fig(measurements.rtt_ms),
            "jitter_ms": fig(measurements.jitter_ms),
            "loss_pct": fig(measurements.loss_pct),
            "mos": fig(measurements.mos),
        }
