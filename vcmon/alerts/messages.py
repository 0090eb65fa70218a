"""Alert summaries and descriptions in Vietnamese and English, from overridable templates.

The summary names the place as people say it ("Xã Đồng Tiến, huyện Cô Tô: mất kết nối
3 phút"). Templates are ``str.format`` strings over the placeholders of ``placeholders()``.
Every placeholder value is a string, so a template that formats with sample values formats
with any: an admin's template is checked when the config loads, never when an alert fires.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
import unicodedata
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any, Final

from vcmon.alerts.model import Kind, Measurements, Severity, Status, Target
from vcmon.config.alerts import Locale, Template

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
    "started_local": "when it started, local time ('14:02 28/11/2026', '2026-11-28 14:02+07:00')",
    "affected_count": "how many endpoints are rolled up under the alert",
    "total": "how many endpoints depend on it (group_down) or are in the district",
    "children": "what the affected are, in words ('xã', 'communes')",
    "value": "the measured figure of a quality alert, with its unit ('12,5%', '180 ms')",
    "threshold": "the raise value it crossed, with its unit",
    "flap_pct": "the share of state changes of a flapping endpoint, in %",
    "settled": "the state a flapping endpoint settled in, in words",
    "rtt_ms": "round-trip time of the deciding round, ms (number only)",
    "jitter_ms": "jitter of the deciding round, ms (number only)",
    "loss_pct": "loss of the deciding round, % (number only)",
    "mos": "estimated MOS of the deciding round",
}
_SAMPLE: Final = dict.fromkeys(_PLACEHOLDERS, "x")
_FORMATTER: Final = string.Formatter()
# A field's width and precision: '{place:>1500000000}' would otherwise make a 1.5 GB string.
MAX_WIDTH: Final = 200
_SPEC_RE: Final = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d*))?[a-zA-Z%]?", re.S
)
_MISSING: Final = "—"
_FALLBACK: Final = "*"  # built-in wording of a kind this module does not know
# Ids of the engine's pseudo-targets (a district's roll-up, a failing sink): no endpoint.
_PSEUDO_PREFIXES: Final = ("district:", "sink:", "store:")

# (summary of the firing, summary of the resolve) per kind.
_BUILTIN: Final[dict[str, dict[str, tuple[str, str]]]] = {
    "vi": {
        "endpoint_down": (
            "{place}: mất kết nối {duration}",
            "{place}: đã kết nối lại sau {duration}",
        ),
        "group_down": (
            "{place}: mất kết nối — {affected_count}/{total} {children} không liên lạc được",
            "{place}: đã kết nối lại sau {duration}",
        ),
        "district_down": (
            "{place}: {affected_count}/{total} {children} mất kết nối cùng lúc",
            "{place}: hết mất kết nối đồng loạt sau {duration}",
        ),
        "flapping": (
            "{place}: chập chờn ({flap_pct}% đổi trạng thái)",
            "{place}: hết chập chờn, hiện {settled}",
        ),
        "loss_high": (
            "{place}: mất gói {value} (ngưỡng {severity} {threshold})",
            "{place}: mất gói đã trở lại bình thường sau {duration}",
        ),
        "latency_high": (
            "{place}: độ trễ {value} (ngưỡng {severity} {threshold})",
            "{place}: độ trễ đã trở lại bình thường sau {duration}",
        ),
        "jitter_high": (
            "{place}: jitter {value} (ngưỡng {severity} {threshold})",
            "{place}: jitter đã trở lại bình thường sau {duration}",
        ),
        "mos_low": (
            "{place}: chất lượng thoại thấp, MOS {value} (ngưỡng {severity} {threshold})",
            "{place}: chất lượng thoại đã trở lại bình thường sau {duration}",
        ),
        "sink_failing": (
            "Kênh gửi cảnh báo {place}: không gửi được {duration}",
            "Kênh gửi cảnh báo {place}: đã gửi lại được sau {duration}",
        ),
        "state_store_failing": (
            "Tệp trạng thái {place}: không ghi được {duration}",
            "Tệp trạng thái {place}: đã ghi lại được sau {duration}",
        ),
        _FALLBACK: ("{place}: {kind} ({severity})", "{place}: hết {kind} sau {duration}"),
    },
    "en": {
        "endpoint_down": ("{place}: down for {duration}", "{place}: back up after {duration}"),
        "group_down": (
            "{place} uplink down — {affected_count} of {total} {children} unreachable",
            "{place} uplink back up after {duration}",
        ),
        "district_down": (
            "{place}: {affected_count} of {total} {children} down at once",
            "{place}: widespread outage over after {duration}",
        ),
        "flapping": (
            "{place}: flapping ({flap_pct}% state changes)",
            "{place}: stopped flapping, {settled}",
        ),
        "loss_high": (
            "{place}: loss {value} ({severity} threshold {threshold})",
            "{place}: loss back to normal after {duration}",
        ),
        "latency_high": (
            "{place}: latency {value} ({severity} threshold {threshold})",
            "{place}: latency back to normal after {duration}",
        ),
        "jitter_high": (
            "{place}: jitter {value} ({severity} threshold {threshold})",
            "{place}: jitter back to normal after {duration}",
        ),
        "mos_low": (
            "{place}: call quality low, MOS {value} ({severity} threshold {threshold})",
            "{place}: call quality back to normal after {duration}",
        ),
        "sink_failing": (
            "Alert sink {place}: failing to deliver for {duration}",
            "Alert sink {place}: delivering again after {duration}",
        ),
        "state_store_failing": (
            "State file {place}: cannot be written for {duration}",
            "State file {place}: written again after {duration}",
        ),
        _FALLBACK: ("{place}: {kind} ({severity})", "{place}: {kind} cleared after {duration}"),
    },
}

_WORDS: Final = {
    "vi": {
        "critical": "nghiêm trọng",
        "warning": "cảnh báo",
        "up": "hoạt động bình thường",
        "down": "mất kết nối",
        "more": "… và {n} điểm khác",
        "endpoint": "Điểm cầu",
        "what": "Loại: {kind} · mức: {severity}",
        "since": "Bắt đầu",
        "ended": "Kết thúc",
        "lasted": "kéo dài",
        "measured": "Đo được",
        "affected": "Ảnh hưởng",
        "rtt_ms": "độ trễ",
        "jitter_ms": "jitter",
        "loss_pct": "mất gói",
        "mos": "MOS",
    },
    "en": {
        "critical": "critical",
        "warning": "warning",
        "up": "now up",
        "down": "now down",
        "more": "… and {n} more",
        "endpoint": "Endpoint",
        "what": "Kind: {kind} · severity: {severity}",
        "since": "Since",
        "ended": "Ended",
        "lasted": "lasted",
        "measured": "Measured",
        "affected": "Affected",
        "rtt_ms": "RTT",
        "jitter_ms": "jitter",
        "loss_pct": "loss",
        "mos": "MOS",
    },
}

# Nouns for the children of a group_down, by detail["child_level"]: (vi, en one, en many).
# Without a child level (district_down) the children are just endpoints.
_CHILDREN: Final = {
    "commune": ("xã", "commune", "communes"),
    "district": ("huyện", "district", "districts"),
    "department": ("đơn vị", "unit", "units"),
    "mixed": ("đơn vị", "unit", "units"),
    "": ("điểm", "endpoint", "endpoints"),
}

# Metric of each quality kind, its unit and the decimals people read it with.
_METRIC_OF: Final = {
    "loss_high": "loss_pct",
    "latency_high": "rtt_ms",
    "jitter_high": "jitter_ms",
    "mos_low": "mos",
}
_UNITS: Final = {"loss_pct": "%", "rtt_ms": " ms", "jitter_ms": " ms", "mos": ""}
_DECIMALS: Final = {"loss_pct": 1, "rtt_ms": 1, "jitter_ms": 1, "mos": 2}

# Words an inventory name starts with that are not part of the place: "UBND xã Đồng Tiến".
_PREFIXES: Final = (
    "ubnd ",
    "ủy ban nhân dân ",
    "uỷ ban nhân dân ",
    "phòng họp trực tuyến ",
    "phòng họp ",
    "điểm cầu ",
)
_COMMUNE_UNITS: Final = {"thị trấn": "township", "phường": "ward", "xã": "commune"}
_DISTRICT_UNITS: Final = {"thành phố": "city", "thị xã": "town", "huyện": "district"}


class TemplateError(ValueError):
    """An admin's template that cannot be rendered."""


