"""`vcmon silence add|list|expire` and `vcmon alerts list|ack`: the daemon's alerts API from the
command line. Asking and shaping is here; drawing is cli.py's (the only rich user).

Credentials never come from argv alone: $VCMON_TOKEN, or $VCMON_USER and $VCMON_PASSWORD, or
a file (--credentials-file / $VCMON_CREDENTIALS_FILE) holding ``user:password`` or a token.
An https daemon's CA: --ca-file / $VCMON_CA_FILE."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import httpx

EXIT_FAILURE, EXIT_USAGE = 1, 2
DEFAULT_CONFIG: Final = "config/vcmon.yaml"
TIMEOUT: Final = 5.0  # s; the daemon answers from memory, so longer means it is not there
MATCHER_FIELDS: Final = ("endpoint", "district", "level", "kind", "severity")
_SEVERITY_STYLE: Final = {"critical": "bold red", "warning": "yellow"}


class CommandError(Exception):
    """A failure to print as one line and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Cell:
    """One table cell; ``style`` is a rich style name, empty for plain."""

    text: str
    style: str = ""


@dataclass(frozen=True, slots=True)
class Grid:
    """A table for cli.py to draw."""

    title: str
    columns: tuple[str, ...]
    rows: Sequence[tuple[Cell, ...]]


