"""Config loading: resolution of defaults, includes and ${VAR}, and the exact wording of errors."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from vcmon.config import fields, source
from vcmon.config.loading import load_config
from vcmon.config.problems import MAX_PROBLEMS, ConfigError, Problem
from vcmon.config.schema import Endpoint, Level, Timing, check_address, label_name
from vcmon.config.source import substitute_env
from vcmon.config.topology import tree_issues
from vcmon.text import slugify

BAD = Path(__file__).parent / "bad_configs"
UNSPECIFIED = "the unspecified address (it means 'any address' when listening, no host has it)"
MULTICAST = "a multicast address (it names a group of hosts, not one endpoint)"

ROOT = "{id: tinh, name: Trung tâm tỉnh, address: 127.0.0.1, district: Tỉnh, level: province}"


def _write(tmp_path: Path, text: str, name: str = "vcmon.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The corpus of bad configs: each file, the exact message a user sees.
# {d} is tests/unit/config/bad_configs.

CORPUS: list[tuple[str, str]] = [
    (
        "bad-address.yaml",
        "{d}/bad-address.yaml:4:14: endpoints[0].address: 'not an ip' is not an IPv4/IPv6 "
        "address or hostname (expected e.g. 127.0.0.1, ::1 or host.example)",
    ),
    (
        "bad-count.yaml",
        "{d}/bad-count.yaml:2:10: defaults.count: expected a whole number from 1 to 100, got 0",
    ),
    (
        "bad-id.yaml",
        "{d}/bad-id.yaml:2:10: endpoints[0].id: 'Hạ Long' is not a valid id (expected up to "
        "128 ASCII letters, digits, '_', '.' or '-', e.g. 'ha-long')",
    ),
    (
        "bad-ipv4.yaml",
        "{d}/bad-ipv4.yaml:2:47: endpoints[0].address: '127.0.0.300' is not a valid IPv4 "
        "address (expected e.g. 127.0.0.1, ::1 or host.example)",
    ),
    (
        "bad-label-name.yaml",
        "{d}/bad-label-name.yaml:8:7: endpoints[0].labels[\"link type\"]: 'link type' is not a "
        "valid label name (expected ASCII letters, digits and '_', not starting with a "
        "digit, e.g. 'link_type')",
    ),
    (
        "bad-level.yaml",
        "{d}/bad-level.yaml:2:81: endpoints[0].level: 'provence' is not one of province, "
        "department, district, commune (did you mean 'province'?)",
    ),
    (
        "bad-socket.yaml",
        "{d}/bad-socket.yaml:2:11: icmp.socket: 'rwa' is not one of auto, raw, dgram (did "
        "you mean 'raw'?)",
    ),
    (
        "defaults-not-a-mapping.yaml",
        "{d}/defaults-not-a-mapping.yaml:1:11: defaults: expected a mapping (key: value), "
        "got the number 10",
    ),
    (
        "duplicate-id-across-files.yaml",
        "{d}/included/rooms-dup.yaml:3:10: endpoints[1].id: duplicate id 'tinh', already "
        "used by endpoints[0] in {d}/duplicate-id-across-files.yaml (line 3)",
    ),
    (
        "duplicate-id.yaml",
        "{d}/duplicate-id.yaml:5:10: endpoints[2].id: duplicate id 'tinh', already used by "
        "endpoints[0] (line 2)",
    ),
    (
        "duplicate-yaml-key.yaml",
        "{d}/duplicate-yaml-key.yaml:7:5: endpoints[0].address: key 'address' appears twice "
        "(first on line 4)",
    ),
    (
        "endpoint-not-a-mapping.yaml",
        "{d}/endpoint-not-a-mapping.yaml:2:5: endpoints[0]: expected an endpoint (a mapping "
        "with id, name, address, district, level), got 'tinh'",
    ),
    (
        "endpoint-round-does-not-fit.yaml",
        "{d}/endpoint-round-does-not-fit.yaml:7:15: endpoints[0].interval: a round of 5 "
        "echoes 0.2 s apart with a 1 s timeout (count, spacing, timeout from defaults) takes "
        "1.8 s, which does not fit in the interval of 1 s (expected interval > 1.8 s, or "
        "fewer echoes, less spacing or a shorter timeout)",
    ),
    (
        "endpoints-not-a-list.yaml",
        "{d}/endpoints-not-a-list.yaml:2:3: endpoints: expected a list of endpoints, got a "
        "mapping (key: value)",
    ),
    (
        "env-unset.yaml",
        "{d}/env-unset.yaml:1:11: instance: environment variable VCMON_TEST_UNSET_INSTANCE "
        "is not set (set it, or give a default: ${VCMON_TEST_UNSET_INSTANCE:-value})",
    ),
    (
        "included-file-error.yaml",
        "{d}/included/rooms-bad-address.yaml:5:51: endpoints[1].address: '127.0.0.3.4' is "
        "not a valid IPv4 address (expected e.g. 127.0.0.1, ::1 or host.example)",
    ),
    (
        "listen-ipv6-brackets.yaml",
        "{d}/listen-ipv6-brackets.yaml:1:9: listen: '::1' is not host:port (put an IPv6 address "
        "in brackets, e.g. [::1]:9231)",
    ),
    (
        "listen-no-port.yaml",
        "{d}/listen-no-port.yaml:1:9: listen: '127.0.0.1' is not host:port (expected "
        "host:port, e.g. 127.0.0.1:9231, [::1]:9231 or localhost:9231)",
    ),
    (
        "missing-address.yaml",
        "{d}/missing-address.yaml:2:5: endpoints[0].address: required key 'address' is "
        "missing (required here: id, name, address, district, level)",
    ),
    (
        "missing-include.yaml",
        "{d}/missing-include.yaml:3:5: inventory[1]: file not found: "
        "{d}/included/no-such-rooms.yaml",
    ),
    (
        "no-endpoints.yaml",
        "{d}/no-endpoints.yaml:1:1: no endpoints: add an 'endpoints:' list or an 'inventory:' file",
    ),
    (
        "not-utf8.yaml",
        "{d}/not-utf8.yaml:2:72: byte 0xe1 is not UTF-8 text (save the file as UTF-8)",
    ),
    (
        "number-as-name.yaml",
        "{d}/number-as-name.yaml:2:22: endpoints[0].name: expected text, got the number 010 "
        '(write it in quotes: "010")',
    ),
    (
        "parent-cycle.yaml",
        "{d}/parent-cycle.yaml:2:83: endpoints[0].parent: dependency cycle a → c → b → a "
        "(parents must form a tree)",
    ),
    (
        "reserved-label.yaml",
        "{d}/reserved-label.yaml:7:14: endpoints[0].labels.district: label name 'district' "
        "is taken by vcmon's own labels (address, district, endpoint, level, name, parent, "
        "probe, site); choose another name",
    ),
    (
        "round-does-not-fit.yaml",
        "{d}/round-does-not-fit.yaml:2:3: defaults: a round of 10 echoes 0.2 s apart with a "
        "1 s timeout takes 2.8 s, which does not fit in the interval of 2 s (expected "
        "interval > 2.8 s, or fewer echoes, less spacing or a shorter timeout)",
    ),
    (
        "self-parent.yaml",
        "{d}/self-parent.yaml:3:14: endpoints[0].parent: 'tinh' is this endpoint itself; it "
        "cannot be its own parent",
    ),
    (
        "several-problems.yaml",
        "{d}/several-problems.yaml:3:12: defaults.timeout: expected a number of seconds "
        "greater than 0, got -1\n"
        "{d}/several-problems.yaml:5:22: endpoints[0].name: must not be empty\n"
        "{d}/several-problems.yaml:6:51: endpoints[1].address: '127.0.0.1:80' has a port; an "
        "endpoint address is an IP address or host name alone (expected e.g. 127.0.0.1, ::1 "
        "or host.example)",
    ),
    (
        "top-level-list.yaml",
        "{d}/top-level-list.yaml:1:1: expected a mapping of settings at the top level "
        "(instance, listen, defaults, …, endpoints), got a list",
    ),
    (
        "unknown-endpoint-key.yaml",
        "{d}/unknown-endpoint-key.yaml:7:5: endpoints[0].intervall: unknown key 'intervall' "
        "(did you mean 'interval'?)",
    ),
    (
        "unknown-key-no-hint.yaml",
        "{d}/unknown-key-no-hint.yaml:7:5: endpoints[0].colour: unknown key 'colour' "
        "(expected one of: id, name, address, district, level, parent, site, labels, probe, "
        "alerts, interval, count, spacing, timeout)",
    ),
    (
        "unknown-parent.yaml",
        "{d}/unknown-parent.yaml:10:20: endpoints[2].parent[1]: unknown endpoint id "
        "'ha-lnog' (did you mean 'ha-long'?)",
    ),
    (
        "unknown-probe.yaml",
        "{d}/unknown-probe.yaml:3:13: endpoints[0].probe: unknown probe 'icpm' (did you mean "
        "'icmp'?)",
    ),
    (
        "unknown-top-key.yaml",
        "{d}/unknown-top-key.yaml:1:1: listn: unknown key 'listn' (did you mean 'listen'?)",
    ),
    (
        "yaml-tab-indent.yaml",
        "{d}/yaml-tab-indent.yaml:3:1: YAML syntax error: found character '\\t' that cannot "
        "start any token (indent with spaces, not tabs)",
    ),
    (
        "yaml-unclosed-flow.yaml",
        "{d}/yaml-unclosed-flow.yaml:2:1: YAML syntax error: expected ',' or '}', but got "
        "the end of the file (while parsing a flow mapping on line 1)",
    ),
    (
        "yes-as-count.yaml",
        "{d}/yes-as-count.yaml:1:19: defaults.count: expected a number, got yes",
    ),
    (
        "alerts-bad-health.yaml",
        "{d}/alerts-bad-health.yaml:2:24: alerts.health.down_after: expected a number of "
        "rounds from 1 to 1000, got 0\n{d}/alerts-bad-health.yaml:2:27: "
        "alerts.health.up_afterr: unknown key 'up_afterr' (did you mean 'up_after'?)",
    ),
    (
        "alerts-bad-timezone.yaml",
        "{d}/alerts-bad-timezone.yaml:2:13: alerts.timezone: unknown time zone "
        "'Asia/Hanoi_City' (expected e.g. Asia/Ho_Chi_Minh)",
    ),
    (
        "alerts-bad-window.yaml",
        "{d}/alerts-bad-window.yaml:6:35: alerts.maintenance[0].weekly[0].start: "
        "expected a time of day as HH:MM, got '25:00'",
    ),
    (
        "alerts-level-override-conflict.yaml",
        "{d}/alerts-level-override-conflict.yaml:4:7: alerts.levels.commune: mos: "
        "warning.raise (3) must not be below critical.raise (3.1) (with the values it "
        "inherits)",
    ),
    (
        "alerts-warning-above-critical.yaml",
        "{d}/alerts-warning-above-critical.yaml:3:5: alerts.quality: rtt_ms: "
        "warning.raise (400) must not be above critical.raise (300)",
    ),
    (
        "alerts-window-matches-all.yaml",
        "{d}/alerts-window-matches-all.yaml:3:7: alerts.maintenance[0]: match: expected "
        "at least one of endpoint, district, level or labels (a window over everything "
        "would silence the whole network)",
    ),
    (
        "alerts-unknown-placeholder.yaml",
        "{d}/alerts-unknown-placeholder.yaml:3:5: alerts.templates: vi.endpoint_down.summary: "
        "unknown placeholder {lau} (expected one of: address, affected_count, children, "
        "district, duration, flap_pct, id, jitter_ms, kind, level, loss_pct, mos, name, place, "
        "rtt_ms, settled, severity, started_local, threshold, total, value)",
    ),
    (
        "sinks-mqtt-typo.yaml",
        "{d}/sinks-mqtt-typo.yaml:2:18: sinks[0].prot: unknown key 'prot' (did you mean 'port'?)",
    ),
    (
        "sinks-unknown-type.yaml",
        "{d}/sinks-unknown-type.yaml:3:5: sinks[1]: unknown type 'consol' "
        "(did you mean 'console'?)",
    ),
    # Files that would crash or exhaust a loader without limits (issue 11); the FIFO, device
    # and symlink cases are made at test time in test_config_hardening.py.
    (
        "alias-bomb.yaml",
        "{d}/alias-bomb.yaml:2:41: aliases expand this file to more than 10,330 values "
        "(expected at most 10 times the values written; is it an alias bomb?)",
    ),
    (
        "merge-bomb.yaml",
        "{d}/merge-bomb.yaml:2:21: aliases expand this file to more than 11,250 values "
        "(expected at most 10 times the values written; is it an alias bomb?)",
    ),
    (
        "deep-nesting.yaml",
        "{d}/deep-nesting.yaml:2:75: nested more than 64 levels deep (expected at most 64 "
        "levels of mappings and lists)",
    ),
    (
        "template-width.yaml",
        "{d}/template-width.yaml:3:5: alerts.templates: en.endpoint_down.summary: "
        "{place:>1500000000}: width 1500000000 is too large (expected at most 200)",
    ),
    (
        "include-dev-zero.yaml",
        "{d}/include-dev-zero.yaml:1:12: inventory: /dev/zero is a character device, not a "
        "regular file (expected a YAML file)",
    ),
    (
        "huge-integer.yaml",
        "{d}/huge-integer.yaml:1:19: defaults.count: cannot be read as int (write it in "
        "quotes if it is meant as text)",
    ),
    (
        "secret-as-number.yaml",  # the password itself is never shown
        "{d}/secret-as-number.yaml:2:45: sinks[0].password: expected text, got a number "
        "(write it in quotes)",
    ),
    (
        "sinks-webhook-secret-unset.yaml",
        "{d}/sinks-webhook-secret-unset.yaml:3:5: sinks[1]: webhook noc: secret_env: environment "
        "variable VCMON_NEVER_SET_IN_TESTS is not set",
    ),
]


@pytest.mark.parametrize("parser", ["default", "pure-python"])
@pytest.mark.parametrize(("name", "expected"), CORPUS, ids=[name for name, _ in CORPUS])
def test_bad_config_message(
    name: str, expected: str, parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if parser == "pure-python":  # as on a machine where PyYAML was built without libyaml
        monkeypatch.setattr(source, "_LOADERS", (yaml.SafeLoader,))
    with pytest.raises(ConfigError) as caught:
        load_config(BAD / name, env={})
    if parser == "default" and name == "deep-nesting.yaml":  # libyaml stops reading sooner
        expected = expected.replace(":2:75:", ":2:1011:")
    assert str(caught.value) == expected.replace("{d}", str(BAD))


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("0.0.0.0", UNSPECIFIED),
        ("::", UNSPECIFIED),
        (
            "255.255.255.255",
            "the broadcast address (it reaches every host on the link, not one endpoint)",
        ),
        ("224.0.0.1", MULTICAST),
        ("ff02::1", MULTICAST),
        ("::ffff:239.1.2.3", MULTICAST),
    ],
)
def test_addresses_never_an_endpoint(tmp_path: Path, address: str, why: str) -> None:
    # Written at test time: the files in bad_configs hold loopback addresses only.
    path = _write(tmp_path, f"endpoints: [{ROOT.replace('127.0.0.1', repr(address))}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    column = 1 + len("endpoints: [{id: tinh, name: Trung tâm tỉnh, address: ")
    assert str(caught.value) == (
        f"{path}:1:{column}: endpoints[0].address: '{address}' is {why}; expected the address "
        "of one endpoint, e.g. 127.0.0.1"
    )


def test_every_bad_config_has_a_case() -> None:
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(name for name, _ in CORPUS)
    assert len(CORPUS) >= 15


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("nope.yaml", "file not found"),
        (".", "is a directory, not a regular file (expected a YAML file)"),
    ],
)
def test_unreadable_main_file(tmp_path: Path, name: str, reason: str) -> None:
    path = tmp_path / name
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {reason}"


def test_problems_are_capped_with_a_count(tmp_path: Path) -> None:
    eps = "".join(
        f"  - {{id: e{i}, name: E, address: bad address, district: D, level: commune}}\n"
        for i in range(MAX_PROBLEMS + 5)
    )
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, "endpoints:\n" + eps))
    lines = str(caught.value).splitlines()
    assert len(lines) == MAX_PROBLEMS + 1
    assert lines[-1] == "... and 5 more problems"
    assert len(caught.value.problems) == MAX_PROBLEMS + 5


def test_invalid_endpoint_does_not_cascade_to_its_children(tmp_path: Path) -> None:
    text = (
        "endpoints:\n"
        "  - {id: tinh, name: T, address: nope nope, district: Tỉnh, level: province}\n"
        "  - {id: so, name: S, address: 127.0.0.2, district: Tỉnh, level: department,\n"
        "     parent: tinh}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    assert [p.path for p in caught.value.problems] == ["endpoints[0].address"]


def test_problem_without_position() -> None:
    assert str(Problem("a.yaml", "", "file not found")) == "a.yaml: file not found"
    assert str(Problem("a.yaml", "listen", "bad", 3, 9)) == "a.yaml:3:9: listen: bad"


# ---------------------------------------------------------------------------------------------
# Valid configs

FULL = f"""
instance: lab-1
listen: "[::1]:9300"
defaults: {{interval: 30, count: 10, spacing: 0.5, timeout: 2}}
icmp: {{socket: dgram, max_rate: 100, payload_size: 16}}
resolve_interval: 60
endpoints:
  - {ROOT}
  - id: ha-long
    name: UBND TP Hạ Long
    address: "::1"
    district: Hạ Long
    level: District
    parent: tinh
    site: Trung tâm hành chính
    labels: {{link: fibre}}
    interval: 5
    count: 3
  - id: co-to-thanh-lan
    name: UBND xã Thanh Lân
    address: localhost
    district: Cô Tô
    level: commune
    parent: [ha-long, tinh]
    timeout: 4
