"""Every sink type, registered once: its config model and how to build it.

The config schema (``sinks:``), the CLI's choices and the docs derive from ``SINKS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, cast

from pydantic import BaseModel, Field

from vcmon.delivery.grouping import GroupPolicy
from vcmon.delivery.sinks.alertmanager import AlertmanagerConfig, AlertmanagerSink
from vcmon.delivery.sinks.base import Sink
from vcmon.delivery.sinks.console import ConsoleConfig, ConsoleSink
from vcmon.delivery.sinks.mqtt_config import MqttConfig
from vcmon.delivery.sinks.webhook import WebhookConfig, WebhookSink

# type → (config model, factory(config, instance) → sink)
SINKS: Final[dict[str, tuple[type[BaseModel], Callable[[Any, str], Sink]]]] = {
    "console": (ConsoleConfig, lambda cfg, instance: ConsoleSink(cfg)),
    "alertmanager": (AlertmanagerConfig, lambda cfg, instance: AlertmanagerSink(cfg)),
    "mqtt": (MqttConfig, lambda cfg, instance: _mqtt(cfg, instance)),
    "webhook": (WebhookConfig, lambda cfg, instance: WebhookSink(cfg)),
}

# Every config model of SINKS (a test checks that none is missing).
SinkConfig = Annotated[
    ConsoleConfig | AlertmanagerConfig | MqttConfig | WebhookConfig, Field(discriminator="type")
]


def _mqtt(config: MqttConfig, instance: str) -> Sink:
    from vcmon.delivery.sinks.mqtt import (
        MqttSink,  # the client library only when an MQTT sink exists
    )

    return MqttSink(config, instance)


def grouping_of(config: BaseModel) -> GroupPolicy | None:
    """A sink config's group policy; machine sinks (MQTT, Alertmanager) have none."""
    grouping = getattr(config, "grouping", None)
    return None if grouping is None else cast("GroupPolicy | None", grouping())


def build_sinks(configs: Sequence[Any], instance: str) -> list[Sink]:
    """One sink per config entry; the console alone when there is none."""
    if not configs:
        return [ConsoleSink(ConsoleConfig())]
    return [SINKS[str(cfg.type)][1](cfg, instance) for cfg in configs]
