"""The alert engine: rounds in, health states and alert events out. Pure and synchronous.

Each input (a round, a tick of the clock, a silence) returns the ``Changes`` it caused; the
caller writes them in one transaction before anything is sent. The engine keeps, per
endpoint, its reachability (``vcmon.alerts.health``) and quality levels (``quality``), and derives:

- **topology**: an endpoint whose every parent is down is *unreachable* and raises nothing;
  its parent's alert is the roll-up (``group_down``, ``affected`` = the unreachable
  descendants). While a parent is failing but not yet confirmed, or has not been probed
  since the child began to fail, the child's verdict is *held* (at most ``hold_limit``) so
  the order in which rounds happen to fall never decides between one alert and thirty.
- **districts**: when a large share of a district fails at once without a failing parent
  in common, one ``district_down`` alert rolls up the members that are down.
- **flapping**: one ``flapping`` alert instead of an up/down storm; alerts already open stay
  as they are until it settles.
- **suppression**: silences and maintenance windows hold back a firing (it is sent when they
  end if the condition still holds); a resolve is never held back once its firing was sent.

Desired alerts are recomputed from state and reconciled with the open ones, so there is at
most one open alert per (target, kind), and every firing that was sent ends in one resolve.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from vcmon.alerts import windows
from vcmon.alerts.health import Reach, State, flap_pct, step
from vcmon.alerts.messages import Messages
from vcmon.alerts.model import (
    Alert,
    AlertEvent,
    Changes,
    HealthRecord,
    Kind,
    Measurements,
    Severity,
    Silence,
    Snapshot,
    Status,
    Target,
    matches,
)
from vcmon.alerts.quality import (
    LEVEL_OF_SEVERITY,
    NONE,
    SEVERITY_OF_LEVEL,
    Quality,
)
from vcmon.alerts.quality import observe as observe_quality
from vcmon.config import Endpoint
from vcmon.config.alerts import AlertsConfig, Metric, Policy
from vcmon.measure.stats import Observation
from vcmon.text import slugify
from vcmon.units import ms

REACH_KINDS: Final = frozenset({Kind.ENDPOINT_DOWN, Kind.GROUP_DOWN})
QUALITY_KINDS: Final = {Kind(m.kind): m for m in Metric}
DISTRICT_PREFIX: Final = "district:"
SINK_PREFIX: Final = "sink:"
STORE_PREFIX: Final = "store:"


@dataclass(slots=True)
class Node:
    """One endpoint as the engine sees it."""

    endpoint: Endpoint
    target: Target
    policy: Policy
    reach: Reach = field(default_factory=Reach)
    quality: Quality = field(default_factory=Quality.start)
    reach_state: State | None = None  # up, down or unreachable, after topology
    state: State | None = None  # what the metric shows
    since: float = 0.0
    held_since: float | None = None
    last: Observation | None = None
    children: list[str] = field(default_factory=list)
    persisted: tuple[State | None, bool | None, bool] | None = None  # as last written


@dataclass(frozen=True, slots=True)
class Want:
    """An alert the current state calls for."""

    kind: Kind
    severity: Severity
    affected: tuple[str, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The engine's alerts, silences and event seq at one moment (alerts are frozen values,
    so copies of the dicts are enough)."""

    alerts: Mapping[tuple[str, Kind], Alert]
    silences: Mapping[str, Silence]
    seq: int


def target_of(ep: Endpoint) -> Target:
    """The alert target of an endpoint."""
    return Target(ep.id, ep.name, ep.address, ep.district, ep.level.value, dict(ep.labels))


@functools.lru_cache(maxsize=1024)
def district_target(district: str) -> Target:
    """The pseudo-target of a district's roll-up alert."""
    return Target(DISTRICT_PREFIX + slugify(district), district, "", district, "district")


