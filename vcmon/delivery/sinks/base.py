"""What every sink is: a narrow async interface and the errors that tell the outbox what to do.

The outbox (one dispatcher per sink, reading the durable event log with the sink's own
cursor) calls ``send`` with one event at a time, in order, and advances the cursor only when
``send`` returns: returning means the receiver acknowledged (MQTT PUBACK, HTTP 2xx). A sink
never retries by itself and never sleeps; it raises, and the outbox decides.

What a sink can do beyond ``send`` is declared, not guessed: its class subclasses each
capability Protocol it has (``GroupSink``, ``Seedable``, ``Maintained``, ``StatusPublisher``,
``AckSource``), the registry checks at registration that each is implemented, and delivery
asks ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

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


@runtime_checkable
class Sink(Protocol):
    """One configured destination."""

    name: str  # unique among sinks, from the config

    async def start(self) -> None:
        """Connect or prepare; may raise Retry (the outbox retries with backoff)."""
        ...

    async def send(self, event: Mapping[str, Any]) -> None:
        """Deliver one event (its contract JSON, docs/architecture.md); return once acknowledged."""
        ...

    async def close(self) -> None:
        """Release connections; announce going offline where the protocol has a way."""
        ...


# -- optional capabilities: a sink class declares each it has by subclassing it ----------------


@runtime_checkable
class GroupSink(Sink, Protocol):
    """A sink for people, which can also deliver a group of alerts as one message."""

    async def send_group(self, notification: Notification) -> None:
        """Deliver one grouped notification; return once acknowledged."""
        ...


@runtime_checkable
class Seedable(Protocol):
    """Keeps state of its own about what fires, rebuilt from the event log at start."""

    def seed(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Adopt ``events``: the newest firing event of every open, announced alert."""
        ...


@runtime_checkable
class Maintained(Protocol):
    """Has upkeep of its own (re-posting, reconnecting), run beside its dispatcher."""

    async def maintain(self) -> None:
        """Do the upkeep until cancelled."""
        ...


@runtime_checkable
class StatusPublisher(Protocol):
    """Keeps each endpoint's current state published (MQTT's retained status)."""

    async def publish_status(self, endpoint_id: str, doc: Mapping[str, Any]) -> None:
        """Publish ``doc`` as the endpoint's state; raise SinkError to be retried."""
        ...


AckCallback = Callable[[str, dict[str, Any]], object]


@runtime_checkable
class AckSource(Protocol):
    """Takes acknowledgements from people (MQTT ``<prefix>/ack/<alert_id>``)."""

    async def subscribe_acks(self, callback: AckCallback) -> None:
        """Call ``callback(alert_id, payload)`` for each ack; what it returns is counted."""
        ...

    def count_acks(self, counter: Any) -> None:
        """Count acks by result in ``counter`` (labelled source, result)."""
        ...


class AckReceiver(Protocol):
    """Where acks taken by a sink go (the alert runtime): the one way back from delivery."""

    def ack_from(self, alert_id: str, payload: Mapping[str, Any]) -> str:
        """Apply one ack; what became of it (accepted, invalid, unknown_alert, not_stored)."""
        ...


CAPABILITIES: Final[tuple[type, ...]] = (Sink, GroupSink, Seedable, Maintained, StatusPublisher,
                                         AckSource)  # fmt: skip


def _members(protocol: type) -> list[str]:
    return [m for m in vars(protocol) if not m.startswith("_") and callable(vars(protocol)[m])]


def check_capabilities(cls: type) -> None:
    """Raise TypeError unless ``cls`` implements every member of each capability it declares
    (a declared Protocol's stub would otherwise pass for the method, and do nothing)."""
    for protocol in (c for c in cls.__mro__ if c in CAPABILITIES):
        for member in _members(protocol):
            owner = next((c for c in cls.__mro__ if member in vars(c)), None)
            if owner is None or owner in CAPABILITIES:
                raise TypeError(
                    f"sink class {cls.__qualname__} declares {protocol.__name__} "
                    f"but does not implement {member}()"
                )
    if Sink not in cls.__mro__:
        raise TypeError(f"sink class {cls.__qualname__} does not declare Sink")
