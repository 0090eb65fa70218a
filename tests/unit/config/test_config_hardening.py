"""A config loader that cannot be crashed: special files, limits, bounded templates, addresses
no endpoint can have, and no secret in any error (issue 11, parts 7 and 8)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from vcmon import cli
from vcmon.alerts.messages import MAX_WIDTH, Messages, spec_problem
from vcmon.alerts.model import Kind, Measurements, Severity, Status, Target
from vcmon.config.alerts import Template
from vcmon.config.files import MAX_FILE_BYTES, Unreadable, os_reason, read_file
from vcmon.config.inventory_import import import_csv
from vcmon.config.loading import load_config
from vcmon.config.problems import ConfigError
from vcmon.config.secrets import (
    SecretText,
    SecretUnavailable,
    is_secret_path,
    read_secret,
    scrub,
)

BAD = Path(__file__).parent / "bad_configs"
ROOT = "{id: tinh, name: Trung tâm tỉnh, address: 127.0.0.1, district: Tỉnh, level: province}"
GOOD = f"endpoints: [{ROOT}]\n"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _loop(path: Path) -> Path:
    other = path.with_name(path.name + ".other")
    path.symlink_to(other)
    other.symlink_to(path)
    return path


def _huge(path: Path) -> Path:
    with path.open("wb") as f:  # sparse: no disk used, but stat says 17 MiB
        f.truncate(MAX_FILE_BYTES + 1024 * 1024)
    return path


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


SPECIAL: list[tuple[str, Callable[[Path], Path], str]] = [
    ("fifo", _fifo, "is a FIFO (named pipe), not a regular file (expected a YAML file)"),
    (
        "symlink-loop",
        _loop,
        "is a symbolic link loop (too many levels of symbolic links), expected a YAML file",
    ),
    ("directory", _dir, "is a directory, not a regular file (expected a YAML file)"),
    (
        "huge",
        _huge,
        "is larger than the 16 MiB limit (17 MiB or more; expected a YAML file of at most that)",
    ),
]


@pytest.mark.parametrize(("kind", "make", "reason"), SPECIAL, ids=[k for k, _, _ in SPECIAL])
def test_special_main_file_is_refused_by_name(
    tmp_path: Path, kind: str, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path / "vcmon.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == f"{path}: {reason}"


@pytest.mark.parametrize(("kind", "make", "reason"), SPECIAL, ids=[k for k, _, _ in SPECIAL])
def test_special_include_is_refused_by_name(
    tmp_path: Path, kind: str, make: Callable[[Path], Path], reason: str
) -> None:
    make(tmp_path / "rooms.yaml")
    path = tmp_path / "vcmon.yaml"
    path.write_text(f"inventory: [rooms.yaml]\n{GOOD}", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == f"{path}:1:13: inventory[0]: {tmp_path}/rooms.yaml {reason}"


def test_sink_files_that_would_hang_are_refused(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "secret.fifo")
    path = tmp_path / "vcmon.yaml"
    path.write_text(
        "sinks:\n"
        f"  - {{type: webhook, url: 'http://127.0.0.1:9/x', secret_file: {fifo}}}\n"
        f"  - {{type: mqtt, name: m, tls: {{ca_file: /dev/zero}}}}\n"
        f"web_config_file: {fifo.name}\n{GOOD}",
        encoding="utf-8",
    )
    start = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert time.monotonic() - start < 2  # a blocking read of the FIFO would never return
    col = len("  - {type: webhook, url: 'http://127.0.0.1:9/x', secret_file: ") + 1
    assert str(caught.value).splitlines() == [
        f"{path}:2:{col}: sinks[0].secret_file: {fifo} is a FIFO (named pipe), not a regular "
        "file (expected a regular file)",
        f"{path}:3:42: sinks[1].tls.ca_file: /dev/zero is a character device, not a regular "
        "file (expected a regular file)",
        f"{path}:4:18: web_config_file: secret.fifo is a FIFO (named pipe), not a regular file "
        "(expected a regular file)",
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_fifo, "is a FIFO (named pipe), not a regular file (expected a CSV file)"),
        (
            _huge,
            "is larger than the 16 MiB limit (17 MiB or more; expected a CSV file of at most that)",
        ),
    ],
)
def test_csv_import_reads_only_regular_files(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path / "rooms.csv")
    _, errors = import_csv(path)
    assert [str(e) for e in errors] == [f"{path}: {message}"]


def test_read_file_stops_one_byte_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 101)
    assert read_file(path, "a file", limit=101) == b"x" * 101
    with pytest.raises(Unreadable, match="larger than"):
        read_file(path, "a file", limit=100)


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (errno.EACCES, "permission denied (expected a YAML file vcmon may read)"),
        (errno.EPERM, "permission denied (expected a YAML file vcmon may read)"),
        (errno.ENOENT, "file not found"),
        (errno.EIO, "cannot read: Input/output error"),
    ],
)
def test_os_errors_in_plain_words(err: int, reason: str) -> None:
    assert os_reason(OSError(err, os.strerror(err)), "a YAML file") == reason


# ---------------------------------------------------------------------------------------------
# `vcmon check` on every file that once crashed or hung the loader: exit 2, one line, fast.

STATIC = [
    "alias-bomb.yaml",
    "merge-bomb.yaml",
    "deep-nesting.yaml",
    "template-width.yaml",
    "include-dev-zero.yaml",
    "huge-integer.yaml",
]


def _case(tmp_path: Path, name: str) -> tuple[Path, str]:
    """The config to check for case ``name`` and the text its one error line contains."""
    if name in STATIC:
        return BAD / name, name
    path = tmp_path / "vcmon.yaml"
    # ff01::1 is interface-local: had it been taken, no echo would leave this host.
    if name == "multicast":
        path.write_text(GOOD.replace("address: 127.0.0.1", "address: 'ff01::1'"), encoding="utf-8")
        return path, "is a multicast address"
    make = {k: m for k, m, _ in SPECIAL}[name.removeprefix("include-")]
    if name.startswith("include-"):
        make(tmp_path / "rooms.yaml")
        path.write_text(f"inventory: rooms.yaml\n{GOOD}", encoding="utf-8")
        return path, "rooms.yaml is"
    return make(path), {"symlink-loop": "symbolic link loop", "huge": "16 MiB limit"}.get(
        name, "not a regular file"
    )


CHECK_CASES = [*STATIC, "multicast", *(k for k, _, _ in SPECIAL), "include-fifo",
               "include-symlink-loop"]  # fmt: skip


@pytest.mark.parametrize("name", CHECK_CASES)
def test_check_refuses_in_one_line_quickly(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, expected = _case(tmp_path, name)
    tracemalloc.start()
    cpu = time.process_time()
    try:
        code = cli.main(["check", "-c", str(path)])  # an exception here fails the test
        cpu = time.process_time() - cpu
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert expected in err
    assert "Traceback" not in err
    assert err.startswith(str(path.parent if name.startswith("include-") else path))
    assert cpu < 0.6, f"{cpu:.2f} s of CPU"  # traced; some 3 times faster without
    assert peak < 64 * 1024 * 1024, f"{peak / 1e6:.0f} MB"


def test_alias_bomb_in_a_real_check_process_stays_small(tmp_path: Path) -> None:
    err_path = tmp_path / "stderr"
    check = [sys.executable, "-m", "vcmon", "check", "-c", str(BAD / "alias-bomb.yaml")]
    # A child forked from this (large) test process starts with its peak RSS as a floor, so the
    # check runs under a small Python that forks it and reports its own CPU time and peak.
    with err_path.open("w") as err_file:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, *check],
            stdout=subprocess.PIPE, stderr=err_file, check=False, timeout=60,
        )  # fmt: skip
    code, cpu, peak_kib = json.loads(done.stdout)
    err = err_path.read_text(encoding="utf-8")
    assert code == 2
    assert "alias bomb" in err
    assert "Traceback" not in err
    assert cpu < 3  # Python's start-up included; 44 s unbounded
    assert peak_kib < 200 * 1024  # the bomb took 3.5 GB unbounded


_MEASURE = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime,
                  usage.ru_maxrss]))
"""


