"""Config: YAML files validated into frozen, typed objects, with errors a network admin can act on.

A config file holds top-level settings, inline ``endpoints`` and ``inventory`` files (each with
its own ``endpoints`` list) that are concatenated with them. Every problem found is reported
at once, each as ``file:line:column: path: what is wrong (what was expected)``.
"""

from __future__ import annotations

import copy
import difflib
import enum
import errno
import ipaddress
import math
import os
import re
import socket
import stat
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeAlias, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from vcmon.config.alerts import AlertsConfig, Override
from vcmon.delivery.sinks.base import SinkSetupError
from vcmon.delivery.sinks.registry import SinkConfig
from vcmon.text import slugify

Loc: TypeAlias = tuple[str | int, ...]

MAX_PROBLEMS: Final = 20
# Limits that keep a hostile or broken file from exhausting the daemon (see README, limits).
MAX_FILE_BYTES: Final = 16 * 1024 * 1024  # each file read: config, include, CSV, secret file
MAX_DEPTH: Final = 64  # nested mappings and lists, aliases included
MAX_NODES: Final = 1_000_000  # values in one file, aliases expanded
ALIAS_RATIO: Final = 10  # aliases may expand a file to this many times the values written…
ALIAS_FLOOR: Final = 10_000  # …plus this many
TIMING_KEYS: Final = ("interval", "count", "spacing", "timeout")
# Labels vcmon puts on series itself; a free label of the same name would be ambiguous.
RESERVED_LABELS: Final = frozenset(
    {"endpoint", "probe", "district", "level", "name", "address", "site", "parent"}
)


# ---------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config, located as precisely as the source allows."""

    file: str  # as the user would write it, e.g. config/province-231.yaml
    path: str  # field path such as endpoints[17].address; "" for the file as a whole
    message: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used; ``str(err)`` is the complete message, one problem a line."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        self.problems: tuple[Problem, ...] = () if isinstance(problems, str) else tuple(problems)
        if isinstance(problems, str):
            text = problems
        else:
            lines = [str(p) for p in self.problems[:MAX_PROBLEMS]]
            if len(self.problems) > MAX_PROBLEMS:
                lines.append(f"... and {len(self.problems) - MAX_PROBLEMS} more problems")
            text = "\n".join(lines)
        super().__init__(text)


# ---------------------------------------------------------------------------------------------
# Small text helpers, shared with the CSV import


def label_name(text: str) -> str:
    """A valid Prometheus label name derived from ``text`` ('' when nothing usable is left)."""
    slug = slugify(text, "_")
    return f"_{slug}" if slug[:1].isdigit() else slug


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """' (did you mean 'x'?)' when a choice is close to ``word``, else ''."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------------------------------------
# Field validators. Each raises ValueError with a complete sentence: it is shown as is.

_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_LABEL_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_LISTEN_RE: Final = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d+)|(?P<host>[^:\[\]]+):(?P<port>\d+)")
_ADDRESS_EXAMPLES: Final = "expected e.g. 127.0.0.1, ::1 or host.example"


def _not_bool(value: object) -> object:
    # YAML reads yes/no/on/off as booleans, which pydantic would quietly take for 1 and 0.
    if isinstance(value, bool):
        raise PydanticCustomError(
            "bool_not_number", "expected a number, got {value}", {"value": value}
        )
    return value


def _positive(unit: str) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"expected a number of {unit} greater than 0, got {value:g}")
        return value

    return check


def _between(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value}")
        return value

    return check


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


Seconds = Annotated[float, BeforeValidator(_not_bool), AfterValidator(_positive("seconds"))]
EchoCount = Annotated[int, BeforeValidator(_not_bool), AfterValidator(_between(1, 100))]
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
        float, BeforeValidator(_not_bool), AfterValidator(_positive("echoes per second"))
    ] = 5000.0
    payload_size: Annotated[int, BeforeValidator(_not_bool), AfterValidator(_between(16, 1472))] = (
        56
    )


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


class _Settings(_Frozen):
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


class _ConfigFile(_Settings):
    """The shape of a main config file; ``inventory`` and ``endpoints`` are checked one by one."""

    inventory: tuple[str, ...] = ()
    endpoints: tuple[EndpointSpec, ...] = ()


class _InventoryFile(_Frozen):
    """The shape of an included inventory file."""

    endpoints: tuple[EndpointSpec, ...]


class Config(_Settings):
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


# ---------------------------------------------------------------------------------------------
# YAML with positions


_ENV_RE: Final = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\}?)")
_ENV_BODY_RE: Final = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.S)


def substitute_env(value: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$${`` stands for a literal ``${``."""

    def one(m: re.Match[str]) -> str:
        if m[0] == "$${":
            return "${"
        if not m["close"]:
            raise ValueError(
                f"unclosed '${{' in {value!r} (expected ${{NAME}} or ${{NAME:-default}})"
            )
        body = _ENV_BODY_RE.fullmatch(m["body"])
        if body is None:
            raise ValueError(
                f"bad variable reference '{m[0]}' (expected ${{NAME}} or ${{NAME:-default}})"
            )
        got = env.get(body["name"])
        if body["default"] is not None:
            return got if got else body["default"]
        if got is None:
            raise ValueError(
                f"environment variable {body['name']} is not set "
                f"(set it, or give a default: ${{{body['name']}:-value}})"
            )
        return got

    return _ENV_RE.sub(one, value)


