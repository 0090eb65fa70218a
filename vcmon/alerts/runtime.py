"""The I/O around the alert engine: feeds it rounds and ticks, writes what it decides.

Every decision is written to the store (one transaction) before anything else sees it, so
the event log is the single source for every sink and a restart resumes exactly there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vcmon.alerts.engine import AlertEngine, measurements
from vcmon.alerts.model import Alert, Changes, Silence, Status, rfc3339
from vcmon.alerts.policy import Matchers
from vcmon.alerts.store import Store
from vcmon.clock import Clock, SystemClock
from vcmon.config import Config
from vcmon.logs import event
from vcmon.results import EndpointRecord
from vcmon.stats import Observation
from vcmon.text import slugify

log = logging.getLogger(__name__)

TICK = 1.0  # s between time-driven decisions (windows, silences, held verdicts)
DAY = 86400.0
PRUNE_EVERY = 6 * 3600.0  # s between prunings of the state file (the first soon after start)


def state_path(config: Config, env: Mapping[str, str] | None = None) -> Path:
    """Where the alert state lives: ``alerts.state_file`` (relative to the config file), else
    systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME or ~/.local/state, under vcmon/."""
    env = os.environ if env is None else env
    name = f"{slugify(config.instance) or 'vcmon'}.db"
    if config.alerts.state_file:
        return config.source.parent / Path(config.alerts.state_file).expanduser()
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0]) / name
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vcmon" / name


class AlertRuntime:
    """Owns the engine and its store for one daemon."""

    def __init__(self, config: Config, store: Store, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.store = store
        now = self.clock.time()
        self.engine = AlertEngine(
            config.endpoints,
            config.alerts,
            instance=config.instance,
            snapshot=store.load(now),
            now=now,
        )
        self.events_written = 0
        self.listeners: list[Callable[[], None]] = []  # told after events are written
        # Told (endpoint id, status doc) when an endpoint's state changes (MQTT retains it).
        self.status_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        # Each sink's failing-since time (None while it delivers), for sink_failing alerts.
        self.sink_status: Callable[[], Mapping[str, float | None]] = dict
        self.retention = config.alerts.retention_days * DAY
        self._pruned_at: float | None = None
        self.commit(self.engine.take_startup_changes())

    @classmethod
    def open(cls, config: Config, clock: Clock | None = None) -> AlertRuntime:
        """Open (or create) the state file of ``config`` and restore the engine from it."""
        return cls(config, Store.open(state_path(config)), clock)

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def commit(self, changes: Changes | None) -> None:
        """Write ``changes`` in one transaction, then log each event on one line."""
        if changes is None or changes.empty():
            return
        self.store.apply(changes)
        if self.status_listeners:
            for rec in changes.health:
                doc = self.status_doc(rec.endpoint_id)
                for status_listener in self.status_listeners:
                    status_listener(rec.endpoint_id, doc)
        if changes.events:
            for listener in self.listeners:
                listener()
        for ev in changes.events:
            self.events_written += 1
            event(
                log,
                logging.WARNING if ev.status.value == "firing" else logging.INFO,
                f"alert_{ev.status.value}",
                alert_id=ev.alert_id,
                kind=ev.kind.value,
                severity=ev.severity.value,
                endpoint=ev.target.id,
                affected=len(ev.affected),
                seq=ev.seq,
                summary=ev.summary,
            )

    def status_doc(self, endpoint_id: str) -> dict[str, Any]:
        """An endpoint's current state and last figures, as MQTT's retained status carries."""
        node = self.engine.nodes[endpoint_id]
        return {
            "endpoint": node.target.to_json(),
            "state": node.state.value if node.state else None,
            "since": rfc3339(node.since),
            "measurements": asdict(measurements(node.last)),
            "instance": self.engine.instance,
        }

    def ack_from(self, alert_id: str, payload: Mapping[str, Any]) -> None:
        """An acknowledgement that arrived as a message (MQTT ``<prefix>/ack/<alert_id>``)."""
        from vcmon.api import BadInput, parse_duration

        by = str(payload.get("by") or "mqtt")
        try:
            duration = parse_duration(payload["duration"]) if payload.get("duration") else None
        except BadInput as exc:
            event(log, logging.WARNING, "ack_invalid", alert_id=alert_id, error=str(exc))
            return
        if self.ack(alert_id, by, str(payload.get("comment", "")), duration) is None:
            event(log, logging.INFO, "ack_unknown_alert", alert_id=alert_id, by=by)

    def on_round(self, rec: EndpointRecord, obs: Observation) -> None:
        """Fold a finished round into the engine; the record shows the engine's state."""
        self.commit(self.engine.observe(rec.endpoint.id, obs, self.clock.time()))
        node = self.engine.nodes.get(rec.endpoint.id)
        if node is not None and node.state is not None:
            rec.state = node.state

    def reload(self, config: Config) -> None:
        """Adopt a reloaded config."""
        self.commit(self.engine.replace(config.endpoints, config.alerts, self.clock.time()))
        self.retention = config.alerts.retention_days * DAY

    async def run(self) -> None:
        """Make the time-driven decisions every TICK seconds, until cancelled."""
        while True:
            await asyncio.sleep(TICK)  # a cadence, not a synchronisation
            now = self.clock.time()
            self.commit(self.engine.tick(now))
            self.commit(self.engine.sink_health(self.sink_status(), now))
            self.prune(now)

    def prune(self, now: float) -> None:
        """Every PRUNE_EVERY, delete from the state file what is older than the retention."""
        if not self.retention or (
            self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY
        ):
            return
        self._pruned_at = now
        gone = self.store.prune(now - self.retention, self.sink_status().keys())
        if any(gone.values()):
            event(log, logging.INFO, "state_pruned", older_than_days=self.retention / DAY, **gone)

    # -- what the API and the CLI ask for -----------------------------------------------------

    def alerts(self) -> list[Alert]:
        """Open alerts, oldest first."""
        return self.engine.open_alerts()

    def summary(self, alert: Alert, status: Status, at: float) -> str:
        """The one-line summary an event of ``status`` at ``at`` would carry, worded now (the
        config's locale and templates after a reload, as the next event's would be)."""
        return self.engine.words(alert, status, at)[0]

    def ended_alerts(self, since: float) -> list[tuple[Alert, float]]:
        """Alerts that ended at or after ``since`` (and are still kept), with their end."""
        return self.store.ended_alerts(since)

    def firing_by_severity(self) -> Counter[str]:
        """Open alerts counted by severity (for vcmon_alerts_firing)."""
        return Counter(a.severity.value for a in list(self.engine.alerts.values()))

    def silences(self, include_expired: bool = False) -> list[Silence]:
        """Silences that have not ended (or all that are kept, with ``include_expired``)."""
        return self.store.silences(self.clock.time(), include_expired=include_expired)

    def add_silence(
        self, matchers: Matchers, duration: float, created_by: str, comment: str,
        starts_at: float | None = None,
    ) -> Silence:  # fmt: skip
        """Create a silence from now (or ``starts_at``) for ``duration`` seconds."""
        now = self.clock.time()
        start = now if starts_at is None else starts_at
        silence = Silence(
            id=secrets.token_hex(6),
            matchers=matchers,
            starts_at=start,
            ends_at=start + duration,
            created_by=created_by,
            comment=comment,
            created_at=now,
        )
        self.commit(self.engine.add_silence(silence, now))
        return silence

    def expire_silence(self, silence_id: str) -> Silence | None:
        """End a silence now; the expired silence, or None if there is no such active one."""
        changes = self.engine.expire_silence(silence_id, self.clock.time())
        if changes is None:
            return None
        self.commit(changes)
        return next((s for s in changes.silences if s.id == silence_id), None)

    def ack(
        self, alert_id: str, by: str, comment: str, duration: float | None = None
    ) -> Alert | None:
        """Acknowledge an open alert for ``duration`` seconds (None: while it lasts); the
        acknowledged alert, or None if no open alert has this id."""
        now = self.clock.time()
        until = now + duration if duration is not None else None
        changes = self.engine.ack(alert_id, by, comment, until, now)
        if changes is None:
            return None
        self.commit(changes)
        return next(a for a in self.engine.alerts.values() if a.alert_id == alert_id)

    def suppressed_by(self, alert: Alert) -> str | None:
        """Why the alert's firing is held back now, or None."""
        return self.engine.suppressed_by(alert, self.clock.time())