def measurements(obs: Observation | None, decided_mos: float | None = None) -> Measurements:
    """The figures of a round, in the units of the event contract.

    ``mos`` is the round's own (``Observation.mos``, from its loss), except where the caller
    gives ``decided_mos``: a ``mos_low`` alert carries the MOS its level was decided on (the
    quality figure, from the loss pooled over the rounds of ``loss_pct.window``)."""
    if obs is None:
        return Measurements()
    rtt, score = obs.rtt_avg, obs.mos if decided_mos is None else decided_mos
    return Measurements(
        rtt_ms=ms(rtt),
        jitter_ms=ms(obs.jitter),
        loss_pct=round(obs.loss_ratio * 100.0, 1),
        mos=round(score, 2) if rtt is not None and score is not None else None,
    )


class AlertEngine:
    """Decides health states and alerts for one inventory; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        config: AlertsConfig,
        *,
        instance: str,
        snapshot: Snapshot,
        now: float,
        messages: Messages | None = None,
    ) -> None:
        self.instance = instance
        self.epoch = snapshot.epoch
        self.seq = snapshot.seq
        self.alerts: dict[tuple[str, Kind], Alert] = {
            (a.target.id, a.kind): a for a in snapshot.alerts
        }
        self.silences: dict[str, Silence] = {s.id: s for s in snapshot.silences}
        self._restored = dict(snapshot.health)
        self.config = config
        self.messages = messages or Messages(config.locale, config.templates, config.timezone)
        self.nodes: dict[str, Node] = {}
        self._order: dict[str, int] = {}  # parents before children
        self._members: dict[str, list[str]] = {}  # district → its endpoints
        self._next_window: float | None = None
        self._pending_changes: Changes | None = None
        self._pending_changes = self.replace(endpoints, config, now)

    # -- inputs ---------------------------------------------------------------------------

    def replace(self, endpoints: Sequence[Endpoint], config: AlertsConfig, now: float) -> Changes:
        """Adopt a new inventory or alerts config; endpoints that stay keep their state."""
        if config != self.config:
            self.messages = Messages(config.locale, config.templates, config.timezone)
        self.config = config
        old = self.nodes
        nodes: dict[str, Node] = {}
        for ep in endpoints:
            policy = config.policy_for(ep.level.value, ep.alerts)
            node = old.get(ep.id)
            if node is None:
                node = self._restore_node(ep, policy)
            else:
                node.endpoint, node.target, node.policy = ep, target_of(ep), policy
                node.children = []
            nodes[ep.id] = node
        for node in nodes.values():
            for parent in node.endpoint.parent:
                if parent in nodes:
                    nodes[parent].children.append(node.endpoint.id)
        self.nodes = nodes
        self._order = {nid: i for i, nid in enumerate(_parents_first(nodes))}
        self._members = {}
        for nid, node in nodes.items():
            self._members.setdefault(node.endpoint.district, []).append(nid)
        self._restored.clear()
        self._next_window = windows.next_change(config.maintenance, now, config.timezone)
        out = _Collector()
        # Alerts of endpoints that left the inventory end now (resolved if they were sent).
        for key, alert in list(self.alerts.items()):
            tid = alert.target.id
            if (
                not tid.startswith((DISTRICT_PREFIX, SINK_PREFIX, STORE_PREFIX))
                and tid not in nodes
            ):
                self._close(key, now, out, {})
        self._evaluate(list(self._order), now, out, districts=self._districts())
        return out.changes()

    def take_startup_changes(self) -> Changes:
        """What adopting the inventory at construction changed (once)."""
        changes, self._pending_changes = self._pending_changes, None
        return changes or Changes()

    def observe(self, endpoint_id: str, obs: Observation, now: float) -> Changes:
        """Fold one round of ``endpoint_id`` into its state; the alerts it decides."""
        node = self.nodes.get(endpoint_id)
        if node is None:  # a round that ended after a reload removed its endpoint
            return Changes()
        before = _verdict_inputs(node.reach)
        node.reach = step(node.reach, obs.up, obs.started_at, node.policy.health)
        node.quality = observe_quality(node.quality, obs, node.policy.quality)
        node.last = obs
        out = _Collector()
        scope = [endpoint_id]
        below = self._descendants(endpoint_id)
        # Children read their parents' verdicts: they need a look when this one changed, or
        # when one of them is failing (its verdict may wait on this round). Otherwise a
        # healthy root would re-decide the whole province on each of its rounds.
        if below and (
            _verdict_inputs(node.reach) != before
            or any(self._troubled(self.nodes[d]) for d in below)
        ):
            scope += below
        self._evaluate(scope, now, out, districts={node.endpoint.district})
        return out.changes()

    @staticmethod
    def _troubled(node: Node) -> bool:
        r = node.reach
        return (
            r.last_ok is False
            or r.confirmed_up is False
            or r.flapping
            or node.held_since is not None
            or node.reach_state is not State.UP
        )

    def tick(self, now: float) -> Changes:
        """Time-driven decisions: maintenance windows, ended silences, held verdicts."""
        out = _Collector()
        if self._next_window is not None and now >= self._next_window:
            self._next_window = windows.next_change(
                self.config.maintenance, now, self.config.timezone
            )
            self._evaluate(list(self._order), now, out, districts=self._districts())
        else:
            held = sorted(
                (nid for nid, n in self.nodes.items() if n.held_since is not None),
                key=self._order.__getitem__,
            )
            if held:
                self._evaluate(held, now, out, districts=set())
        for sid, silence in list(self.silences.items()):
            if silence.ends_at <= now:
                del self.silences[sid]  # stays in the store for `silence list --expired`
        self._expire_acks(now, out)
        self._notify_pending(now, out)
        return out.changes()

    def ack(
        self, alert_id: str, by: str, comment: str, until: float | None, now: float
    ) -> Changes | None:
        """Acknowledge an open alert (until ``until``, or for its life); the acknowledgement
        goes out as an event. None if no open alert has this id."""
        key = next((k for k, a in self.alerts.items() if a.alert_id == alert_id), None)
        if key is None:
            return None
        alert = self.alerts[key]
        ack = {"by": by, "comment": comment, "at": now, "until": until}
        acked = alert.with_(detail={**alert.detail, "ack": ack})
        self.alerts[key] = acked
        out = _Collector()
        out.upserted[acked.alert_id] = acked
        if acked.notified:  # an alert nobody was told about needs no news of its ack
            out.events.append(self._event(acked, Status.ACKNOWLEDGED, now, ended_at=None))
        return out.changes()

    def sink_health(self, failing: Mapping[str, float | None], now: float) -> Changes:
        """Open or close ``sink_failing`` alerts from each sink's failing-since time."""
        out = _Collector()
        limit = self.config.sink_failing_after
        for name, since in failing.items():
            target = Target(f"{SINK_PREFIX}{name}", name, "", "", "sink")
            key = (target.id, Kind.SINK_FAILING)
            if since is not None and now - since >= limit:
                want = Want(Kind.SINK_FAILING, Severity.CRITICAL, detail={"failing_since": since},
                            started_at=since)  # fmt: skip
                self._open_or_update(target, want, None, now, out)
            elif key in self.alerts:
                self._close(key, now, out, {})
        self._notify_pending(now, out)
        return out.changes()

    def store_health(self, failing_since: float | None, where: str, now: float) -> Changes:
        """Open (from ``failing_since``) or close the ``state_store_failing`` alert; ``where``
        names the state file."""
        target = Target(f"{STORE_PREFIX}state", where, "", "", "store")
        key = (target.id, Kind.STATE_STORE_FAILING)
        out = _Collector()
        if failing_since is not None:
            detail = {"failing_since": failing_since}
            want = Want(Kind.STATE_STORE_FAILING, Severity.CRITICAL, detail=detail,
                        started_at=failing_since)  # fmt: skip
            self._open_or_update(target, want, None, now, out)
        elif key in self.alerts:
            self._close(key, now, out, {})
        self._notify_pending(now, out)
        return out.changes()

    def checkpoint(self) -> Checkpoint:
        """What ``add_silence``, ``expire_silence`` and ``ack`` change, to undo them."""
        return Checkpoint(dict(self.alerts), dict(self.silences), self.seq)

    def restore(self, saved: Checkpoint) -> None:
        """Undo every decision since ``saved`` was taken (one whose write failed)."""
        self.alerts, self.silences, self.seq = dict(saved.alerts), dict(saved.silences), saved.seq

    def _expire_acks(self, now: float, out: _Collector) -> None:
        """An acknowledgement that ran out while the alert still fires: notify again."""
        for key, alert in list(self.alerts.items()):
            ack = alert.detail.get("ack")
            if not isinstance(ack, Mapping) or ack.get("until") is None or ack["until"] > now:
                continue
            detail = {k: v for k, v in alert.detail.items() if k != "ack"}
            # Due again: _notify_pending sends the firing unless something holds it back.
            self.alerts[key] = alert.with_(detail=detail, notified_severity=None)
            out.upserted[alert.alert_id] = self.alerts[key]

    def add_silence(self, silence: Silence, now: float) -> Changes:
        """Start muting what ``silence`` matches (firings already sent are not taken back)."""
        self.silences[silence.id] = silence
        out = _Collector()
        out.silences.append(silence)
        self._notify_pending(now, out)  # a silence that starts later mutes nothing yet
        return out.changes()

    def expire_silence(self, silence_id: str, now: float) -> Changes | None:
        """End a silence now; what it held back and still holds fires. None if unknown."""
        silence = self.silences.pop(silence_id, None)
        if silence is None:
            return None
        out = _Collector()
        out.silences.append(replace(silence, ends_at=min(silence.ends_at, now)))
        self._notify_pending(now, out)
        return out.changes()

    # -- queries --------------------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        """Every open alert, oldest first."""
        return sorted(self.alerts.values(), key=lambda a: (a.started_at, a.alert_id))

    def suppressed_by(self, alert: Alert, now: float) -> str | None:
        """Why ``alert``'s firing is held back now ('silence <id>', 'maintenance <name>')."""
        for silence in self.silences.values():
            if silence.active(now) and matches(
                silence.matchers, alert.target, alert.kind.value, alert.severity.value
            ):
                return f"silence {silence.id}"
        node = self.nodes.get(alert.target.id)
        if node is not None and node.reach_state is State.UNREACHABLE:
            return "parent down"  # its parent's roll-up speaks for it
        if node is not None:
            open_windows = windows.active_windows(
                self.config.maintenance, alert.target, now, self.config.timezone
            )
            if open_windows:
                return f"maintenance {open_windows[0].name}"
        return None

    # -- evaluation -----------------------------------------------------------------------

    def _restore_node(self, ep: Endpoint, policy: Policy) -> Node:
        node = Node(ep, target_of(ep), policy)
        rec = self._restored.get(ep.id)
        levels = {
            QUALITY_KINDS[kind]: LEVEL_OF_SEVERITY[a.severity]
            for (tid, kind), a in self.alerts.items()
            if tid == ep.id and kind in QUALITY_KINDS
        }
        node.quality = Quality.start(levels)
        if rec is not None:
            node.reach = Reach(
                confirmed_up=rec.confirmed_up, history=rec.history, flapping=rec.flapping
            )
            node.state = State(rec.state)
            node.since = rec.since
            confirmed = None if node.state is State.UP else rec.confirmed_up
            node.persisted = (node.state, confirmed, rec.flapping)
            if node.state in (State.UP, State.DOWN, State.UNREACHABLE, State.DEGRADED):
                node.reach_state = State.UP if node.state is State.DEGRADED else node.state
        return node

    def _descendants(self, endpoint_id: str) -> list[str]:
        out: list[str] = []
        seen = {endpoint_id}
        queue = [endpoint_id]
        while queue:
            for child in self.nodes[queue.pop(0)].children:
                if child not in seen:
                    seen.add(child)
                    out.append(child)
                    queue.append(child)
        return out

    def _ancestors(self, endpoint_id: str) -> list[str]:
        out: list[str] = []
        seen = {endpoint_id}
        queue = [endpoint_id]
        while queue:
            for parent in self.nodes[queue.pop(0)].endpoint.parent:
                if parent in self.nodes and parent not in seen:
                    seen.add(parent)
                    out.append(parent)
                    queue.append(parent)
        return out

    def _districts(self) -> set[str]:
        return {n.endpoint.district for n in self.nodes.values()} | {
            a.target.district for a in self.alerts.values() if a.kind is Kind.DISTRICT_DOWN
        }

    def _evaluate(
        self, scope: Sequence[str], now: float, out: _Collector, districts: Iterable[str]
    ) -> None:
        # Parents before children, so a child reads its parents' verdicts of this round.
        moved = [nid for nid in scope if self._decide_state(self.nodes[nid], now, out)]
        touched: dict[str, None] = dict.fromkeys(scope)
        for nid in moved:
            touched.update(dict.fromkeys(self._ancestors(nid)))  # their affected lists
        for district in districts:
            if self._reconcile_district(district, now, out):
                touched.update(dict.fromkeys(self._members.get(district, ())))
        for nid in touched:
            self._reconcile_node(self.nodes[nid], now, out)
        self._notify_pending(now, out)

    def _parent_verdicts(self, node: Node) -> tuple[bool, bool]:
        """(some parent shows the node is down on its own, every parent is down)."""
        vouched = False
        all_down = True
        reach = node.reach
        for pid in node.endpoint.parent:
            parent = self.nodes.get(pid)
            if parent is None:
                continue
            pr = parent.reach
            down = pr.failing and (
                pr.confirmed_up is False or parent.reach_state is State.UNREACHABLE
            )
            all_down = all_down and down
            if (
                pr.confirmed_up is True
                and pr.last_ok is True
                and pr.last_at is not None
                and reach.fail_since is not None
                and pr.last_at >= reach.fail_since
                and pr.ok_since is not None
                and reach.last_at is not None
                and reach.last_at >= pr.ok_since
            ):
                vouched = True
        return vouched, all_down

    def hold_limit(self, node: Node) -> float:
        """Longest a child's verdict waits for its parents' (their time to confirm, + 1)."""
        limit = 0.0
        for pid in node.endpoint.parent:
            parent = self.nodes.get(pid)
            if parent is not None:
                t = parent.endpoint.timing
                limit = max(limit, t.interval * (parent.policy.health.down_after + 1))
        return limit

    def _reach_state(self, node: Node, now: float) -> State | None:
        reach, previous = node.reach, node.reach_state
        vouched = False
        has_parents = any(p in self.nodes for p in node.endpoint.parent)
        if reach.last_ok is None:
            return previous  # not probed since start: keep what was stored
        if reach.failing and has_parents:
            vouched, all_down = self._parent_verdicts(node)
            if all_down:
                node.held_since = None
                return State.UNREACHABLE
        if reach.confirmed_up is not False:
            node.held_since = None
            if reach.failing and previous is State.UNREACHABLE:
                return previous  # parents recovering, this one not yet: still explained
            return State.UP if reach.confirmed_up or previous is None else previous
        # Confirmed down.
        if not reach.failing:
            node.held_since = None
            return previous or State.DOWN  # recovering: one good round is not yet up
        if not has_parents or vouched:
            node.held_since = None
            return State.DOWN
        if previous is State.DOWN:
            return previous
        if node.held_since is None:
            node.held_since = now
        if now - node.held_since >= self.hold_limit(node):
            node.held_since = None
            return State.DOWN
        return previous

    def _decide_state(self, node: Node, now: float, out: _Collector) -> bool:
        """Decide the node's states; True if its reach verdict changed."""
        before = node.reach_state
        node.reach_state = self._reach_state(node, now)
        if windows.active_windows(self.config.maintenance, node.target, now, self.config.timezone):
            state: State | None = State.MAINTENANCE
        elif node.reach.flapping:
            state = State.FLAPPING
        elif node.reach_state is State.UP and any(
            t.level > NONE for t in node.quality.tracks.values()
        ):
            state = State.DEGRADED
        else:
            state = node.reach_state
        if state is None:
            return node.reach_state is not before
        if state is not node.state:
            node.state, node.since = state, now
        # What a restart needs: the state, and the confirmed reachability behind it (an
        # unreachable child may be confirmed down or not).
        # An endpoint that is plainly up needs nothing more: not writing its confirmation
        # spares every endpoint a commit at start.
        confirmed = None if node.state is State.UP else node.reach.confirmed_up
        durable = (node.state, confirmed, node.reach.flapping)
        if durable != node.persisted:
            node.persisted = durable
            out.health[node.endpoint.id] = self._health_record(node)
        return node.reach_state is not before

    def _health_record(self, node: Node) -> HealthRecord:
        return HealthRecord(
            endpoint_id=node.endpoint.id,
            state=(node.state or State.UP).value,
            confirmed_up=node.reach.confirmed_up,
            flapping=node.reach.flapping,
            history=node.reach.history,
            since=node.since,
        )

    # -- alert rules ----------------------------------------------------------------------

    def _district_failing(self, district: str) -> tuple[list[Node], int]:
        """Members failing on their own (no failing parent explains it), and the size."""
        members = [self.nodes[i] for i in self._members.get(district, ())]
        failing = []
        for n in members:
            r = n.reach
            if not (r.failing or r.confirmed_up is False) or n.reach_state is State.UNREACHABLE:
                continue
            explained = any(
                (p := self.nodes.get(pid)) is not None
                and (p.reach.failing or p.reach.confirmed_up is False)
                for pid in n.endpoint.parent
            )
            if not explained:
                failing.append(n)
        return failing, len(members)

    def _reconcile_district(self, district: str, now: float, out: _Collector) -> bool:
        """Open, update or close the district's roll-up; True if it opened or closed."""
        rule = self.config.districts
        target = district_target(district)
        key = (target.id, Kind.DISTRICT_DOWN)
        current = self.alerts.get(key)
        failing, total = self._district_failing(district)
        share = 100.0 * len(failing) / total if total else 0.0
        down = [n.endpoint.id for n in failing if n.reach_state is State.DOWN and not n.children]
        if current is None:
            active = (
                rule.enabled
                and total >= rule.min_endpoints
                and share >= rule.down_pct
                and bool(down)
            )
        else:
            active = rule.enabled and share >= rule.clear_pct and bool(down)
        if not active:
            if current is not None:
                self._close(key, now, out, {"total": total})
                return True
            return False
        detail = {"total": total, "share_pct": round(share, 1)}
        want = Want(Kind.DISTRICT_DOWN, Severity.CRITICAL, tuple(sorted(down)), detail)
        self._open_or_update(target, want, None, now, out)
        return current is None

    def _rolled_into_district(self, node: Node) -> bool:
        key = (district_target(node.endpoint.district).id, Kind.DISTRICT_DOWN)
        alert = self.alerts.get(key)
        return alert is not None and node.endpoint.id in alert.affected

    def _wants(self, node: Node) -> tuple[list[Want], set[Kind]]:
        """Alerts the node's state calls for, and the kinds whose open alerts stay as they are."""
        wants: list[Want] = []
        keep: set[Kind] = set()
        reach_kind = Kind.GROUP_DOWN if node.children else Kind.ENDPOINT_DOWN
        parent_flapping = any(
            (p := self.nodes.get(pid)) is not None and p.reach.flapping
            for pid in node.endpoint.parent
        )
        if node.reach.flapping and not parent_flapping:
            pct = flap_pct(node.reach.history)
            wants.append(Want(Kind.FLAPPING, Severity.WARNING, detail={"flap_pct": round(pct)}))
            keep |= REACH_KINDS  # frozen until it settles
        elif node.reach.flapping or node.reach_state in (State.UNREACHABLE, None):
            keep |= REACH_KINDS
        elif node.reach_state is State.DOWN and node.held_since is None:
            affected = tuple(
                d for d in self._descendants(node.endpoint.id)
                if self.nodes[d].reach_state is State.UNREACHABLE
            )  # fmt: skip
            detail: dict[str, Any] = {"failing_since": node.reach.fail_since}
            if node.children:
                levels = {self.nodes[c].endpoint.level.value for c in node.children}
                detail |= {
                    "total": len(self._descendants(node.endpoint.id)),
                    "child_level": levels.pop() if len(levels) == 1 else "mixed",
                }
            if reach_kind is Kind.ENDPOINT_DOWN and self._rolled_into_district(node):
                keep.add(reach_kind)
            else:
                wants.append(
                    Want(reach_kind, Severity.CRITICAL, affected, detail, node.reach.fail_since)
                )
        elif node.held_since is not None:
            keep |= REACH_KINDS
        for metric, track in node.quality.tracks.items():
            if track.level > NONE:
                rule = node.policy.quality.rule(metric)
                level = rule.critical if track.level >= 2 else rule.warning
                threshold = level.raise_ if level is not None else None
                wants.append(
                    Want(
                        Kind(metric.kind),
                        SEVERITY_OF_LEVEL[track.level],
                        detail={
                            "value": track.value,
                            "threshold": threshold,
                            "metric": metric.value,
                        },
                    )
                )
        return wants, keep

    def _reconcile_node(self, node: Node, now: float, out: _Collector) -> None:
        wants, keep = self._wants(node)
        wanted = {w.kind for w in wants}
        tid = node.endpoint.id
        for (atid, kind), _alert in list(self.alerts.items()):
            if atid == tid and kind not in wanted and kind not in keep:
                detail: dict[str, Any] = {}
                if kind is Kind.FLAPPING:
                    detail["settled"] = "up" if node.reach.confirmed_up is not False else "down"
                self._close((atid, kind), now, out, detail, node.last, _decided_mos(node, kind))
        for want in wants:
            mos = _decided_mos(node, want.kind)
            self._open_or_update(node.target, want, node.last, now, out, mos)

    def _open_or_update(
        self,
        target: Target,
        want: Want,
        obs: Observation | None,
        now: float,
        out: _Collector,
        decided_mos: float | None = None,
    ) -> None:
        key = (target.id, want.kind)
        current = self.alerts.get(key)
        if current is None:
            started = want.started_at if want.started_at is not None else now
            alert = Alert(
                alert_id=self._alert_id(target.id, want.kind, now),
                kind=want.kind,
                severity=want.severity,
                target=target,
                started_at=started,
                affected=want.affected,
                measurements=measurements(obs, decided_mos),
                detail=dict(want.detail),
            )
        else:
            if (
                current.severity is want.severity
                and current.affected == want.affected
                and current.target == target
            ):
                return
            alert = current.with_(
                severity=want.severity,
                affected=want.affected,
                target=target,
                detail={**current.detail, **want.detail},
                measurements=(
                    measurements(obs, decided_mos) if obs is not None else current.measurements
                ),
            )
        self.alerts[key] = alert
        out.upserted[alert.alert_id] = alert

    def _close(
        self,
        key: tuple[str, Kind],
        now: float,
        out: _Collector,
        detail: Mapping[str, Any],
        obs: Observation | None = None,
        decided_mos: float | None = None,
    ) -> None:
        alert = self.alerts.pop(key)
        out.upserted.pop(alert.alert_id, None)
        out.closed.append((alert.alert_id, now))
        if alert.notified:  # a resolve follows every firing that was sent, whatever else holds
            ended = alert.with_(
                detail={**alert.detail, **detail},
                measurements=(
                    measurements(obs, decided_mos) if obs is not None else alert.measurements
                ),
            )
            out.events.append(self._event(ended, Status.RESOLVED, now, ended_at=now))

    def _notify_pending(self, now: float, out: _Collector) -> None:
        """Send the firing of every open alert that is due and not held back."""
        for key, alert in sorted(self.alerts.items(), key=lambda kv: kv[1].started_at):
            due = not alert.notified or alert.notified_severity is not alert.severity
            if not due or self.suppressed_by(alert, now) is not None:
                continue
            sent = alert.with_(notified=True, notified_severity=alert.severity)
            self.alerts[key] = sent
            out.upserted[sent.alert_id] = sent
            out.events.append(self._event(sent, Status.FIRING, now, ended_at=None))

    # -- events ---------------------------------------------------------------------------

    def _alert_id(self, target_id: str, kind: Kind, now: float) -> str:
        digest = hashlib.sha256(f"{self.epoch}|{target_id}|{kind}|{now!r}".encode()).hexdigest()
        return digest[:16]

    def words(self, alert: Alert, status: Status, at: float) -> tuple[str, str]:
        """The summary and description of ``alert`` as an event of ``status`` at ``at``."""
        return self.messages.render(
            kind=alert.kind,
            status=status,
            severity=alert.severity,
            target=alert.target,
            affected=alert.affected,
            measurements=alert.measurements,
            started_at=alert.started_at,
            at=at,
            detail=alert.detail,
        )

    def _event(
        self, alert: Alert, status: Status, now: float, ended_at: float | None
    ) -> AlertEvent:
        self.seq += 1
        summary, description = self.words(
            alert, Status.FIRING if status is Status.ACKNOWLEDGED else status, now
        )
        ack = alert.detail.get("ack")
        if status is Status.ACKNOWLEDGED and isinstance(ack, Mapping):
            summary = self.messages.acknowledged(summary, str(ack["by"]), str(ack["comment"]))
        return AlertEvent(
            id=f"{self.epoch}-{self.seq}",
            seq=self.seq,
            alert_id=alert.alert_id,
            status=status,
            kind=alert.kind,
            severity=alert.severity,
            instance=self.instance,
            target=alert.target,
            affected=alert.affected,
            measurements=alert.measurements,
            started_at=alert.started_at,
            ended_at=ended_at,
            at=now,
            summary=summary,
            description=description,
        )


