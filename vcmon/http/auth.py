"""Who may do what on the HTTP API: the web config file (Prometheus exporter-toolkit's format,
``--web.config.file``, plus a ``vcmon:`` section for roles and bearer tokens), the TLS context
it describes, and the checks every request passes before its handler runs.

Roles: *read* (metrics, status, alert and silence lists) and *write* (create and expire
silences, acknowledge alerts; write implies read). ``/-/healthy`` and ``/-/ready`` are open.
Without a web config that authenticates, a loopback listen behaves as before (anyone on this
host may write) and any other listen refuses writes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import bcrypt
import yaml

from vcmon.config import Config, ConfigError, Problem, Unreadable, read_file
from vcmon.http.server import Request, Response
from vcmon.logs import event

log = logging.getLogger(__name__)

MAX_FILE: Final = 256 * 1024  # bytes; a web config is a few lines
MAX_DEPTH: Final = 16  # YAML nesting; the format needs 4
MIN_TOKEN: Final = 16  # characters of a token read from a file or the environment
REALM: Final = 'Basic realm="vcmon"'
SETTING: Final = "web_config_file"
# Failed logins per client: 5 at once, then one every 12 s (bcrypt costs ~0.1–0.25 s each).
FAILURE_RATE: Final = 1 / 12.0
FAILURE_BURST: Final = 5.0
# Writes per client (authenticated name, else address): 20 at once, then 10 a minute.
WRITE_RATE: Final = 10 / 60.0
WRITE_BURST: Final = 20.0
CACHE_SIZE: Final = 256  # verified credentials kept, so bcrypt runs once per credential
RELOAD_EVERY: Final = 1.0  # s between looks at the web config file's modification time
BCRYPT_AT_ONCE: Final = 2  # bcrypt checks running at a time (threads), whoever asks
_HASH_PREFIXES: Final = ("$2a$", "$2b$", "$2y$")
_TLS_VERSIONS: Final = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH: Final = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


@functools.cache
def _dummy_hash() -> bytes:
    """A bcrypt hash no password matches in practice: unknown users cost what known ones do."""
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=10))


class Role(enum.IntEnum):
    """What a caller may do; a higher role includes the lower ones."""

    READ = 1
    WRITE = 2


class Need(enum.IntEnum):
    """What a route asks of its caller."""

    OPEN = 0
    READ = 1
    WRITE = 2


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request comes from: ``name`` is None for an anonymous caller."""

    name: str | None
    role: Role


ANONYMOUS_WRITER: Final = Identity(None, Role.WRITE)


# --- the web config file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """``tls_server_config``: paths already resolved against the web config file."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    client_auth_type: str
    min_version: str
    max_version: str

    @property
    def verifies_clients(self) -> bool:
        """True when a client certificate, if any is presented, is checked against the CA."""
        return self.client_auth_type != "NoClientCert"

    def context(self) -> ssl.SSLContext:
        """A server-side SSL context (TLS 1.2 at least); ConfigError if a file cannot be used."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _TLS_VERSIONS[self.min_version]
        ctx.maximum_version = _TLS_VERSIONS[self.max_version]
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{self.cert_file}: cannot use this certificate with key {self.key_file}: "
                f"{_reason(exc)}"
            ) from None
        if self.client_ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{self.client_ca_file}: cannot use this client CA file: {_reason(exc)}"
                ) from None
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        return ctx


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token: the sha256 of its text, the name it stands for, its role."""

    name: str
    digest: bytes
    role: Role


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A valid web config file."""

    source: Path
    tls: TlsSettings | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # name → bcrypt hash
    roles: Mapping[str, Role] = field(default_factory=dict)  # users and client-cert CNs
    tokens: tuple[Token, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # http_server_config.headers, on every response

    @property
    def authenticates(self) -> bool:
        """True when requests can carry an identity (passwords, tokens or client certs)."""
        return bool(self.users or self.tokens or (self.tls and self.tls.verifies_clients))

    def role_of(self, name: str) -> Role:
        """A user's or client certificate's role: ``vcmon.roles``, else read."""
        return self.roles.get(name, Role.READ)


def web_config_path(config: Config) -> Path | None:
    """The config's ``web_config_file``, relative to the config file; None when not set."""
    if not config.web_config_file:
        return None
    return config.source.parent / Path(config.web_config_file).expanduser()