def spec_problem(spec: str) -> str | None:
    """Why format spec ``spec`` may not be used in a template (too wide), or None."""
    if "{" in spec or "}" in spec:
        return "a placeholder inside a format spec is not allowed (its width would be unbounded)"
    m = _SPEC_RE.fullmatch(spec)
    if m is None:
        return None  # format() refuses it with its own words
    for part in ("width", "precision"):
        digits = m[part].lstrip("0") if m[part] else ""
        if len(digits) > 3 or (digits and int(digits) > MAX_WIDTH):
            shown = m[part] if len(m[part]) <= 12 else f"of {len(m[part])} digits"
            return f"{part} {shown} is too large (expected at most {MAX_WIDTH})"
    return None


class _Bounded(string.Formatter):
    """str.format that refuses a field wider than MAX_WIDTH, even one a nested field sets."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        problem = spec_problem(format_spec)
        if problem is not None:
            raise TemplateError(problem)
        return super().format_field(value, format_spec)


_BOUNDED: Final = _Bounded()
# What rendering an admin's template can raise; the template was checked at load, so these
# are a safety net and the built-in wording is used instead.
_RENDER_ERRORS: Final = (ValueError, KeyError, IndexError, AttributeError, TypeError)


def _render(text: str, values: Mapping[str, str]) -> str | None:
    """``text`` formatted with ``values``, field widths bounded; None if it cannot be."""
    try:
        return str(_BOUNDED.vformat(text, (), values))
    except _RENDER_ERRORS:
        return None


def placeholders() -> dict[str, str]:
    """Every placeholder a template may use, with its one-line meaning."""
    return dict(_PLACEHOLDERS)


def _check(locale: str, kind: str, field: str, text: str) -> None:
    where = f"alerts.templates.{locale}.{kind}.{field}"
    known = ", ".join(sorted(_PLACEHOLDERS))

    def unknown(name: str) -> TemplateError:
        return TemplateError(f"{where}: unknown placeholder {{{name}}} (expected one of: {known})")

    try:
        names = [name for _, name, _, _ in _FORMATTER.parse(text) if name is not None]
    except ValueError as exc:
        raise TemplateError(f"{where}: bad template {text!r}: {exc}") from None
    for name in names:
        if name == "":
            raise TemplateError(
                f"{where}: empty placeholder {{}} in {text!r} (name it, e.g. {{place}}; "
                "write {{ and }} for literal braces)"
            )
        if name not in _PLACEHOLDERS:  # also refuses {place.attr} and {place[0]}
            raise unknown(name)
    for _, field_name, spec, _ in _FORMATTER.parse(text):
        if field_name is None or not spec:
            continue
        try:
            nested = [n for _, n, _, _ in _FORMATTER.parse(spec) if n is not None]
        except ValueError:
            nested = []  # said below, by the formatting
        for inner in nested:
            if inner not in _PLACEHOLDERS:
                raise unknown(inner)
        problem = spec_problem(spec)
        if problem is not None:
            shown = spec if len(spec) <= 24 else spec[:20] + "…"
            raise TemplateError(f"{where}: {{{field_name}:{shown}}}: {problem}")
    try:
        _BOUNDED.vformat(text, (), _SAMPLE)
    except KeyError as exc:  # a placeholder nested in a format spec: {value:{width}}
        raise unknown(str(exc.args[0])) from None
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise TemplateError(f"{where}: bad template {text!r}: {exc}") from None


def format_number(value: object, locale: str, decimals: int = 1) -> str:
    """A figure as people write it: '12,5' (vi) or '12.5' (en); '—' when there is none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _MISSING
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return _MISSING
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    return text.replace(".", ",") if locale == "vi" else text


