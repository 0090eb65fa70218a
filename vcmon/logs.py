"""Structured logging: one line per event, ``event key=value …`` (logfmt) or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "vcmon_fields"


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
