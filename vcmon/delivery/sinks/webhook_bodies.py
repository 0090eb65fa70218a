"""Request bodies of the webhook sink: one event (docs/architecture.md, "Alert
events") in the form a receiver expects. Pure functions of the event and the time, so a body
can be rebuilt in tests.

- ``vcmon``: the native envelope ``{"type": "vcmon.alert.firing", "timestamp", "data"}``;
- ``alertmanager``: Alertmanager's webhook body (version 4), for receivers written for it;
- ``telegram``: a Bot API ``sendMessage`` call;
- ``slack``: an incoming-webhook message, which Mattermost and Rocket.Chat accept as well.

Nothing here depends on the locale: the event's summary and description are already in the
receiver's language, and times are RFC 3339 in UTC.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from vcmon.alerts.model import rfc3339
from vcmon.delivery.grouping import Notification
from vcmon.delivery.sinks.alertmanager import am_annotations, am_labels, fingerprint

BodyKind = Literal["vcmon", "alertmanager", "telegram", "slack"]
BODY_KINDS: Final[tuple[BodyKind, ...]] = ("vcmon", "alertmanager", "telegram", "slack")

# Alertmanager's zero time: what its webhook sends as endsAt while an alert fires.
ZERO_TIME: Final = "0001-01-01T00:00:00Z"
TELEGRAM_MAX_TEXT: Final = 4096  # characters the Bot API takes in one message

_ICONS: Final = {"firing": "🔴", "resolved": "✅", "acknowledged": "👀"}
# Shortcodes rather than emoji: Slack, Mattermost and Rocket.Chat all render these names.
_SHORTCODES: Final = {
    "firing": ":red_circle:",
    "resolved": ":white_check_mark:",
    "acknowledged": ":eyes:",
}


def body_for(kind: str, event: Mapping[str, Any], now: float, **opts: Any) -> bytes:
    """The UTF-8 JSON body of ``event`` in form ``kind``; ``opts`` go to that form's builder.

    Options: ``receiver``, ``external_url``, ``generator_url`` (alertmanager); ``chat_id``,
    ``parse_mode`` (telegram). ValueError for an unknown kind, TypeError for a stray option.
    """
    doc: dict[str, Any]
    if kind == "vcmon":
        doc = vcmon_body(event, now, **opts)
    elif kind == "alertmanager":
        doc = alertmanager_body(event, now, **opts)
    elif kind == "telegram":
        doc = telegram_body(event, **opts)
    elif kind == "slack":
        doc = slack_body(event, **opts)
    else:
        raise ValueError(f"unknown body {kind!r} (expected one of: {', '.join(BODY_KINDS)})")
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def group_body_for(kind: str, note: Notification, now: float, **opts: Any) -> bytes:
    """The UTF-8 JSON body of a grouped notification in form ``kind`` (options as body_for)."""
    doc: dict[str, Any]
    if kind == "vcmon":
        doc = {"type": "vcmon.alert.group", "timestamp": rfc3339(now), "data": note.to_json()}
    elif kind == "alertmanager":
        doc = alertmanager_group_body(note, now, **opts)
    elif kind == "telegram":
        doc = telegram_group_body(note, **opts)
    elif kind == "slack":
        doc = {"text": group_text(note, _SHORTCODES, lambda t: f"*{t}*", str, 40_000)}
    else:
        raise ValueError(f"unknown body {kind!r} (expected one of: {', '.join(BODY_KINDS)})")
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def group_text(
    note: Notification,
    icons: Mapping[str, str],
    bold: Callable[[str], str],
    escape: Callable[[str], str],
    limit: int,
) -> str:
    """A grouped notification for people: a headline with counts, then one line per alert
    (what changed first, then what still fires), cut at a line to fit ``limit`` characters."""
    counts: dict[str, int] = {}
    for e in note.changes:
        counts[str(e["status"])] = counts.get(str(e["status"]), 0) + 1
    if note.firing:
        counts["firing"] = counts.get("firing", 0) + len(note.firing)
    tally = " ".join(f"{icons.get(k, '•')} {n}" for k, n in counts.items())
    where = " · ".join(v for _, v in note.group if v) or "vcmon"
    head = f"{'🔁 ' if note.repeat else ''}{bold(escape(where))} {tally}"
    lines = [head]
    for e in note.changes:
        lines.append(f"{icons.get(str(e['status']), '•')} {escape(_summary(e))}")
    if note.firing and note.changes:
        lines.append("")  # what changed above, what still fires below
    for e in note.firing:
        lines.append(f"{icons['firing']} {escape(_summary(e))}")
    text = lines[0]
    for i, line in enumerate(lines[1:], start=1):
        more = f"\n… +{sum(1 for rest in lines[i:] if rest)}"
        if len(text) + 1 + len(line) + len(more) > limit:
            return text + more
        text += "\n" + line
    return text


def telegram_group_body(
    note: Notification, chat_id: str | int, parse_mode: Literal["HTML"] | None = "HTML"
) -> dict[str, Any]:
    """A ``sendMessage`` call carrying a grouped notification."""
    if parse_mode == "HTML":
        text = group_text(
            note, _ICONS, lambda t: f"<b>{t}</b>", lambda t: html.escape(t, quote=False),
            TELEGRAM_MAX_TEXT,
        )  # fmt: skip
        return {"chat_id": chat_id, "text": text, "parse_mode": "HTML"}
    return {"chat_id": chat_id, "text": group_text(note, _ICONS, str, str, TELEGRAM_MAX_TEXT)}


def vcmon_body(event: Mapping[str, Any], now: float) -> dict[str, Any]:
    """vcmon's native envelope: the event unchanged under ``data``."""
    return {
        "type": f"vcmon.alert.{event['status']}",
        "timestamp": rfc3339(now),
        "data": dict(event),
    }


