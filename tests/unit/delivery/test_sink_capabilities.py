"""Sink capabilities are declared Protocols, checked when a sink type is registered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from vcmon.delivery.sinks import registry
from vcmon.delivery.sinks.base import (
    AckSource,
    GroupSink,
    Maintained,
    Seedable,
    Sink,
    StatusPublisher,
    check_capabilities,
)


class _Base:
    name = "x"

    async def start(self) -> None: ...

    async def send(self, event: Any) -> None: ...

    async def close(self) -> None: ...


class Seeds(_Base, Sink, Seedable):
    def seed(self, events: Iterable[Mapping[str, Any]]) -> None: ...


class ClaimsToSeed(_Base, Sink, Seedable):
    """Declares Seedable and forgets seed(): the Protocol's stub would pass for it."""


class ClaimsAcks(_Base, Sink, AckSource):
    async def subscribe_acks(self, callback: Any) -> None: ...  # count_acks is missing


class NotASink:
    async def send(self, event: Any) -> None: ...


def test_every_registered_sink_class_is_checked_and_declares_what_delivery_uses() -> None:
    from vcmon.delivery.sinks.alertmanager import AlertmanagerSink
    from vcmon.delivery.sinks.console import ConsoleSink
    from vcmon.delivery.sinks.mqtt import MqttSink
    from vcmon.delivery.sinks.webhook import WebhookSink

    for cls in (AlertmanagerSink, ConsoleSink, MqttSink, WebhookSink):
        check_capabilities(cls)
    declared = {
        cls.__name__: {p.__name__ for p in (GroupSink, Seedable, Maintained, StatusPublisher,
                                            AckSource) if p in cls.__mro__}
        for cls in (AlertmanagerSink, ConsoleSink, MqttSink, WebhookSink)
    }  # fmt: skip
    assert declared == {
        "AlertmanagerSink": {"Seedable", "Maintained"},
        "ConsoleSink": {"GroupSink"},
        "MqttSink": {"Maintained", "StatusPublisher", "AckSource"},
        "WebhookSink": {"GroupSink"},
    }


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (ClaimsToSeed, "ClaimsToSeed declares Seedable but does not implement seed()"),
        (ClaimsAcks, "ClaimsAcks declares AckSource but does not implement count_acks()"),
        (NotASink, "NotASink does not declare Sink"),
    ],
)
def test_a_declared_capability_that_is_not_implemented_is_refused(cls: type, message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_capabilities(cls)


def test_registration_refuses_a_wrong_class_at_once_and_accepts_a_right_one() -> None:
    class Cfg(BaseModel):
        type: str = "test"

    try:
        with pytest.raises(TypeError, match="does not implement seed"):
            registry.register("test-bad", Cfg, ClaimsToSeed, lambda cfg, i: ClaimsToSeed())  # type: ignore[abstract]
        assert "test-bad" not in registry.SINKS
        registry.register("test-good", Cfg, Seeds, lambda cfg, i: Seeds())
        assert isinstance(registry.SINKS["test-good"][1](Cfg(), "lab"), Seedable)
        with pytest.raises(ValueError, match="registered twice"):
            registry.register("test-good", Cfg, Seeds, lambda cfg, i: Seeds())
    finally:
        registry.SINKS.pop("test-good", None)


def test_a_lazily_imported_class_is_checked_when_a_sink_of_it_is_built() -> None:
    class Cfg(BaseModel):
        type: str = "test-lazy"

    registry.register("test-lazy", Cfg, lambda: ClaimsToSeed, lambda cfg, i: ClaimsToSeed())  # type: ignore[abstract]
    try:
        with pytest.raises(TypeError, match="does not implement seed"):
            registry.build_sinks([Cfg()], "lab")
    finally:
        registry.SINKS.pop("test-lazy", None)
        registry._LAZY.pop("test-lazy", None)