"""


@pytest.fixture
def full(tmp_path: Path) -> Path:
    return _write(tmp_path, FULL)


def test_top_level_settings(full: Path) -> None:
    cfg = load_config(full)
    assert (cfg.instance, cfg.listen, cfg.resolve_interval) == ("lab-1", "[::1]:9300", 60.0)
    assert cfg.source == full.absolute()
    assert (cfg.icmp.socket, cfg.icmp.max_rate, cfg.icmp.payload_size) == ("dgram", 100.0, 16)
    assert cfg.defaults == Timing(interval=30, count=10, spacing=0.5, timeout=2)


@pytest.mark.parametrize(
    ("id_", "timing"),
    [
        ("tinh", Timing(interval=30, count=10, spacing=0.5, timeout=2)),
        ("ha-long", Timing(interval=5, count=3, spacing=0.5, timeout=2)),
        ("co-to-thanh-lan", Timing(interval=30, count=10, spacing=0.5, timeout=4)),
    ],
)
def test_per_endpoint_timing_overrides_defaults(full: Path, id_: str, timing: Timing) -> None:
    assert load_config(full).endpoint(id_).timing == timing


@pytest.mark.parametrize(
    ("id_", "parent", "level", "site", "labels"),
    [
        ("tinh", (), Level.PROVINCE, None, {}),
        ("ha-long", ("tinh",), Level.DISTRICT, "Trung tâm hành chính", {"link": "fibre"}),
        ("co-to-thanh-lan", ("ha-long", "tinh"), Level.COMMUNE, None, {}),
    ],
)
def test_endpoint_fields(
    full: Path,
    id_: str,
    parent: tuple[str, ...],
    level: Level,
    site: str | None,
    labels: dict[str, str],
) -> None:
    ep = load_config(full).endpoint(id_)
    assert (ep.parent, ep.level, ep.site, dict(ep.labels), ep.probe) == (
        parent,
        level,
        site,
        labels,
        "icmp",
    )


def test_minimal_config_gets_every_default(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, f"endpoints: [{ROOT}]\n"))
    assert cfg.instance == socket.gethostname()
    assert cfg.listen == "127.0.0.1:9231"
    assert cfg.defaults == Timing(interval=10.0, count=5, spacing=0.2, timeout=1.0)
    assert (cfg.icmp.socket, cfg.icmp.max_rate, cfg.icmp.payload_size) == ("auto", 5000.0, 56)
    assert cfg.resolve_interval == 300.0


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, f"defaults:\nicmp:\nendpoints: [{ROOT}]\n"))
    assert cfg.defaults == Timing()


def test_endpoint_lookup(full: Path) -> None:
    cfg = load_config(full)
    assert cfg.endpoint("ha-long").name == "UBND TP Hạ Long"
    with pytest.raises(KeyError, match="no endpoint with id 'nope'"):
        cfg.endpoint("nope")


def test_models_are_frozen_and_hashable(full: Path) -> None:
    cfg = load_config(full)
    ep = cfg.endpoint("ha-long")
    with pytest.raises(ValueError, match="frozen"):
        ep.address = "127.0.0.9"
    assert len({*cfg.endpoints, *load_config(full).endpoints}) == 3
    assert isinstance(ep, Endpoint)


def test_unicode_is_normalised_to_nfc(tmp_path: Path) -> None:
    decomposed = "Co\u0302 To\u0302"  # 'Cô Tô' as a Mac or some Excel exports write it
    text = (
        f"endpoints:\n  - {{id: a, name: {decomposed}, address: 127.0.0.1,"
        f" district: {decomposed}, level: commune}}\n"
    )
    ep = load_config(_write(tmp_path, text)).endpoint("a")
    assert ep.district == "Cô Tô" == ep.name


def test_inventory_files_join_inline_endpoints(tmp_path: Path) -> None:
    (tmp_path / "inv").mkdir()
    room = "{id: b, name: B, address: 127.0.0.2, district: D, level: district, parent: tinh}"
    _write(tmp_path / "inv", f"endpoints:\n  - {room}\n", "a.yaml")
    _write(tmp_path / "inv", "endpoints: []\n", "empty.yaml")
    main = _write(tmp_path, f"inventory: [inv/a.yaml, inv/empty.yaml]\nendpoints: [{ROOT}]\n")
    assert [ep.id for ep in load_config(main).endpoints] == ["tinh", "b"]


def test_inventory_may_be_one_name(tmp_path: Path) -> None:
    _write(tmp_path, f"endpoints: [{ROOT}]\n", "rooms.yaml")
    main = _write(tmp_path, "inventory: rooms.yaml\n")
    assert [ep.id for ep in load_config(main).endpoints] == ["tinh"]


@pytest.mark.parametrize(
    ("inventory", "message"),
    [
        (
            "[rooms.yaml, rooms.yaml]",
            "inventory[1]: 'rooms.yaml' is already included as inventory[0]",
        ),
        ("[vcmon.yaml]", "inventory[0]: 'vcmon.yaml' is already included as the main config file"),
        ("[3]", "inventory[0]: expected a file name, got the number 3"),
    ],
)
def test_bad_inventory_lists(tmp_path: Path, inventory: str, message: str) -> None:
    _write(tmp_path, f"endpoints: [{ROOT}]\n", "rooms.yaml")
    main = _write(tmp_path, f"inventory: {inventory}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert str(caught.value).split(": ", 1)[1] == message


def test_inventory_file_must_hold_endpoints(tmp_path: Path) -> None:
    _write(tmp_path, "listen: 127.0.0.1:9231\n", "rooms.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, f"inventory: rooms.yaml\nendpoints: [{ROOT}]\n"))
    assert str(caught.value) == (
        f"{tmp_path}/rooms.yaml:1:1: "
        "expected an inventory file: a mapping with an 'endpoints:' list"
    )


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = (
        "x-room: &room {district: Hạ Long, level: commune, parent: tinh, interval: 20}\n"
        f"endpoints:\n  - {ROOT}\n"
        "  - {<<: *room, id: a, name: A, address: 127.0.0.2, interval: 30}\n"
    )
    # 'x-room' is not a known key, which the loader must still say.
    with pytest.raises(ConfigError, match="unknown key 'x-room'"):
        load_config(_write(tmp_path, text))
    ok = (
        f"endpoints:\n  - {ROOT}\n"
        "  - &room {id: a, name: A, address: 127.0.0.2, district: Hạ Long, level: commune,"
        " parent: tinh, interval: 20}\n"
        "  - {<<: *room, id: b, address: 127.0.0.3, interval: 30}\n"
    )
    cfg = load_config(_write(tmp_path, ok))
    assert (cfg.endpoint("a").timing.interval, cfg.endpoint("b").timing.interval) == (20, 30)
    assert cfg.endpoint("b").district == "Hạ Long"


# ---------------------------------------------------------------------------------------------
# ${VAR} substitution


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),
        ("${A:-dflt}", {"A": "set"}, "set"),
        ("${A:-}", {}, ""),
        ("${A}", {"A": ""}, ""),
        ("$${A}", {}, "${A}"),
        ("cost $5", {}, "cost $5"),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
    ],
)
def test_substitute_env(value: str, env: dict[str, str], expected: str) -> None:
    assert substitute_env(value, env) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${A}", "environment variable A is not set (set it, or give a default: ${A:-value})"),
        ("${A", "unclosed '${' in '${A' (expected ${NAME} or ${NAME:-default})"),
        ("${1A}", "bad variable reference '${1A}' (expected ${NAME} or ${NAME:-default})"),
        ("${}", "bad variable reference '${}' (expected ${NAME} or ${NAME:-default})"),
    ],
)
def test_substitute_env_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        substitute_env(value, {})


def test_env_substitution_in_a_config(tmp_path: Path) -> None:
    text = (
        "instance: ${SITE}-vcmon\nlisten: 127.0.0.1:${PORT:-9231}\n"
        "defaults: {count: '${COUNT}'}\n"
        f"endpoints: [{ROOT}]\n"
    )
    cfg = load_config(_write(tmp_path, text), env={"SITE": "qn", "COUNT": "3"})
    assert (cfg.instance, cfg.listen, cfg.defaults.count) == ("qn-vcmon", "127.0.0.1:9231", 3)


def test_env_is_read_from_the_process_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VCMON_TEST_INSTANCE", "from-env")
    cfg = load_config(
        _write(tmp_path, f"instance: ${{VCMON_TEST_INSTANCE}}\nendpoints: [{ROOT}]\n")
    )
    assert cfg.instance == "from-env"


# ---------------------------------------------------------------------------------------------
# Field rules


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "localhost", "host.example", "host.example.", "fe80::1%lo"]
)
def test_valid_addresses(address: str) -> None:
    assert check_address(address) == address


@pytest.mark.parametrize(
    ("address", "start"),
    [
        ("127.0.0.256", "'127.0.0.256' is not a valid IPv4 address"),
        ("127.0.0.01", "'127.0.0.01' is not a valid IPv4 address"),
        ("::1::2", "'::1::2' is not a valid IPv6 address"),
        ("[::1]", "'[::1]' is not a valid IPv6 address (write it without brackets)"),
        ("localhost:80", "'localhost:80' has a port"),
        ("-bad.example", "'-bad.example' is not an IPv4/IPv6 address or hostname"),
        ("under_score.example", "'under_score.example' is not an IPv4/IPv6 address or hostname"),
        ("a" * 64 + ".example", f"'{'a' * 64}.example' is not an IPv4/IPv6 address or hostname"),
        ("hạlong.example", "'hạlong.example' is not an IPv4/IPv6 address or hostname"),
    ],
)
def test_invalid_addresses(address: str, start: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(start)}"):
        check_address(address)


@pytest.mark.parametrize(
    ("listen", "error"),
    [
        ("127.0.0.1:9231", None),
        ("[::1]:9231", None),
        ("localhost:80", None),
        ("127.0.0.1:0", "listen: port 0 is out of range (expected 1 to 65535)"),
        ("127.0.0.1:70000", "listen: port 70000 is out of range (expected 1 to 65535)"),
        ("[127.0.0.1]:9231", "listen: '127.0.0.1' is not an IPv6 address"),
        ("bad host:9231", "listen: 'bad host' is not an address or hostname"),
        (":9231", "listen: ':9231' is not host:port"),
    ],
)
def test_listen(tmp_path: Path, listen: str, error: str | None) -> None:
    path = _write(tmp_path, f'listen: "{listen}"\nendpoints: [{ROOT}]\n')
    if error is None:
        assert load_config(path).listen == listen
    else:
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert str(caught.value).split(": ", 1)[1].startswith(error)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("count", "101", "expected a whole number from 1 to 100, got 101"),
        ("count", "2.5", "expected a whole number, got the number 2.5"),
        ("count", "many", "expected a whole number, got 'many'"),
        ("interval", "0", "expected a number of seconds greater than 0, got 0"),
        ("interval", ".inf", "expected a number of seconds greater than 0, got inf"),
        ("spacing", ".nan", "expected a number of seconds greater than 0, got nan"),
        ("timeout", "-0.5", "expected a number of seconds greater than 0, got -0.5"),
        ("timeout", "null", "expected a number, got nothing (an empty value)"),
    ],
)
def test_timing_values(tmp_path: Path, field: str, value: str, message: str) -> None:
    path = _write(tmp_path, f"defaults:\n  {field}: {value}\nendpoints: [{ROOT}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}:2:{5 + len(field)}: defaults.{field}: {message}"


@pytest.mark.parametrize(
    ("icmp", "path", "message"),
    [
        (
            "max_rate: 0",
            "icmp.max_rate",
            "expected a number of echoes per second greater than 0, got 0",
        ),
        (
            "payload_size: 15",
            "icmp.payload_size",
            "expected a whole number from 16 to 1472, got 15",
        ),
        (
            "payload_size: 1473",
            "icmp.payload_size",
            "expected a whole number from 16 to 1472, got 1473",
        ),
        ("sockt: raw", "icmp.sockt", "unknown key 'sockt' (did you mean 'socket'?)"),
    ],
)
def test_icmp_settings(tmp_path: Path, icmp: str, path: str, message: str) -> None:
    cfg = _write(tmp_path, f"icmp: {{{icmp}}}\nendpoints: [{ROOT}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    problem = caught.value.problems[0]
    assert (problem.path, problem.message) == (path, message)


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        ("name: '  '", "endpoints[1].name", "must not be empty"),
        (
            'name: "a\\nb"',
            "endpoints[1].name",
            "'a\\nb' contains a control character (a line break or tab?)",
        ),
        ("district: ''", "endpoints[1].district", "must not be empty"),
        ("site: ''", "endpoints[1].site", "must not be empty"),
        ("parent: [a, a]", "endpoints[1].parent", "'a' listed more than once"),
        (
            "parent: [tinh, 'x y']",
            "endpoints[1].parent[1]",
            "'x y' is not a valid id (expected up to 128 ASCII letters, digits, '_', '.' or '-', "
            "e.g. 'x-y')",
        ),
        (
            "labels: {__x: a}",
            "endpoints[1].labels.__x",
            "label name '__x': names starting with '__' are reserved by Prometheus",
        ),
        (
            "labels: {1st: a}",
            'endpoints[1].labels["1st"]',
            "'1st' is not a valid label name (expected ASCII letters, digits and '_', "
            "not starting with a digit, e.g. '_1st')",
        ),
        (
            "labels: {floor: 3}",
            "endpoints[1].labels.floor",
            'expected text, got the number 3 (write it in quotes: "3")',
        ),
        ("labels: {link: ''}", "endpoints[1].labels.link", "must not be empty"),
        ("labels: [a]", "endpoints[1].labels", "expected a mapping (key: value), got a list"),
        (
            "id: " + "a" * 129,
            "endpoints[1].id",
            f"'{'a' * 129}' is not a valid id "
            "(expected up to 128 ASCII letters, digits, '_', '.' or '-')",
        ),
    ],
)
def test_endpoint_field_rules(tmp_path: Path, extra: str, path: str, message: str) -> None:
    key = extra.split(":", 1)[0]
    base = {"id": "x", "name": "X", "address": "127.0.0.1", "district": "D", "level": "commune"}
    base.pop(key, None)
    lines = "".join(f"    {k}: {v}\n" for k, v in base.items())
    cfg = _write(tmp_path, f"endpoints:\n  - {ROOT}\n  -\n{lines}    {extra}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    problems = [(p.path, p.message) for p in caught.value.problems]
    assert problems == [(path, message)]


def test_keys_are_taken_as_written(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare 'on' or 'no' as a boolean; as a label name it must stay text.
    text = f"endpoints:\n  - {ROOT[:-1]}, labels: {{no: x, on: y}}}}\n"
    assert dict(load_config(_write(tmp_path, text)).endpoint("tinh").labels) == {
        "no": "x",
        "on": "y",
    }


# ---------------------------------------------------------------------------------------------
# The parent tree and helpers


@pytest.mark.parametrize(
    ("ids", "parents", "expected"),
    [
        (["a", "b"], [(), ("a",)], []),
        (["a", "a"], [(), ()], [(1, None, "duplicate id 'a'", 0)]),
        (
            ["a"],
            [("a",)],
            [(0, 0, "'a' is this endpoint itself; it cannot be its own parent", None)],
        ),
        (
            ["abc", "b"],
            [(), ("abd",)],
            [(1, 0, "unknown endpoint id 'abd' (did you mean 'abc'?)", None)],
        ),
        (
            ["a", "b"],
            [("b",), ("a",)],
            [(0, 0, "dependency cycle a → b → a (parents must form a tree)", None)],
        ),
        (
            ["a", "b", "c", "d"],
            [(), ("a", "d"), ("b",), ("c",)],
            [(1, 1, "dependency cycle b → d → c → b (parents must form a tree)", None)],
        ),
        (["a", "b", "c"], [(), ("a",), ("a", "b")], []),  # a diamond is not a cycle
    ],
)
def test_tree_issues(
    ids: list[str],
    parents: list[tuple[str, ...]],
    expected: list[tuple[int, int | None, str, int | None]],
) -> None:
    got = [(i.index, i.parent_pos, i.message, i.first) for i in tree_issues(ids, parents)]
    assert got == expected


@pytest.mark.parametrize(
    ("text", "slug", "label"),
    [
        ("Đồng Tiến", "dong-tien", "dong_tien"),
        ("UBND xã Thanh Lân", "ubnd-xa-thanh-lan", "ubnd_xa_thanh_lan"),
        ("Đường truyền", "duong-truyen", "duong_truyen"),
        ("  Link / Type  ", "link-type", "link_type"),
        ("3G backup", "3g-backup", "_3g_backup"),
        ("???", "", ""),
    ],
)
def test_slugs(text: str, slug: str, label: str) -> None:
    assert (slugify(text), label_name(text)) == (slug, label)


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (
            fields.between(1, 100, "a whole number"),
            0,
            "expected a whole number from 1 to 100, got 0",
        ),
        (fields.between(1, 100, "a whole number"), 100, None),
        (fields.between(5, 9, "a keepalive", " seconds"), 4, "from 5 to 9 seconds, got 4"),
        (fields.between(0, 100, "a percentage"), 100.5, "a percentage from 0 to 100, got 100.5"),
        (fields.between(0, 60, "acks", above=True), 0.0, "expected acks from above 0 to 60, got 0"),
        (fields.between(0, 60, "acks", above=True), float("nan"), "got nan"),
        (fields.between(0, 60, "acks", above=True), 60.0, None),
        (fields.positive("seconds"), 0.0, "expected a number of seconds greater than 0, got 0"),
        (fields.positive("seconds"), float("inf"), "greater than 0, got inf"),
        (fields.positive("seconds"), 0.001, None),
        (fields.at_least_zero(), -1.0, "expected a value ≥ 0, got -1"),
        (fields.at_least_zero("seconds"), float("nan"), "a number of seconds ≥ 0, got nan"),
        (fields.at_least_zero("seconds"), 0.0, None),
    ],
)
def test_number_checks(check: Callable[[float], float], value: float, message: str | None) -> None:
    if message is None:
        assert check(value) == value
    else:
        with pytest.raises(ValueError, match=re.escape(message)):
            check(value)


def test_a_boolean_is_not_a_number_in_any_section(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"alerts: {{health: {{down_after: yes}}}}\nsinks: [{{type: mqtt, keepalive: on}}]\n"
        f"endpoints: [{ROOT}]\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}:1:31: alerts.health.down_after: expected a number, got yes\n"
        f"{path}:2:33: sinks[0].keepalive: expected a number, got on"
    )