# ---------------------------------------------------------------------------------------------
# Duplicate addresses: a warning, not an error.


def test_duplicate_addresses_are_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "vcmon.yaml"
    path.write_text(
        "endpoints:\n"
        f"  - {ROOT}\n"
        "  - {id: b, name: B, address: '0:0::7f00:1', district: D, level: district,"
        " parent: tinh}\n"
        "  - {id: c, name: C, address: '::ffff:127.0.0.1', district: D, level: district,"
        " parent: tinh}\n"
        "  - {id: d, name: D, address: 127.0.0.1, district: D, level: district, parent: tinh,"
        " probe: icmp}\n",
        encoding="utf-8",
    )
    warnings = tuple(
        f"{path}:{line}:31: endpoints[{i}].address: {address} is also the address of 'tinh', "
        "endpoints[0] (line 2); both are probed and alerted on separately"
        for line, i, address in [(4, 2, "::ffff:127.0.0.1"), (5, 3, "127.0.0.1")]
    )
    assert load_config(path).warnings == warnings
    assert cli.main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == "".join(f"warning: {w}\n" for w in warnings)
    assert "config OK" in out


# ---------------------------------------------------------------------------------------------
# Templates: widths bounded at load and when rendering.


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", None),
        (">8", None),
        ("*^200.200", None),
        ("0>5", None),
        (">201", f"width 201 is too large (expected at most {MAX_WIDTH})"),
        ("1500000000", f"width 1500000000 is too large (expected at most {MAX_WIDTH})"),
        (".9999", f"precision 9999 is too large (expected at most {MAX_WIDTH})"),
        ("9" * 5000, f"width of 5000 digits is too large (expected at most {MAX_WIDTH})"),
        (
            "{total}",
            "a placeholder inside a format spec is not allowed (its width would be unbounded)",
        ),
    ],
)
def test_format_spec_bounds(spec: str, problem: str | None) -> None:
    assert spec_problem(spec) == problem


