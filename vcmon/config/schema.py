"""The config's schema: field validators and the frozen pydantic models (Timing, Endpoint,
Config …)."""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from vcmon.config.alerts import AlertsConfig, Override
from vcmon.config.fields import PositiveSeconds, between, not_bool, positive
from vcmon.config.problems import did_you_mean
from vcmon.delivery.sinks.registry import SinkConfig
from vcmon.text import slugify

TIMING_KEYS: Final = ("interval", "count", "spacing", "timeout")
# Labels vcmon puts on series itself; a free label of the same name would be ambiguous.
RESERVED_LABELS: Final = frozenset(
    {"endpoint", "probe", "district", "level", "name", "address", "site", "parent"}
)

# Small text helpers, shared with the CSV import


def label_name(text: str) -> str:
    """A valid Prometheus label name derived from ``text`` ('' when nothing usable is left)."""
    slug = slugify(text, "_")
    return f"_{slug}" if slug[:1].isdigit() else slug


# ---------------------------------------------------------------------------------------------
# Field validators. Each raises ValueError with a complete sentence: it is shown as is.

_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_LABEL_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_LISTEN_RE: Final = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d+)|(?P<host>[^:\[\]]+):(?P<port>\d+)")
_ADDRESS_EXAMPLES: Final = "expected e.g. 127.0.0.1, ::1 or host.example"


def _text(value: str) -> str:
    # NFC, so that 'Cô Tô' typed on Windows and on a Mac is one district, not two.
    value = unicodedata.normalize("NFC", value.strip())
    if not value:
        raise ValueError("must not be empty")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{value!r} contains a control character (a line break or tab?)")
    return value


def _check_id(value: str) -> str:
    if len(value) > 128 or not _ID_RE.fullmatch(value):
        hint = f", e.g. '{slugify(value)}'" if slugify(value) and len(value) <= 128 else ""
        raise ValueError(
            f"{value!r} is not a valid id (expected up to 128 ASCII letters, digits, '_', '.' "
            f"or '-'{hint})"
        )
    return value


def is_hostname(value: str) -> bool:
    """True when ``value`` is an RFC 1123 host name (an all-numeric last label is not)."""
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def check_address(value: str) -> str:
    """``value`` if it is an IPv4 or IPv6 address or a host name, else ValueError saying why."""
    value = value.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    if is_hostname(value):
        return value
    if re.fullmatch(r"[^:\[\]]+:\d+|\[[^\]]+\]:\d+", value):
        raise ValueError(
            f"{value!r} has a port; an endpoint address is an IP address or host name alone "
            f"({_ADDRESS_EXAMPLES})"
        )
    if re.fullmatch(r"[0-9.]+", value):
        raise ValueError(f"{value!r} is not a valid IPv4 address ({_ADDRESS_EXAMPLES})")
    if ":" in value and re.fullmatch(r"[0-9A-Fa-f:.%\w\[\]]+", value):
        note = " (write it without brackets)" if value.startswith("[") else ""
        raise ValueError(f"{value!r} is not a valid IPv6 address{note} ({_ADDRESS_EXAMPLES})")
    raise ValueError(f"{value!r} is not an IPv4/IPv6 address or hostname ({_ADDRESS_EXAMPLES})")


