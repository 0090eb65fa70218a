"""The console sink: one readable, coloured line per event on the terminal.

The default when no sink is configured, and what the demo shows. Colour only when the
stream is a terminal (and NO_COLOR is unset), so redirected output stays plain text.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict

from vcmon.config.alerts import Matchers
from vcmon.delivery.grouping import GroupPolicy, Notification, resolve_group
from vcmon.delivery.sinks.base import GroupSink

_RESET = "\033[0m"
_COLOURS = {"critical": "\033[1;31m", "warning": "\033[33m", "resolved": "\033[32m"}


class ConsoleConfig(BaseModel):
    """``type: console``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["console"] = "console"
    name: str = "console"
    match: Matchers = Matchers()
    stream: Literal["stdout", "stderr"] = "stderr"
    # A terminal shows each event as it is decided unless told to group.
    group: GroupPolicy | bool | None = None

    def grouping(self) -> GroupPolicy | None:
        """How this sink groups, if at all."""
        return resolve_group(self.group, default=False)


def format_line(event: Mapping[str, Any], colour: bool) -> str:
    """``HH:MM:SS FIRING  critical group_down  co-to  summary`` (local time)."""
    at = dt.datetime.now().strftime("%H:%M:%S")
    status = str(event.get("status", ""))
    severity = str(event.get("severity", ""))
    endpoint = event.get("endpoint") or {}
    head = f"{status.upper():<8} {severity:<8} {event.get('kind', ''):<13}"
    line = f"{at} {head} {endpoint.get('id', '')}: {event.get('summary', '')}"
    if event.get("affected"):
        line += f" [{len(event['affected'])} affected]"
    if not colour:
        return line
    key = "resolved" if status == "resolved" else severity
    return f"{_COLOURS.get(key, '')}{line}{_RESET}"


class ConsoleSink(GroupSink):
    """Writes each event as one line; acknowledged once written and flushed."""

    def __init__(self, config: ConsoleConfig, stream: TextIO | None = None) -> None:
        self.name = config.name
        self._which = config.stream
        self._stream = stream

    def _out(self) -> TextIO:
        # Looked up at each write: a live terminal view (the demo's) swaps sys.stderr for
        # one that prints above it.
        if self._stream is not None:
            return self._stream
        return sys.stdout if self._which == "stdout" else sys.stderr

    async def start(self) -> None:
        """Nothing to connect."""

    async def send(self, event: Mapping[str, Any]) -> None:
        """Write the event's line."""
        self._write([event])

    async def send_group(self, notification: Notification) -> None:
        """A headline for the group, then the line of each alert in it."""
        where = " · ".join(v for _, v in notification.group if v) or "vcmon"
        what = "still firing" if notification.repeat else f"{len(notification.changes)} changed"
        if notification.firing and not notification.repeat:
            what += f", {len(notification.firing)} still firing"
        self._write([*notification.changes, *notification.firing], f"── {where}: {what}")

    def _write(self, events: list[Mapping[str, Any]], head: str | None = None) -> None:
        out = self._out()
        colour = out.isatty() and "NO_COLOR" not in os.environ
        lines = [] if head is None else [head]
        lines += [format_line(e, colour) for e in events]
        out.write("".join(line + "\n" for line in lines))
        out.flush()

    async def close(self) -> None:
        """Nothing to release."""
