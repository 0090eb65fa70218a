"""Secrets: never in an error. Which values are secret, scrubbing them from messages, and
reading a secret a setting names (``*_env``, ``*_file``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vcmon.config.problems import Loc
from vcmon.config.source import Source
from vcmon.logs import redact_url

# A value is secret by its field's name (or any enclosing one);
# a URL's user info and path may hold a token, so it is shown as logs show it (redact_url).

_SECRET_NAME: Final = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api_?key|authori[sz]ation|credential|bearer|cookie"
    r"|private_?key|^headers$",
    re.IGNORECASE,
)
_URL_NAME: Final = re.compile(r"(^|_)(url|uri|endpoint_url|webhook)$", re.IGNORECASE)
# Patterns scrubbed from every message whatever field they came from.
_SECRET_PATTERNS: Final = (
    (re.compile(r"\bbot\d{3,}:[A-Za-z0-9_-]{10,}"), "bot***"),  # a Telegram bot token
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_***"),  # a webhook signing secret
    (re.compile(r"(\w+://[^/@\s:'\"]*:)[^@\s/'\"]*@"), r"\1***@"),  # user:password@
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
)
_NOT_SHOWN: Final = "(not shown: it may hold a secret)"


def is_secret_path(loc: Loc) -> bool:
    """Whether the value at ``loc`` is secret: a password, secret, token, header value…

    Settings that only name where a secret is (``*_env``, ``*_file``) are not secret.
    """
    return any(
        isinstance(seg, str)
        and not seg.lower().endswith(("_env", "_file"))
        and _SECRET_NAME.search(seg) is not None
        for seg in loc
    )


def _is_url_path(loc: Loc) -> bool:
    return any(isinstance(seg, str) and _URL_NAME.search(seg) for seg in loc)


def _leaves(data: object, loc: Loc) -> Iterator[tuple[Loc, object]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, (*loc, i))
    else:
        yield loc, data


def secrets_of(source: Source) -> dict[str, str]:
    """Each secret text of ``source`` (as loaded and as written) → what to show instead."""
    out: dict[str, str] = {}
    for loc, value in _leaves(source.data, ()):
        if value is None or isinstance(value, bool):
            continue
        texts = {str(value), source.text.get(loc, "")} - {""}
        if is_secret_path(loc):
            out.update(dict.fromkeys(texts, "***"))
        elif isinstance(value, str) and (_is_url_path(loc) or "@" in value):
            for text in texts:
                shown = redact_url(text)
                if "${" in text or shown == text:
                    continue
                if not _is_url_path(loc):
                    shown = "***"
                elif shown == "***":  # not a URL at all: say why it is hidden
                    shown = _NOT_SHOWN
                out[text] = shown
    return out


def scrub(message: str, secrets: Mapping[str, str]) -> str:
    """``message`` with every secret of ``secrets`` and every token-like text replaced."""
    for secret in sorted(secrets, key=len, reverse=True):
        shown = secrets[secret]
        if len(secret) >= 6:
            message = message.replace(secret, shown)
        else:  # a short one only where it stands alone, not inside other words
            alone = rf"(?<!\w){re.escape(secret)}(?!\w)"
            message = re.sub(alone, shown.replace("\\", "\\\\"), message)
    for pattern, replacement in _SECRET_PATTERNS:
        message = pattern.sub(replacement, message)
    return message


class SecretUnavailable(ValueError):
    """A secret's variable is unset or its file unreadable; says which, never the secret."""


@dataclass(frozen=True, slots=True)
class SecretText:
    """A secret read from where a setting says, and that place for messages."""

    text: str
    where: str  # 'password_env NAME' or 'password_file /path'


def read_secret(
    stem: str, env_name: str | None, file: str | None, environ: Mapping[str, str] | None = None
) -> SecretText | None:
    """The secret that ``{stem}_env`` (a variable) or ``{stem}_file`` (a file, without its
    trailing line break) names, read now; None when neither is set; SecretUnavailable."""
    environ = os.environ if environ is None else environ
    if env_name is not None:
        text = environ.get(env_name)
        if text is None:
            raise SecretUnavailable(f"{stem}_env: environment variable {env_name} is not set")
        return SecretText(text, f"{stem}_env {env_name}")
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SecretUnavailable(f"{stem}_file: cannot read {file}: {reason}") from None
        return SecretText(text.rstrip("\r\n"), f"{stem}_file {file}")
    return None