@dataclass(slots=True)
class _Source:
    """One YAML file: its data, and where each key and value was written."""

    name: str
    data: Any = None
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    text: dict[Loc, str] = field(default_factory=dict)  # scalars as written
    reported: set[Loc] = field(default_factory=set)  # already has a problem; say it once

    def position(self, loc: Loc, key: bool = False) -> tuple[int, int] | None:
        """(line, column) of ``loc``, or of the nearest enclosing node that was written."""
        if key and loc in self.keys:
            return self.keys[loc]
        while loc:
            if loc in self.values:
                return self.values[loc]
            loc = loc[:-1]
        return self.values.get(())

    def problem(self, loc: Loc, message: str, key: bool = False) -> Problem:
        """A problem at ``loc`` of this file."""
        pos = self.position(loc, key)
        return Problem(self.name, format_path(loc), message, *(pos or (None, None)))


def format_path(loc: Loc) -> str:
    """('endpoints', 17, 'address') → 'endpoints[17].address'."""
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", seg):
            out += f".{seg}" if out else seg
        else:
            out += f'["{seg}"]'
    return out


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


_Loader: TypeAlias = yaml.SafeLoader | yaml.CSafeLoader


class _TooComplex(Exception):
    """A file beyond the limits on nesting or size; refused before it is built."""

    def __init__(self, message: str, mark: Any) -> None:  # a yaml.Mark from either parser
        super().__init__(message)
        self.mark = mark


_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_NO_KEY: Final = object()


def _too_deep(mark: Any) -> _TooComplex:
    return _TooComplex(
        f"nested more than {MAX_DEPTH} levels deep (expected at most {MAX_DEPTH} levels of "
        "mappings and lists)",
        mark,
    )


