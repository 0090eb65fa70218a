"""Scenarios: located validation errors, the pure timeline, the runner on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from vcmon.config import ConfigError, load_config
from vcmon_lab.profiles import Profile
from vcmon_lab.scenario import (
    BoundScenario,
    Override,
    Progress,
    ScenarioRunner,
    StepKind,
    apply_overrides,
    bind,
    load_scenario,
    next_change,
    overrides_at,
    parse_scenario,
)

SCENARIOS = Path(__file__).parents[3] / "config" / "scenarios"
PROVINCE = Path(__file__).parents[3] / "config" / "province-231.yaml"

TREE: dict[str, tuple[str, ...]] = {
    "tinh": (),
    "ha-long": ("tinh",),
    "ha-long-a": ("ha-long",),
    "ha-long-b": ("ha-long",),
    "co-to": ("tinh",),
    "co-to-a": ("co-to",),
    "co-to-b": ("co-to",),
}
DOWN = Override(down=True)


def scenario(text: str) -> BoundScenario:
    return bind(parse_scenario(text, "s.yaml"), TREE)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        bind(parse_scenario(text, "s.yaml"), TREE)
    return str(info.value).splitlines()


# -- reading files -----------------------------------------------------------------------------


def test_every_kind_parses() -> None:
    sc = scenario(
        "name: all of them\n"
        "steps:\n"
        "  - {at: 0, down: tinh, for: 5}\n"
        "  - {at: 1, uplink: co-to, for: 5, note: storm}\n"
        "  - {at: 2, flap: [ha-long-a, ha-long-b], every: 2, for: 8}\n"
        "  - {at: 3, latency: 'ha-long-*', add: 0.01, every: 2, steps: 3}\n"
        "  - {at: 4, loss: co-to-a, ratio: 0.5, for: 1.5}\n"
    )
    assert sc.scenario.name == "all of them"
    assert not sc.loop
    assert sc.period == 10.0  # the flap ends last
    kinds = [(b.step.kind, sorted(b.ids)) for b in sc.steps]
    assert kinds == [
        (StepKind.DOWN, ["tinh"]),
        (StepKind.UPLINK, ["co-to", "co-to-a", "co-to-b"]),
        (StepKind.FLAP, ["ha-long-a", "ha-long-b"]),
        (StepKind.LATENCY, ["ha-long-a", "ha-long-b"]),
        (StepKind.LOSS, ["co-to-a"]),
    ]
    assert sc.steps[3].step.duration == 6.0  # steps × every when `for` is not given
    assert sc.steps[1].step.note == "storm"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["s.yaml: expected a mapping with a 'steps:' list (and optionally name, loop, …)"]),
        ("steps: []\n", ["s.yaml:1:8: steps: expected a non-empty 'steps:' list"]),
        ("name: x\n", ["s.yaml:1:1: expected a non-empty 'steps:' list"]),
        (
            "stepz: []\n",
            [
                "s.yaml:1:1: stepz: unknown key 'stepz' (did you mean 'steps'?)",
                "s.yaml:1:1: expected a non-empty 'steps:' list",
            ],
        ),
        (
            "steps:\n  - {at: 1, down: tinh}\n",
            ["s.yaml:2:5: steps[0]: a down step needs 'for'"],
        ),
        (
            "steps:\n  - {at: 1, for: 3}\n",
            [
                "s.yaml:2:5: steps[0]: expected exactly one of down, uplink, flap, latency, loss "
                "(got none)"
            ],
        ),
        (
            "steps:\n  - {at: 1, down: tinh, uplink: co-to, for: 3}\n",
            [
                "s.yaml:2:5: steps[0]: expected exactly one of down, uplink, flap, latency, loss "
                "(got 2: down, uplink)"
            ],
        ),
        (
            "steps:\n  - {at: 1, down: tinh, for: 3, evry: 2}\n",
            [
                "s.yaml:2:33: steps[0].evry: unknown key 'evry' for a down step "
                "(expected at, note, down, for)"
            ],
        ),
        (
            "steps:\n  - {at: 1, flap: tinh, for: 3, evry: 2}\n",
            [
                "s.yaml:2:33: steps[0].evry: unknown key 'evry' for a flap step (did you mean "
                "'every'?) (expected at, note, flap, every, for)",
                "s.yaml:2:5: steps[0]: a flap step needs 'every'",
            ],
        ),
        (
            "steps:\n  - {at: -1, down: tinh, for: 0}\n",
            [
                "s.yaml:2:10: steps[0].at: expected a number ≥ 0, got -1",
                "s.yaml:2:31: steps[0].for: expected a number > 0, got 0",
            ],
        ),
        (
            "steps:\n  - {at: soon, down: tinh, for: yes}\n",
            [
                "s.yaml:2:10: steps[0].at: expected a number, got 'soon'",
                "s.yaml:2:33: steps[0].for: expected a number, got True",
            ],
        ),
        (
            "steps:\n  - {at: 0, loss: tinh, ratio: 1.5, for: 3}\n",
            ["s.yaml:2:32: steps[0].ratio: expected a number > 0 and ≤ 1, got 1.5"],
        ),
        (
            "steps:\n  - {at: 0, latency: tinh, add: 0.01, every: 2, steps: 2.5}\n",
            ["s.yaml:2:56: steps[0].steps: expected a whole number, got 2.5"],
        ),
        (
            "steps:\n  - {at: 0, latency: tinh, add: 0.01, every: 2, steps: 3, for: 4}\n",
            ["s.yaml:2:64: steps[0].for: 4 s is shorter than the ramp: 3 steps of 2 s take 6 s"],
        ),
        (
            "steps:\n  - {at: 0, down: [], for: 3}\n",
            [
                "s.yaml:2:19: steps[0].down: expected an endpoint id, a pattern such as 'co-to-*', "
                "or a list of them"
            ],
        ),
        (
            "steps:\n  - {at: 0, down: [tinh, 7], for: 3}\n",
            ["s.yaml:2:26: steps[0].down[1]: expected an endpoint id or pattern, got 7"],
        ),
        (
            "duration: 5\nsteps:\n  - {at: 2, down: tinh, for: 4}\n",
            ["s.yaml:3:5: steps[0]: ends at 6 s, after the scenario's duration of 5 s"],
        ),
        (
            "loop: maybe\nsteps:\n  - {at: 0, down: tinh, for: 4}\n",
            ["s.yaml:1:7: loop: expected true or false, got 'maybe'"],
        ),
        (
            "steps:\n  - {at: 0, down: tinh, for: 4}\nsteps:\n  - {at: 0, down: tinh, for: 4}\n",
            ["s.yaml:3:1: steps: key given twice"],
        ),
        (
            "steps: [\n",
            ["s.yaml:2:1: not valid YAML: expected the node content, but found '<stream end>'"],
        ),
        # Found once the shape is right: targets checked against the inventory.
        (
            "steps:\n  - {at: 0, down: ha-lon, for: 4}\n",
            ["s.yaml:2:19: steps[0].down: unknown endpoint 'ha-lon' (did you mean 'ha-long'?)"],
        ),
        (
            "steps:\n  - {at: 0, uplink: [tinh, 'mong-cai-*'], for: 4}\n",
            ["s.yaml:2:28: steps[0].uplink[1]: no endpoint matches 'mong-cai-*'"],
        ),
    ],
)
def test_bad_scenarios_are_located(text: str, expected: list[str]) -> None:
    assert errors(text) == expected


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file or directory"):
        load_scenario(tmp_path / "nope.yaml")


# -- the timeline --------------------------------------------------------------------------------

TIMELINE = """
steps:
  - {at: 10, down: tinh, for: 5}
  - {at: 20, uplink: co-to, for: 10}
  - {at: 0, flap: ha-long-a, every: 4, for: 12}
  - {at: 30, latency: ha-long-b, add: 0.010, every: 5, steps: 3, for: 20}
  - {at: 40, loss: [co-to-a, ha-long-b], ratio: 0.5, for: 5}