def duration_words(seconds: float, locale: str) -> str:
    """'45 giây', '3 phút', '1 giờ 5 phút', '2 ngày 3 giờ' (vi); '45 s', '3 min', '1 h 5 min',
    '2 d 3 h' (en). Whole units, rounded down."""
    if not math.isfinite(seconds):
        return _MISSING
    vi = locale == "vi"
    sec, minute, hour, day = ("giây", "phút", "giờ", "ngày") if vi else ("s", "min", "h", "d")
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} {sec}"
    minutes, hours, days = s // 60 % 60, s // 3600 % 24, s // 86400
    if days:
        return f"{days} {day}" + (f" {hours} {hour}" if hours else "")
    if hours:
        return f"{hours} {hour}" + (f" {minutes} {minute}" if minutes else "")
    return f"{minutes} {minute}"


def _strip_words(text: str, words: Sequence[str]) -> tuple[str, str]:
    """``text`` without the leading words of ``words`` (case-insensitive), and the last one
    removed ('' if none)."""
    removed = ""
    while True:
        for word in words:
            if text[: len(word)].casefold() == word:
                text, removed = text[len(word) :].lstrip(), word.strip()
                break
        else:
            return text, removed


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def place(target: Target, locale: str) -> str:
    """The place as people say it: 'Xã Đồng Tiến, huyện Cô Tô' / 'Đồng Tiến commune, Cô Tô
    district'; departments and the province by their own name."""
    vi = locale == "vi"
    name = unicodedata.normalize("NFC", target.name).strip() or target.id
    district = unicodedata.normalize("NFC", target.district).strip()
    labels = {
        k: unicodedata.normalize("NFC", v).strip().casefold() for k, v in target.labels.items()
    }
    bare, _ = _strip_words(name, _PREFIXES)
    if target.level == "commune":
        bare, own_unit = _strip_words(bare, [f"{u} " for u in _COMMUNE_UNITS])
        unit = labels.get("unit_type") or own_unit or "xã"
        # A ward (phường) is never in a huyện; without the district's own kind in the
        # `district_type` label, naming none is better than naming the wrong one.
        d_unit = labels.get("district_type") or ("" if unit == "phường" else "huyện")
        if vi:
            where = f"{d_unit} {district}".strip() if district else ""
            here = f"{_cap(unit)} {bare}"
        else:
            where = f"{district} {_DISTRICT_UNITS.get(d_unit, '')}".strip() if district else ""
            here = f"{bare} {_COMMUNE_UNITS.get(unit, 'commune')}"
        return f"{here}, {where}" if where else here
    if target.level == "district" and district:
        _, own_unit = _strip_words(bare, [f"{u} " for u in _DISTRICT_UNITS])
        unit = labels.get("unit_type", "")
        if unit not in _DISTRICT_UNITS:
            unit = own_unit or labels.get("district_type") or "huyện"
        if vi:
            return f"{_cap(unit)} {district}"
        return f"{district} {_DISTRICT_UNITS.get(unit, 'district')}"
    return name