def _compose(loader: Any) -> tuple[yaml.Node | None, int]:
    """The single document of ``loader``'s stream as a node tree, and how many nodes it has.

    PyYAML's own composer recurses once per level, so a deeply nested file exhausts the stack;
    this one keeps its own stack and refuses more than MAX_DEPTH levels as it reads.
    """
    loader.get_event()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        loader.get_event()
        return None, 0
    loader.get_event()  # document start
    anchors: dict[str, yaml.Node] = {}
    stack: list[list[Any]] = []  # [collection node, pending mapping key]
    count = 0
    while True:
        event: Any = loader.get_event()
        kind = type(event)  # compared as a type: the stubs' marks do not fit either parser's
        done: yaml.Node | None = None
        if issubclass(kind, yaml.CollectionEndEvent):
            done = stack.pop()[0]
            done.end_mark = event.end_mark
        elif issubclass(kind, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise yaml.composer.ComposerError(
                    None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                )
            done = anchors[event.anchor]
        else:
            count += 1
            if count > MAX_NODES:
                raise _TooComplex(
                    f"holds more than {MAX_NODES:,} values (expected at most that many)",
                    event.start_mark,
                )
            node = _node_of(loader, event)
            if event.anchor is not None:
                if event.anchor in anchors:
                    raise yaml.composer.ComposerError(
                        f"found duplicate anchor {event.anchor!r}; first occurrence",
                        anchors[event.anchor].start_mark,
                        "second occurrence",
                        event.start_mark,
                    )
                anchors[event.anchor] = node
            if isinstance(node, yaml.ScalarNode):
                done = node
            else:
                stack.append([node, _NO_KEY])
                if len(stack) > MAX_DEPTH:
                    raise _too_deep(event.start_mark)
        if done is None:
            continue
        if not stack:
            break
        top = stack[-1]
        if isinstance(top[0], yaml.SequenceNode):
            top[0].value.append(done)
        elif top[1] is _NO_KEY:
            top[1] = done
        else:
            top[0].value.append((top[1], done))
            top[1] = _NO_KEY
    loader.get_event()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        extra = loader.get_event()
        raise yaml.composer.ComposerError(
            "expected a single document in the stream",
            done.start_mark,
            "but found another document",
            extra.start_mark,
        )
    loader.get_event()
    return done, count


def _node_of(loader: Any, event: Any) -> yaml.Node:
    """A node for ``event`` with its tag resolved (children are added as they come)."""
    tag: Any = event.tag
    explicit = tag is not None and tag != "!"
    kind = type(event)
    if issubclass(kind, yaml.ScalarEvent):
        tag = tag if explicit else loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        return yaml.ScalarNode(
            tag, event.value, event.start_mark, event.end_mark, style=event.style
        )
    if issubclass(kind, yaml.SequenceStartEvent):
        tag = tag if explicit else loader.resolve(yaml.SequenceNode, None, event.implicit)
        return yaml.SequenceNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
    tag = tag if explicit else loader.resolve(yaml.MappingNode, None, event.implicit)
    return yaml.MappingNode(tag, [], event.start_mark, None, flow_style=event.flow_style)


class _Builder:
    """Turns a composed YAML node tree into plain data, recording positions as it goes.

    Aliases are expanded here, so this is where their expansion is bounded: at most
    ALIAS_RATIO times the nodes written (plus ALIAS_FLOOR), never more than MAX_NODES, and
    nested at most MAX_DEPTH deep counting what the aliases bring in.
    """

    def __init__(
        self, loader: _Loader, source: _Source, env: Mapping[str, str], written: int
    ) -> None:
        self.loader, self.source, self.env = loader, source, env
        self.problems: list[Problem] = []
        self._stack: set[int] = set()
        self._budget = min(MAX_NODES, written * ALIAS_RATIO + ALIAS_FLOOR)
        self._built = 0
        self._expanded_text = 0  # characters ${VAR} substitution added

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.source.values[loc] = _pos(node.start_mark)
        if id(node) in self._stack:
            self.problems.append(self.source.problem(loc, "an alias refers to itself"))
            return None
        self._built += 1
        if self._built > self._budget:
            raise _TooComplex(
                f"aliases expand this file to more than {self._budget:,} values (expected at "
                f"most {ALIAS_RATIO} times the values written; is it an alias bomb?)",
                node.start_mark,
            )
        if len(self._stack) >= MAX_DEPTH and not isinstance(node, yaml.ScalarNode):
            raise _too_deep(node.start_mark)
        self._stack.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, yaml.ScalarNode)
            return self._scalar(node, loc)
        finally:
            self._stack.discard(id(node))

    def _merged(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        """What the '<<' keys of ``node`` bring in; the first mapping listed wins a conflict."""
        out: dict[str, Any] = {}
        here = self.source.values[loc]
        for knode, vnode in node.value:
            if knode.tag != _MERGE_TAG:
                continue
            merged = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
            for sub in reversed(merged):
                if not isinstance(sub, yaml.MappingNode):
                    self.problems.append(
                        self.source.problem(
                            loc, "'<<' takes a mapping or a list of mappings (e.g. <<: *room)"
                        )
                    )
                    continue
                value = self.build(sub, loc)
                if isinstance(value, dict):
                    out.update(value)
        self.source.values[loc] = here  # building the merged mappings moved it to the anchor
        return out

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        out = self._merged(node, loc)
        written: set[str] = set()  # keys written in this mapping itself, not merged in
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                continue
            if not isinstance(knode, yaml.ScalarNode):
                self.problems.append(self.source.problem(loc, "a key must be plain text"))
                continue
            # The key as written: YAML 1.1 would read keys like 'on' or 'no' as booleans.
            key = str(knode.value)
            here = (*loc, key)
            if key in written:
                first = self.source.keys[here][0]
                self.problems.append(
                    Problem(
                        self.source.name,
                        format_path(here),
                        f"key '{key}' appears twice (first on line {first})",
                        *_pos(knode.start_mark),
                    )
                )
                continue
            written.add(key)
            self.source.keys[here] = _pos(knode.start_mark)
            out[key] = self.build(vnode, here)
        return out

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        self.source.text[loc] = str(node.value)
        try:
            value = self.loader.construct_object(node)
        # 2023-02-30, an integer of 5,000 digits; '!!int' on nothing, '!!bool maybe'…: PyYAML's
        # constructors trust the tag an explicit '!!type' gives.
        except (ValueError, OverflowError, IndexError, KeyError, TypeError, AttributeError):
            kind = node.tag.rsplit(":", 1)[-1]
            self.problems.append(
                self.source.problem(
                    loc, f"cannot be read as {kind} (write it in quotes if it is meant as text)"
                )
            )
            self.source.reported.add(loc)
            return None
        if isinstance(value, str) and "$" in value:
            try:
                value = substitute_env(value, self.env)
            except ValueError as exc:
                self.problems.append(self.source.problem(loc, str(exc)))
                self.source.reported.add(loc)
            else:
                self._expanded_text += len(value)
                if self._expanded_text > MAX_FILE_BYTES:
                    raise _TooComplex(
                        "environment variables expand this file beyond the "
                        f"{MAX_FILE_BYTES // (1024 * 1024)} MiB limit",
                        node.start_mark,
                    )
        return value


def decode_text(raw: bytes, name: str) -> tuple[str | None, Problem | None]:
    """``raw`` as text (a UTF-8 BOM is allowed), or a problem saying where it is not UTF-8."""
    try:
        return raw.decode("utf-8-sig"), None  # a BOM from Windows editors is harmless
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        problem = Problem(
            name,
            "",
            f"byte 0x{raw[exc.start]:02x} is not UTF-8 text (save the file as UTF-8)",
            raw.count(b"\n", 0, exc.start) + 1,
            exc.start - line_start + 1,
        )
        return None, problem


class Unreadable(Exception):
    """A file that could not be read at all; the argument says why in plain words."""


_FILE_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _os_reason(exc: OSError, expected: str) -> str:
    if exc.errno == errno.ENOENT:
        return "file not found"
    if exc.errno == errno.ELOOP:
        return f"is a symbolic link loop (too many levels of symbolic links), expected {expected}"
    if exc.errno == errno.EISDIR:
        return f"is a directory, not a regular file (expected {expected})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied (expected {expected} vcmon may read)"
    if exc.errno == errno.ENOTDIR:
        return "file not found (a part of the path is not a directory)"
    return f"cannot read: {exc.strerror or exc}"


def _not_regular(mode: int, expected: str) -> str | None:
    """Why a file of ``mode`` is refused, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    what = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"is {what}, not a regular file (expected {expected})"


def _too_big(size: int, limit: int, expected: str) -> str:
    return (
        f"is larger than the {limit // (1024 * 1024)} MiB limit "
        f"({size // (1024 * 1024)} MiB or more; expected {expected} of at most that)"
    )


def check_regular_file(path: str | Path, expected: str, limit: int = MAX_FILE_BYTES) -> str | None:
    """Why ``path`` cannot be read as a file, judged without opening it; None when it may be."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _os_reason(exc, expected)
    except ValueError:  # a NUL byte in the name
        return f"is not a usable file name (expected {expected})"
    reason = _not_regular(st.st_mode, expected)
    if reason is None and st.st_size > limit:
        reason = _too_big(st.st_size, limit, expected)
    return reason


def read_file(path: str | Path, expected: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; Unreadable saying why
    not (missing, a FIFO or device, a symlink loop, no permission, too large)."""
    reason = check_regular_file(path, expected, limit)
    if reason is not None:
        raise Unreadable(reason)
    # Non-blocking, so a file swapped for a FIFO since the stat cannot hang the open; the fstat
    # then judges the file actually opened.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise Unreadable(_os_reason(exc, expected)) from None
    try:
        st = os.fstat(fd)
        reason = _not_regular(st.st_mode, expected)
        if reason is not None:
            raise Unreadable(reason)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # one byte more than the limit tells a file that grew
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise Unreadable(_too_big(size, limit, expected))
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(_os_reason(exc, expected)) from None
    finally:
        os.close(fd)


# libyaml composes a large inventory some 20 times faster; the pure-Python parser words its
# errors better ("found character '\t'"), so a file libyaml rejects is parsed again with it.
_LOADERS: Final[tuple[type[_Loader], ...]] = (
    (yaml.CSafeLoader, yaml.SafeLoader) if yaml.__with_libyaml__ else (yaml.SafeLoader,)
)


def _parse(text: str, source: _Source, env: Mapping[str, str]) -> list[Problem]:
    """Fill ``source`` from YAML ``text``; the problems found on the way."""
    try:
        return _parse_with_fallback(text, source, env)
    except _TooComplex as exc:
        pos = _pos(exc.mark) if exc.mark is not None else (None, None)
        return [Problem(source.name, "", str(exc), *pos)]


def _parse_with_fallback(text: str, source: _Source, env: Mapping[str, str]) -> list[Problem]:
    for loader_class in _LOADERS[:-1]:
        try:
            return _build(loader_class, text, source, env)
        except yaml.MarkedYAMLError as exc:
            # libyaml reads ahead and stops at 1,000 levels, before the composer sees 64;
            # the pure-Python parser would take long to find the same.
            if "maximum nesting depth" in str(exc.problem):
                raise _too_deep(exc.problem_mark) from None
            source.values.clear()
            source.keys.clear()
            source.text.clear()
            source.reported.clear()
        except yaml.YAMLError:
            source.values.clear()
            source.keys.clear()
            source.text.clear()
            source.reported.clear()
    try:
        return _build(_LOADERS[-1], text, source, env)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = (exc.problem or exc.context or "unreadable").replace(
            "'<stream end>'", "the end of the file"
        )
        if "'\\t'" in what:
            what += " (indent with spaces, not tabs)"
        elif exc.context and exc.problem:
            what = f"{what} ({exc.context}"
            if exc.context_mark is not None and exc.context_mark is not mark:
                what += f" on line {exc.context_mark.line + 1}"
            what += ")"
        pos = _pos(mark) if mark is not None else (None, None)
        return [Problem(source.name, "", f"YAML syntax error: {what}", *pos)]
    except yaml.YAMLError as exc:
        return [Problem(source.name, "", f"YAML syntax error: {exc}")]


def _build(
    loader_class: type[_Loader], text: str, source: _Source, env: Mapping[str, str]
) -> list[Problem]:
    loader = loader_class(text)
    try:
        node, written = _compose(loader)
        if node is None:
            source.data = None
            return []
        builder = _Builder(loader, source, env, written)
        source.data = builder.build(node, ())
        return builder.problems
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------
# Secrets: never in an error. A value is secret by its field's name (or any enclosing one);
# a URL's user info and path may hold a token, so only its scheme and host are shown.

_SECRET_NAME: Final = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api_?key|authori[sz]ation|credential|bearer|cookie"
    r"|private_?key|^headers$",
    re.IGNORECASE,
)
_URL_NAME: Final = re.compile(r"(^|_)(url|uri|endpoint_url|webhook)$", re.IGNORECASE)
# Patterns scrubbed from every message whatever field they came from.
_SECRET_PATTERNS: Final = (
    (re.compile(r"\bbot\d{3,}:[A-Za-z0-9_-]{10,}"), "bot***"),  # a Telegram bot token
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_***"),  # a webhook signing secret
    (re.compile(r"(\w+://[^/@\s:'\"]*:)[^@\s/'\"]*@"), r"\1***@"),  # user:password@
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
)
_NOT_SHOWN: Final = "(not shown: it may hold a secret)"


def is_secret_path(loc: Loc) -> bool:
    """Whether the value at ``loc`` is secret: a password, secret, token, header value…

    Settings that only name where a secret is (``*_env``, ``*_file``) are not secret.
    """
    return any(
        isinstance(seg, str)
        and not seg.lower().endswith(("_env", "_file"))
        and _SECRET_NAME.search(seg) is not None
        for seg in loc
    )


def _is_url_path(loc: Loc) -> bool:
    return any(isinstance(seg, str) and _URL_NAME.search(seg) for seg in loc)


def redact_url(text: str) -> str:
    """``text`` as a URL with only its scheme, user name and host: 'https://u:***@host/…'."""
    try:
        parts = urlsplit(text.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return _NOT_SHOWN
    if not parts.scheme or not host:
        return _NOT_SHOWN
    user = f"{parts.username}:***@" if parts.password is not None else ""
    if parts.username is not None and parts.password is None:
        user = "***@"
    where = f"[{host}]" if ":" in host else host
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{user}{where}{f':{port}' if port else ''}{rest}"


def _leaves(data: object, loc: Loc) -> Iterator[tuple[Loc, object]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, (*loc, i))
    else:
        yield loc, data


def _secrets_of(source: _Source) -> dict[str, str]:
    """Each secret text of ``source`` (as loaded and as written) → what to show instead."""
    out: dict[str, str] = {}
    for loc, value in _leaves(source.data, ()):
        if value is None or isinstance(value, bool):
            continue
        texts = {str(value), source.text.get(loc, "")} - {""}
        if is_secret_path(loc):
            out.update(dict.fromkeys(texts, "***"))
        elif isinstance(value, str) and (_is_url_path(loc) or "@" in value):
            for text in texts:
                if "${" not in text and redact_url(text) != text:
                    out[text] = redact_url(text) if _is_url_path(loc) else "***"
    return out


def scrub(message: str, secrets: Mapping[str, str]) -> str:
    """``message`` with every secret of ``secrets`` and every token-like text replaced."""
    for secret in sorted(secrets, key=len, reverse=True):
        shown = secrets[secret]
        if len(secret) >= 6:
            message = message.replace(secret, shown)
        else:  # a short one only where it stands alone, not inside other words
            alone = rf"(?<!\w){re.escape(secret)}(?!\w)"
            message = re.sub(alone, shown.replace("\\", "\\\\"), message)
    for pattern, replacement in _SECRET_PATTERNS:
        message = pattern.sub(replacement, message)
    return message


# ---------------------------------------------------------------------------------------------
# Pydantic errors in plain words


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    # Annotated[...], X | None, tuple[X, ...]: look inside.
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` below ``model``."""
    from vcmon.delivery.sinks.registry import SINKS  # a sink's type tag picks its model

    current: type[BaseModel] | None = model
    for seg in loc:
        if isinstance(seg, int):
            continue
        if current is not None and seg not in current.model_fields and seg in SINKS:
            current = SINKS[seg][0]
            continue
        if current is None or seg not in current.model_fields:
            return None
        current = _unwrap_model(current.model_fields[seg].annotation)
    return current


def _describe(value: object, written: str | None) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return written or str(value).lower()
    if isinstance(value, int | float):
        return f"the number {written or value}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping (key: value)"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{written!r}" if written else type(value).__name__


def _kind_of(value: object) -> str:
    """What ``value`` is, without showing it: for secrets."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping (key: value)"
    if isinstance(value, list | tuple):
        return "a list"
    return "a value of another kind"


def _explain(
    err: ErrorDetails, model: type[BaseModel], loc: Loc, written: str | None, secret: bool = False
) -> str:
    """One pydantic error as a sentence a network admin understands; when ``secret``, the
    value is described by its kind only."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    got = _kind_of(value) if secret else _describe(value, written)
    if secret:
        written = None
    # Models are looked up along pydantic's own path, which names the sink type it chose.
    raw = tuple(s for s in err["loc"] if s != "[key]")
    loc = raw if len(raw) >= len(loc) else loc
    if kind == "missing":
        owner = _model_at(model, loc[:-1])
        needed = [n for n, f in owner.model_fields.items() if f.is_required()] if owner else []
        hint = f" (required here: {', '.join(needed)})" if len(needed) > 1 else ""
        return f"required key '{loc[-1]}' is missing{hint}"
    if kind == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = list(owner.model_fields) if owner else []
        hint = did_you_mean(str(loc[-1]), allowed) or (
            f" (expected one of: {', '.join(allowed)})" if allowed else ""
        )
        return f"unknown key '{loc[-1]}'{hint}"
    if kind == "bool_not_number":
        return f"expected a number, got {written or str(value).lower()}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind == "string_type":
        quote = f' (write it in quotes: "{written}")' if written and value is not None else ""
        if secret:
            quote = " (write it in quotes)" if isinstance(value, int | float) else ""
        return f"expected text, got {got}{quote}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return f"expected a mapping (key: value), got {got}"
    if kind in ("list_type", "tuple_type", "iterable_type"):
        return f"expected a list, got {got}"
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else ""
        return f"{got} is not one of {', '.join(choices)}{hint}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        from vcmon.delivery.sinks.registry import (
            SINKS,  # the only discriminated union in the config
        )

        choices = list(SINKS)
        tag = ctx.get("tag")
        if tag is None:
            return f"required key 'type' is missing (expected one of: {', '.join(choices)})"
        hint = did_you_mean(str(tag), choices) or f" (expected one of: {', '.join(choices)})"
        return f"unknown type '{tag}'{hint}"
    return f"{err['msg']} (got {got})"


def _error_loc(err: ErrorDetails) -> tuple[Loc, bool]:
    """The error's location without pydantic's '[key]' marker or the sink type it chose (which
    is not a key in the file), and whether it names a key."""
    loc = tuple(err["loc"])
    if len(loc) >= 3 and loc[0] == "sinks" and isinstance(loc[1], int):
        from vcmon.delivery.sinks.registry import SINKS

        if loc[2] in SINKS:
            loc = loc[:2] + loc[3:]
    if loc and loc[-1] == "[key]":
        return loc[:-1], True
    return loc, err["type"] == "extra_forbidden"


def field_messages(exc: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """(field path, message) for each error of ``exc``, raised while validating ``model``."""
    out = []
    for err in exc.errors():
        loc, _ = _error_loc(err)
        out.append((format_path(loc), _explain(err, model, loc, None, is_secret_path(loc))))
    return out


def _validate(
    model: type[BaseModel], data: object, source: _Source, prefix: Loc, problems: list[Problem]
) -> Any:
    """``model`` validated from ``data`` at ``prefix`` of ``source``; None after problems."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc, is_key = _error_loc(err)
            full = (*prefix, *loc)
            # 'parent: x' is validated as a one-item list; point at the string, not at [0].
            if full and isinstance(full[-1], int) and full not in source.values:
                full = full[:-1]
            if full in source.reported:
                continue
            message = _explain(err, model, loc, source.text.get(full), is_secret_path(full))
            problems.append(source.problem(full, message, key=is_key))
        return None


# ---------------------------------------------------------------------------------------------
# The endpoint tree


@dataclass(frozen=True, slots=True)
class TreeIssue:
    """A problem in the parent tree: at node ``index``, its id or its ``parent_pos``-th parent.

    For a duplicate id, ``first`` is the node that used the id first.
    """

    index: int
    parent_pos: int | None
    message: str
    first: int | None = None


def tree_issues(ids: Sequence[str], parents: Sequence[Sequence[str]]) -> list[TreeIssue]:
    """Duplicate ids, unknown or self parents and cycles among nodes ``ids``."""
    issues: list[TreeIssue] = []
    first: dict[str, int] = {}
    for i, id_ in enumerate(ids):
        if id_ in first:
            issues.append(TreeIssue(i, None, f"duplicate id '{id_}'", first[id_]))
        else:
            first[id_] = i
    for i, id_ in enumerate(ids):
        for j, parent in enumerate(parents[i]):
            if parent == id_:
                issues.append(
                    TreeIssue(
                        i, j, f"'{parent}' is this endpoint itself; it cannot be its own parent"
                    )
                )
            elif parent not in first:
                hint = did_you_mean(parent, first)
                issues.append(TreeIssue(i, j, f"unknown endpoint id '{parent}'{hint}"))
    # Cycles, by depth-first search over the first endpoint of each id.
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in first:
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(parents[first[start]]))]
        state[start] = 1
        path.append(start)
        while stack:
            node, todo = stack[-1]
            nxt = next((p for p in todo if p in first and p != node), None)
            if nxt is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                i = first[cycle[0]]
                pos = list(parents[i]).index(cycle[1])
                issues.append(
                    TreeIssue(
                        i, pos, f"dependency cycle {' → '.join(cycle)} (parents must form a tree)"
                    )
                )
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(parents[first[nxt]])))
    return issues


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(slots=True)
class _Entry:
    """One endpoint as written, and where."""

    source: _Source
    index: int  # in its file's endpoints list
    spec: EndpointSpec | None  # None when invalid

    @property
    def loc(self) -> Loc:
        return ("endpoints", self.index)


def _load_source(
    path: Path, name: str, env: Mapping[str, str], problems: list[Problem], sources: list[_Source]
) -> _Source | None:
    """The parsed file, or None after adding why it cannot be parsed to ``problems``; what
    was parsed is added to ``sources`` either way (its secrets are kept out of messages)."""
    raw = read_file(path, "a YAML file")
    text, problem = decode_text(raw, name)
    if text is None:
        problems.append(problem or Problem(name, "", "not UTF-8 text"))
        return None
    source = _Source(name)
    sources.append(source)
    found = _parse(text, source, env)
    problems.extend(found)
    if any(not p.path for p in found):  # a syntax error: there is no data to check
        return None
    return source


def _endpoints_of(source: _Source, raw: object, problems: list[Problem]) -> list[_Entry]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(
            source.problem(
                ("endpoints",), f"expected a list of endpoints, got {_describe(raw, None)}"
            )
        )
        return []
    entries = []
    for i, item in enumerate(raw):
        loc: Loc = ("endpoints", i)
        if not isinstance(item, dict):
            problems.append(
                source.problem(
                    loc,
                    f"expected an endpoint (a mapping with id, name, address, district, level), "
                    f"got {_describe(item, source.text.get(loc))}",
                )
            )
            entries.append(_Entry(source, i, None))
            continue
        spec = _validate(EndpointSpec, item, source, loc, problems)
        entries.append(_Entry(source, i, spec))
    return entries


def _unknown_keys(source: _Source, data: dict[str, Any], allowed: Sequence[str]) -> list[Problem]:
    out = []
    for key in data:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f" (expected one of: {', '.join(allowed)})"
            out.append(source.problem((key,), f"unknown key '{key}'{hint}", key=True))
    return out


def _inventory_paths(
    source: _Source, raw: object, problems: list[Problem]
) -> list[tuple[Loc, str]]:
    if raw is None:
        return []
    items: list[tuple[Loc, object]]
    if isinstance(raw, list):
        items = [(("inventory", i), v) for i, v in enumerate(raw)]
    else:
        items = [(("inventory",), raw)]
    out = []
    for loc, value in items:
        if isinstance(value, str) and value.strip():
            out.append((loc, value.strip()))
        else:
            problems.append(
                source.problem(
                    loc, f"expected a file name, got {_describe(value, source.text.get(loc))}"
                )
            )
    return out


def _where(entry: _Entry, relative_to: _Source) -> str:
    line = entry.source.position(entry.loc)
    at = f" (line {line[0]})" if line else ""
    if entry.source is relative_to:
        return f"{format_path(entry.loc)}{at}"
    return f"{format_path(entry.loc)} in {entry.source.name}{at}"


def _file_fields(data: object, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """(location, value) of every ``*_file`` setting below ``data``."""
    if isinstance(data, dict):
        for key, value in data.items():
            here = (*loc, key)
            if key.endswith("_file") and isinstance(value, str) and value:
                yield here, value
            else:
                yield from _file_fields(value, here)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _file_fields(value, (*loc, i))


def _resolve_files(
    main: _Source, data: dict[str, Any], base: Path, problems: list[Problem]
) -> dict[str, Any]:
    """``data`` with every ``*_file`` setting relative to the config file's directory, and
    without those that name a FIFO, a device, a directory, a symlink loop or a file over the
    size limit, each reported: their readers would hang or fill memory. Missing files are
    left to the setting's own check."""
    data = copy.deepcopy(data)
    for loc, value in list(_file_fields(data, ())):
        where = base / Path(value).expanduser()  # an absolute value stays as it is
        holder: Any = data
        for seg in loc[:-1]:
            holder = holder[seg]
        reason = check_regular_file(where, "a regular file")
        if reason is not None and reason.startswith("is "):
            problems.append(main.problem(loc, f"{value} {reason}"))
            del holder[loc[-1]]
        else:
            holder[loc[-1]] = str(where)
    return data


def _sink_problems(main: _Source, sinks: Sequence[BaseModel]) -> list[Problem]:
    """What a sink would fail on at start-up (an unset secret variable, an unreadable file)."""
    found = []
    for i, sink in enumerate(sinks):
        check = getattr(sink, "check", None)
        if check is None:
            continue
        try:
            check()
        except SinkSetupError as exc:
            found.append(main.problem(("sinks", i), str(exc)))
        except (OSError, ValueError) as exc:  # a file its check reads, or a value it parses
            reason = getattr(exc, "strerror", None) or str(exc)
            found.append(main.problem(("sinks", i), f"cannot be set up: {reason}"))
    return found


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a config file and its inventory files; ConfigError if wrong."""
    env = os.environ if env is None else env
    path = Path(path)
    # The limits keep these from happening; should one slip through, it is still a config
    # problem, never a traceback or a dead daemon.
    sources: list[_Source] = []
    try:
        return _load_config(path, env, sources)
    except ConfigError as exc:
        secrets: dict[str, str] = {}
        for source in sources:
            secrets.update(_secrets_of(source))
        raise ConfigError(
            [replace(p, message=scrub(p.message, secrets)) for p in exc.problems]
        ) from None
    except RecursionError:
        reason = f"nested too deeply to load (expected at most {MAX_DEPTH} levels)"
    except MemoryError:
        reason = "too large to load in the memory available"
    except OSError as exc:
        reason = _os_reason(exc, "a YAML file")
    raise ConfigError([Problem(str(path), "", reason)])


def _load_config(path: Path, env: Mapping[str, str], sources: list[_Source]) -> Config:
    """load_config's work; each file parsed is added to ``sources``."""
    problems: list[Problem] = []
    try:
        main = _load_source(path, str(path), env, problems, sources)
    except Unreadable as exc:
        raise ConfigError([Problem(str(path), "", str(exc))]) from None
    if main is None:
        raise ConfigError(problems)
    data = {} if main.data is None else main.data
    if not isinstance(data, dict):
        raise ConfigError(
            [
                main.problem(
                    (),
                    f"expected a mapping of settings at the top level (instance, listen, "
                    f"defaults, …, endpoints), got {_describe(data, None)}",
                )
            ]
        )
    problems.extend(_unknown_keys(main, data, list(_ConfigFile.model_fields)))
    settings_data = {k: v for k, v in data.items() if k in _Settings.model_fields}
    settings_data = _resolve_files(main, settings_data, path.parent, problems)
    settings: _Settings | None = _validate(_Settings, settings_data, main, (), problems)

    entries = _endpoints_of(main, data.get("endpoints"), problems)
    files = [main.name]  # problems are listed file by file, in this order
    # realpath, not Path.resolve(): it does not raise on a symlink loop, which is read below.
    seen: dict[str, Loc] = {os.path.realpath(path): ()}
    for loc, name in _inventory_paths(main, data.get("inventory"), problems):
        inc_path = path.parent / name
        key = os.path.realpath(inc_path)
        if key in seen:
            was = format_path(seen[key]) or "the main config file"
            problems.append(main.problem(loc, f"'{name}' is already included as {was}"))
            continue
        seen[key] = loc
        files.append(str(inc_path))
        try:
            inc = _load_source(inc_path, str(inc_path), env, problems, sources)
        except Unreadable as exc:
            reason = str(exc)
            said = f"{inc_path} {reason}" if reason.startswith("is ") else f"{reason}: {inc_path}"
            problems.append(main.problem(loc, said))
            continue
        if inc is None:
            continue
        inc_data = inc.data
        if not isinstance(inc_data, dict) or "endpoints" not in inc_data:
            problems.append(
                inc.problem((), "expected an inventory file: a mapping with an 'endpoints:' list")
            )
            continue
        problems.extend(_unknown_keys(inc, inc_data, list(_InventoryFile.model_fields)))
        entries.extend(_endpoints_of(inc, inc_data["endpoints"], problems))

    if not entries and not problems:
        problems.append(
            main.problem((), "no endpoints: add an 'endpoints:' list or an 'inventory:' file")
        )

    problems.extend(_tree_problems(entries))

    endpoints: list[Endpoint] = []
    if settings is not None:
        for entry in entries:
            ep = _resolve(entry, settings.defaults, problems) if entry.spec else None
            if ep is not None:
                endpoints.append(ep)
        problems.extend(_policy_problems(main, settings.alerts, entries))
        problems.extend(_sink_problems(main, settings.sinks))
    if problems:
        order = {name: i for i, name in reversed(list(enumerate(files)))}
        problems.sort(key=lambda p: (order.get(p.file, 0), p.line or 0, p.column or 0))
        raise ConfigError(problems)
    assert settings is not None
    config = Config(
        source=path.absolute(),
        endpoints=tuple(endpoints),
        **{name: getattr(settings, name) for name in _Settings.model_fields},
    )
    config._warnings = tuple(_duplicate_addresses(entries))
    return config


def _address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)  # '::0:1' and '::1' are one address
    except ValueError:
        return address.lower().rstrip(".")
    mapped = getattr(ip, "ipv4_mapped", None)  # '::ffff:127.0.0.1' is 127.0.0.1
    return (mapped or ip).compressed


def _duplicate_addresses(entries: Sequence[_Entry]) -> list[str]:
    """A warning for each endpoint probed at an address an earlier one has, with one probe."""
    first: dict[tuple[str, str], _Entry] = {}
    out = []
    for entry in entries:
        spec = entry.spec
        if spec is None:
            continue
        key = (spec.probe, _address_key(spec.address))
        was = first.setdefault(key, entry)
        if was is not entry:
            problem = entry.source.problem(
                (*entry.loc, "address"),
                f"{spec.address} is also the address of '{_spec(was).id}', "
                f"{_where(was, entry.source)}; both are probed and alerted on separately",
            )
            out.append(str(problem))
    return out


def _policy_problems(main: _Source, alerts: AlertsConfig, entries: list[_Entry]) -> list[Problem]:
    """Overrides that are valid alone but not with what they inherit (warning above critical)."""
    out: list[Problem] = []

    def check(source: _Source, loc: Loc, level: str, override: Override | None) -> bool:
        try:
            alerts.policy_for(level, override)
        except ValidationError as exc:
            for path, message in field_messages(exc, type(alerts.base_policy())):
                where = f"{path}: " if path else ""
                out.append(source.problem(loc, f"{where}{message} (with the values it inherits)"))
            return False
        return True

    from vcmon.alerts.messages import Messages, TemplateError  # imports config: not at the top

    try:
        Messages(alerts.locale, alerts.templates, alerts.timezone)
    except TemplateError as exc:
        out.append(
            main.problem(("alerts", "templates"), str(exc).removeprefix("alerts.templates."))
        )
    bad_levels = {
        level
        for level, override in alerts.levels.items()
        if not check(main, ("alerts", "levels", level), level, None)
    }
    for entry in entries:
        spec = entry.spec
        if spec is not None and spec.alerts is not None and spec.level.value not in bad_levels:
            check(entry.source, (*entry.loc, "alerts"), spec.level.value, spec.alerts)
    return out


def _raw_id(entry: _Entry) -> object:
    data = entry.source.data
    items = data.get("endpoints") if isinstance(data, dict) else None
    if (
        isinstance(items, list)
        and entry.index < len(items)
        and isinstance(items[entry.index], dict)
    ):
        return items[entry.index].get("id")
    return None


def _tree_problems(entries: list[_Entry]) -> list[Problem]:
    # An endpoint that failed validation still takes part with the id it was given, so one
    # typo does not also turn its children into 'unknown parent' or hide a duplicate.
    nodes = [e for e in entries if e.spec is not None or isinstance(_raw_id(e), str)]
    ids = [e.spec.id if e.spec else str(_raw_id(e)) for e in nodes]
    parents = [e.spec.parent if e.spec else () for e in nodes]
    issues = tree_issues(ids, parents)
    out = []
    for issue in issues:
        entry = nodes[issue.index]
        message = issue.message
        if issue.parent_pos is None:
            loc: Loc = (*entry.loc, "id")
            if issue.first is not None:
                message += f", already used by {_where(nodes[issue.first], entry.source)}"
        else:
            loc = (*entry.loc, "parent", issue.parent_pos)
            if loc not in entry.source.values:
                loc = loc[:-1]
        out.append(entry.source.problem(loc, message))
    return out


def _spec(entry: _Entry) -> EndpointSpec:
    assert entry.spec is not None
    return entry.spec


def _resolve(entry: _Entry, defaults: Timing, problems: list[Problem]) -> Endpoint | None:
    spec = _spec(entry)
    overrides = spec.timing_overrides()
    timing = defaults
    if overrides:
        # Each value is valid already; only the combination can be wrong.
        timing = Timing.model_construct(**(defaults.model_dump() | overrides))
        problem = timing.overrun([k for k in TIMING_KEYS if k not in overrides])
        if problem is not None:
            problems.append(entry.source.problem((*entry.loc, next(iter(overrides))), problem))
            return None
    fields = spec.model_dump(exclude=set(TIMING_KEYS))
    return Endpoint(**fields, timing=timing)