def load_for(config: Config) -> WebConfig | None:
    """The web config ``config`` names, loaded and checked; None without one."""
    path = web_config_path(config)
    return None if path is None else load_web_config(path)


def load_web_config(path: Path, env: Mapping[str, str] | None = None) -> WebConfig:
    """Read and check a web config file; ConfigError naming file, line and key if wrong."""
    env = os.environ if env is None else env
    text = _read(path)
    positions = _Positions(path, text)
    doc = yaml.safe_load(text)
    if doc is None:
        doc = {}
    check = _Checker(path, positions)
    if not isinstance(doc, dict):
        check.fail("", "expected a mapping with tls_server_config, basic_auth_users or vcmon")
        raise ConfigError(check.problems)
    known = ("tls_server_config", "basic_auth_users", "http_server_config", "vcmon")
    for key in doc:
        if key == "rate_limit":
            check.fail(key, "not supported by vcmon, which limits writes and failed logins "
                            "per client itself; remove it")  # fmt: skip
        elif key not in known:
            check.fail(str(key), f"unknown key, expected one of {', '.join(known)}")
    tls = _tls(check, doc.get("tls_server_config"))
    users = _users(check, doc.get("basic_auth_users"))
    headers = _http_server(check, doc.get("http_server_config"))
    roles, tokens = _vcmon_section(check, doc.get("vcmon"), env)
    for token in tokens:
        if token.name in users:
            check.fail("vcmon.tokens", f"token name {token.name!r} is also a basic-auth user; "
                                       "give each one its own name")  # fmt: skip
    if check.problems:
        raise ConfigError(check.problems)
    return WebConfig(path, tls, users, roles, tokens, headers)


def _read(path: Path) -> str:
    try:
        raw = read_file(path, "a short YAML file", MAX_FILE)
    except Unreadable as exc:
        raise ConfigError([Problem(str(path), "", f"cannot read the web config: {exc}")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), "", "expected UTF-8 text")]) from None


class _Positions:
    """Line and column of each key path ('a.b', 'a.c[0].d') of a YAML text, checked for
    aliases and depth before anything is built from it."""

    def __init__(self, path: Path, text: str) -> None:
        self.at: dict[str, tuple[int, int]] = {}
        try:
            depth = 0
            for ev in yaml.parse(text, Loader=yaml.SafeLoader):
                if isinstance(ev, yaml.AliasEvent):
                    raise ConfigError([_problem(path, "", "aliases (*name) are not allowed in "
                                                "a web config", ev.start_mark)])  # fmt: skip
                if isinstance(ev, yaml.CollectionStartEvent):
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise ConfigError([_problem(path, "", f"nested deeper than {MAX_DEPTH} "
                                                    "levels", ev.start_mark)])  # fmt: skip
                elif isinstance(ev, yaml.CollectionEndEvent):
                    depth -= 1
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            what = getattr(exc, "problem", None) or "not valid YAML"
            raise ConfigError([_problem(path, "", f"not valid YAML: {what}", mark)]) from None
        if node is not None:
            self._walk(node, "")

    def _walk(self, node: yaml.Node, where: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = f"{where}.{key.value}" if where else str(key.value)
                self.at[sub] = (key.start_mark.line + 1, key.start_mark.column + 1)
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{where}[{i}]"
                self.at[sub] = (item.start_mark.line + 1, item.start_mark.column + 1)
                self._walk(item, sub)


def _problem(path: Path, where: str, message: str, mark: Any) -> Problem:
    if mark is None:
        return Problem(str(path), where, message)
    return Problem(str(path), where, message, mark.line + 1, mark.column + 1)


class _Checker:
    def __init__(self, path: Path, positions: _Positions) -> None:
        self.path = path
        self.positions = positions
        self.problems: list[Problem] = []

    def fail(self, where: str, message: str) -> None:
        line, col = self.positions.at.get(where, (None, None))
        self.problems.append(Problem(str(self.path), where, message, line, col))

    def mapping(self, where: str, value: object) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, "expected a mapping")
            return None
        return {str(k): v for k, v in value.items()}

    def text(self, where: str, value: object, what: str = "text") -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"expected {what}")
            return None
        return value.strip()

    def file(self, where: str, value: object) -> Path | None:
        name = self.text(where, value, "a file name (relative to this file)")
        if name is None:
            return None
        found = self.path.parent / Path(name).expanduser()
        if not found.is_file():
            self.fail(where, f"{found}: no such file")
            return None
        return found

    def unknown(self, where: str, doc: Mapping[str, Any], known: tuple[str, ...]) -> None:
        for key in doc:
            if key not in known:
                self.fail(f"{where}.{key}", f"unknown key, expected one of {', '.join(known)}")


