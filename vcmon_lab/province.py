"""From an inventory to a lab: lab addresses, realistic link profiles and the lab's config file.

Everything here is pure: inventory (and a seed) in, data out.

Address mapping. The lab's endpoints live in 198.18.0.0/16 (local to the province namespace).
An inventory address ``127.10.X.Y`` becomes ``198.18.X.Y`` (the last two octets are kept, so
the sample's plan — ``127.10.D.…`` for district D — reads the same in the lab); an address
already in 198.18.0.0/16 stays as it is. Anything else (other addresses, IPv6, host names)
cannot be mapped and is an error naming the endpoint.

Profiles. Each endpoint gets a profile drawn from the range of its link class, chosen by the
``link`` label (fibre, microwave, satellite; missing or unknown counts as fibre), its level and
its district's terrain: the provincial centre and departments sit on the core network, the
mountain districts (Bình Liêu, Ba Chẽ, Tiên Yên, Hải Hà, Đầm Hà) have longer, noisier paths,
Vân Đồn's islands and Cô Tô (the far island district, where even fibre is a long submarine
hop) more still. Draws come from an RNG seeded with ``seed`` and the endpoint id, so an
endpoint's profile does not change when others are added or reordered.
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from vcmon.config import Config, Endpoint, Level
from vcmon.config.schema import TIMING_KEYS
from vcmon.config.writing import endpoint_document
from vcmon.text import slugify
from vcmon_lab.profiles import Profile

#: Inventory addresses the lab can stand in for, and where they land.
SOURCE_NET: Final = ipaddress.IPv4Network("127.10.0.0/16")
LAB_ENDPOINT_NET: Final = ipaddress.IPv4Network("198.18.0.0/16")
#: Where the lab's daemon serves /metrics (the host's loopback; see ``vcmon run --netns``).
LAB_LISTEN: Final = "127.0.0.1:9231"

MOUNTAIN_DISTRICTS: Final = frozenset({"binh-lieu", "ba-che", "tien-yen", "hai-ha", "dam-ha"})
ISLAND_DISTRICTS: Final = frozenset({"van-don"})
FAR_ISLAND_DISTRICTS: Final = frozenset({"co-to"})


class LabMappingError(ValueError):
    """Some inventory endpoints cannot be given a lab address; one line per endpoint."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def lab_address(address: str) -> str:
    """The lab address standing in for an inventory ``address``; ValueError if there is none."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(
            f"{address!r} is a host name; the lab maps only {SOURCE_NET} and {LAB_ENDPOINT_NET}"
        ) from None
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in LAB_ENDPOINT_NET:
            mapped = ip
        elif ip in SOURCE_NET:
            mapped = LAB_ENDPOINT_NET.network_address + (int(ip) - int(SOURCE_NET.network_address))
        else:
            mapped = None
        # The /16's first and last addresses are not usable hosts.
        if mapped is not None and mapped not in (LAB_ENDPOINT_NET[0], LAB_ENDPOINT_NET[-1]):
            return str(mapped)
    raise ValueError(
        f"{address} cannot be mapped into the lab (expected an address in {SOURCE_NET}, which "
        f"becomes 198.18.X.Y, or one already in {LAB_ENDPOINT_NET}, excluding the first and last)"
    )


def map_addresses(endpoints: Iterable[Endpoint]) -> dict[str, str]:
    """Endpoint id → lab address for every endpoint; LabMappingError lists every one that fails.

    Two endpoints on the same address are refused: each needs a profile of its own.
    """
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    problems: list[str] = []
    for ep in endpoints:
        try:
            mapped = lab_address(ep.address)
        except ValueError as exc:
            problems.append(f"endpoint {ep.id}: {exc}")
            continue
        if mapped in owner:
            problems.append(
                f"endpoint {ep.id}: address {ep.address} is also used by {owner[mapped]}; "
                "every lab endpoint needs its own address"
            )
            continue
        owner[mapped] = ep.id
        out[ep.id] = mapped
    if problems:
        raise LabMappingError(problems)
    return out


# --- profiles ---------------------------------------------------------------------------------


class Terrain(enum.StrEnum):
    """Where a room is, as far as its network path is concerned."""

    CORE = "core"  # provincial centre and departments
    CITY = "city"
    MOUNTAIN = "mountain"
    ISLAND = "island"
    FAR_ISLAND = "far-island"


class Link(enum.StrEnum):
    """How a room reaches the provincial network (the inventory's ``link`` label)."""

    FIBRE = "fibre"
    MICROWAVE = "microwave"
    SATELLITE = "satellite"


@dataclass(frozen=True, slots=True)
class LinkClass:
    """Ranges a profile is drawn from; delays and jitter in seconds, loss as a probability."""

    delay: tuple[float, float]
    jitter: tuple[float, float]
    loss: tuple[float, float] = (0.0, 0.0)
    burst_p: float = 0.0  # Gilbert–Elliott good → bad per echo (0: no bursts)
    burst_r: float = 1.0  # bad → good per echo


_MS = 0.001
_FIBRE_CORE = LinkClass(delay=(0.5 * _MS, 2 * _MS), jitter=(0.05 * _MS, 0.2 * _MS))
_FIBRE_CITY = LinkClass(delay=(2 * _MS, 6 * _MS), jitter=(0.2 * _MS, 0.6 * _MS))
_FIBRE_MOUNTAIN = LinkClass(
    delay=(6 * _MS, 12 * _MS), jitter=(1 * _MS, 2.5 * _MS), loss=(0.0, 0.003)
)
_FIBRE_ISLAND = LinkClass(
    delay=(4 * _MS, 9 * _MS), jitter=(0.5 * _MS, 1.5 * _MS), loss=(0.0, 0.002)
)
_FIBRE_FAR = LinkClass(delay=(20 * _MS, 30 * _MS), jitter=(2 * _MS, 4 * _MS), loss=(0.002, 0.01))
_MW_CITY = LinkClass(delay=(10 * _MS, 18 * _MS), jitter=(2 * _MS, 4 * _MS), loss=(0.002, 0.01))
_MW_MOUNTAIN = LinkClass(
    delay=(15 * _MS, 30 * _MS),
    jitter=(3 * _MS, 6 * _MS),
    loss=(0.002, 0.01),
    burst_p=0.002,
    burst_r=0.5,
)
_MW_ISLAND = LinkClass(
    delay=(25 * _MS, 45 * _MS),
    jitter=(5 * _MS, 10 * _MS),
    loss=(0.005, 0.02),
    burst_p=0.005,
    burst_r=0.4,
)
_SATELLITE = LinkClass(
    delay=(45 * _MS, 80 * _MS),
    jitter=(10 * _MS, 20 * _MS),
    loss=(0.01, 0.03),
    burst_p=0.01,
    burst_r=0.3,
)

#: The whole model in one table: (terrain, link) → the ranges its profiles are drawn from.
LINK_CLASSES: Final[Mapping[tuple[Terrain, Link], LinkClass]] = {
    (Terrain.CORE, Link.FIBRE): _FIBRE_CORE,
    (Terrain.CORE, Link.MICROWAVE): _MW_CITY,
    (Terrain.CORE, Link.SATELLITE): _SATELLITE,
    (Terrain.CITY, Link.FIBRE): _FIBRE_CITY,
    (Terrain.CITY, Link.MICROWAVE): _MW_CITY,
    (Terrain.CITY, Link.SATELLITE): _SATELLITE,
    (Terrain.MOUNTAIN, Link.FIBRE): _FIBRE_MOUNTAIN,
    (Terrain.MOUNTAIN, Link.MICROWAVE): _MW_MOUNTAIN,
    (Terrain.MOUNTAIN, Link.SATELLITE): _SATELLITE,
    (Terrain.ISLAND, Link.FIBRE): _FIBRE_ISLAND,
    (Terrain.ISLAND, Link.MICROWAVE): _MW_ISLAND,
    (Terrain.ISLAND, Link.SATELLITE): _SATELLITE,
    (Terrain.FAR_ISLAND, Link.FIBRE): _FIBRE_FAR,
    (Terrain.FAR_ISLAND, Link.MICROWAVE): _MW_ISLAND,
    (Terrain.FAR_ISLAND, Link.SATELLITE): _SATELLITE,
}


def terrain_of(ep: Endpoint) -> Terrain:
    """The terrain an endpoint's path crosses: by level, then by district."""
    district = slugify(ep.district)
    if district in FAR_ISLAND_DISTRICTS:
        return Terrain.FAR_ISLAND
    if ep.level in (Level.PROVINCE, Level.DEPARTMENT):
        return Terrain.CORE
    if district in MOUNTAIN_DISTRICTS:
        return Terrain.MOUNTAIN
    if district in ISLAND_DISTRICTS:
        return Terrain.ISLAND
    return Terrain.CITY


def link_of(ep: Endpoint) -> Link:
    """The endpoint's ``link`` label; missing or unknown values count as fibre."""
    value = ep.labels.get("link", "").strip().lower()
    if value == "fiber":
        return Link.FIBRE
    try:
        return Link(value)
    except ValueError:
        return Link.FIBRE


def class_of(ep: Endpoint) -> LinkClass:
    """The link class an endpoint's profile is drawn from."""
    return LINK_CLASSES[(terrain_of(ep), link_of(ep))]


def draw_profile(cls: LinkClass, rng: random.Random) -> Profile:
    """One profile from a class's ranges, rounded to 0.1 ms and 0.1 % so tables read well."""

    def pick(lo: float, hi: float, digits: int) -> float:
        return round(rng.uniform(lo, hi), digits)

    return Profile(
        delay=pick(*cls.delay, 4),
        jitter=pick(*cls.jitter, 4),
        loss=pick(*cls.loss, 3),
        burst_p=cls.burst_p,
        burst_r=cls.burst_r,
    )


def generate_profiles(endpoints: Iterable[Endpoint], seed: int = 1) -> dict[str, Profile]:
    """Endpoint id → profile for every endpoint; deterministic in ``seed`` and each id."""
    return {
        ep.id: draw_profile(class_of(ep), random.Random(f"vcmon-lab/{seed}/{ep.id}"))
        for ep in endpoints
    }


def by_address(profiles: Mapping[str, Profile], addresses: Mapping[str, str]) -> dict[str, Profile]:
    """Re-key endpoint-id profiles by lab address, as the responder's profiles file wants them."""
    return {addresses[eid]: profile for eid, profile in profiles.items()}


# --- the lab's config -------------------------------------------------------------------------


def lab_config(
    config: Config, addresses: Mapping[str, str], *, instance: str = "lab", listen: str = LAB_LISTEN
) -> str:
    """A config for a daemon watching the lab: same inventory, lab addresses, loopback listen.

    Timing keys are written per endpoint only where they differ from the defaults.
    """
    defaults = config.defaults
    endpoints: list[dict[str, Any]] = []
    for ep in config.endpoints:
        timing = {
            key: value
            for key in TIMING_KEYS
            if (value := getattr(ep.timing, key)) != getattr(defaults, key)
        }
        doc = endpoint_document(ep, timing) | {"address": addresses[ep.id]}
        endpoints.append(doc)
    data = {
        "instance": instance,
        "listen": listen,
        "defaults": defaults.model_dump(),
        "icmp": config.icmp.model_dump(),
        "alerts": config.alerts.model_dump(mode="json", by_alias=True, exclude_unset=True),
        "endpoints": endpoints,
    }
    header = (
        f"# Generated by `vcmon lab up` from {config.source}: the same rooms on lab addresses.\n"
        "# Probe through the lab's monitor namespace, serving HTTP on this host:\n"
        "#   vcmon run -c THIS_FILE --netns <monitor namespace>   (see `vcmon lab status`)\n"
    )
    return header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)


def cut_off(parents: Mapping[str, Sequence[str]], roots: Iterable[str]) -> set[str]:
    """The ``roots`` plus every endpoint whose uplinks all lead only through them.

    ``parents`` maps each endpoint id to its parent ids (the inventory tree). A room with two
    uplinks stays reachable while one of them is outside the cut.
    """
    found = set(roots)
    changed = True
    while changed:  # a fixpoint: the tree is shallow, so this is a handful of passes
        changed = False
        for eid, ups in parents.items():
            if eid not in found and ups and all(p in found for p in ups):
                found.add(eid)
                changed = True
    return found
