"""YAML with positions: a bounded composer, ``${ENV}`` substitution, and every key and value
remembered with its line and column so that a problem can point at it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import yaml

from vcmon.config.files import MAX_FILE_BYTES
from vcmon.config.problems import Loc, Problem, format_path

MAX_DEPTH: Final = 64  # nested mappings and lists, aliases included
MAX_NODES: Final = 1_000_000  # values in one file, aliases expanded
ALIAS_RATIO: Final = 10  # aliases may expand a file to this many times the values written…
ALIAS_FLOOR: Final = 10_000  # …plus this many

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
class Source:
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
        self, loader: _Loader, source: Source, env: Mapping[str, str], written: int
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


# libyaml composes a large inventory some 20 times faster; the pure-Python parser words its
# errors better ("found character '\t'"), so a file libyaml rejects is parsed again with it.
_LOADERS: Final[tuple[type[_Loader], ...]] = (
    (yaml.CSafeLoader, yaml.SafeLoader) if yaml.__with_libyaml__ else (yaml.SafeLoader,)
)


def parse(text: str, source: Source, env: Mapping[str, str]) -> list[Problem]:
    """Fill ``source`` from YAML ``text``; the problems found on the way."""
    try:
        return _parse_with_fallback(text, source, env)
    except _TooComplex as exc:
        pos = _pos(exc.mark) if exc.mark is not None else (None, None)
        return [Problem(source.name, "", str(exc), *pos)]


def _parse_with_fallback(text: str, source: Source, env: Mapping[str, str]) -> list[Problem]:
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
    loader_class: type[_Loader], text: str, source: Source, env: Mapping[str, str]
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