_TLS_KEYS: Final = (
    "cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version",
    "prefer_server_cipher_suites", "cert", "key", "client_ca", "client_allowed_sans",
    "cipher_suites", "curve_preferences",
)  # fmt: skip


def _tls(check: _Checker, raw: object) -> TlsSettings | None:
    if raw is None:
        return None
    doc = check.mapping("tls_server_config", raw)
    if doc is None:
        return None
    w = "tls_server_config"
    check.unknown(w, doc, _TLS_KEYS)
    for inline in ("cert", "key", "client_ca"):
        if doc.get(inline):
            check.fail(f"{w}.{inline}", f"inline PEM is not supported by vcmon; put it in a file "
                                        f"and name it with {inline}_file")  # fmt: skip
    for unsupported in ("client_allowed_sans", "cipher_suites", "curve_preferences"):
        if doc.get(unsupported):
            why = "not supported by vcmon (it uses OpenSSL's defaults and the certificate's CN)"
            check.fail(f"{w}.{unsupported}", f"{why}; remove it")
    if not isinstance(doc.get("prefer_server_cipher_suites", True), bool):
        check.fail(f"{w}.prefer_server_cipher_suites", "expected true or false")
    cert = check.file(f"{w}.cert_file", doc.get("cert_file"))
    key = check.file(f"{w}.key_file", doc.get("key_file"))
    ca = None if doc.get("client_ca_file") is None else check.file(
        f"{w}.client_ca_file", doc.get("client_ca_file"))  # fmt: skip
    auth = doc.get("client_auth_type") or "NoClientCert"
    if auth in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
        check.fail(f"{w}.client_auth_type", f"{auth} accepts certificates nobody verified; vcmon "
                                            "supports NoClientCert, VerifyClientCertIfGiven and "
                                            "RequireAndVerifyClientCert")  # fmt: skip
        auth = "NoClientCert"
    elif auth not in _CLIENT_AUTH:
        check.fail(f"{w}.client_auth_type", f"expected one of {', '.join(_CLIENT_AUTH)}")
        auth = "NoClientCert"
    if auth != "NoClientCert" and doc.get("client_ca_file") is None:
        check.fail(f"{w}.client_auth_type", f"{auth} needs client_ca_file, the CA that signs "
                                            "client certificates")  # fmt: skip
    if doc.get("client_ca_file") is not None and auth == "NoClientCert":
        why = "a client CA without client_auth_type"
        check.fail(
            f"{w}.client_ca_file", f"{why}: set client_auth_type: RequireAndVerifyClientCert"
        )
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = doc.get(name) or default
        if value in ("TLS10", "TLS11"):
            check.fail(f"{w}.{name}", f"{value} is too old; vcmon requires TLS12 or TLS13")
            value = default
        elif value not in _TLS_VERSIONS:
            check.fail(f"{w}.{name}", "expected TLS12 or TLS13")
            value = default
        versions[name] = value
    if _TLS_VERSIONS[versions["min_version"]] > _TLS_VERSIONS[versions["max_version"]]:
        check.fail(f"{w}.min_version", "expected min_version at most max_version")
    if cert is None or key is None:
        return None
    return TlsSettings(cert, key, ca, str(auth), versions["min_version"], versions["max_version"])


def _users(check: _Checker, raw: object) -> dict[str, bytes]:
    doc = check.mapping("basic_auth_users", raw)
    users: dict[str, bytes] = {}
    for name, value in (doc or {}).items():
        where = f"basic_auth_users.{name}"
        if not name or ":" in name or not _printable(name):
            check.fail(where, "expected a user name without ':' or control characters")
            continue
        # The hash is a secret too: it is never echoed, only described.
        if (
            not isinstance(value, str)
            or not value.startswith(_HASH_PREFIXES)
            or len(value) != 60
            or not value.isascii()
        ):
            check.fail(where, "expected a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters), "
                              "e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`")  # fmt: skip
            continue
        users[name] = value.encode("ascii")
    return users


