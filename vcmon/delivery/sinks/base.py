"""What every sink is: a narrow async interface and the errors that tell the outbox what to do.

The outbox (one dispatcher per sink, reading the durable event log with the sink's own
cursor) calls ``send`` with one event at a time, in order, and advances the cursor only when
``send`` returns: returning means the receiver acknowledged (MQTT PUBACK, HTTP 2xx). A sink
never retries by itself and never sleeps; it raises, and the outbox decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from vcmon.delivery.grouping import Notification


class SinkError(Exception):
    """A send that did not succeed; ``reason`` is short and goes into metrics and logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Retry(SinkError):
    """Try again later (connection lost, timeout, 5xx, 408, 429); ``after`` is the receiver's
    Retry-After in seconds, when it gave one."""

    def __init__(self, reason: str, detail: str = "", after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.after = after


class Reject(SinkError):
    """The receiver refused this event for good (4xx other than 408/429): dead letter it."""


class Gone(SinkError):
    """The target asked never to be called again (HTTP 410): disable it."""


class SinkSetupError(ValueError):
    """A sink cannot be built from its config: a secret or file it names is missing or wrong.

    Config loading calls each sink config's ``check()`` so this is reported as a config error.
    """


class Sink(Protocol):
    """One configured destination."""

    name: str  # unique among sinks, from the config

    async def start(self) -> None:
        """Connect or prepare; may raise Retry (the outbox retries with backoff)."""
        ...

    async def send(self, event: Mapping[str, Any]) -> None:
        """Deliver one event (the DESIGN.md §4 JSON object); return once acknowledged."""
        ...

    async def close(self) -> None:
        """Release connections; announce going offline where the protocol has a way."""
        ...


@runtime_checkable
class GroupSink(Sink, Protocol):
    """A sink for people, which can also deliver a group of alerts as one message."""

    async def send_group(self, notification: Notification) -> None:
        """Deliver one grouped notification; return once acknowledged."""
        ...
