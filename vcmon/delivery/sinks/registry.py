"""Every sink type, registered once: its config model, its class and how to build it.

The config schema (``sinks:``), the CLI's choices and the docs derive from ``SINKS``.
Registering checks the sink class: it declares ``Sink`` and implements every capability it
declares (see :mod:`vcmon.delivery.sinks.base`), so a wrong class fails at import, not on
the first alert.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, cast

from pydantic import BaseModel, Field

from vcmon.delivery.grouping import GroupPolicy
from vcmon.delivery.sinks.alertmanager import AlertmanagerConfig, AlertmanagerSink
from vcmon.delivery.sinks.base import Sink, check_capabilities
from vcmon.delivery.sinks.console import ConsoleConfig, ConsoleSink
from vcmon.delivery.sinks.mqtt_config import MqttConfig
from vcmon.delivery.sinks.webhook import WebhookConfig, WebhookSink

Factory = Callable[[Any, str], Sink]

# type → (config model, factory(config, instance) → sink)
SINKS: Final[dict[str, tuple[type[BaseModel], Factory]]] = {}
# Sink classes imported only when a sink of theirs is built, checked then (once).
_LAZY: Final[dict[str, Callable[[], type]]] = {}
_CHECKED: Final[set[type]] = set()


def register(
    kind: str, config: type[BaseModel], sink_class: type | Callable[[], type], build: Factory
) -> None:
    """Add sink type ``kind``; ``sink_class`` is the class, or a function importing it (a
    client library loaded only when such a sink exists). TypeError if the class is wrong."""
    if kind in SINKS:
        raise ValueError(f"sink type {kind!r} is registered twice")
    if isinstance(sink_class, type):
        _check(sink_class)
    else:
        _LAZY[kind] = sink_class
    SINKS[kind] = (config, build)


def _check(cls: type) -> None:
    if cls not in _CHECKED:
        check_capabilities(cls)
        _CHECKED.add(cls)


def _mqtt_class() -> type:
    from vcmon.delivery.sinks.mqtt import MqttSink  # the client library only when needed

    return MqttSink


def _mqtt(config: MqttConfig, instance: str) -> Sink:
    from vcmon.delivery.sinks.mqtt import MqttSink

    return MqttSink(config, instance)


register("console", ConsoleConfig, ConsoleSink, lambda cfg, instance: ConsoleSink(cfg))
register("alertmanager", AlertmanagerConfig, AlertmanagerSink,
         lambda cfg, instance: AlertmanagerSink(cfg))  # fmt: skip
register("mqtt", MqttConfig, _mqtt_class, _mqtt)
register("webhook", WebhookConfig, WebhookSink, lambda cfg, instance: WebhookSink(cfg))

# Every config model of SINKS (a test checks that none is missing).
SinkConfig = Annotated[
    ConsoleConfig | AlertmanagerConfig | MqttConfig | WebhookConfig, Field(discriminator="type")
]


def grouping_of(config: BaseModel) -> GroupPolicy | None:
    """A sink config's group policy; machine sinks (MQTT, Alertmanager) have none."""
    grouping = getattr(config, "grouping", None)
    return None if grouping is None else cast("GroupPolicy | None", grouping())


def build_sinks(configs: Sequence[Any], instance: str) -> list[Sink]:
    """One sink per config entry; the console alone when there is none."""
    if not configs:
        return [ConsoleSink(ConsoleConfig())]
    sinks = []
    for cfg in configs:
        kind = str(cfg.type)
        if kind in _LAZY:
            _check(_LAZY[kind]())
        sinks.append(SINKS[kind][1](cfg, instance))
    return sinks