def _http_server(check: _Checker, raw: object) -> tuple[tuple[str, str], ...]:
    doc = check.mapping("http_server_config", raw)
    if not doc:
        return ()
    check.unknown("http_server_config", doc, ("http2", "headers"))
    if not isinstance(doc.get("http2", True), bool):
        check.fail("http_server_config.http2", "expected true or false")  # vcmon speaks HTTP/1.1
    headers = check.mapping("http_server_config.headers", doc.get("headers")) or {}
    allowed = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
               "X-XSS-Protection", "Strict-Transport-Security")  # fmt: skip
    out = []
    for name, value in headers.items():
        where = f"http_server_config.headers.{name}"
        if name not in allowed:
            check.fail(where, f"expected one of {', '.join(allowed)}")
        elif not isinstance(value, str) or not value.isascii() or not value.isprintable():
            check.fail(where, "expected printable ASCII text")
        elif value:
            out.append((name, value))
    return tuple(out)


def _vcmon_section(
    check: _Checker, raw: object, env: Mapping[str, str]
) -> tuple[dict[str, Role], tuple[Token, ...]]:
    doc = check.mapping("vcmon", raw) or {}
    check.unknown("vcmon", doc, ("roles", "tokens"))
    roles: dict[str, Role] = {}
    for name, value in (check.mapping("vcmon.roles", doc.get("roles")) or {}).items():
        role = _role(check, f"vcmon.roles.{name}", value)
        if role is not None:
            roles[name] = role
    raw_tokens = doc.get("tokens") or []
    if not isinstance(raw_tokens, list):
        check.fail("vcmon.tokens", "expected a list of {name, role, sha256 | file | env}")
        return roles, ()
    tokens: list[Token] = []
    for i, item in enumerate(raw_tokens):
        token = _token(check, f"vcmon.tokens[{i}]", item, env)
        if token is not None:
            if any(t.name == token.name for t in tokens):
                check.fail(f"vcmon.tokens[{i}].name", f"{token.name!r} is named twice")
            tokens.append(token)
    return roles, tuple(tokens)


def _role(check: _Checker, where: str, value: object) -> Role | None:
    if value not in ("read", "write"):
        check.fail(where, "expected read or write")
        return None
    return Role.WRITE if value == "write" else Role.READ


def _token(check: _Checker, where: str, item: object, env: Mapping[str, str]) -> Token | None:
    doc = check.mapping(where, item)
    if doc is None:
        return None
    check.unknown(where, doc, ("name", "role", "sha256", "file", "env"))
    name = check.text(f"{where}.name", doc.get("name"), "a name (recorded as created_by and by)")
    role = _role(check, f"{where}.role", doc.get("role"))
    sources = [k for k in ("sha256", "file", "env") if doc.get(k) is not None]
    if len(sources) != 1:
        check.fail(where, "expected exactly one of sha256 (of the token), file or env")
        return None
    digest: bytes | None = None
    if "sha256" in sources:
        value = doc["sha256"]
        if isinstance(value, str) and len(value) == 64:
            try:
                digest = bytes.fromhex(value)
            except ValueError:
                digest = None
        if digest is None:
            check.fail(f"{where}.sha256", "expected 64 hex digits, the sha256 of the token "
                                          "(`printf %s TOKEN | sha256sum`)")  # fmt: skip
    else:
        text = _token_text(check, where, sources[0], doc[sources[0]], env)
        if text is not None:
            digest = hashlib.sha256(text.encode("utf-8")).digest()
    if name is None or role is None or digest is None:
        return None
    return Token(name, digest, role)