def _never_an_endpoint(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why no single host can answer at ``ip`` (unspecified, broadcast, multicast), or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "the unspecified address (it means 'any address' when listening, no host has it)"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address (it reaches every host on the link, not one endpoint)"
    if ip.is_multicast:
        return "a multicast address (it names a group of hosts, not one endpoint)"
    return None


def check_endpoint_address(value: str) -> str:
    """``check_address``, refusing also the addresses that can never be one endpoint's."""
    value = check_address(value)
    try:
        ip = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return value  # a host name
    reason = _never_an_endpoint(ip)
    if reason is not None:
        raise ValueError(
            f"{value!r} is {reason}; expected the address of one endpoint, e.g. 127.0.0.1"
        )
    return value


def _check_listen(value: str) -> str:
    expected = "expected host:port, e.g. 127.0.0.1:9231, [::1]:9231 or localhost:9231"
    m = _LISTEN_RE.fullmatch(value.strip())
    if m is None:
        if value.count(":") > 1 and "[" not in value:
            raise ValueError(
                f"{value!r} is not host:port (put an IPv6 address in brackets, e.g. [::1]:9231)"
            )
        raise ValueError(f"{value!r} is not host:port ({expected})")
    port = int(m["p6"] or m["port"])
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            raise ValueError(f"{m['v6']!r} is not an IPv6 address ({expected})") from None
    else:
        try:
            check_address(m["host"])
        except ValueError:
            raise ValueError(f"{m['host']!r} is not an address or hostname ({expected})") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (expected 1 to 65535)")
    return value.strip()


def _check_label_name(value: str) -> str:
    if value.startswith("__"):
        raise ValueError(
            f"label name {value!r}: names starting with '__' are reserved by Prometheus"
        )
    if not _LABEL_RE.fullmatch(value):
        hint = f", e.g. '{label_name(value)}'" if label_name(value) else ""
        raise ValueError(
            f"{value!r} is not a valid label name (expected ASCII letters, digits and '_', "
            f"not starting with a digit{hint})"
        )
    if value in RESERVED_LABELS:
        raise ValueError(
            f"label name {value!r} is taken by vcmon's own labels "
            f"({', '.join(sorted(RESERVED_LABELS))}); choose another name"
        )
    return value


def _known_probes() -> frozenset[str]:
    # Imported late: probe modules may import this one, and loading a config needs no engine.
    from vcmon.measure.probes.registry import PROBE_NAMES

    return PROBE_NAMES


def _check_probe(value: str) -> str:
    known = _known_probes()
    if value not in known:
        hint = did_you_mean(value, known) or f" (expected one of: {', '.join(sorted(known))})"
        raise ValueError(f"unknown probe {value!r}{hint}")
    return value


def _as_parents(value: object) -> object:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else value


def _no_repeats(value: tuple[str, ...]) -> tuple[str, ...]:
    repeated = sorted({p for p in value if value.count(p) > 1})
    if repeated:
        raise ValueError(f"{', '.join(map(repr, repeated))} listed more than once")
    return value


def _none_as_empty_mapping(value: object) -> object:
    # A section whose keys are all commented out reads as null; treat it as empty.
    return {} if value is None else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


Seconds = PositiveSeconds
EchoCount = Annotated[
    int, BeforeValidator(not_bool), AfterValidator(between(1, 100, "a whole number"))
]
Text = Annotated[str, AfterValidator(_text)]
EndpointId = Annotated[str, AfterValidator(_check_id)]
LabelName = Annotated[str, AfterValidator(_check_label_name)]


def _unique_sink_names(sinks: tuple[Any, ...]) -> tuple[Any, ...]:
    seen: set[str] = set()
    for sink in sinks:
        if sink.name in seen:
            raise ValueError(f"two sinks are named {sink.name!r}; each needs its own name")
        seen.add(sink.name)
    return sinks


# ---------------------------------------------------------------------------------------------
# Models


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Level(enum.StrEnum):
    """Where an endpoint sits in the administrative tree."""

    PROVINCE = "province"
    DEPARTMENT = "department"
    DISTRICT = "district"
    COMMUNE = "commune"


class Timing(_Frozen):
    """One round's timing: ``count`` echoes ``spacing`` apart, every ``interval`` seconds."""

    interval: Seconds = 10.0
    count: EchoCount = 5
    spacing: Seconds = 0.2
    timeout: Seconds = 1.0

    @property
    def round_duration(self) -> float:
        """Seconds from a round's first echo to the deadline of its last."""
        # Rounded so 4 × 0.2 + 1 reads as 1.8, not 1.8000000000000003.
        return round((self.count - 1) * self.spacing + self.timeout, 9)

    def overrun(self, inherited: Sequence[str] = ()) -> str | None:
        """Why a round would not fit in its interval, or None when it fits.

        ``inherited`` names the keys that came from the defaults, to say so.
        """
        # Rounds of one endpoint must not overlap, or their echoes would be matched wrongly.
        if self.round_duration < self.interval:
            return None
        origin = f" ({', '.join(inherited)} from defaults)" if inherited else ""
        return (
            f"a round of {self.count} echoes {self.spacing:g} s apart with a {self.timeout:g} s "
            f"timeout{origin} takes {self.round_duration:g} s, which does not fit in the "
            f"interval of {self.interval:g} s (expected interval > {self.round_duration:g} s, "
            "or fewer echoes, less spacing or a shorter timeout)"
        )

    @model_validator(mode="after")
    def _round_fits(self) -> Timing:
        problem = self.overrun()
        if problem is not None:
            raise ValueError(problem)
        return self


class IcmpSettings(_Frozen):
    """The shared ICMP engine."""

    socket: Literal["auto", "raw", "dgram"] = "auto"
    max_rate: Annotated[
        float, BeforeValidator(not_bool), AfterValidator(positive("echoes per second"))
    ] = 5000.0
    payload_size: Annotated[
        int, BeforeValidator(not_bool), AfterValidator(between(16, 1472, "a whole number"))
    ] = 56


class _EndpointFields(_Frozen):
    """What an endpoint is, as written and as loaded."""

    id: EndpointId
    name: Text
    address: Annotated[str, AfterValidator(check_endpoint_address)]
    district: Text
    level: Annotated[Level, BeforeValidator(_lower)]
    parent: Annotated[
        tuple[EndpointId, ...], BeforeValidator(_as_parents), AfterValidator(_no_repeats)
    ] = ()
    site: Text | None = None
    labels: Annotated[Mapping[LabelName, Text], BeforeValidator(_none_as_empty_mapping)] = Field(
        default_factory=dict
    )
    probe: Annotated[str, AfterValidator(_check_probe)] = "icmp"
    alerts: Override | None = None  # this endpoint's own health and quality thresholds


class EndpointSpec(_EndpointFields):
    """An endpoint as written in a file: timing keys, when present, override the defaults."""

    interval: Seconds | None = None
    count: EchoCount | None = None
    spacing: Seconds | None = None
    timeout: Seconds | None = None

    def timing_overrides(self) -> dict[str, float | int]:
        """The timing keys this endpoint sets itself."""
        return {k: v for k in TIMING_KEYS if (v := getattr(self, k)) is not None}


class Endpoint(_EndpointFields):
    """One monitored room, with its timing resolved."""

    timing: Timing

    def __hash__(self) -> int:
        # labels is a dict, which the generated hash would choke on.
        return hash((self.id, self.address, self.parent, self.timing, tuple(self.labels.items())))


class Settings(_Frozen):
    """Top-level settings; new sections (alerts, sinks) are added here."""

    instance: Text = Field(default_factory=socket.gethostname)
    listen: Annotated[str, AfterValidator(_check_listen)] = "127.0.0.1:9231"
    defaults: Annotated[Timing, BeforeValidator(_none_as_empty_mapping)] = Timing()
    icmp: Annotated[IcmpSettings, BeforeValidator(_none_as_empty_mapping)] = IcmpSettings()
    resolve_interval: Seconds = 300.0
    alerts: Annotated[AlertsConfig, BeforeValidator(_none_as_empty_mapping)] = AlertsConfig()
    sinks: Annotated[tuple[SinkConfig, ...], AfterValidator(_unique_sink_names)] = ()
    # Exporter-toolkit web config (TLS, users, tokens); relative to the config file (webauth.py).
    web_config_file: str | None = None


class ConfigFile(Settings):
    """The shape of a main config file; ``inventory`` and ``endpoints`` are checked one by one."""

    inventory: tuple[str, ...] = ()
    endpoints: tuple[EndpointSpec, ...] = ()


class InventoryFile(_Frozen):
    """The shape of an included inventory file."""

    endpoints: tuple[EndpointSpec, ...]


class Config(Settings):
    """A complete, valid configuration."""

    source: Path
    endpoints: tuple[Endpoint, ...]
    _by_id: dict[str, Endpoint] = PrivateAttr(default_factory=dict)
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def warnings(self) -> tuple[str, ...]:
        """What is allowed but likely a mistake (two endpoints at one address), a line each."""
        return self._warnings

    def model_post_init(self, context: Any, /) -> None:
        """Index endpoints by id."""
        self._by_id = {ep.id: ep for ep in self.endpoints}

    def endpoint(self, id: str) -> Endpoint:
        """The endpoint with this id; KeyError if there is none."""
        try:
            return self._by_id[id]
        except KeyError:
            raise KeyError(f"no endpoint with id {id!r}") from None