"""


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (-1.0, {}),
        (0.0, {"ha-long-a": DOWN}),  # a flap starts down
        (3.999, {"ha-long-a": DOWN}),
        (4.0, {}),  # … up for the next `every`
        (8.0, {"ha-long-a": DOWN}),
        (10.0, {"tinh": DOWN, "ha-long-a": DOWN}),  # the flap's third phase: down again
        (12.0, {"tinh": DOWN}),  # the flap is over
        (14.9, {"tinh": DOWN}),
        (15.0, {}),
        (20.0, {"co-to": DOWN, "co-to-a": DOWN, "co-to-b": DOWN}),
        (30.0, {"ha-long-b": Override(add_delay=0.010)}),
        (34.9, {"ha-long-b": Override(add_delay=0.010)}),
        (35.0, {"ha-long-b": Override(add_delay=0.020)}),
        (40.0, {"ha-long-b": Override(add_delay=0.030, loss=0.5), "co-to-a": Override(loss=0.5)}),
        (45.0, {"ha-long-b": Override(add_delay=0.030)}),  # ramp done, held until `for` ends
        (49.9, {"ha-long-b": Override(add_delay=0.030)}),
        (50.0, {}),  # the end of the last step: everything restored
        (1000.0, {}),
    ],
)
def test_overrides_at(t: float, expected: dict[str, Override]) -> None:
    assert overrides_at(scenario(TIMELINE), t) == expected


def test_next_change_walks_every_boundary() -> None:
    sc = scenario(TIMELINE)
    times = []
    t: float | None = 0.0
    while t is not None:
        times.append(t)
        t = next_change(sc, t)
    assert times == [0, 4, 8, 10, 12, 15, 20, 30, 35, 40, 45, 50]
    assert next_change(sc, -5.0) == 0.0
    assert next_change(sc, 50.0) is None


def test_overlapping_steps_combine() -> None:
    sc = scenario(
        "steps:\n"
        "  - {at: 0, latency: tinh, add: 0.010, every: 10, steps: 1}\n"
        "  - {at: 0, latency: tinh, add: 0.005, every: 10, steps: 1}\n"
        "  - {at: 0, loss: tinh, ratio: 0.5, for: 10}\n"
        "  - {at: 0, loss: tinh, ratio: 0.5, for: 10}\n"
        "  - {at: 5, down: tinh, for: 1}\n"
    )
    assert overrides_at(sc, 0) == {"tinh": Override(add_delay=0.015, loss=0.75)}
    assert overrides_at(sc, 5) == {"tinh": Override(down=True, add_delay=0.015, loss=0.75)}


def test_a_looping_scenario_repeats() -> None:
    sc = scenario("loop: true\nduration: 30\nsteps:\n  - {at: 10, down: tinh, for: 5}\n")
    assert [overrides_at(sc, t) for t in (9, 10, 15, 40, 44.9, 45, 3610)] == [
        {}, {"tinh": DOWN}, {}, {"tinh": DOWN}, {"tinh": DOWN}, {}, {"tinh": DOWN}
    ]  # fmt: skip
    changes = [0.0]
    for _ in range(6):
        nxt = next_change(sc, changes[-1])
        assert nxt is not None
        changes.append(nxt)
    assert changes == [0, 10, 15, 30, 40, 45, 60]


def test_apply_overrides() -> None:
    base = {
        "tinh": Profile(delay=0.002, jitter=0.001, loss=0.1),
        "co-to": Profile(delay=0.030),
    }
    got = apply_overrides(
        base,
        {
            "tinh": Override(add_delay=0.010, loss=0.5),
            "co-to": Override(down=True),
            "unknown": Override(down=True),  # no base profile: nothing to impair
        },
    )
    assert got == {
        "tinh": Profile(delay=0.012, jitter=0.001, loss=0.55),
        "co-to": Profile(delay=0.030, up=False),
    }
    assert apply_overrides(base, {}) == base


# -- the runner ----------------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that only moves when the runner sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
        await asyncio.sleep(0)


BASE = {eid: Profile(delay=0.005) for eid in TREE}


async def test_runner_applies_each_change_and_restores() -> None:
    fake = FakeTime()
    applied: list[tuple[float, dict[str, bool]]] = []
    reports: list[Progress] = []

    async def apply(profiles: Mapping[str, Profile]) -> None:
        assert set(profiles) == set(BASE)
        applied.append((fake.now - 100.0, {k: p.up for k, p in profiles.items() if not p.up}))

    sc = scenario(
        "steps:\n  - {at: 1, uplink: co-to, for: 2}\n  - {at: 5, flap: tinh, every: 1, for: 2}\n"
    )
    runner = ScenarioRunner(sc, BASE, apply, clock=fake.clock, sleep=fake.sleep,
                            on_change=reports.append)  # fmt: skip
    await runner.run()
    assert applied == [
        (1.0, {"co-to": False, "co-to-a": False, "co-to-b": False}),
        (3.0, {}),
        (5.0, {"tinh": False}),
        (6.0, {}),
    ]
    assert [r.overridden for r in reports] == [3, 0, 1, 0]
    assert reports[0].active == ("uplink of co-to down (3 endpoints) for 2 s",)
    assert reports[-1].active == ("tinh flapping every 1 s for 2 s",)  # up-phase, still active
    assert fake.sleeps == [1.0, 2.0, 2.0, 1.0, 1.0]


async def test_runner_restores_when_cancelled() -> None:
    applied: list[dict[str, Profile]] = []
    entered = asyncio.Event()

    async def apply(profiles: Mapping[str, Profile]) -> None:
        applied.append(dict(profiles))
        entered.set()

    sc = scenario("loop: true\nduration: 3600\nsteps:\n  - {at: 0, down: tinh, for: 3000}\n")
    task = asyncio.create_task(ScenarioRunner(sc, BASE, apply).run())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not applied[0]["tinh"].up
    assert applied[-1] == BASE


async def test_runner_without_changes_applies_nothing() -> None:
    fake = FakeTime()
    applied: list[object] = []

    async def apply(profiles: Mapping[str, Profile]) -> None:
        applied.append(profiles)

    sc = scenario("steps:\n  - {at: 0, latency: tinh, add: 0.01, every: 1, steps: 1}\n")
    await ScenarioRunner(sc, BASE, apply, clock=fake.clock, sleep=fake.sleep).run()
    assert len(applied) == 2  # the change at 0, the restore at 1


# -- the shipped scenarios -----------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_fit_the_province(path: Path) -> None:
    province = load_config(PROVINCE, env={})
    sc = bind(load_scenario(path), {e.id: e.parent for e in province.endpoints})
    assert sc.steps
    assert all(b.ids for b in sc.steps)


def test_the_demo_breaks_something_every_few_minutes() -> None:
    province = load_config(PROVINCE, env={})
    sc = bind(load_scenario(SCENARIOS / "demo.yaml"), {e.id: e.parent for e in province.endpoints})
    assert sc.loop
    starts = sorted(b.step.at for b in sc.steps)
    gaps = [b - a for a, b in zip([0.0, *starts], [*starts, sc.period + starts[0]], strict=True)]
    assert max(gaps) <= 240, gaps
    assert starts[0] <= 30  # a visitor sees something soon
    kinds = {b.step.kind for b in sc.steps}
    assert kinds == set(StepKind)
    co_to = next(b for b in sc.steps if b.step.kind is StepKind.UPLINK)
    assert co_to.ids == {"co-to", "co-to-co-to", "co-to-dong-tien", "co-to-thanh-lan"}


async def test_a_cancelled_runner_does_not_fail_when_the_lab_is_already_gone() -> None:
    calls = 0
    entered = asyncio.Event()

    async def apply(profiles: Mapping[str, Profile]) -> None:
        nonlocal calls
        calls += 1
        entered.set()
        if calls > 1:
            raise OSError("responder is not running")

    sc = scenario("steps:\n  - {at: 0, down: tinh, for: 3000}\n")
    task = asyncio.create_task(ScenarioRunner(sc, BASE, apply).run())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 2  # the restore was tried, its failure logged, the cancel kept


async def test_a_restore_failure_at_the_end_is_an_error() -> None:
    fake = FakeTime()
    calls = 0

    async def apply(profiles: Mapping[str, Profile]) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("responder is not running")

    sc = scenario("steps:\n  - {at: 0, down: tinh, for: 1}\n")
    runner = ScenarioRunner(sc, BASE, apply, clock=fake.clock, sleep=fake.sleep)
    with pytest.raises(OSError, match="responder is not running"):
        await runner.run()
