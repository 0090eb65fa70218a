"""Spreadsheet (CSV) exports turned into inventory YAML, checked row by row with the config's rules.

The header row names the columns: id, name, address, district, level (required), parent, site,
probe, interval, count, spacing, timeout (optional); any other column becomes a label, its name
slugged to a valid label name ('Đường truyền' → 'duong_truyen'). ``parent`` may hold several ids
separated by ';' or '|'. UTF-8 with or without a BOM; ',' ';' or tab as delimiter.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from vcmon.config.explain import field_messages
from vcmon.config.files import Unreadable, decode_text, read_file
from vcmon.config.schema import RESERVED_LABELS, TIMING_KEYS, EndpointSpec, label_name
from vcmon.config.topology import tree_issues
from vcmon.config.writing import endpoint_document

REQUIRED: Final = ("id", "name", "address", "district", "level")
OPTIONAL: Final = ("parent", "site", "probe", *TIMING_KEYS)
_PARENT_SPLIT: Final = re.compile(r"[;|]")


@dataclass(frozen=True, slots=True)
class RowError:
    """A row (or the file) that could not be imported; ``line`` is where the row starts."""

    file: str
    line: int | None  # 1-based; None when the whole file is unusable
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


@dataclass(frozen=True, slots=True)
class _Column:
    header: str  # as written in the file
    key: str  # endpoint key, or the label name when ``label`` is true
    label: bool


@dataclass(slots=True)
class _Row:
    line: int
    raw_id: str
    spec: EndpointSpec | None = None


def _delimiter(text: str) -> str:
    # The header row decides: Excel in a comma-decimal locale writes ';', LibreOffice may use tab.
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, cells) of every non-blank record."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    for cells in reader:
        if any(c.strip() for c in cells):
            yield start, cells
        start = reader.line_num + 1


def _columns(name: str, cells: list[str]) -> tuple[list[_Column | None], list[RowError]]:
    """The meaning of each header cell (None: an unnamed column to ignore) and header problems."""
    known = {*REQUIRED, *OPTIONAL}
    columns: list[_Column | None] = []
    errors: list[RowError] = []
    by_key: dict[tuple[str, bool], str] = {}
    for cell in cells:
        header = unicodedata.normalize("NFC", cell.strip())
        if not header:
            columns.append(None)
            continue
        if header.lower() in known:
            column = _Column(header, header.lower(), label=False)
        else:
            slug = label_name(header)
            if not slug:
                errors.append(
                    RowError(name, 1, f"column {header!r}: cannot make a label name of it")
                )
                continue
            if slug in RESERVED_LABELS:
                errors.append(
                    RowError(
                        name,
                        1,
                        f"column {header!r} would become label '{slug}', which vcmon sets itself; "
                        "rename the column",
                    )
                )
                continue
            column = _Column(header, slug, label=True)
        key = (column.key, column.label)
        if key in by_key:
            what = f"label '{column.key}'" if column.label else f"column '{column.key}'"
            errors.append(
                RowError(name, 1, f"columns {by_key[key]!r} and {header!r} are both {what}")
            )
        by_key[key] = header
        columns.append(column)
    present = {c.key for c in columns if c is not None and not c.label}
    missing = [c for c in REQUIRED if c not in present]
    if missing:
        errors.append(
            RowError(
                name,
                1,
                f"the header has no {', '.join(missing)} column (expected a header row naming "
                f"{', '.join(REQUIRED)}; optional: {', '.join(OPTIONAL)}; other columns become "
                "labels)",
            )
        )
    return columns, errors


def _row_data(columns: list[_Column | None], cells: list[str]) -> tuple[dict[str, Any], set[str]]:
    """The endpoint mapping a row describes, and the required columns it leaves empty."""
    data: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for column, cell in zip(columns, cells, strict=False):
        value = cell.strip()
        if column is None or not value:
            continue
        if column.label:
            labels[column.key] = value
        elif column.key == "parent":
            data["parent"] = [p.strip() for p in _PARENT_SPLIT.split(value) if p.strip()]
        else:
            data[column.key] = value
    if labels:
        data["labels"] = labels
    return data, {c for c in REQUIRED if c not in data}


def _column_of(path: str, columns: list[_Column | None]) -> str:
    """The header a field path came from: 'labels.duong_truyen' → 'Đường truyền'."""
    if path.startswith("labels."):
        key = path.removeprefix("labels.")
        return next((c.header for c in columns if c and c.label and c.key == key), path)
    field = re.split(r"[.\[]", path, maxsplit=1)[0]
    return next((c.header for c in columns if c and not c.label and c.key == field), field)


def to_yaml(specs: list[EndpointSpec], source: str) -> str:
    """Inventory YAML (an ``endpoints:`` list) for ``specs``, Vietnamese text kept readable."""
    body = yaml.safe_dump(
        {"endpoints": [endpoint_document(s, s.timing_overrides()) for s in specs]},
        allow_unicode=True,
        sort_keys=False,
        width=100,
    )
    return (
        f"# Inventory imported from {source} by `vcmon inventory import`.\n"
        "# Include it from a config with `inventory: <this file's name>`.\n" + body
    )


def import_csv(path: str | Path) -> tuple[str, list[RowError]]:
    """Inventory YAML for the CSV at ``path``, and every row that could not be used, by line.

    The YAML holds the rows that are valid on their own; use it only when there are no errors.
    """
    path = Path(path)
    name = str(path)
    try:
        raw = read_file(path, "a CSV file")  # a regular file of at most 16 MiB
    except Unreadable as exc:
        return "", [RowError(name, None, str(exc))]
    text, problem = decode_text(raw, name)
    if text is None:
        line = problem.line if problem else None
        return "", [RowError(name, line, problem.message if problem else "not UTF-8 text")]

    records = _records(text, _delimiter(text))
    try:
        _, header = next(records)
    except StopIteration:
        return "", [RowError(name, None, "the file is empty (expected a header row and rooms)")]
    except csv.Error as exc:
        return "", [RowError(name, 1, f"unreadable CSV: {exc}")]
    columns, errors = _columns(name, header)
    if errors:
        return "", errors

    rows: list[_Row] = []
    try:
        for line, cells in records:
            rows.append(_check_row(name, line, columns, cells, errors))
    except csv.Error as exc:
        errors.append(RowError(name, None, f"unreadable CSV: {exc}"))

    # The tree across rows; a row that failed still counts with the id it was given.
    nodes = [r for r in rows if r.spec is not None or r.raw_id]
    issues = tree_issues(
        [r.spec.id if r.spec else r.raw_id for r in nodes],
        [r.spec.parent if r.spec else () for r in nodes],
    )
    for issue in issues:
        message = issue.message
        if issue.first is not None:
            message += f", first on line {nodes[issue.first].line}"
        where = "id" if issue.parent_pos is None else "parent"
        errors.append(RowError(name, nodes[issue.index].line, f"{where}: {message}"))
    errors.sort(key=lambda e: e.line or 0)
    specs = [r.spec for r in rows if r.spec is not None]
    return to_yaml(specs, path.name), errors


def _check_row(
    name: str, line: int, columns: list[_Column | None], cells: list[str], errors: list[RowError]
) -> _Row:
    """One data row validated; its problems are added to ``errors``."""
    extra = cells[len(columns) :]
    if len(cells) < len(columns) or any(c.strip() for c in extra):
        errors.append(
            RowError(
                name,
                line,
                f"{len(cells)} cells but the header has {len(columns)} columns "
                "(a stray delimiter, or a quote left open?)",
            )
        )
        return _Row(line, "")
    data, empty = _row_data(columns, cells)
    row = _Row(line, str(data.get("id", "")))
    for column in REQUIRED:
        if column in empty:
            errors.append(
                RowError(
                    name,
                    line,
                    f"{_column_of(column, columns)}: the cell is empty (required in every row)",
                )
            )
    try:
        row.spec = EndpointSpec.model_validate(data)
    except ValidationError as exc:
        for path, message in field_messages(exc, EndpointSpec):
            if path in empty:
                continue  # already said: the cell is empty
            errors.append(RowError(name, line, f"{_column_of(path, columns)}: {message}"))
    return row
