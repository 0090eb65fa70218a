"""From inventory to lab: address mapping, generated link profiles, the lab's config, the tree."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcmon.config import Config, Endpoint, Level, Timing, load_config
from vcmon_lab.province import (
    LINK_CLASSES,
    LabMappingError,
    Link,
    LinkClass,
    Terrain,
    class_of,
    cut_off,
    generate_profiles,
    lab_address,
    lab_config,
    link_of,
    map_addresses,
    terrain_of,
)

CONFIG = Path(__file__).parents[3] / "config"


@pytest.fixture(scope="module")
def province() -> Config:
    return load_config(CONFIG / "province-231.yaml", env={})


def ep(
    id: str = "x",
    district: str = "Hạ Long",
    level: Level = Level.COMMUNE,
    link: str | None = "fibre",
    address: str = "127.10.1.11",
    parent: Sequence[str] = (),
) -> Endpoint:
    labels = {"link": link} if link is not None else {}
    return Endpoint(
        id=id, name=id, address=address, district=district, level=level,
        parent=tuple(parent), labels=labels, timing=Timing(),
    )  # fmt: skip


# -- address mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inventory", "lab"),
    [
        ("127.10.0.1", "198.18.0.1"),  # the provincial centre
        ("127.10.0.50", "198.18.0.50"),  # the last department
        ("127.10.8.13", "198.18.8.13"),  # Cô Tô, a commune: district number kept
        ("127.10.13.1", "198.18.13.1"),
        ("127.10.255.254", "198.18.255.254"),
        ("198.18.7.7", "198.18.7.7"),  # already a lab address
    ],
)
def test_lab_address_keeps_the_last_two_octets(inventory: str, lab: str) -> None:
    assert lab_address(inventory) == lab


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", "127.0.0.1 cannot be mapped into the lab (expected an address in 127.10"),
        ("127.11.0.1", "cannot be mapped"),
        ("198.19.0.1", "cannot be mapped"),  # benchmarking range, but not the endpoint /16
        ("127.10.0.0", "excluding the first and last"),  # would be the /16's network address
        ("127.10.255.255", "excluding the first and last"),
        ("::1", "::1 cannot be mapped"),
        ("room.example", "'room.example' is a host name"),
    ],
)
def test_lab_address_refuses_what_it_cannot_map(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        lab_address(address)


def test_map_addresses_lists_every_problem() -> None:
    endpoints = [
        ep("a", address="127.10.1.1"),
        ep("b", address="localhost"),
        ep("c", address="198.18.1.1"),  # the same lab address as a
        ep("d", address="127.10.1.2"),
    ]
    with pytest.raises(LabMappingError) as info:
        map_addresses(endpoints)
    assert list(info.value.problems) == [
        "endpoint b: 'localhost' is a host name; the lab maps only 127.10.0.0/16 and 198.18.0.0/16",
        "endpoint c: address 198.18.1.1 is also used by a; every lab endpoint needs its own "
        "address",
    ]


def test_the_province_maps_completely(province: Config) -> None:
    addresses = map_addresses(province.endpoints)
    assert len(set(addresses.values())) == len(province.endpoints) == 231
    assert addresses["tinh-ubnd"] == "198.18.0.1"
    assert addresses["co-to"] == "198.18.8.1"
    assert all(a.startswith("198.18.") for a in addresses.values())


# -- which link class --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("district", "level", "link", "terrain", "kind"),
    [
        ("Tỉnh", Level.PROVINCE, "fibre", Terrain.CORE, Link.FIBRE),
        ("Tỉnh", Level.DEPARTMENT, None, Terrain.CORE, Link.FIBRE),  # no label: fibre
        ("Hạ Long", Level.DISTRICT, "fibre", Terrain.CITY, Link.FIBRE),
        ("Móng Cái", Level.COMMUNE, "microwave", Terrain.CITY, Link.MICROWAVE),
        ("Bình Liêu", Level.COMMUNE, "microwave", Terrain.MOUNTAIN, Link.MICROWAVE),
        ("Ba Chẽ", Level.DISTRICT, "fibre", Terrain.MOUNTAIN, Link.FIBRE),
        ("Tiên Yên", Level.COMMUNE, "Fibre", Terrain.MOUNTAIN, Link.FIBRE),  # case-insensitive
        ("Hải Hà", Level.COMMUNE, "fiber", Terrain.MOUNTAIN, Link.FIBRE),  # US spelling
        ("Đầm Hà", Level.COMMUNE, "adsl", Terrain.MOUNTAIN, Link.FIBRE),  # unknown: fibre
        ("Vân Đồn", Level.COMMUNE, "satellite", Terrain.ISLAND, Link.SATELLITE),
        ("Vân Đồn", Level.COMMUNE, "microwave", Terrain.ISLAND, Link.MICROWAVE),
        ("Cô Tô", Level.DISTRICT, "microwave", Terrain.FAR_ISLAND, Link.MICROWAVE),
        ("Cô Tô", Level.COMMUNE, "fibre", Terrain.FAR_ISLAND, Link.FIBRE),
        ("Cô Tô", Level.DEPARTMENT, "fibre", Terrain.FAR_ISLAND, Link.FIBRE),  # island first
    ],
)
def test_terrain_and_link(
    district: str, level: Level, link: str | None, terrain: Terrain, kind: Link
) -> None:
    e = ep(district=district, level=level, link=link)
    assert (terrain_of(e), link_of(e)) == (terrain, kind)
    assert class_of(e) is LINK_CLASSES[(terrain, kind)]


def test_every_terrain_and_link_has_a_class() -> None:
    assert set(LINK_CLASSES) == {(t, k) for t in Terrain for k in Link}


def within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] - 1e-4 <= value <= bounds[1] + 1e-4  # profiles are rounded to 0.1 ms


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_profiles_stay_in_their_class(seed: int) -> None:
    province = load_config(CONFIG / "province-231.yaml", env={})
    profiles = generate_profiles(province.endpoints, seed)
    assert set(profiles) == {e.id for e in province.endpoints}
    for e in province.endpoints:
        p, cls = profiles[e.id], class_of(e)
        assert within(p.delay, cls.delay), (e.id, p)
        assert within(p.jitter, cls.jitter), (e.id, p)
        assert cls.loss[0] - 1e-3 <= p.loss <= cls.loss[1] + 1e-3, (e.id, p)
        assert (p.burst_p, p.burst_r, p.up) == (cls.burst_p, cls.burst_r, True)


def test_profiles_are_deterministic_per_endpoint(province: Config) -> None:
    endpoints = list(province.endpoints)
    once = generate_profiles(endpoints, 7)
    assert generate_profiles(endpoints, 7) == once
    # An endpoint's profile depends on its id and the seed only, not on the others.
    subset = generate_profiles(list(reversed(endpoints[100:120])), 7)
    assert subset == {eid: once[eid] for eid in subset}
    other = generate_profiles(endpoints, 8)
    assert sum(other[e] != once[e] for e in once) > 200


def test_the_province_looks_like_the_real_network(province: Config) -> None:
    profiles = generate_profiles(province.endpoints, 1)

    def delays(pred: Callable[[Endpoint], bool]) -> list[float]:
        return [profiles[e.id].delay for e in province.endpoints if pred(e)]

    core = delays(lambda e: e.district == "Tỉnh")
    city_fibre = delays(lambda e: e.district == "Hạ Long")
    mountain = delays(lambda e: e.district in {"Bình Liêu", "Ba Chẽ"})
    co_to = [profiles[e.id] for e in province.endpoints if e.district == "Cô Tô"]
    # Fibre city sites: a few ms, little jitter, no loss.
    for e in province.endpoints:
        if e.district == "Hạ Long":
            p = profiles[e.id]
            assert 0.002 <= p.delay <= 0.006
            assert p.jitter < 0.001
            assert p.loss == 0.0
    assert max(core) <= 0.002
    assert statistics.median(core) < statistics.median(city_fibre) < statistics.median(mountain)
    # The island district: tens of ms, heavy jitter, some loss and bursts.
    assert all(p.delay >= 0.020 for p in co_to)
    assert all(p.jitter >= 0.005 for p in co_to)
    assert all(p.expected_loss > 0.005 for p in co_to)
    satellite = profiles["co-to-thanh-lan"]
    assert satellite.delay >= 0.045
    assert satellite.jitter >= 0.010
    # Every profile fits the per-echo timeout with room for its jitter (6 σ).
    for e in province.endpoints:
        p = profiles[e.id]
        assert p.delay + 6 * p.jitter < e.timing.timeout, e.id


def test_class_ranges_are_sane() -> None:
    for cls in LINK_CLASSES.values():
        assert isinstance(cls, LinkClass)
        for lo, hi in (cls.delay, cls.jitter, cls.loss):
            assert 0 <= lo <= hi
        assert cls.jitter[1] <= cls.delay[1]


# -- the lab's config ----------------------------------------------------------------------------


def test_lab_config_is_the_inventory_on_lab_addresses(province: Config, tmp_path: Path) -> None:
    addresses = map_addresses(province.endpoints)
    path = tmp_path / "vcmon-lab.yaml"
    path.write_text(lab_config(province, addresses), encoding="utf-8")
    lab = load_config(path, env={})
    assert lab.listen == "127.0.0.1:9231"
    assert lab.instance == "lab"
    assert lab.defaults == province.defaults
    assert [e.id for e in lab.endpoints] == [e.id for e in province.endpoints]
    for before, after in zip(province.endpoints, lab.endpoints, strict=True):
        assert after.address == addresses[before.id]
        assert after.model_dump(exclude={"address"}) == before.model_dump(exclude={"address"})
    assert lab.endpoint("co-to-thanh-lan").timing.timeout == 2.0


# -- the tree --------------------------------------------------------------------------------


TREE = {
    "tinh": (),
    "ha-long": ("tinh",),
    "ha-long-a": ("ha-long",),
    "ha-long-b": ("ha-long",),
    "co-to": ("tinh",),
    "co-to-a": ("co-to",),
    "co-to-a-room": ("co-to-a",),  # a grandchild
    "dual": ("ha-long", "co-to"),  # two uplinks
}


@pytest.mark.parametrize(
    ("roots", "expected"),
    [
        ({"co-to"}, {"co-to", "co-to-a", "co-to-a-room"}),
        ({"ha-long"}, {"ha-long", "ha-long-a", "ha-long-b"}),
        (
            {"ha-long", "co-to"},
            {"ha-long", "ha-long-a", "ha-long-b", "co-to", "co-to-a", "co-to-a-room", "dual"},
        ),
        ({"co-to-a-room"}, {"co-to-a-room"}),  # a leaf
        ({"tinh"}, set(TREE)),
        (set(), set()),
    ],
)
def test_cut_off(roots: set[str], expected: set[str]) -> None:
    assert cut_off(TREE, roots) == expected


def test_cut_off_in_the_province(province: Config) -> None:
    parents = {e.id: e.parent for e in province.endpoints}
    co_to = {"co-to", "co-to-co-to", "co-to-dong-tien", "co-to-thanh-lan"}
    assert cut_off(parents, {"co-to"}) == co_to
    assert len(cut_off(parents, {"ha-long"})) == 34
    assert len(cut_off(parents, {"tinh-ubnd"})) == 231