def _token_text(
    check: _Checker, where: str, source: str, value: object, env: Mapping[str, str]
) -> str | None:
    if source == "file":
        path = check.file(f"{where}.file", value)
        if path is None:
            return None
        try:
            text = path.read_bytes()[: MAX_FILE + 1].decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            check.fail(f"{where}.file", f"{path}: cannot read the token: {_reason(exc)}")
            return None
    else:
        var = check.text(f"{where}.env", value, "the name of an environment variable")
        if var is None:
            return None
        text = env.get(var, "").strip()
        if not text:
            check.fail(f"{where}.env", f"${var} is not set")
            return None
    # Never echo the token: only its length is described.
    if len(text) < MIN_TOKEN or not text.isprintable() or any(c.isspace() for c in text):
        check.fail(f"{where}.{source}", f"expected a token of at least {MIN_TOKEN} printable "
                                        "characters without spaces")  # fmt: skip
        return None
    return text


def _printable(text: str) -> bool:
    return text.isprintable()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# --- rate limits --------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key (client address or name): ``burst`` at once, refilled at
    ``rate`` per second. At most ``max_keys`` buckets are kept, the least recently used go."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float], max_keys: int = 4096
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (level, at)

    def _level(self, key: str) -> float:
        level, at = self._buckets.get(key, (self.burst, self._clock()))
        return min(self.burst, level + (self._clock() - at) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may go again (0 when it may go now); takes nothing."""
        level = self._level(key)
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def take(self, key: str) -> float:
        """Take one for ``key``: 0 when allowed, else the seconds to wait (nothing taken)."""
        level = self._level(key)
        if level < 1.0:
            return (1.0 - level) / self.rate
        self._buckets[key] = (level - 1.0, self._clock())
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return 0.0


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# --- checking requests --------------------------------------------------------------------------


class Authenticator:
    """Checks a request's credentials against one web config: Basic (bcrypt, in a thread, its
    successes cached by a keyed hash), Bearer (sha256, constant time), else the verified client
    certificate's CN. Failed attempts are limited per client address."""

    def __init__(self, web: WebConfig, clock: Callable[[], float]) -> None:
        self.web = web
        self.failures = RateLimiter(FAILURE_RATE, FAILURE_BURST, clock)
        self._key = secrets.token_bytes(32)  # per process: the cache holds no plain digest
        self._cache: OrderedDict[bytes, Identity] = OrderedDict()
        self._bcrypt = asyncio.Semaphore(BCRYPT_AT_ONCE)

    async def identify(self, request: Request) -> Identity | Response:
        """The caller's identity, or the response refusing it (401, 429)."""
        header = request.headers.get("authorization", "")
        if not header:
            if request.tls_peer is not None and self.web.tls and self.web.tls.verifies_clients:
                return Identity(request.tls_peer, self.web.role_of(request.tls_peer))
            return unauthorized(request, "credentials required")
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        key = hmac.new(self._key, header.encode("utf-8", "replace"), hashlib.sha256).digest()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        wait = self.failures.wait(request.client)
        if wait > 0:
            return too_many(request, "too many failed logins from this address", wait)
        found: Identity | None = None
        if scheme.lower() == "bearer":
            found = self._bearer(value)
        elif scheme.lower() == "basic":
            found = await self._basic(value)
        if found is None:
            self.failures.take(request.client)
            event(log, logging.WARNING, "http_auth_failed", client=request.client,
                  scheme=scheme.lower()[:16], path=request.path[:200])  # fmt: skip
            return unauthorized(request, "wrong credentials")
        self._cache[key] = found
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return found

    def _bearer(self, token: str) -> Identity | None:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        found = None
        for t in self.web.tokens:  # every one compared, so the time says nothing of which
            if hmac.compare_digest(digest, t.digest):
                found = Identity(t.name, t.role)
        return found

    async def _basic(self, value: str) -> Identity | None:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        hashed = self.web.users.get(user)
        async with self._bcrypt:
            ok = await asyncio.to_thread(
                bcrypt.checkpw, password.encode("utf-8"), hashed or _dummy_hash()
            )
        if not ok or hashed is None:
            return None
        return Identity(user, self.web.role_of(user))


def _error(request: Request, status: int, message: str,
           headers: tuple[tuple[str, str], ...] = ()) -> Response:  # fmt: skip
    if request.path.startswith("/api/"):
        body = json.dumps({"error": message}, ensure_ascii=False).encode()
        return Response(status, body, "application/json; charset=utf-8", headers)
    return Response(status, f"{message}\n".encode(), headers=headers)


