"""The I/O around the alert engine: feeds it rounds and ticks, writes what it decides.

Every decision is written to the store (one transaction) before anything else sees it, so
the event log is the single source for every sink and a restart resumes exactly there.

When the state file cannot be written (a full or read-only disk, permissions), probing goes
on: decisions of rounds and ticks are held in memory (``HeldQueue``) and written, in order,
as soon as a write succeeds again (tried every tick); their events reach the sinks only then.
Meanwhile a ``state_store_failing`` alert is handed straight to the sinks (``urgent``), since
it cannot go through the event log. Writes asked for by people (silences, acks) are not held:
they fail with StoreError and leave the engine exactly as it was.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from vcmon.alerts.engine import AlertEngine, measurements
from vcmon.alerts.feed import Feed
from vcmon.alerts.held import HeldQueue
from vcmon.alerts.model import Alert, Changes, Kind, Silence, Snapshot, Status, rfc3339
from vcmon.alerts.store import Store, StoreError, StoreUnavailable, UnwritableValue
from vcmon.clock import Clock, SystemClock
from vcmon.config import Config
from vcmon.config.alerts import Matchers
from vcmon.logs import event
from vcmon.measure.results import EndpointRecord
from vcmon.measure.stats import Observation
from vcmon.states import State
from vcmon.text import slugify

log = logging.getLogger(__name__)

TICK = 1.0  # s between time-driven decisions (windows, silences, held verdicts)
DAY = 86400.0
PRUNE_EVERY = 6 * 3600.0  # s between prunings of the state file (the first soon after start)
FLUSH_BATCH: Final = 500  # held decisions written per transaction once the disk is back


@dataclass(frozen=True, slots=True)
class StoreState:
    """How the state file is doing, for /-/ready, /api/v1/status and the metrics."""

    ok: bool
    error: str | None
    since: float | None  # when the current failure began
    pending_changes: int  # decisions held in memory, not yet written
    pending_events: int
    write_failures: int  # failed writes (and failed opens) since start
    dropped_events: int  # held events dropped because too many waited

    def to_json(self) -> dict[str, Any]:
        """The ``state_store`` object of /api/v1/status."""
        return {
            "ok": self.ok,
            "error": self.error,
            "since": rfc3339(self.since) if self.since is not None else None,
            "pending_changes": self.pending_changes,
            "pending_events": self.pending_events,
            "write_failures": self.write_failures,
            "dropped_events": self.dropped_events,
        }


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

    def __init__(
        self, config: Config, store: Store, clock: Clock | None = None, *,
        held: HeldQueue | None = None,
    ) -> None:  # fmt: skip
        self.clock = clock or SystemClock()
        self.store = store
        self.config = config
        self.held = held or HeldQueue()
        self._failing_since: float | None = None
        self._error: str | None = None
        now = self.clock.time()
        if store.is_open:
            snapshot = store.load(now)
        else:
            # No state to restore: decide from nothing, hold it all until the file opens.
            snapshot = Snapshot(epoch=secrets.token_hex(4), seq=0)
            self._store_failed(StoreUnavailable(store._why), now)
        self.engine = self._new_engine(snapshot, now)
        self.events_written = 0
        # What is committed, for delivery: events written, endpoint status documents, and
        # the urgent event that cannot be written (state_store_failing).
        self.changes = Feed()
        # Each sink's failing-since time (None while it delivers), for sink_failing alerts.
        self.sink_status: Callable[[], Mapping[str, float | None]] = dict
        self.retention = config.alerts.retention_days * DAY
        self._pruned_at: float | None = None
        self.commit(self.engine.take_startup_changes())

    @classmethod
    def open(cls, config: Config, clock: Clock | None = None) -> AlertRuntime:
        """Open (or create) the state file of ``config`` and restore the engine from it.

        A file that cannot be opened for a reason outside it (permissions, a full or
        read-only disk) is tried again every tick while the engine decides from an empty
        state; one that is not a usable vcmon database (empty, corrupt, newer) raises."""
        path = state_path(config)
        try:
            store = Store.open(path)
        except StoreUnavailable as exc:
            store = Store.unopened(path, exc)
        return cls(config, store, clock)

    def _new_engine(self, snapshot: Snapshot, now: float) -> AlertEngine:
        config = self.config
        return AlertEngine(
            config.endpoints, config.alerts, instance=config.instance, snapshot=snapshot, now=now
        )

    def close(self) -> None:
        """Close the store (what is still held is lost, as a crash would lose it)."""
        if self.held:
            event(log, logging.ERROR, "state_store_unwritten", decisions=len(self.held),
                  events=self.held.events, path=str(self.store.path))  # fmt: skip
        self.store.close()

    # -- writing -----------------------------------------------------------------------------

    def commit(self, changes: Changes | None) -> None:
        """Write what a round or a tick decided, after whatever is still held; if the state
        file cannot be written, hold it (never raises StoreError)."""
        if changes is None or changes.empty():
            return
        self._tell_status(changes)
        dropped = self.held.push(changes)
        if dropped:
            event(log, logging.ERROR, "state_store_events_dropped", events=dropped,
                  held=self.held.events, total_dropped=self.held.dropped_events)  # fmt: skip
        if self.store.is_open and self._failing_since is None:
            self.write_held()  # while failing, only the tick tries again: no write per round
        if self.held:
            self._send_urgent(changes)

    def write_held(self) -> bool:
        """Write the held decisions, oldest first; True once none is left."""
        now = self.clock.time()
        size = FLUSH_BATCH
        while self.held:
            batch = self.held.head(size)
            try:
                self.store.apply_all(batch)
            except UnwritableValue as exc:
                if len(batch) > 1:
                    size = 1  # find the one decision that cannot be stored
                    continue
                # A decision of the engine's own that can never be written would block every
                # later one: give it up, loudly.
                self.held.pop(1)
                self.held.dropped_events += len(batch[0].events)
                event(log, logging.ERROR, "state_store_decision_dropped", error=str(exc),
                      events=len(batch[0].events))  # fmt: skip
                continue
            except StoreError as exc:
                self._store_failed(exc, now)
                return False
            self._written(self.held.pop(len(batch)))
        return True

    def _written(self, decisions: Sequence[Changes]) -> None:
        """Tell the sinks and log each event on one line, once it is on disk."""
        if any(c.events for c in decisions):
            self.changes.written()
        for ev in (ev for c in decisions for ev in c.events):
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

    def _tell_status(self, changes: Changes) -> None:
        """Endpoint states go out as decided (MQTT's retained status needs no state file)."""
        if self.changes.wants_statuses:
            for rec in changes.health:
                if rec.endpoint_id in self.engine.nodes:
                    self.changes.status(rec.endpoint_id, self.status_doc(rec.endpoint_id))

    def _send_urgent(self, changes: Changes) -> None:
        """The state_store_failing firing cannot wait for the event log: log it and hand it
        to the sinks now (it is written, with the same id, once the file is back)."""
        for ev in changes.events:
            if ev.kind is not Kind.STATE_STORE_FAILING or ev.status is not Status.FIRING:
                continue
            event(log, logging.ERROR, "alert_firing", alert_id=ev.alert_id, kind=ev.kind.value,
                  severity=ev.severity.value, endpoint=ev.target.id, seq=ev.seq,
                  summary=ev.summary, written=False)  # fmt: skip
            self.changes.urgent(ev)

    def _store_failed(self, exc: StoreError, now: float) -> None:
        self._error = str(exc)
        if self._failing_since is None:
            self._failing_since = now
            event(log, logging.ERROR, "state_store_failing", error=str(exc),
                  held=len(self.held))  # fmt: skip

    def _store_recovered(self, now: float) -> None:
        if self._failing_since is None:
            return
        event(log, logging.INFO, "state_store_recovered",
              failed_for=f"{now - self._failing_since:.1f}s",
              write_failures=self.store.write_failures,
              dropped_events=self.held.dropped_events)  # fmt: skip
        self._failing_since = self._error = None

    def _check_store(self, now: float) -> None:
        """While failing: open the file if it never opened, write what is held, or prove a
        write works; the failure ends only with a successful write."""
        if not self.store.is_open:
            try:
                self.store.reopen()
                self._adopt_opened_store(now)
            except StoreError as exc:
                if self.store.is_open:
                    self.store.unopen(exc)  # adopted next time, not written to as it is
                self._store_failed(exc, now)
                return
        if self.held:
            if not self.write_held():
                return
        else:
            try:
                self.store.check_writable(now)
            except StoreError as exc:
                self._store_failed(exc, now)
                return
        self._store_recovered(now)

    def _adopt_opened_store(self, now: float) -> None:
        """The file opened at last. Decisions made from nothing fit an empty file: they are
        written. A file with state of its own wins: the engine restarts from it and the held
        decisions (made without knowing it) are dropped, counted."""
        snapshot = self.store.load(now)
        if not (snapshot.seq or snapshot.alerts or snapshot.health or snapshot.silences):
            return
        dropped = self.held.pop(len(self.held))
        self.held.dropped_events += sum(len(c.events) for c in dropped)
        event(log, logging.WARNING, "state_store_adopted", path=str(self.store.path),
              dropped_decisions=len(dropped), open_alerts=len(snapshot.alerts))  # fmt: skip
        # The state_store_failing alert already went to the sinks: it stays open, so its
        # resolve follows.
        told = [a for a in self.engine.alerts.values()
                if a.kind is Kind.STATE_STORE_FAILING and a.notified]  # fmt: skip
        self.engine = self._new_engine(replace(snapshot, alerts=(*snapshot.alerts, *told)), now)
        self.held.push(Changes(upserted=tuple(told)))
        self.held.push(self.engine.take_startup_changes())

    def store_state(self) -> StoreState:
        """The state file's health now."""
        return StoreState(
            ok=self._failing_since is None and not self.held,
            error=self._error,
            since=self._failing_since,
            pending_changes=len(self.held),
            pending_events=self.held.events,
            write_failures=self.store.write_failures,
            dropped_events=self.held.dropped_events,
        )

    def _decide_now(self, decide: Callable[[], Changes | None]) -> Changes | None:
        """A write asked for by someone: decided and written now, or not at all (StoreError,
        with the engine exactly as it was)."""
        if self.held and not self.write_held():  # earlier decisions go first
            raise StoreError(f"the state file cannot be written: {self._error}")
        saved = self.engine.checkpoint()
        changes = decide()
        if changes is None or changes.empty():
            return changes
        try:
            self.store.apply(changes)
        except StoreError as exc:
            self.engine.restore(saved)
            if not isinstance(exc, UnwritableValue):
                self._store_failed(exc, self.clock.time())
            raise
        self._tell_status(changes)
        self._written((changes,))
        if not self.held:
            self._store_recovered(self.clock.time())  # a write worked: nothing is owed
        return changes

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

    def ack_from(self, alert_id: str, payload: Mapping[str, Any]) -> str:  # AckReceiver
        """An acknowledgement that arrived as a message (MQTT ``<prefix>/ack/<alert_id>``);
        what became of it: accepted, invalid, unknown_alert or not_stored (the state file
        cannot be written) (for vcmon_acks_total)."""
        from vcmon.alerts.durations import BadInput, parse_duration

        by = str(payload.get("by") or "mqtt")
        try:
            duration = parse_duration(payload["duration"]) if payload.get("duration") else None
        except BadInput as exc:
            event(log, logging.WARNING, "ack_invalid", alert_id=alert_id, error=str(exc))
            return "invalid"
        try:
            acked = self.ack(alert_id, by, str(payload.get("comment", "")), duration)
        except StoreError as exc:
            event(log, logging.WARNING, "ack_not_stored", alert_id=alert_id, error=str(exc))
            return "not_stored"
        if acked is None:
            event(log, logging.INFO, "ack_unknown_alert", alert_id=alert_id, by=by)
            return "unknown_alert"
        return "accepted"

    def on_round(self, rec: EndpointRecord, obs: Observation) -> None:
        """Fold a finished round into the engine and write the state it decided into the
        record (the one writer of a record's state), logging a change."""
        self.commit(self.engine.observe(rec.endpoint.id, obs, self.clock.time()))
        node = self.engine.nodes.get(rec.endpoint.id)
        if node is None or node.state is None:
            return
        previous, rec.state = rec.state, node.state
        # Startup into "up" is no news; everything else is.
        if node.state is not previous and not (previous is None and node.state is State.UP):
            event(log, logging.INFO, "state_changed", endpoint=rec.endpoint.id,
                  probe=rec.probe, previous=previous.value if previous else "none",
                  state=node.state.value, loss=f"{obs.loss_ratio:.2f}",
                  failure=obs.failure or "")  # fmt: skip

    def reload(self, config: Config) -> None:
        """Adopt a reloaded config."""
        self.config = config
        self.commit(self.engine.replace(config.endpoints, config.alerts, self.clock.time()))
        self.retention = config.alerts.retention_days * DAY

    async def run(self) -> None:
        """Make the time-driven decisions every TICK seconds, until cancelled."""
        while True:
            await asyncio.sleep(TICK)  # a cadence, not a synchronisation
            self.step()

    def step(self) -> None:
        """One tick's work: time-driven decisions, sink and state file health, pruning."""
        now = self.clock.time()
        if self._failing_since is not None or self.held:
            self._check_store(now)
        self.commit(self.engine.tick(now))
        self.commit(self.engine.sink_health(self.sink_status(), now))
        self.commit(self.engine.store_health(self._failing_since, str(self.store.path), now))
        self.prune(now)

    def prune(self, now: float) -> None:
        """Every PRUNE_EVERY, delete from the state file what is older than the retention."""
        if not self.retention or (
            self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY
        ):
            return
        self._pruned_at = now
        try:
            gone = self.store.prune(now - self.retention, self.sink_status().keys())
        except StoreError as exc:
            self._store_failed(exc, now)  # tried again in PRUNE_EVERY
            return
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
        self._decide_now(lambda: self.engine.add_silence(silence, now))
        return silence

    def expire_silence(self, silence_id: str) -> Silence | None:
        """End a silence now; the expired silence, or None if there is no such active one."""
        now = self.clock.time()
        changes = self._decide_now(lambda: self.engine.expire_silence(silence_id, now))
        if changes is None:
            return None
        return next((s for s in changes.silences if s.id == silence_id), None)

    def ack(
        self, alert_id: str, by: str, comment: str, duration: float | None = None
    ) -> Alert | None:
        """Acknowledge an open alert for ``duration`` seconds (None: while it lasts); the
        acknowledged alert, or None if no open alert has this id."""
        now = self.clock.time()
        until = now + duration if duration is not None else None
        changes = self._decide_now(lambda: self.engine.ack(alert_id, by, comment, until, now))
        if changes is None:
            return None
        return next(a for a in self.engine.alerts.values() if a.alert_id == alert_id)

    def suppressed_by(self, alert: Alert) -> str | None:
        """Why the alert's firing is held back now, or None."""
        return self.engine.suppressed_by(alert, self.clock.time())