@dataclass(slots=True)
class _Collector:
    """Changes of one decision, gathered as it goes."""

    health: dict[str, HealthRecord] = field(default_factory=dict)
    upserted: dict[str, Alert] = field(default_factory=dict)
    closed: list[tuple[str, float]] = field(default_factory=list)
    events: list[AlertEvent] = field(default_factory=list)
    silences: list[Silence] = field(default_factory=list)

    def changes(self) -> Changes:
        closed_ids = {aid for aid, _ in self.closed}
        return Changes(
            health=tuple(self.health.values()),
            upserted=tuple(a for aid, a in self.upserted.items() if aid not in closed_ids),
            closed=tuple(self.closed),
            events=tuple(self.events),
            silences=tuple(self.silences),
        )


def _decided_mos(node: Node, kind: Kind) -> float | None:
    """The MOS a ``mos_low`` decision of ``node`` rests on (None for any other kind)."""
    return node.quality.tracks[Metric.MOS].value if kind is Kind.MOS_LOW else None


def _verdict_inputs(reach: Reach) -> tuple[bool | None, bool | None, bool]:
    """What of a parent's reachability its children's verdicts depend on, round to round."""
    return (reach.last_ok, reach.confirmed_up, reach.flapping)


def _parents_first(nodes: Mapping[str, Node]) -> list[str]:
    """Endpoint ids ordered so every parent comes before its children (the config has no
    cycles)."""
    order: list[str] = []
    placed: set[str] = set()

    def place(nid: str) -> None:
        if nid in placed:
            return
        placed.add(nid)
        for pid in nodes[nid].endpoint.parent:
            if pid in nodes:
                place(pid)
        order.append(nid)

    for nid in nodes:
        place(nid)
    return order
