"""Structured logging: one line per event, ``event key=value …`` (logfmt) or JSON."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Final
from urllib.parse import urlsplit

_FIELDS = "vcmon_fields"
# Libraries that log every request's URL at INFO: a chat webhook's URL is its credential
# (Telegram's bot token, Slack's and Mattermost's hook path, user:password@).
QUIET_LOGGERS: Final = ("httpx", "httpcore")
# How much of a URL's first path segment may show: a short leading word (hooks, services,
# bot), not a token; a longer run of letters may be one, so none of it shows.
_WORD = re.compile(r"[A-Za-z][A-Za-z_-]{0,11}(?![A-Za-z_-])")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``url`` safe for a log or an error (config errors use it too): scheme://host[:port] and
    at most a leading word of the first path segment; user info, the rest of the path, query
    and fragment become ***
    (``https://api.telegram.org/bot123:AA…/sendMessage`` → ``https://api.telegram.org/bot***``)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    if ":" in host:
        host = f"[{host}]"
    head = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    path = parts.path.lstrip("/")
    first = path.split("/", 1)[0]
    word = _WORD.match(first)
    shown = word.group() if word is not None else ""
    rest = path[len(shown) :] or parts.query or parts.fragment
    if not shown:
        return head + ("/***" if rest else "")
    if not rest:
        return f"{head}/{shown}"
    if shown == first:  # the whole segment shows; what follows it does not
        return f"{head}/{shown}{'/' if rest.startswith('/') else '?'}***"
    return f"{head}/{shown}***"


def redact_urls(text: str) -> str:
    """``text`` with every URL in it redacted (an exception's message, a receiver's answer)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one event with structured fields."""
    logger.log(level, name, extra={_FIELDS: fields})


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


class LogfmtFormatter(logging.Formatter):
    """``ts=… level=… logger=… event=… key=value`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info and record.levelno >= logging.ERROR:
            # Only unexpected failures carry a traceback; expected ones are plain events.
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(getattr(record, _FIELDS, {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup(level: str = "info", fmt: str = "logfmt") -> None:
    """Send vcmon's logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:  # whatever the level asked: their INFO lines carry URLs
        logging.getLogger(name).setLevel(logging.WARNING)