def unauthorized(request: Request, message: str) -> Response:
    """401 asking for Basic credentials (a Bearer token works too)."""
    return _error(request, 401, message, (("WWW-Authenticate", REALM),))


def too_many(request: Request, message: str, wait: float) -> Response:
    """429 with Retry-After."""
    return _error(request, 429, f"{message}; retry in {retry_after(wait)} s",
                  (("Retry-After", retry_after(wait)),))  # fmt: skip


def is_loopback(host: str) -> bool:
    """True for a listen host only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Access:
    """The rule every request passes before its handler: open, read or write, decided by the
    web config (re-read when its file changes) or, without one, by where vcmon listens."""

    def __init__(
        self,
        web: WebConfig | None,
        listen: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from vcmon.http.api import split_listen

        self.listen = listen
        self.loopback = is_loopback(split_listen(listen)[0])
        self._clock = clock
        self.writes = RateLimiter(WRITE_RATE, WRITE_BURST, clock)
        self._auth = Authenticator(web, clock) if web is not None else None
        self.web = web
        self._stamp = _stamp(web.source) if web is not None else None
        self._looked_at = clock()

    async def admit(self, request: Request, need: Need) -> Identity | Response:
        """Who the request comes from when it may go on, else the refusal to send."""
        if need is Need.OPEN:
            return ANONYMOUS_WRITER
        self._maybe_reload()
        web = self.web
        if web is None or self._auth is None or not web.authenticates:
            who = ANONYMOUS_WRITER
            if need is Need.WRITE and not self.loopback:
                return _error(request, 403, f"writes are refused: vcmon listens on {self.listen} "
                              f"without authentication; set {SETTING} (basic_auth_users or "
                              "vcmon.tokens with role write) to allow them")  # fmt: skip
        else:
            found = await self._auth.identify(request)
            if isinstance(found, Response):
                return found
            who = found
            if who.role < need:
                return _error(request, 403, f"{who.name} may only read; writing needs role "
                                            f"write (vcmon.roles in {SETTING})")  # fmt: skip
        if need is Need.WRITE:
            wait = self.writes.take(who.name or request.client)
            if wait > 0:
                return too_many(request, "too many writes", wait)
        return who

    def headers(self) -> tuple[tuple[str, str], ...]:
        """Headers the web config adds to every response."""
        return self.web.headers if self.web is not None else ()

    def _maybe_reload(self) -> None:
        if self.web is None or self._clock() - self._looked_at < RELOAD_EVERY:
            return
        self._looked_at = self._clock()
        stamp = _stamp(self.web.source)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            new = load_web_config(self.web.source)
        except ConfigError as exc:
            # Like a bad main config on SIGHUP: the running rules stay.
            event(log, logging.ERROR, "web_config_reload_failed", error=str(exc))
            return
        if new.tls != self.web.tls:
            event(log, logging.WARNING, "web_config_reload_partial",
                  unchanged_until_restart="tls_server_config")  # fmt: skip
            new = WebConfig(new.source, self.web.tls, new.users, new.roles, new.tokens,
                            new.headers)  # fmt: skip
        self.web = new
        self._auth = Authenticator(new, self._clock)
        event(log, logging.INFO, "web_config_reloaded", users=len(new.users),
              tokens=len(new.tokens))  # fmt: skip


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def summary(config: Config, web: WebConfig | None) -> Iterator[str]:
    """Lines for `vcmon check`: what the web config allows, or the warning when writes are
    refused for want of one."""
    from vcmon.http.api import split_listen

    host = split_listen(config.listen)[0]
    if web is not None:
        tls = "TLS" if web.tls else "no TLS"
        if web.tls and web.tls.verifies_clients:
            tls += f" ({web.tls.client_auth_type})"
        yield (f"web config: {web.source}: {len(web.users)} basic-auth users, "
               f"{len(web.tokens)} tokens, {tls}")  # fmt: skip
    if (web is None or not web.authenticates) and not is_loopback(host):
        yield (f"warning: listen {config.listen} is not loopback and no authentication is "
               f"configured: the API refuses writes (silences, acks) until {SETTING} sets "
               "basic_auth_users or vcmon.tokens")  # fmt: skip