class Messages:
    """Renders events in one locale, with an admin's templates over the built-in ones."""

    def __init__(
        self,
        locale: str = "vi",
        overrides: Mapping[Locale, Mapping[str, Template]]
        | Mapping[str, Mapping[str, Template]]
        | None = None,
        timezone: str = "Asia/Ho_Chi_Minh",
    ) -> None:
        if locale not in _BUILTIN:
            raise ValueError(f"unknown locale {locale!r} (expected one of: en, vi)")
        self.locale = locale
        self.zone = zoneinfo.ZoneInfo(timezone)
        self._own: dict[str, Template] = {}
        kinds = {k.value for k in Kind}
        # Every locale is checked, not only the one in use: switching `alerts.locale` must not
        # turn a config that loaded into one that does not.
        for loc, templates in (overrides or {}).items():
            for kind, template in templates.items():
                if kind not in kinds:
                    raise TemplateError(
                        f"alerts.templates.{loc}.{kind}: unknown alert kind "
                        f"(expected one of: {', '.join(sorted(kinds))})"
                    )
                for field in ("summary", "description", "resolved"):
                    text = getattr(template, field)
                    if text is not None:
                        _check(loc, kind, field, text)
                if loc == locale:
                    self._own[kind] = template

    def acknowledged(self, summary: str, by: str, comment: str) -> str:
        """The summary of an acknowledgement: who took the alert, and what they said."""
        said = f" — {comment}" if comment else ""
        if self.locale == "vi":
            return f"Đã xác nhận bởi {by}{said}: {summary}"
        return f"Acknowledged by {by}{said}: {summary}"

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
        """(summary, description) of one event; any kind renders, unknown ones generically."""
        name = str(kind)  # the value of a Kind; a plain string works as well
        resolved = status == Status.RESOLVED
        since = detail.get("failing_since")
        if isinstance(since, bool) or not isinstance(since, int | float):
            since = started_at
        values = self._values(name, severity, target, affected, measurements, since, at, detail)
        own = self._own.get(name)
        builtin = _BUILTIN[self.locale].get(name) or _BUILTIN[self.locale][_FALLBACK]
        text = (own.resolved if resolved else own.summary) if own is not None else None
        summary = (text and _render(text, values)) or builtin[resolved].format_map(values)
        if own is not None and own.description is not None:
            description = _render(own.description, values)
            if description is not None:
                return summary, description
        description = self._description(
            summary, values, target, affected, measurements, at, resolved
        )
        return summary, description

    def _local(self, ts: float) -> str:
        try:
            local = dt.datetime.fromtimestamp(ts, self.zone)
        except (OverflowError, OSError, ValueError):
            return _MISSING
        if self.locale == "vi":
            return local.strftime("%H:%M %d/%m/%Y")
        return local.isoformat(sep=" ", timespec="minutes")

    def _figure(self, value: object, metric: str) -> str:
        text = format_number(value, self.locale, _DECIMALS.get(metric, 1))
        return text if text == _MISSING else text + _UNITS.get(metric, "")

    def _values(
        self,
        kind: str,
        severity: Severity,
        target: Target,
        affected: Sequence[str],
        measurements: Measurements,
        since: float,
        at: float,
        detail: Mapping[str, Any],
    ) -> dict[str, str]:
        loc = self.locale
        words = _WORDS[loc]
        metric = str(detail.get("metric") or _METRIC_OF.get(kind, ""))
        total = detail.get("total")
        vi_noun, one, many = _CHILDREN.get(str(detail.get("child_level", "")), _CHILDREN["mixed"])
        settled = detail.get("settled")
        return {
            "place": place(target, loc),
            "name": target.name,
            "id": target.id,
            "district": target.district,
            "level": target.level,
            "address": target.address,
            "kind": kind,
            "severity": words.get(str(severity), str(severity)),
            "duration": duration_words(at - since, loc),
            "started_local": self._local(since),
            "affected_count": str(len(affected)),
            "total": format_number(total, loc),
            "children": vi_noun if loc == "vi" else (one if total == 1 else many),
            "value": self._figure(detail.get("value"), metric),
            "threshold": self._figure(detail.get("threshold"), metric),
            "flap_pct": format_number(detail.get("flap_pct"), loc),
            "settled": words[settled] if settled in ("up", "down") else _MISSING,
            "rtt_ms": format_number(measurements.rtt_ms, loc, _DECIMALS["rtt_ms"]),
            "jitter_ms": format_number(measurements.jitter_ms, loc, _DECIMALS["jitter_ms"]),
            "loss_pct": format_number(measurements.loss_pct, loc, _DECIMALS["loss_pct"]),
            "mos": format_number(measurements.mos, loc, _DECIMALS["mos"]),
        }

    def _description(
        self,
        summary: str,
        values: Mapping[str, str],
        target: Target,
        affected: Sequence[str],
        measurements: Measurements,
        at: float,
        resolved: bool,
    ) -> str:
        words = _WORDS[self.locale]
        lines = [summary]
        if not target.id.startswith(_PSEUDO_PREFIXES):
            ident = ", ".join(x for x in (target.id, target.address) if x)
            lines.append(f"{words['endpoint']}: {target.name} ({ident})")
        lines.append(words["what"].format(kind=values["kind"], severity=values["severity"]))
        lines.append(f"{words['since']}: {values['started_local']}")
        if resolved:
            lasted = f"{words['lasted']} {values['duration']}"
            lines.append(f"{words['ended']}: {self._local(at)} ({lasted})")
        figures = [
            f"{words[metric]} {self._figure(getattr(measurements, metric), metric)}"
            for metric in ("rtt_ms", "jitter_ms", "loss_pct", "mos")
            if getattr(measurements, metric) is not None
        ]
        if figures:
            lines.append(f"{words['measured']}: " + ", ".join(figures))
        if affected:
            shown = ", ".join(affected[:20])
            if len(affected) > 20:
                shown += " " + words["more"].format(n=len(affected) - 20)
            lines.append(f"{words['affected']} ({len(affected)}): {shown}")
        return "\n".join(lines)