def alertmanager_body(
    event: Mapping[str, Any],
    now: float,
    receiver: str = "vcmon",
    external_url: str = "",
    generator_url: str = "",
) -> dict[str, Any]:
    """The Alertmanager webhook body (version 4) carrying this one alert."""
    alert = _am_alert(event, now, generator_url)
    labels = alert["labels"]
    # Grouped as an Alertmanager routing by [alertname, endpoint] would: the group key then
    # stays the same from firing to resolve, which receivers use to close what they opened.
    group: dict[str, str] = {k: labels[k] for k in ("alertname", "endpoint") if k in labels}
    return _am_envelope(group, [alert], receiver, external_url)


def alertmanager_group_body(
    note: Notification,
    now: float,
    receiver: str = "vcmon",
    external_url: str = "",
    generator_url: str = "",
) -> dict[str, Any]:
    """The Alertmanager webhook body of a grouped notification: every alert of the group."""
    alerts = [_am_alert(e, now, generator_url) for e in (*note.changes, *note.firing)]
    # vcmon's `kind` is Alertmanager's `alertname`; the other fields keep their names.
    group = _labels(**{_AM_NAMES.get(k, k): v for k, v in note.group})
    return _am_envelope(group, alerts, receiver, external_url)


_AM_NAMES: Final = {"kind": "alertname"}


def _am_alert(event: Mapping[str, Any], now: float, generator_url: str) -> dict[str, Any]:
    labels = am_labels(event, alert_id=False)
    # Alertmanager knows firing and resolved only; an acknowledged alert still fires.
    status = "resolved" if event["status"] == "resolved" else "firing"
    if status == "resolved":
        ends_at = event.get("ended_at") or rfc3339(now)
    else:
        ends_at = ZERO_TIME
    return {
        "status": status,
        "labels": labels,
        "annotations": am_annotations(event),
        "startsAt": event["started_at"],
        "endsAt": ends_at,
        "generatorURL": generator_url,
        "fingerprint": fingerprint(str(event["alert_id"])),
    }


def _am_envelope(
    group: dict[str, str], alerts: list[dict[str, Any]], receiver: str, external_url: str
) -> dict[str, Any]:
    def common(key: str) -> dict[str, str]:
        first, *rest = (a[key] for a in alerts)
        return {k: v for k, v in first.items() if all(r.get(k) == v for r in rest)}

    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": "{}:" + _label_set(group),
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": common("labels"),
        "commonAnnotations": common("annotations"),
        "externalURL": external_url,
        "alerts": alerts,
    }


def telegram_body(
    event: Mapping[str, Any], chat_id: str | int, parse_mode: Literal["HTML"] | None = "HTML"
) -> dict[str, Any]:
    """A ``sendMessage`` call: icon, the summary in bold, then the description."""
    icon = _ICONS.get(str(event["status"]), "•")
    summary, description = _summary(event), str(event.get("description") or "")
    if parse_mode == "HTML":
        # Escaped: a "<" in an endpoint's name would otherwise make Telegram refuse the
        # whole message (400, a dead letter).
        text = f"{icon} <b>{_fit_html(summary, TELEGRAM_MAX_TEXT // 2)}</b>"
        if description:
            text += "\n" + _fit_html(description, TELEGRAM_MAX_TEXT - len(text) - 1)
        return {"chat_id": chat_id, "text": text, "parse_mode": "HTML"}
    text = f"{icon} {summary}" + (f"\n{description}" if description else "")
    if len(text) > TELEGRAM_MAX_TEXT:
        text = text[: TELEGRAM_MAX_TEXT - 1] + "…"
    return {"chat_id": chat_id, "text": text}


def slack_body(event: Mapping[str, Any]) -> dict[str, Any]:
    """An incoming-webhook message: icon, the summary in bold, then the description."""
    icon = _SHORTCODES.get(str(event["status"]), ":white_circle:")
    description = str(event.get("description") or "")
    text = f"{icon} *{_summary(event)}*" + (f"\n{description}" if description else "")
    return {"text": text}


def _summary(event: Mapping[str, Any]) -> str:
    summary = str(event.get("summary") or "")
    if summary:
        return summary
    # Events written without messages (a template left empty) still say what and where.
    endpoint = event.get("endpoint") or {}
    where = endpoint.get("name") or endpoint.get("id") or ""
    return f"{event['kind']} {where}".strip()


def _labels(**values: Any) -> dict[str, str]:
    # An empty label is no label in Prometheus and Alertmanager; leave it out.
    return {k: str(v) for k, v in values.items() if v is not None and str(v) != ""}


def _label_set(labels: Mapping[str, str]) -> str:
    # Alertmanager's form of a label set: sorted, values quoted as Go's %q does (printable
    # Unicode kept), ", " between pairs.
    return (
        "{"
        + ", ".join(f"{k}={json.dumps(labels[k], ensure_ascii=False)}" for k in sorted(labels))
        + "}"
    )


def _fit_html(raw: str, limit: int) -> str:
    """``raw`` HTML-escaped, cut so that its escaped form has at most ``limit`` characters."""
    escaped = html.escape(raw, quote=False)
    if len(escaped) <= limit:
        return escaped
    # Cut character by character, so an entity such as &amp; is never split in two.
    out: list[str] = []
    used = 0
    for char in raw:
        piece = html.escape(char, quote=False)
        if used + len(piece) > limit - 1:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + "…"
