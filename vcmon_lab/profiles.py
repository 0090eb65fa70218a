"""Per-endpoint impairment profiles and the pure decision of what happens to one echo.

A profile describes one simulated link: a base one-way-and-back delay, jitter drawn from a
distribution around it, independent random loss, burst loss from a two-state Gilbert–Elliott
channel, and whether the endpoint is up at all. :func:`decide` turns a profile, the channel
state left by the previous packet and an injected RNG into a :class:`Decision`; it has no
clock and no I/O, so it can be table- and property-tested.

Profiles files (JSON or YAML) map an address to a profile mapping, e.g.::

    198.18.0.1: {delay: 0.002, jitter: 0.0002}
    198.18.0.2: {delay: 0.040, jitter: 0.010, distribution: uniform, loss: 0.05}
    198.18.0.3: {up: false}
    "*": {delay: 0.001}          # optional fallback for lab addresses without their own entry

All times are seconds; probabilities are in [0, 1].
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import yaml

#: Every lab address lives here (RFC 2544 benchmarking range); nothing else is allowed.
LAB_NET = ipaddress.IPv4Network("198.18.0.0/15")
#: Key of the optional fallback profile in a profiles file.
DEFAULT_KEY = "*"

# A truncated draw rejects negative samples; after this many rejections it gives up and
# clamps, which only happens for absurd profiles (spread far larger than the base delay).
_MAX_REDRAWS = 32


class Distribution(enum.StrEnum):
    """Shape of the jitter added to the base delay."""

    NORMAL = "normal"  # jitter is the standard deviation
    UNIFORM = "uniform"  # jitter is the half-width: delay ± jitter


class Channel(enum.Enum):
    """State of the Gilbert–Elliott burst-loss channel."""

    GOOD = "good"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Profile:
    """How one simulated endpoint treats echo requests."""

    delay: float = 0.0  # base delay added to the reply, seconds
    jitter: float = 0.0  # spread of the delay, seconds (see Distribution)
    distribution: Distribution = Distribution.NORMAL
    loss: float = 0.0  # independent random loss probability per echo
    burst_p: float = 0.0  # Gilbert–Elliott P(good → bad) per echo; 0 disables bursts
    burst_r: float = 1.0  # Gilbert–Elliott P(bad → good) per echo; mean burst = 1/r echoes
    burst_loss: float = 1.0  # loss probability while the channel is bad
    up: bool = True  # False: nothing is answered

    def __post_init__(self) -> None:
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number of seconds ≥ 0, got {value!r}")
        for name in ("loss", "burst_p", "burst_r", "burst_loss"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.burst_p > 0.0 and self.burst_r == 0.0:
            raise ValueError("burst_r must be > 0 when burst_p > 0, or the channel never recovers")
        if not isinstance(self.distribution, Distribution):
            object.__setattr__(self, "distribution", Distribution(self.distribution))

    @property
    def expected_loss(self) -> float:
        """Long-run fraction of echoes dropped (stationary Gilbert–Elliott plus random loss)."""
        if not self.up:
            return 1.0
        bad = 0.0 if self.burst_p == 0.0 else self.burst_p / (self.burst_p + self.burst_r)
        p_burst = bad * self.burst_loss
        return 1.0 - (1.0 - self.loss) * (1.0 - p_burst)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping for a profiles file (only fields that differ from the defaults)."""
        default = Profile()
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value != getattr(default, key):
                out[key] = value.value if isinstance(value, enum.Enum) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Build a profile from a mapping; unknown keys and wrong types are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown profile keys {unknown}; expected some of {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "up":
                if not isinstance(value, bool):
                    raise ValueError(f"up must be true or false, got {value!r}")
                kwargs[key] = value
            elif key == "distribution":
                try:
                    kwargs[key] = Distribution(value)
                except ValueError:
                    choices = [d.value for d in Distribution]
                    raise ValueError(
                        f"distribution must be one of {choices}, got {value!r}"
                    ) from None
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{key} must be a number, got {value!r}")
                kwargs[key] = float(value)
        return cls(**kwargs)


class Decision(NamedTuple):
    """What to do with one echo request, and the channel state to carry to the next one."""

    drop: bool
    delay: float  # seconds to hold the reply; 0.0 when dropped
    state: Channel


def next_channel(profile: Profile, state: Channel, rng: random.Random) -> Channel:
    """One Gilbert–Elliott transition: good → bad with p, bad → good with r."""
    if state is Channel.GOOD:
        return Channel.BAD if profile.burst_p > 0.0 and rng.random() < profile.burst_p else state
    return Channel.GOOD if rng.random() < profile.burst_r else state


def draw_delay(profile: Profile, rng: random.Random) -> float:
    """Base delay plus jitter from the profile's distribution, truncated to ≥ 0."""
    if profile.jitter == 0.0:
        return profile.delay
    for _ in range(_MAX_REDRAWS):
        if profile.distribution is Distribution.NORMAL:
            value = rng.gauss(profile.delay, profile.jitter)
        else:
            value = rng.uniform(profile.delay - profile.jitter, profile.delay + profile.jitter)
        if value >= 0.0:
            return value
    return 0.0


def decide(profile: Profile, state: Channel, rng: random.Random) -> Decision:
    """Decide drop and delay for one echo, given the channel state the previous echo left.

    The channel moves first, then the echo is lost if the endpoint is down, by random loss,
    or by the bad state's loss; a kept echo gets a delay drawn from the profile.
    """
    if not profile.up:
        return Decision(True, 0.0, state)
    state = next_channel(profile, state, rng)
    drop = profile.loss > 0.0 and rng.random() < profile.loss
    if state is Channel.BAD and rng.random() < profile.burst_loss:
        drop = True
    if drop:
        return Decision(True, 0.0, state)
    return Decision(False, draw_delay(profile, rng), state)


def parse_profiles(data: Any) -> dict[str, Profile]:
    """Validate a loaded profiles document: lab address (or ``*``) → profile."""
    if not isinstance(data, Mapping):
        raise ValueError("a profiles file must map addresses to profiles")
    out: dict[str, Profile] = {}
    for key, value in data.items():
        address = str(key)
        if address != DEFAULT_KEY:
            try:
                ip = ipaddress.IPv4Address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IPv4 address") from None
            if ip not in LAB_NET:
                raise ValueError(f"{address} is outside the lab range {LAB_NET}")
            address = str(ip)
        if not isinstance(value, Mapping):
            raise ValueError(f"profile for {address} must be a mapping, got {value!r}")
        try:
            out[address] = Profile.from_dict(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"profile for {address}: {exc}") from None
    return out


def load_profiles(path: Path) -> dict[str, Profile]:
    """Read a JSON or YAML profiles file (YAML is a superset, so both parse)."""
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return parse_profiles(data if data is not None else {})


def dump_profiles(profiles: Mapping[str, Profile]) -> str:
    """Serialise profiles as JSON text that :func:`load_profiles` reads back."""
    return json.dumps({addr: p.to_dict() for addr, p in profiles.items()}, indent=1)
