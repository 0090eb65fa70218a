"""Generate exporters/schemas/*.schema.json from vcmon's alert model (the alert contract).

Run after changing AlertEvent, Target, Measurements or the grouped webhook body:

    .venv/bin/python exporters/schemas/generate.py --write

tests/system/test_exporters.py imports this file and checks the committed schemas equal what it
generates, and validates real events against them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vcmon.alerts.model import AlertEvent, Kind, Measurements, Severity, Status, Target

SCHEMAS = Path(__file__).resolve().parent

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
TIMESTAMP = {"type": "string", "format": "date-time", "pattern": RFC3339}
EVENT_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    # field of AlertEvent.to_json → (description, schema); enums and objects are filled in below
    "id": ("Event id, unique and stable across retries: the idempotency key.",
           {"type": "string", "minLength": 1}),
    "alert_id": ("Stable for the alert's life: the same on its firing, acknowledged and "
                 "resolved events.", {"type": "string", "minLength": 1}),
    "status": ("firing; resolved once the condition cleared; acknowledged when someone on "
               "call took it (the alert still fires).", {}),
    "kind": ("What is wrong; `test` for `vcmon alerts test`.", {}),
    "severity": ("How bad.", {}),
    "instance": ("The vcmon that sent it (its `instance:` setting).", {"type": "string"}),
    "seq": ("Position in the sender's event log; 0 for test events.",
            {"type": "integer", "minimum": 0}),
    "endpoint": ("What the alert is about: an endpoint, or the district for district_down.", {}),
    "affected": ("Ids of the endpoints rolled up under this alert (group_down, district_down).",
                 {"type": "array", "items": {"type": "string"}}),
    "measurements": ("Figures of the round that decided, in the units people read; null when "
                     "not measured.", {}),
    "started_at": ("When the condition started (RFC 3339, UTC).", TIMESTAMP),
    "ended_at": ("When it ended (RFC 3339, UTC); null while firing.",
                 {"oneOf": [TIMESTAMP, {"type": "null"}]}),
    "summary": ("One line in the receiver's language (vi or en).", {"type": "string"}),
    "description": ("More detail, same language.", {"type": "string"}),
}  # fmt: skip
TARGET_FIELDS = {
    "id": "Inventory id (the `endpoint` label of the metrics).",
    "name": "Name people use for the room.",
    "address": "Address probed; empty for a district.",
    "district": "District it belongs to.",
    "level": "province, department, district or commune (empty for test events).",
}
MEASUREMENT_FIELDS = {
    "rtt_ms": "Average round-trip time of the round, ms.",
    "jitter_ms": "Jitter (IPDV, mean absolute difference of consecutive RTTs), ms.",
    "loss_pct": "Packet loss, %.",
    "mos": "Estimated MOS (simplified ITU-T G.107 E-model), 1–4.5.",
}


def sample_event(status: Status = Status.FIRING) -> AlertEvent:
    """An event with every field set, as the engine makes one."""
    return AlertEvent(
        id="ep0c1d-42", seq=42, alert_id="co-to:group_down:1", status=status,
        kind=Kind.GROUP_DOWN, severity=Severity.CRITICAL, instance="vcmon-hl1",
        target=Target("co-to", "Huyện Cô Tô", "127.10.8.1", "Cô Tô", "district"),
        affected=("co-to-a", "co-to-b"),
        measurements=Measurements(rtt_ms=None, jitter_ms=None, loss_pct=100.0, mos=1.0),
        started_at=1_795_850_000.0,
        ended_at=1_795_850_120.5 if status is Status.RESOLVED else None,
        at=1_795_850_121.0, summary="Huyện Cô Tô: mất kết nối — 1/1 xã không liên lạc được",
        description="…",
    )  # fmt: skip


def _described(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, **schema}


def event_schema() -> dict[str, Any]:
    """JSON Schema of AlertEvent.to_json (docs/architecture.md), from the model's enums and
    fields."""
    doc = sample_event().to_json()
    unknown = set(doc) - set(EVENT_FIELDS)
    assert not unknown, (
        f"AlertEvent.to_json has new fields {unknown}: describe them in EVENT_FIELDS"
    )
    target_keys = list(doc["endpoint"])
    assert set(target_keys) == set(TARGET_FIELDS), f"Target.to_json is now {target_keys}"
    measure_keys = list(dataclasses.asdict(Measurements()))
    assert list(doc["measurements"]) == measure_keys
    assert set(measure_keys) == set(MEASUREMENT_FIELDS), f"Measurements is now {measure_keys}"
    filled: dict[str, dict[str, Any]] = {
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "kind": {"type": "string", "enum": [k.value for k in Kind] + ["test"]},
        "severity": {"type": "string", "enum": [s.value for s in Severity]},
        "endpoint": {
            "type": "object",
            "required": target_keys,
            "properties": {
                k: _described(TARGET_FIELDS[k], {"type": "string"}) for k in target_keys
            },
        },
        "measurements": {
            "type": "object",
            "required": measure_keys,
            "properties": {
                k: _described(MEASUREMENT_FIELDS[k], {"type": ["number", "null"]})
                for k in measure_keys
            },
        },
    }
    properties = {
        key: _described(EVENT_FIELDS[key][0], filled.get(key) or EVENT_FIELDS[key][1])
        for key in doc
    }
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "urn:vcmon:schema:alert-event",
        "title": "vcmon alert event",
        "description": "One alert event, the same on MQTT (vcmon/events/<kind>/<endpoint>) and "
        "in webhook bodies (docs/architecture.md). Receivers dedupe by `id`. Fields may be added; "
        "ignore those you do not know. Generated from vcmon.alerts.model by "
        "exporters/schemas/generate.py.",
        "type": "object",
        "required": list(doc),
        "properties": properties,
    }


def webhook_schema() -> dict[str, Any]:
    """The native webhook body: {type, timestamp, data: event}."""
    event = {k: v for k, v in event_schema().items() if k not in ("$schema", "$id")}
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "urn:vcmon:schema:webhook-vcmon",
        "title": "vcmon native webhook body",
        "description": "Body of a webhook sink with `body: vcmon`, sent with the Standard "
        "Webhooks headers webhook-id (= data.id), webhook-timestamp and webhook-signature "
        "(docs/architecture.md). Generated from vcmon.alerts.model by "
        "exporters/schemas/generate.py.",
        "type": "object",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": _described(
                "vcmon.alert.<status of data>.",
                {"type": "string", "enum": [f"vcmon.alert.{s.value}" for s in Status]},
            ),
            "timestamp": _described("When the body was made (RFC 3339, UTC).", TIMESTAMP),
            "data": _described("The alert event.", {"$ref": "#/$defs/event"}),
        },
        "$defs": {"event": event},
    }


def webhook_group_schema() -> dict[str, Any]:
    """The native webhook body of a grouped sink: {type, timestamp, data: notification}."""
    event = {k: v for k, v in event_schema().items() if k not in ("$schema", "$id")}
    events = {"type": "array", "items": {"$ref": "#/$defs/event"}}
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "urn:vcmon:schema:webhook-vcmon-group",
        "title": "vcmon native webhook body, grouped",
        "description": "Body of a webhook sink with `body: vcmon` and a `group:` policy: one "
        "notification about a group of alerts, sent with the Standard Webhooks headers "
        "(webhook-id = data.id). Generated from vcmon.delivery.grouping by "
        "exporters/schemas/generate.py.",
        "type": "object",
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"type": "string", "enum": ["vcmon.alert.group"]},
            "timestamp": _described("When the body was made (RFC 3339, UTC).", TIMESTAMP),
            "data": {
                "type": "object",
                "required": ["id", "group", "repeat", "changes", "firing"],
                "properties": {
                    "id": _described(
                        "Notification id, the same when the same content is sent again.",
                        {"type": "string", "pattern": "^grp-[0-9a-f]{24}$"},
                    ),
                    "group": _described(
                        "The fields the group is made by (`group.by`) and their values.",
                        {"type": "object", "additionalProperties": {"type": "string"}},
                    ),
                    "repeat": _described(
                        "True when sent only because the group still fires.",
                        {"type": "boolean"},
                    ),
                    "changes": _described(
                        "The newest event of each alert that changed since the group's last "
                        "notification, in log order.",
                        events,
                    ),
                    "firing": _described(
                        "The newest event of each alert of the group still open that did "
                        "not change.",
                        events,
                    ),
                },
            },
        },
        "$defs": {"event": event},
    }


GENERATED: dict[str, Callable[[], dict[str, Any]]] = {
    "alert-event.schema.json": event_schema,
    "webhook-vcmon.schema.json": webhook_schema,
    "webhook-vcmon-group.schema.json": webhook_group_schema,
}


def render(schema: Mapping[str, Any]) -> str:
    """A schema as its file holds it: indented, UTF-8 as is, one trailing newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas() -> None:
    """Write every generated schema beside this script."""
    SCHEMAS.mkdir(parents=True, exist_ok=True)
    for name, build in GENERATED.items():
        (SCHEMAS / name).write_text(render(build()), encoding="utf-8")
        print(f"wrote {SCHEMAS / name}")


def main(argv: list[str]) -> int:
    """``--write`` regenerates the files; anything else prints the usage."""
    if argv != ["--write"]:
        print("usage: generate.py --write   (regenerates exporters/schemas)", file=sys.stderr)
        return 2
    write_schemas()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
