"""Who may do what on the HTTP API: the web config loader, roles, tokens, rate limits, TLS and
mutual TLS, on a real server backed by a real alert runtime; a real Prometheus scrapes it with
basic_auth and tls_config. Every address is loopback (a 0.0.0.0 listen is reached on 127.0.0.1)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge

from tests.support.helpers import free_port
from vcmon import cli
from vcmon.alerts.runtime import AlertRuntime
from vcmon.clock import FakeClock
from vcmon.config import ConfigError, load_config
from vcmon.http import auth as webauth
from vcmon.http.api import Api, serve
from vcmon.http.auth import Access, RateLimiter, load_web_config
from vcmon.http.server import HttpServer
from vcmon.measure.results import Results

TOKEN = "tok-0123456789abcdef0123456789"  # a bearer token of the "backup" script
READ_TOKEN = "read-0123456789abcdef012345"
PASSWORDS = {"lan": "lan-secret", "viewer": "viewer-secret", "prometheus": "prom-secret"}

CONFIG = """
listen: "{host}:{port}"
alerts: {{state_file: state.db}}
{web}
endpoints:
  - {{id: x, name: UBND xã Hạ Long, address: 127.0.0.1, district: Hạ Long, level: commune}}
"""


def hashed(password: str) -> str:
    # Cost 4, the least bcrypt takes: the tests check the logic, not the cost.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def web_doc(**extra: Any) -> dict[str, Any]:
    """Users lan (write), viewer and prometheus (read); tokens backup (write) and grafana (read)."""
    doc: dict[str, Any] = {
        "basic_auth_users": {name: hashed(pw) for name, pw in PASSWORDS.items()},
        "vcmon": {
            "roles": {"lan": "write", "viewer": "read", "ops": "write"},
            "tokens": [
                {
                    "name": "backup",
                    "role": "write",
                    "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                },
                {"name": "grafana", "role": "read", "env": "VCMON_TEST_READ_TOKEN"},
            ],
        },
    }
    doc.update(extra)
    return doc


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Daemon:
    url: str
    server: HttpServer
    runtime: AlertRuntime
    access: Access
    clock: Clock
    results: Results

    async def call(self, method: str, path: str, body: Any = None, *,
                   auth: Any = None, headers: dict[str, str] | None = None,
                   verify: Any = True, cert: Any = None) -> httpx.Response:  # fmt: skip
        if self.url.startswith("http:"):
            verify = False  # nothing to verify; spares loading the system's CAs per call
        async with httpx.AsyncClient(
            base_url=self.url, timeout=5, auth=auth, verify=verify, cert=cert
        ) as http:
            return await http.request(method, path, json=body, headers=headers)


SILENCE = {"matchers": {"district": "Hạ Long"}, "duration": "1h", "comment": "đổi thiết bị"}
Start = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    """Start a server: ``web`` is the web config document (None: no web config)."""
    monkeypatch.setenv("VCMON_TEST_READ_TOKEN", READ_TOKEN)
    opened: list[tuple[HttpServer, AlertRuntime]] = []

    async def run(web: dict[str, Any] | None, host: str = "127.0.0.1",
                  scheme: str = "http") -> Daemon:  # fmt: skip
        line = ""
        if web is not None:
            (tmp_path / "web.yml").write_text(yaml.safe_dump(web), encoding="utf-8")
            line = "web_config_file: web.yml"
        path = tmp_path / "vcmon.yaml"
        port = free_port()
        path.write_text(CONFIG.format(host=host, port=port, web=line), encoding="utf-8")
        config = load_config(path, env={})
        runtime = AlertRuntime.open(config, FakeClock())
        clock = Clock()
        web_config = webauth.load_for(config)
        access = Access(web_config, config.listen, clock=clock)
        registry = CollectorRegistry()
        Gauge("vcmon_test_up", "a series to scrape", registry=registry).set(1)
        results = Results(config.endpoints)
        api = Api(results, registry, {}, alerts=runtime, access=access)
        server = await serve(api, config.listen, webauth.web_config_path(config))
        opened.append((server, runtime))
        return Daemon(f"{scheme}://127.0.0.1:{port}", server, runtime, access, clock, results)

    yield run
    for server, runtime in opened:
        await server.close()
        runtime.close()


# --- roles --------------------------------------------------------------------------------------

_LAN = ("lan", PASSWORDS["lan"])
_VIEWER = ("viewer", PASSWORDS["viewer"])


@pytest.mark.parametrize(
    ("auth", "method", "path", "status"),
    [
        (None, "GET", "/-/healthy", 200),
        (None, "GET", "/-/ready", 503),  # open: not ready (no round yet), not 401
        (None, "GET", "/metrics", 401),
        (None, "GET", "/api/v1/status", 401),
        (None, "GET", "/api/v1/alerts", 401),
        (None, "POST", "/api/v1/silences", 401),
        (None, "DELETE", "/api/v1/silences/abc", 401),
        (None, "POST", "/api/v1/alerts/abc/ack", 401),
        (_VIEWER, "GET", "/metrics", 200),
        (_VIEWER, "GET", "/api/v1/silences", 200),
        (_VIEWER, "GET", "/api/v1/alerts", 200),
        (_VIEWER, "POST", "/api/v1/silences", 403),
        (_VIEWER, "DELETE", "/api/v1/silences/abc", 403),
        (_VIEWER, "POST", "/api/v1/alerts/abc/ack", 403),
        (_LAN, "GET", "/api/v1/status", 200),
        (_LAN, "POST", "/api/v1/silences", 201),
        (_LAN, "DELETE", "/api/v1/silences/abc", 404),
        (_LAN, "POST", "/api/v1/alerts/abc/ack", 404),
        (("lan", "wrong"), "GET", "/metrics", 401),
        (("nobody", "x"), "GET", "/metrics", 401),
    ],
)  # fmt: skip
async def test_what_each_role_may_do(
    start: Start, auth: Any, method: str, path: str, status: int
) -> None:
    daemon = await start(web_doc())
    body = SILENCE if path == "/api/v1/silences" and method == "POST" else None
    resp = await daemon.call(method, path, body, auth=auth)
    assert resp.status_code == status, resp.text
    if status == 401:
        assert resp.headers["www-authenticate"] == 'Basic realm="vcmon"'
    if status == 403:
        assert "role write" in resp.json()["error"]


async def test_the_authenticated_name_is_recorded(start: Start) -> None:
    daemon = await start(web_doc())
    resp = await daemon.call("POST", "/api/v1/silences", SILENCE, auth=_LAN)
    assert (resp.status_code, resp.json()["created_by"]) == (201, "lan")
    # Naming oneself is fine; naming someone else is refused, not recorded.
    same = await daemon.call("POST", "/api/v1/silences", {**SILENCE, "created_by": "lan"},
                             auth=_LAN)  # fmt: skip
    assert same.status_code == 201
    other = await daemon.call("POST", "/api/v1/silences", {**SILENCE, "created_by": "Hùng"},
                              auth=_LAN)  # fmt: skip
    assert other.status_code == 400
    assert other.json()["error"].startswith("created_by: this request is authenticated as 'lan'")
    assert [s.created_by for s in daemon.runtime.silences()] == ["lan", "lan"]


async def test_an_ack_records_the_authenticated_name(start: Start) -> None:
    from vcmon.measure.stats import Observation

    daemon = await start(web_doc())
    rec = daemon.results["x"]
    for i in range(3):  # three unanswered rounds: x is down
        obs = Observation(daemon.runtime.clock.time() + 10 * i, 5, 0, ())
        rec.record(obs)
        daemon.runtime.on_round(rec, obs)
    (alert,) = daemon.runtime.alerts()
    path = f"/api/v1/alerts/{alert.alert_id}/ack"
    resp = await daemon.call("POST", path, {"comment": "đang xử lý"}, auth=_LAN)
    assert resp.status_code == 200, resp.text
    assert resp.json()["acknowledged"]["by"] == "lan"
    resp = await daemon.call("POST", path, {"by": "Hùng"}, auth=_LAN)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("by: this request is authenticated as 'lan'")


async def test_bearer_tokens(start: Start) -> None:
    daemon = await start(web_doc())
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    resp = await daemon.call("POST", "/api/v1/silences", SILENCE, headers=bearer)
    assert (resp.status_code, resp.json()["created_by"]) == (201, "backup")
    silence_id = resp.json()["id"]
    reader = {"Authorization": f"Bearer {READ_TOKEN}"}
    assert (await daemon.call("GET", "/api/v1/silences", headers=reader)).status_code == 200
    denied = await daemon.call("DELETE", f"/api/v1/silences/{silence_id}", headers=reader)
    assert denied.status_code == 403
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    assert (await daemon.call("GET", "/metrics", headers=wrong)).status_code == 401
    done = await daemon.call("DELETE", f"/api/v1/silences/{silence_id}", headers=bearer)
    assert done.status_code == 200


@pytest.mark.parametrize(
    "header",
    ["Basic", "Basic !!!", "Basic bm9jb2xvbg==", "Basic //79", "Digest x", "Bearer", "bearer  x"],
)
async def test_malformed_credentials_are_401_not_500(start: Start, header: str) -> None:
    daemon = await start(web_doc())
    resp = await daemon.call("GET", "/metrics", headers={"Authorization": header})
    assert resp.status_code == 401


async def test_failed_logins_are_rate_limited_per_client(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = await start(web_doc())
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counted(password: bytes, hashed_password: bytes) -> bool:
        checks.append(password)
        return real(password, hashed_password)

    monkeypatch.setattr(bcrypt, "checkpw", counted)
    for _ in range(int(webauth.FAILURE_BURST)):
        assert (await daemon.call("GET", "/metrics", auth=("lan", "guess"))).status_code == 401
    limited = await daemon.call("GET", "/metrics", auth=("lan", "guess"))
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    # Locked out, no password is even checked (no CPU to burn), the right one included.
    assert (await daemon.call("GET", "/metrics", auth=_LAN)).status_code == 429
    assert len(checks) == webauth.FAILURE_BURST
    daemon.clock.now += 1 / webauth.FAILURE_RATE
    assert (await daemon.call("GET", "/metrics", auth=_LAN)).status_code == 200
    # A verified password is remembered: asking again costs no bcrypt.
    for _ in range(3):
        assert (await daemon.call("GET", "/metrics", auth=_LAN)).status_code == 200
    assert len(checks) == webauth.FAILURE_BURST + 1


async def test_writes_are_rate_limited_per_client(start: Start) -> None:
    daemon = await start(web_doc())
    for _ in range(int(webauth.WRITE_BURST)):
        resp = await daemon.call("POST", "/api/v1/alerts/none/ack", {}, auth=_LAN)
        assert resp.status_code == 404
    resp = await daemon.call("POST", "/api/v1/alerts/none/ack", {}, auth=_LAN)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "6"
    # Another writer has a bucket of its own; reading is not limited.
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert (await daemon.call("POST", "/api/v1/alerts/none/ack", {}, headers=bearer)).is_error
    assert (await daemon.call("GET", "/api/v1/alerts", auth=_LAN)).status_code == 200
    daemon.clock.now += 6
    assert (await daemon.call("POST", "/api/v1/alerts/none/ack", {}, auth=_LAN)).status_code == 404


@pytest.mark.parametrize(
    ("steps", "allowed"),
    [
        ([0, 0, 0], [True, True, False]),  # burst 2
        ([0, 0, 0, 1], [True, True, False, True]),  # one back per second
        ([0, 0, 10, 0, 0], [True, True, True, True, False]),  # never more than the burst
    ],
)
def test_token_bucket(steps: list[float], allowed: list[bool]) -> None:
    clock = Clock()
    bucket = RateLimiter(1.0, 2.0, clock)
    got = []
    for step in steps:
        clock.now += step
        got.append(bucket.take("a") == 0)
    assert got == allowed


def test_the_bucket_table_is_bounded() -> None:
    bucket = RateLimiter(1.0, 1.0, Clock(), max_keys=10)
    for i in range(100):
        bucket.take(str(i))
    assert len(bucket._buckets) == 10


# --- without authentication ---------------------------------------------------------------------


async def test_loopback_without_web_config_is_as_before(start: Start) -> None:
    daemon = await start(None)
    resp = await daemon.call("POST", "/api/v1/silences", {**SILENCE, "created_by": "Lan"})
    assert (resp.status_code, resp.json()["created_by"]) == (201, "Lan")


async def test_other_listens_without_auth_refuse_writes(start: Start) -> None:
    daemon = await start(None, host="0.0.0.0")  # reached through 127.0.0.1 only
    resp = await daemon.call("POST", "/api/v1/silences", {**SILENCE, "created_by": "Lan"})
    assert resp.status_code == 403
    assert "web_config_file" in resp.json()["error"]
    assert (await daemon.call("DELETE", "/api/v1/silences/abc")).status_code == 403
    assert (await daemon.call("GET", "/api/v1/silences")).status_code == 200
    assert (await daemon.call("GET", "/metrics")).status_code == 200
    assert daemon.runtime.silences() == []


@pytest.mark.parametrize(
    ("listen", "web", "warned"),
    [
        ("0.0.0.0", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
        ("[::1]", False, False),
    ],
)
def test_check_warns_about_unauthenticated_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str, web: bool, warned: bool
) -> None:
    line = ""
    if web:
        (tmp_path / "web.yml").write_text(yaml.safe_dump(web_doc(vcmon=None)), encoding="utf-8")
        line = "web_config_file: web.yml"
    path = tmp_path / "vcmon.yaml"
    path.write_text(CONFIG.format(host=listen, port=9231, web=line), encoding="utf-8")
    assert cli.main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("refuses writes" in out and "web_config_file" in out) is warned
    assert ("3 basic-auth users" in out) is web


def test_check_refuses_a_bad_web_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "$2y$10$" + "x" * 40  # not a bcrypt hash, but must not be shown
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  lan: '{secret}'\n", encoding="utf-8")
    path = tmp_path / "vcmon.yaml"
    path.write_text(CONFIG.format(host="127.0.0.1", port=9231, web="web_config_file: web.yml"),
                    encoding="utf-8")  # fmt: skip
    assert cli.main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'web.yml'}:2:3: basic_auth_users.lan: expected a bcrypt hash" in err
    assert secret not in err


# --- the web config file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        ("basic_auth_user: {}\n", "1:1: basic_auth_user", "unknown key"),
        ("rate_limit: {interval: 1s}\n", "1:1: rate_limit", "not supported"),
        ("basic_auth_users: [lan]\n", "basic_auth_users", "expected a mapping"),
        ("basic_auth_users:\n  lan: plain\n", "2:3: basic_auth_users.lan", "bcrypt hash"),
        ("vcmon: {roles: {lan: admin}}\n", "vcmon.roles.lan", "expected read or write"),
        ("vcmon: {tokens: [{name: a, role: read}]}\n", "vcmon.tokens[0]", "exactly one of"),
        ("vcmon: {tokens: [{name: a, role: read, sha256: abc}]}\n", "vcmon.tokens[0].sha256",
         "64 hex digits"),
        ("vcmon: {tokens: [{name: a, role: read, env: NOT_SET_HERE}]}\n",
         "vcmon.tokens[0].env", "$NOT_SET_HERE is not set"),
        ("vcmon: {tokens: [{name: a, role: read, env: SHORT}]}\n", "vcmon.tokens[0].env",
         "at least 16"),
        ("vcmon: {tokens: [{name: a, role: read, file: nope}]}\n", "vcmon.tokens[0].file",
         "no such file"),
        ("tls_server_config: {cert_file: c.pem}\n", "tls_server_config.key_file",
         "expected a file name"),
        ("tls_server_config: {cert_file: c.pem, key_file: c.pem, client_auth_type: "
         "RequireAnyClientCert}\n", "tls_server_config.client_auth_type", "nobody verified"),
        ("tls_server_config: {cert_file: c.pem, key_file: c.pem, client_ca_file: c.pem}\n",
         "tls_server_config.client_ca_file", "without client_auth_type"),
        ("tls_server_config: {cert_file: c.pem, key_file: c.pem, client_auth_type: "
         "RequireAndVerifyClientCert}\n", "tls_server_config.client_auth_type",
         "needs client_ca_file"),
        ("tls_server_config: {cert_file: c.pem, key_file: c.pem, min_version: TLS10}\n",
         "tls_server_config.min_version", "too old"),
        ("tls_server_config: {cert_file: c.pem, key_file: c.pem, cert: x}\n",
         "tls_server_config.cert", "inline PEM"),
        ("a: &a [1]\nb: *a\n", "2:4", "aliases"),
        ("x: " + "[" * 40 + "]" * 40 + "\n", "1:", "nested deeper"),
        ("x: [\n", "", "not valid YAML"),
        ("- 1\n", "", "expected a mapping"),
    ],
)  # fmt: skip
def test_bad_web_configs_name_file_line_and_key(
    tmp_path: Path, text: str, where: str, expected: str
) -> None:
    (tmp_path / "c.pem").write_text("x", encoding="utf-8")
    path = tmp_path / "web.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_web_config(path, env={"SHORT": "abc"})
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert where in message, message
    assert expected in message, message


def test_a_web_config_that_is_no_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for name, expected in (("fifo", "not a regular file"), ("missing", "cannot read")):
        with pytest.raises(ConfigError, match=expected):
            load_web_config(tmp_path / name)


def test_a_good_web_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text(TOKEN + "\n", encoding="utf-8")
    doc = web_doc(http_server_config={"http2": True, "headers": {"X-Frame-Options": "deny"}})
    doc["vcmon"]["tokens"] = [{"name": "ci", "role": "write", "file": "secrets/token"}]
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    web = load_web_config(path)
    assert set(web.users) == set(PASSWORDS)
    assert web.role_of("lan") is webauth.Role.WRITE
    assert web.role_of("prometheus") is webauth.Role.READ  # not listed: read
    assert [(t.name, t.digest) for t in web.tokens] == [
        ("ci", hashlib.sha256(TOKEN.encode()).digest())
    ]
    assert web.headers == (("X-Frame-Options", "deny"),)
    assert web.authenticates


async def test_changes_to_the_web_config_apply_and_a_broken_one_is_ignored(
    start: Start, tmp_path: Path
) -> None:
    daemon = await start(web_doc())
    doc = web_doc()
    doc["basic_auth_users"]["hùng"] = hashed("new-secret")
    doc["vcmon"]["roles"]["hùng"] = "write"
    (tmp_path / "web.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    daemon.clock.now += webauth.RELOAD_EVERY
    resp = await daemon.call("GET", "/api/v1/status",
                             headers={"Authorization": _basic("hùng", "new-secret")})  # fmt: skip
    assert resp.status_code == 200
    (tmp_path / "web.yml").write_text("basic_auth_users: [broken\n", encoding="utf-8")
    daemon.clock.now += webauth.RELOAD_EVERY
    assert (await daemon.call("GET", "/metrics", auth=_LAN)).status_code == 200


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_http_server_config_headers_are_sent(start: Start) -> None:
    daemon = await start(web_doc(http_server_config={"headers": {"X-Frame-Options": "deny"}}))
    resp = await daemon.call("GET", "/-/healthy")
    assert resp.headers["x-frame-options"] == "deny"


# --- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN ops
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for localhost and 127.0.0.1, a client certificate (CN ops)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=vcmon test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                "extendedKeyUsage=serverAuth\n"),
        ("client", "ops", "extendedKeyUsage=clientAuth\n"),
    ):  # fmt: skip
        (d / f"{name}.ext").write_text(ext, encoding="utf-8")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
                 cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile",
                 f"{name}.ext", cwd=d)  # fmt: skip
    return Pki(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
              d / "client.key")  # fmt: skip


def _tls(pki: Pki, mutual: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if mutual:
        doc |= {"client_ca_file": str(pki.ca), "client_auth_type": "RequireAndVerifyClientCert"}
    return doc


async def test_tls_with_basic_auth(start: Start, pki: Pki) -> None:
    daemon = await start(web_doc(tls_server_config=_tls(pki, False)), scheme="https")
    ca = ssl.create_default_context(cafile=str(pki.ca))
    assert (await daemon.call("GET", "/metrics", auth=_VIEWER, verify=ca)).status_code == 200
    assert (await daemon.call("GET", "/metrics", verify=ca)).status_code == 401
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not answered
        async with httpx.AsyncClient(timeout=5) as http:
            await http.get(daemon.url.replace("https", "http") + "/metrics")


async def test_mutual_tls_the_certificate_names_the_caller(start: Start, pki: Pki) -> None:
    daemon = await start(web_doc(tls_server_config=_tls(pki, True)), scheme="https")
    ca = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises(httpx.HTTPError):  # no client certificate: no handshake
        await daemon.call("GET", "/metrics", verify=ca)
    ca.load_cert_chain(pki.client_cert, pki.client_key)
    resp = await daemon.call("POST", "/api/v1/silences", SILENCE, verify=ca)
    assert (resp.status_code, resp.json()["created_by"]) == (201, "ops")
    # Credentials, when given, name the caller instead.
    resp = await daemon.call("POST", "/api/v1/silences", SILENCE, verify=ca, auth=_VIEWER)
    assert resp.status_code == 403


def test_bad_tls_files_are_a_config_error(tmp_path: Path, pki: Pki) -> None:
    path = tmp_path / "web.yml"
    doc = {"tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.ca)}}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    web = load_web_config(path)
    assert web.tls is not None
    with pytest.raises(ConfigError, match="cannot use this certificate"):
        web.tls.context()


async def test_prometheus_scrapes_with_basic_auth_and_tls(
    start: Start, pki: Pki, tmp_path: Path
) -> None:
    from tests.system.test_exporters import tool

    prometheus = tool("prometheus")
    daemon = await start(web_doc(tls_server_config=_tls(pki, True)), scheme="https")
    (tmp_path / "password").write_text(PASSWORDS["prometheus"], encoding="utf-8")
    tls_config = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                  "key_file": str(pki.client_key)}  # fmt: skip
    scrape = {
        "job_name": "vcmon",
        "scheme": "https",
        "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "password")},
        "tls_config": tls_config,
        "static_configs": [{"targets": [daemon.url.removeprefix("https://")]}],
    }
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
              "scrape_configs": [scrape]}  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as prom:

            async def query(expr: str) -> list[dict[str, Any]]:
                resp = await prom.get("/api/v1/query", params={"query": expr})
                if resp.status_code == 503:  # Prometheus itself is still starting
                    return []
                result: list[dict[str, Any]] = resp.json()["data"]["result"]
                return result

            async def scraped() -> bool:
                assert proc.returncode is None, (tmp_path / "prometheus.log").read_text()
                try:
                    return bool(await query("vcmon_test_up"))
                except httpx.HTTPError:
                    return False

            await _until(scraped, 30.0, "Prometheus to scrape vcmon over TLS with basic_auth")
            (up,) = await query('up{job="vcmon"}')
            assert up["value"][1] == "1"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)  # polling a condition, with a deadline


# --- the CLI's credentials ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "file", "expected"),
    [
        ({}, None, None),
        ({"VCMON_TOKEN": TOKEN}, None, f"Bearer {TOKEN}"),
        ({"VCMON_USER": "lan", "VCMON_PASSWORD": "a:b"}, None, _basic("lan", "a:b")),
        ({"VCMON_TOKEN": TOKEN}, "lan:pw\n", _basic("lan", "pw")),  # the file first
        ({}, f"{TOKEN}\n", f"Bearer {TOKEN}"),
    ],
)
def test_cli_credentials(
    tmp_path: Path, env: dict[str, str], file: str | None, expected: str | None
) -> None:
    from vcmon.cli.client import credentials

    path = None
    if file is not None:
        path = tmp_path / "creds"
        path.write_text(file, encoding="utf-8")
    args = argparse.Namespace(credentials_file=path, ca_file=None)
    assert credentials(args, env).authorization == expected


@pytest.mark.parametrize(
    ("env", "file", "error"),
    [
        ({"VCMON_USER": "lan"}, None, "set both VCMON_USER and VCMON_PASSWORD"),
        ({}, "missing", "No such file"),
        ({}, "two\nlines", "expected one line"),
    ],
)
def test_cli_credentials_refused(
    tmp_path: Path, env: dict[str, str], file: str | None, error: str
) -> None:
    from vcmon.cli.client import CommandError, credentials

    path = None
    if file is not None:
        path = tmp_path / "creds"
        if file != "missing":
            path.write_text(file, encoding="utf-8")
    with pytest.raises(CommandError, match=error) as err:
        credentials(argparse.Namespace(credentials_file=path, ca_file=None), env)
    assert err.value.code == 2


async def test_cli_writes_over_https_as_the_token_s_name(
    start: Start, pki: Pki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = await start(web_doc(tls_server_config=_tls(pki, False)), scheme="https")
    base = ["--url", daemon.url.replace("127.0.0.1", "localhost"), "--ca-file", str(pki.ca)]
    add = ["silence", "add", *base, "--district", "Hạ Long", "--duration", "1h",
           "--comment", "đổi thiết bị"]  # fmt: skip
    assert await asyncio.to_thread(cli.main, add) == 1
    assert "wants credentials" in capsys.readouterr().err
    monkeypatch.setenv("VCMON_TOKEN", TOKEN)
    assert await asyncio.to_thread(cli.main, add) == 0
    silence_id = capsys.readouterr().out.strip()
    assert [(s.id, s.created_by) for s in daemon.runtime.silences()] == [(silence_id, "backup")]
    ack = ["alerts", "ack", *base, "nope", "--comment", "đang xử lý"]
    assert await asyncio.to_thread(cli.main, ack) == 1
    assert "no open alert nope" in capsys.readouterr().err
    monkeypatch.setenv("VCMON_TOKEN", READ_TOKEN)
    expire = ["silence", "expire", *base, silence_id]
    assert await asyncio.to_thread(cli.main, expire) == 1
    assert "may only read" in capsys.readouterr().err
    listing = ["silence", "list", *base, "--json"]
    assert await asyncio.to_thread(cli.main, listing) == 0
    assert silence_id in capsys.readouterr().out
    monkeypatch.delenv("VCMON_TOKEN")
    status = ["status", *base, "--once"]
    assert await asyncio.to_thread(cli.main, status) == 1
    assert "wants credentials" in capsys.readouterr().err
    monkeypatch.setenv("VCMON_TOKEN", READ_TOKEN)
    assert await asyncio.to_thread(cli.main, status) == 0  # `vcmon status` reads as the token
    assert "vcmon" in capsys.readouterr().out
