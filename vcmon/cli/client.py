"""Talking to a running daemon's API from the command line: where it is (-c or --url), the
credentials to send, one request at a time.

Credentials never come from argv alone: $VCMON_TOKEN, or $VCMON_USER and $VCMON_PASSWORD, or
a file (--credentials-file / $VCMON_CREDENTIALS_FILE) holding ``user:password`` or a token.
An https daemon's CA: --ca-file / $VCMON_CA_FILE."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vcmon.cli.output import EXIT_FAILURE, EXIT_USAGE

if TYPE_CHECKING:
    import httpx

DEFAULT_CONFIG: Final = "config/vcmon.yaml"
TIMEOUT: Final = 5.0  # s; the daemon answers from memory, so longer means it is not there


class CommandError(Exception):
    """A failure to print as one line and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# --- arguments ----------------------------------------------------------------------------------


def add_daemon_options(p: argparse.ArgumentParser) -> None:
    """-c/--config (its ``listen``) or --url: where the daemon is."""
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        help=f"config file of the daemon, for its listen address ({DEFAULT_CONFIG})",
    )
    where.add_argument("--url", help="the daemon's base URL, e.g. http://127.0.0.1:9231")
    p.add_argument(
        "--credentials-file",
        metavar="FILE",
        help="a file holding user:password or a token ($VCMON_CREDENTIALS_FILE; else "
        "$VCMON_TOKEN, or $VCMON_USER and $VCMON_PASSWORD)",
    )
    p.add_argument(
        "--ca-file", metavar="FILE", help="CA of an https daemon's certificate ($VCMON_CA_FILE)"
    )


# --- requests ----------------------------------------------------------------------


def daemon_url(args: argparse.Namespace) -> str:
    """The daemon's base URL: --url, else http:// and the config's ``listen``."""
    if args.url:
        url = str(args.url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise CommandError(f"--url {args.url}: expected http://HOST:PORT", EXIT_USAGE)
        return url
    from vcmon.config import ConfigError, load_config
    from vcmon.http.api import split_listen

    if args.config == DEFAULT_CONFIG and not Path(DEFAULT_CONFIG).exists():
        raise CommandError(
            f"no {DEFAULT_CONFIG} here; give the daemon's config with -c or its address with --url",
            EXIT_USAGE,
        )
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    host, port = split_listen(config.listen)
    # A daemon listening on every address is reached on loopback.
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    scheme = "https" if _web_tls(config) else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _web_tls(config: Any) -> bool:
    from vcmon.config import ConfigError
    from vcmon.http.auth import load_for

    try:
        web = load_for(config)
    except ConfigError:
        return False  # the daemon refuses it too; plain http will say it is not there
    return web is not None and web.tls is not None


@dataclass(frozen=True, slots=True)
class Credentials:
    """How this command proves who it is: an Authorization header value, or nothing."""

    authorization: str | None = None
    ca_file: str | None = None

    @property
    def present(self) -> bool:
        """True when credentials were given."""
        return self.authorization is not None


def credentials(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Credentials:
    """Credentials from --credentials-file / $VCMON_CREDENTIALS_FILE, $VCMON_TOKEN, or
    $VCMON_USER and $VCMON_PASSWORD (in this order); never from the command line itself."""
    import base64

    env = os.environ if env is None else env
    ca_file = getattr(args, "ca_file", None) or env.get("VCMON_CA_FILE") or None
    path = getattr(args, "credentials_file", None) or env.get("VCMON_CREDENTIALS_FILE")
    secret: str | None = None
    if path:
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise CommandError(f"credentials file {path}: {why}", EXIT_USAGE) from None
        if not secret or "\n" in secret:
            raise CommandError(
                f"credentials file {path}: expected one line, user:password or a token",
                EXIT_USAGE,
            )
    elif env.get("VCMON_TOKEN"):
        secret = env["VCMON_TOKEN"].strip()
    elif env.get("VCMON_USER") or env.get("VCMON_PASSWORD"):
        if not (env.get("VCMON_USER") and env.get("VCMON_PASSWORD")):
            raise CommandError("set both VCMON_USER and VCMON_PASSWORD", EXIT_USAGE)
        secret = f"{env['VCMON_USER']}:{env['VCMON_PASSWORD']}"
    if secret is None:
        return Credentials(None, ca_file)
    if ":" in secret:
        basic = base64.b64encode(secret.encode("utf-8")).decode("ascii")
        return Credentials(f"Basic {basic}", ca_file)
    return Credentials(f"Bearer {secret}", ca_file)


def call(
    url: str, method: str, path: str, body: Any = None, creds: Credentials | None = None
) -> dict[str, Any]:
    """One API request; CommandError when the daemon is not there or refuses."""
    import ssl

    import httpx  # not at the top: the other commands would pay for loading it

    creds = creds or Credentials()
    headers = {"Authorization": creds.authorization} if creds.authorization else {}
    verify: ssl.SSLContext | bool = True
    if creds.ca_file:
        try:
            verify = ssl.create_default_context(cafile=creds.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(f"--ca-file {creds.ca_file}: {exc}", EXIT_USAGE) from None
    try:
        with httpx.Client(timeout=TIMEOUT, verify=verify) as http:
            resp = http.request(method, url + path, json=body, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise CommandError(
            f"cannot reach vcmon at {url}: {exc or type(exc).__name__}; is the daemon running?"
        ) from None
    doc = _json_of(resp)
    if resp.status_code >= 400:
        error = doc.get("error") if doc is not None else None
        if resp.status_code == 401:
            how = "VCMON_TOKEN, or VCMON_USER and VCMON_PASSWORD, or --credentials-file"
            error = f"vcmon at {url} wants credentials ({error or 'refused'}): set {how}"
        # A 400 is the command's input (a bad regex, a comment of spaces): a usage error.
        code = EXIT_USAGE if resp.status_code == 400 else EXIT_FAILURE
        raise CommandError(str(error or f"{url}{path} answered HTTP {resp.status_code}"), code)
    if doc is None:
        raise CommandError(f"{url}{path} did not answer JSON; is this vcmon's address?")
    return doc


def _json_of(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        doc = resp.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