def test_a_wide_template_never_renders_unbounded() -> None:
    messages = Messages("en")
    # As if a template had slipped past the check: rendering refuses it all the same.
    wide = Template.model_construct(summary="{place:>1500000000}", description="{id:.999}")
    messages._own["endpoint_down"] = wide
    target = Target(id="a", name="Room A", address="127.0.0.1", district="D", level="province")
    summary, description = messages.render(
        kind=Kind.ENDPOINT_DOWN,
        status=Status.FIRING,
        severity=Severity.CRITICAL,
        target=target,
        affected=(),
        measurements=Measurements(),
        started_at=0.0,
        at=180.0,
        detail={},
    )
    assert summary == "Room A: down for 3 min"  # the built-in wording
    assert len(description) < 500


# ---------------------------------------------------------------------------------------------
# Secrets never in an error.


@pytest.mark.parametrize(
    ("loc", "secret"),
    [
        (("sinks", 0, "password"), True),
        (("sinks", 0, "secrets", 1), True),
        (("sinks", 0, "headers", "X-Api"), True),
        (("sinks", 0, "bot_token"), True),
        (("sinks", 0, "password_file"), False),
        (("sinks", 0, "secret_env"), False),
        (("sinks", 0, "username"), False),
        (("endpoints", 3, "address"), False),
    ],
)
def test_secret_paths(loc: tuple[str | int, ...], secret: bool) -> None:
    assert is_secret_path(loc) is secret


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # As logs show a URL (vcmon.logs.redact_url): no user info, a leading word at most.
        ("htps://bob:hunter2@hooks.example/x", "'htps://hooks.example/x'"),
        ("ftp://api.telegram.org/bot123:AAAAAA/sendMessage", "'ftp://api.telegram.org/bot***'"),
        ("htp://tok@host.example/", "'htp://host.example'"),
        ("not a url", "'(not shown: it may hold a secret)'"),
    ],
)
def test_a_url_in_an_error_is_shown_as_logs_show_it(tmp_path: Path, url: str, shown: str) -> None:
    path = tmp_path / "vcmon.yaml"
    path.write_text(f"sinks: [{{type: webhook, url: '{url}'}}]\n{GOOD}", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).endswith(
        f"sinks[0].url: expected an http:// or https:// URL with a host, got {shown}"
    )


