"""Scenarios: timelines of outages and impairments applied to a running lab.

A scenario file (YAML) names its steps; each starts ``at`` seconds after the scenario starts
and has exactly one kind, whose value is an endpoint id, a glob pattern over ids
(``binh-lieu-*``) or a list of them::

    name: Cô Tô loses its uplink
    loop: false          # true: start over after `duration`
    duration: 180        # optional; default: when the last step ends
    steps:
      - {at: 10, down: so-y-te, for: 60}                    # stops answering for 60 s
      - {at: 20, uplink: co-to, for: 120}                   # co-to and every room behind it
      - {at: 0, flap: van-don-quan-lan, every: 20, for: 160}  # down 20 s, up 20 s, …
      - {at: 30, latency: binh-lieu-*, add: 0.015, every: 30, steps: 4}  # +15, +30, … ms
      - {at: 60, loss: ba-che-*, ratio: 0.3, for: 45}       # 30 % extra loss
      - {at: 90, down: so-xay-dung, for: 30, note: power cut}   # `note`: shown while active

Reading a file checks its shape (:func:`load_scenario`, ConfigError with ``file:line:column:
path: message`` lines); :func:`bind` then checks its targets against an inventory tree. The
timeline itself is pure: :func:`overrides_at` gives the impairments in force at a time,
:func:`next_change` when they next change, :func:`apply_overrides` the resulting profiles.
:class:`ScenarioRunner` plays a bound scenario against a lab through an injected clock, sleep
and apply function, and restores the base profiles when it ends or is cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import fnmatch
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from vcmon.config import ConfigError, Problem, did_you_mean
from vcmon.logs import event
from vcmon_lab.profiles import Profile
from vcmon_lab.province import cut_off

log = logging.getLogger(__name__)


class StepKind(enum.StrEnum):
    """What a step does to its targets."""

    DOWN = "down"  # stop answering for `for` seconds
    UPLINK = "uplink"  # the targets and every room behind them stop answering
    FLAP = "flap"  # down `every` s, up `every` s, … for `for` seconds
    LATENCY = "latency"  # delay rises by `add` every `every` s, `steps` times, then holds
    LOSS = "loss"  # extra random loss `ratio` for `for` seconds


#: Keys each kind takes besides ``at``, its own key and ``note``; True marks required ones.
_PARAMS: Final[Mapping[StepKind, Mapping[str, bool]]] = {
    StepKind.DOWN: {"for": True},
    StepKind.UPLINK: {"for": True},
    StepKind.FLAP: {"every": True, "for": True},
    StepKind.LATENCY: {"add": True, "every": True, "steps": True, "for": False},
    StepKind.LOSS: {"ratio": True, "for": True},
}
_TOP_KEYS: Final = ("name", "description", "loop", "duration", "steps")


@dataclass(frozen=True, slots=True)
class Step:
    """One step as written (targets unresolved); times in seconds."""

    index: int
    kind: StepKind
    targets: tuple[str, ...]  # ids or glob patterns
    at: float
    duration: float  # the `for` key (for latency: steps × every unless given)
    every: float = 0.0
    add: float = 0.0
    steps: int = 0
    ratio: float = 0.0
    note: str = ""

    @property
    def end(self) -> float:
        return self.at + self.duration


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario file, not yet tied to an inventory."""

    source: str
    name: str
    steps: tuple[Step, ...]
    loop: bool
    period: float  # length of one pass; with loop, the timeline repeats every period
    description: str = ""
    # Where each path was written, for errors found later by bind(): path → (line, column).
    marks: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class BoundStep:
    """A step with its targets resolved to endpoint ids of one inventory."""

    step: Step
    ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class BoundScenario:
    """A scenario checked against an inventory; what the timeline functions work on."""

    scenario: Scenario
    steps: tuple[BoundStep, ...]

    @property
    def period(self) -> float:
        return self.scenario.period

    @property
    def loop(self) -> bool:
        return self.scenario.loop


@dataclass(frozen=True, slots=True)
class Override:
    """Impairments in force on one endpoint, on top of its base profile."""

    down: bool = False
    add_delay: float = 0.0  # seconds
    loss: float = 0.0  # extra independent loss probability


