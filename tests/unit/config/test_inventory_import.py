"""CSV import: spreadsheet exports in their usual shapes, bad rows by line, YAML that loads back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vcmon.config.inventory_import import RowError, import_csv
from vcmon.config.loading import load_config
from vcmon.config.schema import Endpoint
from vcmon.config.writing import endpoint_document

EXAMPLE = Path(__file__).parents[3] / "config" / "rooms-example.csv"

HEADER = "id,name,address,district,level,parent,site"
ROWS = [
    "tinh,Trung tâm tỉnh,127.0.0.1,Tỉnh,province,,Trụ sở UBND tỉnh",
    "co-to,UBND huyện Cô Tô,127.0.0.2,Cô Tô,district,tinh,",
    "co-to-dong-tien,UBND xã Đồng Tiến,127.0.0.3,Cô Tô,commune,co-to,Đồng Tiến",
]


def _csv(tmp_path: Path, data: bytes | str, name: str = "rooms.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _load(tmp_path: Path, text: str) -> dict[str, Endpoint]:
    """Write ``text`` as an inventory, include it from a config, return its endpoints by id."""
    (tmp_path / "rooms.yaml").write_text(text, encoding="utf-8")
    main = tmp_path / "vcmon.yaml"
    main.write_text("inventory: rooms.yaml\n", encoding="utf-8")
    return {ep.id: ep for ep in load_config(main, env={}).endpoints}


def _messages(path: Path) -> list[str]:
    _, errors = import_csv(path)
    return [str(e) for e in errors]


def test_example_csv_imports_and_loads_back(tmp_path: Path) -> None:
    text, errors = import_csv(EXAMPLE)
    assert errors == []
    eps = _load(tmp_path, text)
    assert list(eps) == ["tinh-ubnd", "so-tai-chinh", "co-to", "co-to-dong-tien", "co-to-thanh-lan"]
    lan = eps["co-to-thanh-lan"]
    assert (lan.name, lan.parent, lan.site, lan.district) == (
        "UBND xã Thanh Lân",
        ("co-to", "tinh-ubnd"),
        "Thanh Lân",
        "Cô Tô",
    )
    assert dict(lan.labels) == {
        "duong_truyen": "satellite",
        "phu_trach": "Trạm VSAT, đảo Thanh Lân",
    }
    assert "phu_trach" not in eps["so-tai-chinh"].labels  # an empty cell is no label


def test_vietnamese_stays_readable_in_the_yaml() -> None:
    text, _ = import_csv(EXAMPLE)
    assert "name: UBND xã Đồng Tiến" in text
    assert "\\u" not in text


@pytest.mark.parametrize(
    ("prefix", "delimiter", "newline"),
    [
        (b"", ",", "\n"),
        (b"\xef\xbb\xbf", ",", "\r\n"),  # Excel: "CSV UTF-8" with a BOM and CRLF
        (b"\xef\xbb\xbf", ";", "\r\n"),  # Excel in a locale with a decimal comma
        (b"", "\t", "\n"),  # LibreOffice "Text CSV" with tabs
    ],
    ids=["plain", "bom-crlf", "bom-semicolon", "tab"],
)
def test_usual_export_shapes(tmp_path: Path, prefix: bytes, delimiter: str, newline: str) -> None:
    lines = [line.replace(",", delimiter) for line in [HEADER, *ROWS]]
    path = _csv(tmp_path, prefix + newline.join(lines).encode("utf-8") + newline.encode())
    text, errors = import_csv(path)
    assert errors == []
    eps = _load(tmp_path, text)
    assert [(ep.id, ep.parent, ep.site) for ep in eps.values()] == [
        ("tinh", (), "Trụ sở UBND tỉnh"),
        ("co-to", ("tinh",), None),
        ("co-to-dong-tien", ("co-to",), "Đồng Tiến"),
    ]


@pytest.mark.parametrize(
    ("cell", "parents"),
    [("tinh", ("tinh",)), ("tinh;co-to", ("tinh", "co-to")), (" tinh | co-to ", ("tinh", "co-to"))],
)
def test_several_parents(tmp_path: Path, cell: str, parents: tuple[str, ...]) -> None:
    body = "\n".join([HEADER, *ROWS[:2], f'x,X,127.0.0.9,Cô Tô,commune,"{cell}",'])
    text, errors = import_csv(_csv(tmp_path, body))
    assert errors == []
    assert _load(tmp_path, text)["x"].parent == parents


def test_header_is_case_insensitive_and_timing_columns_apply(tmp_path: Path) -> None:
    body = (
        "ID,Name,Address,District,Level,Timeout,Count,Tầng\n"
        "tinh,Trung tâm tỉnh,127.0.0.1,Tỉnh,province,2.5,3,4\n"
    )
    text, errors = import_csv(_csv(tmp_path, body))
    assert errors == []
    ep = _load(tmp_path, text)["tinh"]
    assert (ep.timing.timeout, ep.timing.count, dict(ep.labels)) == (2.5, 3, {"tang": "4"})


@pytest.mark.parametrize(
    "value", ["${HOME}", "cost $${5}", "010", "yes", "null", "1.10", "a: b", "- x", "'quoted'"]
)
def test_cell_text_round_trips_unchanged(tmp_path: Path, value: str) -> None:
    escaped = value.replace('"', '""')
    body = f'{HEADER},note\ntinh,"{escaped}",127.0.0.1,Tỉnh,province,,,"{escaped}"\n'
    text, errors = import_csv(_csv(tmp_path, body))
    assert errors == []
    ep = _load(tmp_path, text)["tinh"]
    assert (ep.name, ep.labels["note"]) == (value, value)


def test_blank_lines_and_multiline_cells_keep_line_numbers(tmp_path: Path) -> None:
    body = (
        f"{HEADER}\n"
        f"{ROWS[0]}\n"
        "\n"
        'co-to,"UBND huyện\nCô Tô",127.0.0.2,Cô Tô,district,tinh,\n'
        "bad,Bad,not an ip,Cô Tô,commune,co-to,\n"
    )
    assert _messages(_csv(tmp_path, body)) == [
        f"{tmp_path}/rooms.csv:4: name: 'UBND huyện\\nCô Tô' contains a control character "
        "(a line break or tab?)",
        f"{tmp_path}/rooms.csv:6: address: 'not an ip' is not an IPv4/IPv6 address or hostname "
        "(expected e.g. 127.0.0.1, ::1 or host.example)",
    ]


STRAY = "(a stray delimiter, or a quote left open?)"
BAD_ROWS: list[tuple[str, list[str]]] = [
    (
        "x,X,127.0.0.300,Tỉnh,province,,",
        [
            "3: address: '127.0.0.300' is not a valid IPv4 address "
            "(expected e.g. 127.0.0.1, ::1 or host.example)"
        ],
    ),
    (
        "x,X,127.0.0.9,Tỉnh,xa,,",
        ["3: level: 'xa' is not one of province, department, district, commune"],
    ),
    ("x,,127.0.0.9,Tỉnh,commune,tinh,", ["3: name: the cell is empty (required in every row)"]),
    (
        ",,127.0.0.9,,commune,tinh,",
        [
            "3: id: the cell is empty (required in every row)",
            "3: name: the cell is empty (required in every row)",
            "3: district: the cell is empty (required in every row)",
        ],
    ),
    ("tinh,Again,127.0.0.9,Tỉnh,department,,", ["3: id: duplicate id 'tinh', first on line 2"]),
    (
        "x,X,127.0.0.9,Tỉnh,commune,tihn,",
        ["3: parent: unknown endpoint id 'tihn' (did you mean 'tinh'?)"],
    ),
    (
        "x,X,127.0.0.9,Tỉnh,commune,x,",
        ["3: parent: 'x' is this endpoint itself; it cannot be its own parent"],
    ),
    (
        "Hạ Long,X,127.0.0.9,Hạ Long,district,tinh,",
        [
            "3: id: 'Hạ Long' is not a valid id (expected up to 128 ASCII letters, digits, "
            "'_', '.' or '-', e.g. 'ha-long')"
        ],
    ),
    ("x,X,127.0.0.9,Tỉnh,commune,tinh", [f"3: 6 cells but the header has 7 columns {STRAY}"]),
    (
        "x,X,127.0.0.9,Tỉnh,commune,tinh,,extra",
        [f"3: 8 cells but the header has 7 columns {STRAY}"],
    ),
]


@pytest.mark.parametrize(("row", "expected"), BAD_ROWS)
def test_bad_rows_by_line(tmp_path: Path, row: str, expected: list[str]) -> None:
    path = _csv(tmp_path, f"{HEADER}\n{ROWS[0]}\n{row}\n")
    assert _messages(path) == [f"{path}:{e}" for e in expected]


def test_a_trailing_empty_column_is_ignored(tmp_path: Path) -> None:
    # Excel writes one more delimiter than columns when the sheet had a stray empty column.
    body = f"{HEADER},\n{ROWS[0]},\n"
    text, errors = import_csv(_csv(tmp_path, body))
    assert errors == []
    assert list(_load(tmp_path, text)) == ["tinh"]


def test_cycle_across_rows(tmp_path: Path) -> None:
    body = f"{HEADER}\na,A,127.0.0.1,Tỉnh,province,b,\nb,B,127.0.0.2,Tỉnh,department,a,\n"
    path = _csv(tmp_path, body)
    assert _messages(path) == [
        f"{path}:2: parent: dependency cycle a → b → a (parents must form a tree)"
    ]


def test_bad_rows_are_left_out_of_the_yaml(tmp_path: Path) -> None:
    path = _csv(tmp_path, f"{HEADER}\n{ROWS[0]}\nx,X,bad address,Tỉnh,commune,tinh,\n")
    text, errors = import_csv(path)
    assert len(errors) == 1
    assert list(_load(tmp_path, text)) == ["tinh"]


HEADER_ERRORS: list[tuple[str, str]] = [
    (
        "id,name,district,level",
        "1: the header has no address column (expected a header row naming id, name, address, "
        "district, level; optional: parent, site, probe, interval, count, spacing, timeout; "
        "other columns become labels)",
    ),
    (f"{HEADER},Link,link", "1: columns 'Link' and 'link' are both label 'link'"),
    (
        f"{HEADER},Endpoint",
        "1: column 'Endpoint' would become label 'endpoint', which vcmon sets itself; "
        "rename the column",
    ),
    (f"{HEADER},???", "1: column '???': cannot make a label name of it"),
    (f"{HEADER},Name", "1: columns 'name' and 'Name' are both column 'name'"),
]


@pytest.mark.parametrize(("header", "expected"), HEADER_ERRORS)
def test_bad_headers(tmp_path: Path, header: str, expected: str) -> None:
    path = _csv(tmp_path, f"{header}\n")
    assert _messages(path) == [f"{path}:{expected}"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "the file is empty (expected a header row and rooms)"),
        (b"\n \n", "the file is empty (expected a header row and rooms)"),
        # Windows-1258 'Tỉnh' as an old Excel writes it: not UTF-8.
        (
            b"id,name\r\ntinh,T\xf2nh\r\n",
            "2: byte 0xf2 is not UTF-8 text (save the file as UTF-8)",
        ),
    ],
)
def test_unusable_files(tmp_path: Path, data: bytes, expected: str) -> None:
    path = _csv(tmp_path, data)
    sep = ":" if expected[0].isdigit() else ": "
    assert _messages(path) == [f"{path}{sep}{expected}"]


def test_missing_file(tmp_path: Path) -> None:
    assert _messages(tmp_path / "nope.csv") == [f"{tmp_path}/nope.csv: file not found"]


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (RowError("rooms.csv", 7, "address: bad"), "rooms.csv:7: address: bad"),
        (RowError("rooms.csv", None, "file not found"), "rooms.csv: file not found"),
    ],
)
def test_row_error_text(error: RowError, text: str) -> None:
    assert str(error) == text


def test_an_endpoint_written_back_loads_as_the_same_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "vcmon.yaml"
    path.write_text(
        "endpoints:\n"
        "  - {id: tinh, name: 'Tỉnh $${HOME}', address: 127.0.0.1, district: T, level: province}\n"
        "  - {id: a, name: A, address: '::1', district: D, level: commune, parent: tinh, site: S,\n"
        "     labels: {isp: 'VNPT ${X:-}x'}, alerts: {health: {down_after: 4}}, count: 3}\n",
        encoding="utf-8",
    )
    config = load_config(path, env={})
    docs = [
        endpoint_document(ep, {"count": 3} if ep.id == "a" else None) for ep in config.endpoints
    ]
    assert docs[0] == {
        "id": "tinh", "name": "Tỉnh $${HOME}", "address": "127.0.0.1", "district": "T",
        "level": "province",
    }  # fmt: skip
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump({"endpoints": docs}, allow_unicode=True), encoding="utf-8")
    assert load_config(again, env={"HOME": "/root"}).endpoints == config.endpoints