Output = str | Grid  # a line (an id, a JSON document) or a table
Command = Callable[[argparse.Namespace], Output]


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


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    alerts_sub: argparse._SubParsersAction[argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """Add `silence …` to ``sub`` and `list` to the `alerts` subcommands; each runs through
    ``handler``, which calls ``args.run`` and draws what it returns."""
    al_list = alerts_sub.add_parser(
        "list", help="open alerts of a running daemon, or those that ended (--ended)"
    )
    add_daemon_options(al_list)
    al_list.add_argument(
        "--ended", action="store_true", help="alerts that ended instead: what happened lately"
    )
    al_list.add_argument(
        "--since",
        default="24h",
        help="with --ended: how far back, e.g. 12h, 7d (default 24h; at most 30d)",
    )
    al_list.add_argument("--json", action="store_true", help="the API's JSON")
    al_list.set_defaults(func=handler, run=alerts_list)

    al_ack = alerts_sub.add_parser("ack", help="acknowledge an open alert (`vcmon alerts list`)")
    add_daemon_options(al_ack)
    al_ack.add_argument("alert_id", help="the alert's id (`vcmon alerts list --json`)")
    al_ack.add_argument("--comment", default="", help="what is being done (shown to everyone)")
    al_ack.add_argument("--duration", help="for how long: 90s, 15m, 2h, 1d (default: while open)")
    al_ack.add_argument("--author", help="who, on a daemon without authentication ($USER)")
    al_ack.set_defaults(func=handler, run=alerts_ack)

    sil = sub.add_parser("silence", help="mute alerts for a while (through the daemon's API)")
    sil_sub = sil.add_subparsers(dest="silence_command", required=True)
    add = sil_sub.add_parser("add", help="create a silence; prints its id")
    add_daemon_options(add)
    for name in MATCHER_FIELDS:
        add.add_argument(f"--{name}", help=f"match this {name} (exact, or ~regex: full match)")
    add.add_argument(
        "--label", action="append", default=[], metavar="NAME=VALUE", help="match a label"
    )
    add.add_argument("--duration", required=True, help="how long: 90s, 15m, 2h, 1d, 1h30m")
    add.add_argument("--comment", required=True, help="why (shown to everyone)")
    add.add_argument("--author", help="who, on a daemon without authentication ($USER)")
    add.set_defaults(func=handler, run=silence_add)

    ls = sil_sub.add_parser("list", help="silences in force (--expired: also ended ones)")
    add_daemon_options(ls)
    ls.add_argument("--expired", action="store_true", help="also those that ended")
    ls.add_argument("--json", action="store_true", help="the API's JSON")
    ls.set_defaults(func=handler, run=silence_list)

    expire = sil_sub.add_parser("expire", help="end a silence now")
    add_daemon_options(expire)
    expire.add_argument("id", help="the silence's id (`vcmon silence list`)")
    expire.set_defaults(func=handler, run=silence_expire)


# --- talking to the daemon ----------------------------------------------------------------------


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


# --- the commands -------------------------------------------------------------------------------


def silence_add(args: argparse.Namespace) -> Output:
    """Create a silence; its id."""
    from vcmon.http.api import BadInput, parse_duration

    matchers: dict[str, Any] = {
        name: getattr(args, name) for name in MATCHER_FIELDS if getattr(args, name) is not None
    }
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--label {item}: expected NAME=VALUE", EXIT_USAGE)
        labels[key] = value
    if labels:
        matchers["labels"] = labels
    if not matchers:
        raise CommandError(
            "a silence must match something: give --endpoint, --district, --level, --kind, "
            "--severity or --label",
            EXIT_USAGE,
        )
    try:
        parse_duration(args.duration)  # checked here too, so a typo needs no daemon to show
    except BadInput as exc:
        raise CommandError(f"--{exc}", EXIT_USAGE) from None
    creds = credentials(args)
    body = {"matchers": matchers, "duration": args.duration, "comment": args.comment}
    author = _author(args, creds)
    if author is not None:
        body["created_by"] = author
    doc = call(daemon_url(args), "POST", "/api/v1/silences", body, creds)
    return str(doc["id"])


def _author(args: argparse.Namespace, creds: Credentials) -> str | None:
    """The name to send: --author, else (without credentials) $USER. With credentials the
    daemon records the authenticated name, so none is sent unless --author asks."""
    if args.author:
        return str(args.author)
    if creds.present:
        return None
    return os.environ.get("USER") or "unknown"


def silence_expire(args: argparse.Namespace) -> Output:
    """End a silence now."""
    from urllib.parse import quote

    path = f"/api/v1/silences/{quote(args.id, safe='')}"
    doc = call(daemon_url(args), "DELETE", path, creds=credentials(args))
    return f"silence {doc['id']} expired"


def alerts_ack(args: argparse.Namespace) -> Output:
    """Acknowledge an open alert."""
    from urllib.parse import quote

    from vcmon.http.api import BadInput, parse_duration

    body: dict[str, Any] = {"comment": args.comment}
    if args.duration is not None:
        try:
            parse_duration(args.duration)
        except BadInput as exc:
            raise CommandError(f"--{exc}", EXIT_USAGE) from None
        body["duration"] = args.duration
    creds = credentials(args)
    author = _author(args, creds)
    if author is not None:
        body["by"] = author
    path = f"/api/v1/alerts/{quote(args.alert_id, safe='')}/ack"
    doc = call(daemon_url(args), "POST", path, body, creds)
    return f"alert {doc['alert_id']} acknowledged by {doc['acknowledged']['by']}"


def silence_list(args: argparse.Namespace, now: float | None = None) -> Output:
    """Silences in force (and ended ones with --expired), as a table or the API's JSON."""
    path = "/api/v1/silences" + ("?expired=1" if args.expired else "")
    doc = call(daemon_url(args), "GET", path, creds=credentials(args))
    if args.json:
        return json.dumps(doc, ensure_ascii=False, indent=2)
    now = _now() if now is None else now
    silences = sorted(doc["silences"], key=lambda s: (not s["active"], s["ends_at"]))
    rows = [
        (
            Cell(s["id"]),
            Cell(matchers_text(s["matchers"])),
            _ends(s, now),
            Cell(s["created_by"]),
            Cell(s["comment"]),
        )
        for s in silences
    ]
    which = " (with those that ended)" if args.expired else " in force"
    return Grid(
        _count(len(rows), "silence", which), ("id", "matchers", "ends in", "by", "comment"), rows
    )


def alerts_list(args: argparse.Namespace, now: float | None = None) -> Output:
    """Open alerts, critical first, as a table or the API's JSON; with ``--ended``, the
    alerts that ended, the latest first."""
    from urllib.parse import quote

    path = "/api/v1/alerts"
    if args.ended:
        path += f"?state=ended&since={quote(args.since, safe='')}"
    doc = call(daemon_url(args), "GET", path, creds=credentials(args))
    if args.json:
        return json.dumps(doc, ensure_ascii=False, indent=2)
    now = _now() if now is None else now
    if args.ended:
        return _ended_grid(doc["alerts"], args.since, now)
    alerts = sorted(doc["alerts"], key=lambda a: (a["severity"] != "critical", a["started_at"]))
    rows = [
        (
            Cell(a["severity"], _SEVERITY_STYLE.get(a["severity"], "")),
            Cell(a["kind"]),
            Cell(a["endpoint"]["id"]),
            Cell(a["endpoint"]["district"]),
            Cell(_since(_parse_time(a["started_at"]), now)),
            Cell(str(len(a["affected"])) if a["affected"] else ""),
            Cell(a["suppressed_by"] or "", "dim"),
        )
        for a in alerts
    ]
    columns = ("severity", "kind", "endpoint", "district", "since", "affected", "held back by")
    return Grid(_count(len(rows), "open alert"), columns, rows)


def _ended_grid(alerts: list[dict[str, Any]], since: str, now: float) -> Grid:
    rows = []
    for a in alerts:
        started, ended = _parse_time(a["started_at"]), _parse_time(a["ended_at"])
        rows.append(
            (
                Cell(a["severity"], _SEVERITY_STYLE.get(a["severity"], "")),
                Cell(a["kind"]),
                Cell(a["endpoint"]["id"]),
                Cell(a["endpoint"]["district"]),
                Cell(_since(started, now)),
                Cell(span(ended - started)),
                Cell(str(len(a["affected"])) if a["affected"] else ""),
            )
        )
    columns = ("severity", "kind", "endpoint", "district", "started", "lasted", "affected")
    return Grid(_count(len(rows), "alert", f" ended in the last {since}"), columns, rows)


# --- shaping ------------------------------------------------------------------------------------


def matchers_text(matchers: dict[str, Any]) -> str:
    """``district="Cô Tô" kind=~loss.*``: exact values quoted, regular expressions after =~."""
    pairs = [(k, matchers[k]) for k in MATCHER_FIELDS if matchers.get(k) is not None]
    pairs += sorted((matchers.get("labels") or {}).items())
    return " ".join(
        f"{k}={v}" if v.startswith("~") else f"{k}={json.dumps(v, ensure_ascii=False)}"
        for k, v in pairs
    )


def span(seconds: float) -> str:
    """A length of time in its two largest units: '45s', '5m', '1h 59m', '2d 3h'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "m")]
    while parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n}{unit}" for n, unit in parts[:2] if n)


def _ends(silence: dict[str, Any], now: float) -> Cell:
    # Whether it is in force is the daemon's word; only the spans use this host's clock.
    if silence["starts_at"] is None or silence["ends_at"] is None:
        return Cell("?", "dim")  # a time no calendar holds, stored before the API checked
    starts, ends = _parse_time(silence["starts_at"]), _parse_time(silence["ends_at"])
    if silence["active"]:
        return Cell(span(ends - now))
    if starts > now:
        return Cell(f"{span(ends - now)} (starts in {span(starts - now)})", "yellow")
    return Cell(f"ended {span(now - ends)} ago", "dim")


def _since(started: float, now: float) -> str:
    local = dt.datetime.fromtimestamp(started).astimezone()
    shown = local.strftime("%H:%M" if now - started < 86400 else "%m-%d %H:%M")
    return f"{shown} ({span(now - started)} ago)"


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _count(n: int, noun: str, rest: str = "") -> str:
    return f"{n or 'no'} {noun}{'' if n == 1 else 's'}{rest}"


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()