def test_scrub_patterns_and_short_secrets() -> None:
    text = "got 'https://x:pw@h/bot1234567:ABCDEFGHIJKLMN/y' whsec_abc= 'ab' tab Bearer abc.def"
    assert scrub(text, {"ab": "***"}) == (
        "got 'https://x:***@h/bot***/y' whsec_*** '***' tab Bearer ***"
    )


SECRETS = {
    "number": "98765432",
    "mqtt": "Tr0ub4dor&3-mqtt",
    "user_info": "hunter2-in-url",
    "bot": "bot5550001:AAHfiHkq9ZsLmJ3x0QpV7Rt2Wd",
    "header": "Bearer-value-77aa",
    "env": "s3cr3t-from-env",
    "whsec": "whsec_!!not-base64-secret",
}


def test_check_output_never_shows_a_planted_secret(tmp_path: Path) -> None:
    path = tmp_path / "vcmon.yaml"
    path.write_text(
        "sinks:\n"
        f"  - {{type: mqtt, name: m1, username: u, password: {SECRETS['number']}}}\n"
        f"  - {{type: mqtt, name: m2, username: u, password: '{SECRETS['mqtt']}${{'}}\n"
        f"  - {{type: webhook, name: w1, url: 'htps://u:{SECRETS['user_info']}@h.example/x'}}\n"
        f"  - {{type: webhook, name: w2, url: 'ftp://api.telegram.org/{SECRETS['bot']}/send'}}\n"
        f"  - {{type: webhook, name: w3, url: 'http://127.0.0.1:9/x',\n"
        f"      headers: {{Authorization: [{SECRETS['header']}]}}}}\n"
        "  - {type: webhook, name: w4, url: '${HOOK_URL}'}\n"
        f"  - {{type: webhook, name: w5, url: 'http://127.0.0.1:9/',\n"
        f"      secrets: ['{SECRETS['whsec']}']}}\n"
        f"  - {{type: alertmanager, url: 'gopher://am:{SECRETS['user_info']}@h/'}}\n"
        f"{GOOD}",
        encoding="utf-8",
    )
    env = {**os.environ, "HOOK_URL": f"file://x:{SECRETS['env']}@h/"}
    proc = subprocess.run(
        [sys.executable, "-m", "vcmon", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert len(output.splitlines()) >= 7, output  # every sink was reported…
    assert "Traceback" not in output
    for name, secret in SECRETS.items():  # …and no secret with it
        assert secret not in output, (name, output)
    assert "AAHfiHkq9" not in output
    assert "sinks[0].password: expected text, got a number (write it in quotes)" in output


def test_read_secret_from_a_variable_or_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret-in-file\r\n", encoding="utf-8")
    env = {"PW": "s3cret-in-env"}
    assert read_secret("password", None, None, env) is None
    assert read_secret("password", "PW", None, env) == SecretText(
        "s3cret-in-env", "password_env PW"
    )
    assert read_secret("password", None, str(secret_file), env) == SecretText(
        "s3cret-in-file", f"password_file {secret_file}"
    )
    cases = [
        (("PW_UNSET", None), "password_env: environment variable PW_UNSET is not set"),
        ((None, str(tmp_path / "nope")), f"password_file: cannot read {tmp_path / 'nope'}: No "),
    ]
    for (name, file), message in cases:
        with pytest.raises(SecretUnavailable) as caught:
            read_secret("password", name, file, env)
        assert str(caught.value).startswith(message)
