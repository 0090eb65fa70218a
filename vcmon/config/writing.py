"""Config written back as YAML: an endpoint as a file holds it, so that loading it gives the
same endpoint (used by the CSV import and by the lab's generated config)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vcmon.config.schema import Endpoint, EndpointSpec


def escape_env(value: Any) -> Any:
    """``value`` with every '${' written '$${', so that loading it does not expand it."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, dict):
        return {k: escape_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_env(v) for v in value]
    return value


def endpoint_document(
    ep: Endpoint | EndpointSpec, timing: Mapping[str, float | int] | None = None
) -> dict[str, Any]:
    """``ep`` as an item of an ``endpoints:`` list: keys at their defaults left out, ``timing``
    (the keys that differ from the defaults) last."""
    doc: dict[str, Any] = {
        "id": ep.id,
        "name": ep.name,
        "address": ep.address,
        "district": ep.district,
        "level": ep.level.value,
    }
    if ep.parent:
        doc["parent"] = ep.parent[0] if len(ep.parent) == 1 else list(ep.parent)
    if ep.site is not None:
        doc["site"] = ep.site
    if ep.labels:
        doc["labels"] = dict(ep.labels)
    if ep.probe != "icmp":
        doc["probe"] = ep.probe
    if ep.alerts is not None:
        doc["alerts"] = ep.alerts.model_dump(mode="json", by_alias=True, exclude_unset=True)
    doc.update(timing or {})
    escaped: dict[str, Any] = escape_env(doc)
    return escaped
