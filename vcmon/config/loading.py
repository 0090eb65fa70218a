"""Loading: a config file and its inventory files read, validated, checked as a whole and
resolved into a Config."""

from __future__ import annotations

import copy
import ipaddress
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from vcmon.config.alerts import AlertsConfig, Override
from vcmon.config.explain import describe, field_messages, validate
from vcmon.config.files import Unreadable, check_regular_file, decode_text, os_reason, read_file
from vcmon.config.problems import ConfigError, Loc, Problem, did_you_mean, format_path
from vcmon.config.schema import (
    TIMING_KEYS,
    Config,
    ConfigFile,
    Endpoint,
    EndpointSpec,
    InventoryFile,
    Settings,
    Timing,
)
from vcmon.config.secrets import scrub, secrets_of
from vcmon.config.source import MAX_DEPTH, Source, parse
from vcmon.config.topology import tree_issues
from vcmon.delivery.sinks.base import SinkSetupError

# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(slots=True)
class _Entry:
    """One endpoint as written, and where."""

    source: Source
    index: int  # in its file's endpoints list
    spec: EndpointSpec | None  # None when invalid

    @property
    def loc(self) -> Loc:
        return ("endpoints", self.index)


def _load_source(
    path: Path, name: str, env: Mapping[str, str], problems: list[Problem], sources: list[Source]
) -> Source | None:
    """The parsed file, or None after adding why it cannot be parsed to ``problems``; what
    was parsed is added to ``sources`` either way (its secrets are kept out of messages)."""
    raw = read_file(path, "a YAML file")
    text, problem = decode_text(raw, name)
    if text is None:
        problems.append(problem or Problem(name, "", "not UTF-8 text"))
        return None
    source = Source(name)
    sources.append(source)
    found = parse(text, source, env)
    problems.extend(found)
    if any(not p.path for p in found):  # a syntax error: there is no data to check
        return None
    return source


def _endpoints_of(source: Source, raw: object, problems: list[Problem]) -> list[_Entry]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(
            source.problem(
                ("endpoints",), f"expected a list of endpoints, got {describe(raw, None)}"
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
                    f"got {describe(item, source.text.get(loc))}",
                )
            )
            entries.append(_Entry(source, i, None))
            continue
        spec = validate(EndpointSpec, item, source, loc, problems)
        entries.append(_Entry(source, i, spec))
    return entries


def _unknown_keys(source: Source, data: dict[str, Any], allowed: Sequence[str]) -> list[Problem]:
    out = []
    for key in data:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f" (expected one of: {', '.join(allowed)})"
            out.append(source.problem((key,), f"unknown key '{key}'{hint}", key=True))
    return out


def _inventory_paths(source: Source, raw: object, problems: list[Problem]) -> list[tuple[Loc, str]]:
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
                    loc, f"expected a file name, got {describe(value, source.text.get(loc))}"
                )
            )
    return out


def _where(entry: _Entry, relative_to: Source) -> str:
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
    main: Source, data: dict[str, Any], base: Path, problems: list[Problem]
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


def _sink_problems(main: Source, sinks: Sequence[BaseModel]) -> list[Problem]:
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
    sources: list[Source] = []
    try:
        return _load_config(path, env, sources)
    except ConfigError as exc:
        secrets: dict[str, str] = {}
        for source in sources:
            secrets.update(secrets_of(source))
        raise ConfigError(
            [replace(p, message=scrub(p.message, secrets)) for p in exc.problems]
        ) from None
    except RecursionError:
        reason = f"nested too deeply to load (expected at most {MAX_DEPTH} levels)"
    except MemoryError:
        reason = "too large to load in the memory available"
    except OSError as exc:
        reason = os_reason(exc, "a YAML file")
    raise ConfigError([Problem(str(path), "", reason)])


def _load_config(path: Path, env: Mapping[str, str], sources: list[Source]) -> Config:
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
                    f"defaults, …, endpoints), got {describe(data, None)}",
                )
            ]
        )
    problems.extend(_unknown_keys(main, data, list(ConfigFile.model_fields)))
    settings_data = {k: v for k, v in data.items() if k in Settings.model_fields}
    settings_data = _resolve_files(main, settings_data, path.parent, problems)
    settings: Settings | None = validate(Settings, settings_data, main, (), problems)

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
        problems.extend(_unknown_keys(inc, inc_data, list(InventoryFile.model_fields)))
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
        **{name: getattr(settings, name) for name in Settings.model_fields},
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


def _policy_problems(main: Source, alerts: AlertsConfig, entries: list[_Entry]) -> list[Problem]:
    """Overrides that are valid alone but not with what they inherit (warning above critical)."""
    out: list[Problem] = []

    def check(source: Source, loc: Loc, level: str, override: Override | None) -> bool:
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