# --- reading a file ---------------------------------------------------------------------------


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Reader:
    """Collects problems with positions while a loaded document is checked."""

    def __init__(self, source: str, marks: dict[str, tuple[int, int]]) -> None:
        self.source = source
        self.marks = marks
        self.problems: list[Problem] = []

    def problem(self, loc: Sequence[str | int], message: str, *, key: bool = False) -> None:
        """Record a problem at the value of ``loc`` (with ``key``: at its key)."""
        path = _path(loc)
        line, col = self.marks.get(f"{path}:key" if key else path, (None, None))
        self.problems.append(Problem(self.source, path, message, line, col))

    def number(
        self, data: Mapping[str, Any], loc: tuple[str | int, ...], key: str, *, low: float = 0.0,
        high: float = math.inf, positive: bool = False, integer: bool = False,
    ) -> float | None:  # fmt: skip
        value = data[key]
        here = (*loc, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(here, f"expected a number, got {value!r}")
            return None
        if integer and not isinstance(value, int):
            self.problem(here, f"expected a whole number, got {value!r}")
            return None
        ok = math.isfinite(value) and (value > low if positive else value >= low) and value <= high
        if not ok:
            bound = f"> {low:g}" if positive else f"≥ {low:g}"
            upper = f" and ≤ {high:g}" if math.isfinite(high) else ""
            self.problem(here, f"expected a number {bound}{upper}, got {value!r}")
            return None
        return float(value)

    def text(self, data: Mapping[str, Any], loc: tuple[str | int, ...], key: str) -> str:
        value = data.get(key, "")
        if not isinstance(value, str):
            self.problem((*loc, key), f"expected text, got {value!r}")
            return ""
        return value


def _marks(node: yaml.Node, loc: tuple[str | int, ...], out: dict[str, tuple[int, int]],
           dups: list[tuple[str, tuple[int, int]]]) -> None:  # fmt: skip
    out.setdefault(_path(loc), (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            here = (*loc, key)
            key_at = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out.setdefault(f"{_path(here)}:key", key_at)
            if key in seen:
                dups.append((_path(here), key_at))
            seen.add(key)
            _marks(value_node, here, out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _marks(item, (*loc, i), out, dups)


def parse_scenario(text: str, source: str) -> Scenario:
    """Check a scenario document; ConfigError lists every problem as ``file:line:col: path: …``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(source, "", f"not valid YAML: {reason}", line, col)]) from None
    marks: dict[str, tuple[int, int]] = {}
    dups: list[tuple[str, tuple[int, int]]] = []
    if node is not None:
        _marks(node, (), marks, dups)
    r = _Reader(source, marks)
    for path, (line, col) in dups:
        r.problems.append(Problem(source, path, "key given twice", line, col))
    if not isinstance(data, dict):
        r.problem((), "expected a mapping with a 'steps:' list (and optionally name, loop, …)")
        raise ConfigError(r.problems)
    for key in data:
        if key not in _TOP_KEYS:
            hint = did_you_mean(str(key), _TOP_KEYS)
            r.problem((str(key),), f"unknown key {key!r}{hint}", key=True)
    name = r.text(data, (), "name") or Path(source).stem
    description = r.text(data, (), "description")
    loop = data.get("loop", False)
    if not isinstance(loop, bool):
        r.problem(("loop",), f"expected true or false, got {loop!r}")
        loop = False
    duration = r.number(data, (), "duration", positive=True) if "duration" in data else None
    raw_steps = data.get("steps")
    steps: list[Step] = []
    if not isinstance(raw_steps, list) or not raw_steps:
        r.problem(("steps",) if "steps" in data else (), "expected a non-empty 'steps:' list")
    else:
        for i, raw in enumerate(raw_steps):
            step = _step(r, i, raw)
            if step is not None:
                steps.append(step)
    ends = max((s.end for s in steps), default=0.0)
    if duration is not None:
        for s in steps:
            if s.end > duration:
                r.problem(("steps", s.index), f"ends at {s.end:g} s, after the scenario's "
                          f"duration of {duration:g} s")  # fmt: skip
    if loop and duration is None and ends <= 0:
        r.problem(("loop",), "a looping scenario needs a duration > 0")
    if r.problems:
        raise ConfigError(r.problems)
    return Scenario(
        source=source,
        name=name,
        steps=tuple(steps),
        loop=loop,
        period=duration if duration is not None else ends,
        description=description,
        marks=marks,
    )


def _step(r: _Reader, i: int, raw: object) -> Step | None:
    loc: tuple[str | int, ...] = ("steps", i)
    kinds = [k.value for k in StepKind]
    if not isinstance(raw, dict):
        r.problem(loc, f"expected a mapping such as {{at: 10, down: ID, for: 60}}, got {raw!r}")
        return None
    given = [k for k in raw if k in kinds]
    if len(given) != 1:
        what = f"got {len(given)}: {', '.join(given)}" if given else "got none"
        r.problem(loc, f"expected exactly one of {', '.join(kinds)} ({what})")
        return None
    kind = StepKind(given[0])
    params = _PARAMS[kind]
    allowed = ("at", "note", kind.value, *params)
    before = len(r.problems)
    for key in raw:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            r.problem((*loc, str(key)), f"unknown key {key!r} for a {kind} step{hint} "
                      f"(expected {', '.join(allowed)})", key=True)  # fmt: skip
    for key in ("at", *(k for k, required in params.items() if required)):
        if key not in raw:
            r.problem(loc, f"a {kind} step needs '{key}'")
    if len(r.problems) > before:
        return None
    targets = _targets(r, (*loc, kind.value), raw[kind.value])
    at = r.number(raw, loc, "at")
    values: dict[str, float | None] = {}
    for key in params:
        if key not in raw:
            continue
        if key == "ratio":
            values[key] = r.number(raw, loc, key, positive=True, high=1.0)
        elif key == "steps":
            values[key] = r.number(raw, loc, key, low=1, integer=True)
        else:
            values[key] = r.number(raw, loc, key, positive=True)
    note = r.text(raw, loc, "note")
    if targets is None or at is None or any(v is None for v in values.values()):
        return None
    every = values.get("every") or 0.0
    n_steps = int(values.get("steps") or 0)
    duration = values.get("for")
    if kind is StepKind.LATENCY:
        ramp = n_steps * every
        if duration is None:
            duration = ramp
        elif duration < ramp:
            r.problem((*loc, "for"), f"{duration:g} s is shorter than the ramp: {n_steps} steps "
                      f"of {every:g} s take {ramp:g} s")  # fmt: skip
            return None
    assert duration is not None
    return Step(
        index=i, kind=kind, targets=targets, at=at, duration=duration, every=every,
        add=values.get("add") or 0.0, steps=n_steps, ratio=values.get("ratio") or 0.0, note=note,
    )  # fmt: skip


def _targets(r: _Reader, loc: tuple[str | int, ...], value: object) -> tuple[str, ...] | None:
    items = value if isinstance(value, list) else [value]
    if not items:
        r.problem(loc, "expected an endpoint id, a pattern such as 'co-to-*', or a list of them")
        return None
    out: list[str] = []
    for j, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            where = (*loc, j) if isinstance(value, list) else loc
            r.problem(where, f"expected an endpoint id or pattern, got {item!r}")
            return None
        out.append(item.strip())
    return tuple(out)


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file; ConfigError (exit 2 in the CLI) when it is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(str(path), "", f"cannot read: {reason}")]) from None
    return parse_scenario(text, str(path))


# --- tying a scenario to an inventory ---------------------------------------------------------


def bind(scenario: Scenario, parents: Mapping[str, Sequence[str]]) -> BoundScenario:
    """Resolve every step's targets against an inventory tree (id → parent ids).

    Unknown ids and patterns that match nothing are ConfigErrors located in the file.
    """
    ids = list(parents)
    problems: list[Problem] = []
    bound: list[BoundStep] = []
    for step in scenario.steps:
        resolved: set[str] = set()
        for j, target in enumerate(step.targets):
            matched = _match(target, ids)
            if not matched:
                path = f"steps[{step.index}].{step.kind.value}"
                if f"{path}[{j}]" in scenario.marks:
                    path = f"{path}[{j}]"
                line, col = scenario.marks.get(path, (None, None))
                what = "no endpoint matches" if _is_pattern(target) else "unknown endpoint"
                hint = "" if _is_pattern(target) else did_you_mean(target, ids)
                problems.append(
                    Problem(scenario.source, path, f"{what} {target!r}{hint}", line, col)
                )
            resolved.update(matched)
        if step.kind is StepKind.UPLINK:
            resolved = cut_off(parents, resolved)
        bound.append(BoundStep(step, frozenset(resolved)))
    if problems:
        raise ConfigError(problems)
    return BoundScenario(scenario, tuple(bound))


def _is_pattern(target: str) -> bool:
    return any(c in target for c in "*?[")


def _match(target: str, ids: Sequence[str]) -> list[str]:
    if _is_pattern(target):
        return [i for i in ids if fnmatch.fnmatchcase(i, target)]
    return [target] if target in ids else []


# --- the timeline (pure) ----------------------------------------------------------------------


def step_override(step: Step, t: float) -> Override | None:
    """What ``step`` does at scenario time ``t`` (seconds into the pass); None when inactive."""
    rel = t - step.at
    if rel < 0 or rel >= step.duration:
        return None
    if step.kind in (StepKind.DOWN, StepKind.UPLINK):
        return Override(down=True)
    if step.kind is StepKind.FLAP:
        # Starts down: the first half-period is the outage.
        return Override(down=True) if int(rel // step.every) % 2 == 0 else None
    if step.kind is StepKind.LATENCY:
        level = min(step.steps, int(rel // step.every) + 1)
        return Override(add_delay=round(level * step.add, 9))
    return Override(loss=step.ratio)


def _combine(a: Override, b: Override) -> Override:
    return Override(
        down=a.down or b.down,
        add_delay=round(a.add_delay + b.add_delay, 9),
        loss=1.0 - (1.0 - a.loss) * (1.0 - b.loss),
    )


def pass_time(scenario: BoundScenario, t: float) -> float | None:
    """Time within the current pass for scenario time ``t``; None once a one-shot has ended."""
    if t < 0:
        return None
    if scenario.loop:
        return t % scenario.period
    return t if t < scenario.period else None


def overrides_at(scenario: BoundScenario, t: float) -> dict[str, Override]:
    """Endpoint id → impairments in force ``t`` seconds after the scenario started."""
    rel = pass_time(scenario, t)
    out: dict[str, Override] = {}
    if rel is None:
        return out
    for bound in scenario.steps:
        effect = step_override(bound.step, rel)
        if effect is None:
            continue
        for eid in bound.ids:
            out[eid] = _combine(out[eid], effect) if eid in out else effect
    return out


def active_steps(scenario: BoundScenario, t: float) -> list[Step]:
    """Steps doing something at ``t`` (a flapping endpoint counts while its flap lasts)."""
    rel = pass_time(scenario, t)
    if rel is None:
        return []
    return [b.step for b in scenario.steps if b.step.at <= rel < b.step.end]


def _boundaries(step: Step) -> list[float]:
    """Times within a pass at which this step changes what it does."""
    times = [step.at, step.end]
    if step.kind in (StepKind.FLAP, StepKind.LATENCY):
        n = math.ceil(step.duration / step.every)
        # Multiplied, not accumulated, so boundaries do not drift by rounding.
        times.extend(step.at + k * step.every for k in range(1, n))
    return times


def next_change(scenario: BoundScenario, t: float) -> float | None:
    """The first scenario time after ``t`` at which the overrides may change; None at the end."""
    period = scenario.period
    marks = sorted({b for s in scenario.steps for b in _boundaries(s.step) if 0 <= b < period})
    marks.append(period)  # end of the pass: restore (one-shot) or start over (loop)
    if t < 0:
        return 0.0
    if scenario.loop:
        base = math.floor(t / period) * period
        rel = t - base
    else:
        if t >= period:
            return None
        base, rel = 0.0, t
    for mark in marks:
        if mark > rel + 1e-9:
            return base + mark
    return base + period  # unreachable: rel < period = marks[-1]


def apply_overrides(
    base: Mapping[str, Profile], overrides: Mapping[str, Override]
) -> dict[str, Profile]:
    """Base profiles with the overrides laid on top (endpoint ids without a profile are skipped)."""
    out = dict(base)
    for eid, ov in overrides.items():
        profile = out.get(eid)
        if profile is None:
            continue
        out[eid] = dataclasses.replace(
            profile,
            up=profile.up and not ov.down,
            delay=round(profile.delay + ov.add_delay, 9),
            loss=min(1.0, 1.0 - (1.0 - profile.loss) * (1.0 - ov.loss)),
        )
    return out


def describe(step: Step, ids: Iterable[str] = ()) -> str:
    """One line saying what a step does, for logs, status and the demo."""
    targets = ", ".join(step.targets)
    n = len(set(ids))
    count = f" ({n} endpoints)" if n > 1 else ""
    what = {
        StepKind.DOWN: f"{targets} down{count} for {step.duration:g} s",
        StepKind.UPLINK: f"uplink of {targets} down{count} for {step.duration:g} s",
        StepKind.FLAP: f"{targets} flapping every {step.every:g} s{count} for {step.duration:g} s",
        StepKind.LATENCY: f"{targets} latency +{step.add * 1000:g} ms every {step.every:g} s "
        f"× {step.steps}{count}",
        StepKind.LOSS: f"{targets} {step.ratio * 100:g} % loss{count} for {step.duration:g} s",
    }[step.kind]
    return f"{what} — {step.note}" if step.note else what


# --- playing a scenario -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """What a runner reports at each change: scenario time and the steps now active."""

    t: float
    active: tuple[str, ...]  # descriptions
    overridden: int  # endpoints with an impairment in force


ApplyFn = Callable[[Mapping[str, Profile]], Awaitable[None]]


class ScenarioRunner:
    """Plays a bound scenario: at each change, lays its overrides on the base profiles.

    ``apply`` receives endpoint id → profile for every endpoint and must make them live.
    ``clock`` (monotonic seconds) and ``sleep`` are injectable for tests. The base profiles
    are restored when the scenario ends, fails or is cancelled.
    """

    def __init__(
        self,
        scenario: BoundScenario,
        base: Mapping[str, Profile],
        apply: ApplyFn,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_change: Callable[[Progress], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.base = dict(base)
        self._apply = apply
        self._clock = clock
        self._sleep = sleep
        self._on_change = on_change
        self.progress = Progress(0.0, (), 0)

    async def run(self) -> None:
        """Apply the timeline until a one-shot scenario ends; a looping one runs until cancelled."""
        start = self._clock()
        sc = self.scenario
        current: dict[str, Override] = {}
        event(log, logging.INFO, "scenario_started", scenario=sc.scenario.name,
              steps=len(sc.steps), loop=sc.loop, period=sc.period)  # fmt: skip
        target = 0.0
        cancelled = False
        try:
            while True:
                # Never evaluate before the boundary we slept for, whatever the clock's grain.
                t = max(self._clock() - start, target)
                wanted = overrides_at(sc, t)
                if wanted != current:
                    await self._apply(apply_overrides(self.base, wanted))
                    current = wanted
                    self._report(t, wanted)
                nxt = next_change(sc, t)
                if nxt is None:
                    break
                target = nxt
                await self._sleep(max(0.0, nxt - (self._clock() - start)))
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if current:
                try:
                    await self._apply(dict(self.base))
                except Exception as exc:
                    # Cancelled because the lab is going away (the demo's Ctrl-C reaches its
                    # responder too): nothing left to restore, and no reason to fail the stop.
                    if not cancelled:
                        raise
                    event(log, logging.WARNING, "scenario_restore_failed", error=str(exc))
                else:
                    event(log, logging.INFO, "scenario_restored", scenario=sc.scenario.name)
        event(log, logging.INFO, "scenario_finished", scenario=sc.scenario.name)

    def _report(self, t: float, wanted: Mapping[str, Override]) -> None:
        steps = {b.step.index: b for b in self.scenario.steps}
        active = tuple(describe(s, steps[s.index].ids) for s in active_steps(self.scenario, t))
        self.progress = Progress(t, active, len(wanted))
        event(log, logging.INFO, "scenario_step", t=f"{t:.1f}", endpoints_impaired=len(wanted),
              active="; ".join(active) or "none")  # fmt: skip
        if self._on_change is not None:
            self._on_change(self.progress)
