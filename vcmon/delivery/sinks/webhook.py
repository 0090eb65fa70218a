"""The webhook sink: one signed HTTP POST per event, as the Standard Webhooks spec has it.

Headers ``webhook-id`` (the event id: receivers dedupe on it), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` keyed
by the bytes after ``whsec_`` of a secret. Several secrets give several space-separated
signatures, so a receiver can move to a new secret while the old one still verifies.

What the receiver answered decides what the outbox does: 2xx delivered; 408, 429, 5xx and
network errors retried (``Retry-After`` honoured); 410 disables the target; other answers go
to the dead letters. The bodies are built in :mod:`vcmon.delivery.sinks.webhook_bodies`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import re
import ssl
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from vcmon import __version__
from vcmon.config.alerts import Matchers
from vcmon.config.fields import PositiveSeconds
from vcmon.config.secrets import SecretUnavailable, read_secret
from vcmon.delivery.grouping import GroupPolicy, Notification, resolve_group
from vcmon.delivery.sinks.base import Gone, GroupSink, Reject, Retry, SinkSetupError
from vcmon.delivery.sinks.webhook_bodies import BodyKind, body_for, group_body_for
from vcmon.logs import redact_urls

if TYPE_CHECKING:
    import httpx

MAX_RETRY_AFTER: Final = 3600.0  # s; a receiver asking for longer is asked again in an hour
SECRET_PREFIX: Final = "whsec_"
MIN_SECRET_BYTES: Final = 16  # below this an HMAC key is guessable; the spec advises 24+
# Bytes of an answer read at most: enough for an error's detail, and a 2xx body is drained so
# the connection can be reused, without letting a receiver stream into memory.
MAX_ANSWER: Final = 64 * 1024
DETAIL_CHARS: Final = 200
# Set by the sink itself; a configured header of the same name would send two.
RESERVED_HEADERS: Final = frozenset(
    {"content-type", "content-length", "host", "webhook-id", "webhook-timestamp",
     "webhook-signature"}
)  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)


class WebhookSetupError(SinkSetupError):
    """A webhook sink cannot be built: its secret or CA file is missing or wrong."""


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError (without the secret) if bad."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"expected a secret of the form {SECRET_PREFIX}<base64>")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {SECRET_PREFIX} is not base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"expected at least {MIN_SECRET_BYTES} bytes of secret after {SECRET_PREFIX}, "
            f"got {len(key)}"
        )
    return key


def _secrets(value: tuple[str, ...]) -> tuple[str, ...]:
    for i, secret in enumerate(value):
        try:
            secret_key(secret)
        except ValueError as exc:
            raise ValueError(f"secrets[{i}]: {exc}") from None
    return value


def _http_url(value: str) -> str:
    problem = f"expected an http:// or https:// URL with a host, got {value!r}"
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(problem)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError(problem) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    return value


def _chat_id(value: object) -> object:
    # YAML reads a numeric chat id (-1001234567890) as a number.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _headers(value: Mapping[str, str]) -> Mapping[str, str]:
    for name, text in value.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"headers: {name} is set by vcmon itself")
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"headers: the value of {name} has a line break")
    return value


class WebhookConfig(BaseModel):
    """``type: webhook``: where to POST, in which body, signed with which secrets."""

    # hide_input_in_errors: a malformed secret must not be echoed in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    type: Literal["webhook"] = "webhook"
    name: str = "webhook"
    url: Annotated[str, AfterValidator(_http_url)]
    match: Matchers = Matchers()
    body: BodyKind = "vcmon"
    # Secrets are kept out of repr(): a config may be logged or shown in a traceback.
    secrets: Annotated[tuple[str, ...], AfterValidator(_secrets)] = Field(default=(), repr=False)
    secret_env: str | None = None  # or the name of an environment variable holding them
    secret_file: str | None = None  # or a file holding them
    chat_id: Annotated[str | None, BeforeValidator(_chat_id)] = None  # body telegram's chat
    timeout: PositiveSeconds = 5.0
    verify_tls: bool = True
    ca_file: str | None = None  # trust this CA (PEM) instead of the system's
    headers: Annotated[Mapping[str, str], AfterValidator(_headers)] = Field(
        default_factory=dict, repr=False
    )
    # Chat bodies (telegram, slack) are read by people and grouped unless `group: false`;
    # the machine bodies (vcmon, alertmanager) get every event unless a group is given.
    group: GroupPolicy | bool | None = None

    def grouping(self) -> GroupPolicy | None:
        """How this sink groups, if at all."""
        return resolve_group(self.group, default=self.body in ("telegram", "slack"))

    @model_validator(mode="after")
    def _consistent(self) -> WebhookConfig:
        given = [k for k in ("secrets", "secret_env", "secret_file") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one of secrets, secret_env, secret_file, not {given}")
        if self.body == "telegram" and not self.chat_id:
            raise ValueError("body telegram needs chat_id")
        if self.chat_id is not None and self.body != "telegram":
            raise ValueError(f"chat_id is for body telegram, not {self.body}")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file has no use with verify_tls: false")
        if not self.name:
            raise ValueError("name: expected a non-empty name")
        return self

    def keys(self) -> tuple[bytes, ...]:
        """The HMAC keys, read now from wherever they are; WebhookSetupError if unusable."""
        if self.secrets:
            return tuple(secret_key(s) for s in self.secrets)
        try:
            found = read_secret("secret", self.secret_env, self.secret_file)
        except SecretUnavailable as exc:
            raise WebhookSetupError(f"webhook {self.name}: {exc}") from None
        if found is None:
            return ()
        where = found.where
        # Whitespace-separated, so a rotation needs no config change: put both in, then one.
        secrets = found.text.split()
        if not secrets:
            raise WebhookSetupError(f"webhook {self.name}: {where} is empty")
        try:
            return tuple(secret_key(s) for s in secrets)
        except ValueError as exc:
            raise WebhookSetupError(f"webhook {self.name}: {where}: {exc}") from None

    def check(self) -> None:
        """Read the secrets and the CA file as the sink will; WebhookSetupError if unusable."""
        self.keys()
        self.tls_context()

    def tls_context(self) -> ssl.SSLContext | Literal[False]:
        """How to check the receiver's certificate; False when not at all."""
        if not self.verify_tls:
            return False
        # The system's store by default (not certifi's): an internal CA installed with
        # update-ca-certificates is then trusted as by every other program on the host.
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise WebhookSetupError(
                f"webhook {self.name}: cannot load ca_file {self.ca_file}: {reason}"
            ) from None


def sign(keys: tuple[bytes, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def verify_signature(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance: float = 300
) -> bool:
    """What a receiver checks: the timestamp is within ``tolerance`` seconds of ``now`` and one
    of the signatures is that of ``secret``. ValueError if ``secret`` itself is malformed."""
    key = secret_key(secret)
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lower["webhook-id"]
        timestamp = int(lower["webhook-timestamp"])
        given = lower["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if not msg_id or abs(now - timestamp) > tolerance:  # a replay of an old request
        return False
    expected = sign((key,), msg_id, timestamp, body).encode()
    # Compared as bytes: compare_digest refuses non-ASCII text, which a sender may put here.
    return any(hmac.compare_digest(expected, g.encode("utf-8", "replace")) for g in given)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), in
    [0, MAX_RETRY_AFTER]; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        seconds = float(int(value))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": the spec's dates are GMT anyway
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - now
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    # httpx wraps httpcore's error, which wraps the ssl module's: look down the chain.
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(exc: BaseException) -> str:
    # An HTTP library's message may quote the URL, and the URL may be the credential.
    return redact_urls(str(exc)) or type(exc).__name__


class WebhookSink(GroupSink):
    """Posts each event to one URL, through one HTTP client kept for the sink's life."""

    def __init__(self, config: WebhookConfig, clock: Callable[[], float] = time.time) -> None:
        """Read the secrets and the CA now, so a missing one fails at start-up, by name."""
        self.name = config.name
        self.config = config
        self._clock = clock
        self._keys = config.keys()
        self._verify = config.tls_context()
        self._body_opts: dict[str, Any] = {}
        if config.body == "alertmanager":
            self._body_opts = {"receiver": config.name}
        elif config.body == "telegram":
            self._body_opts = {"chat_id": config.chat_id}
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Create the HTTP client, once (the outbox calls this again after a failed connect)."""
        import httpx  # here, not at the top: a daemon without this sink does not load it

        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.timeout,
                verify=self._verify,
                follow_redirects=False,  # a redirected POST may lose its body or go elsewhere
                headers={"user-agent": f"vcmon/{__version__}"},
            )

    async def send(self, event: Mapping[str, Any]) -> None:
        """POST one event; return on 2xx, raise Retry, Reject or Gone otherwise."""
        now = self._clock()
        try:
            msg_id = str(event["id"])
            body = body_for(self.config.body, event, now, **self._body_opts)
        except (KeyError, TypeError, ValueError) as exc:
            # Retrying cannot fix an event that lacks what its body needs.
            raise Reject("bad_event", _describe(exc)) from None
        await self._post(msg_id, body, now)

    async def send_group(self, notification: Notification) -> None:
        """POST one grouped notification, as ``send`` does an event."""
        now = self._clock()
        try:
            body = group_body_for(self.config.body, notification, now, **self._body_opts)
        except (KeyError, TypeError, ValueError) as exc:
            raise Reject("bad_event", _describe(exc)) from None
        await self._post(notification.id, body, now)

    async def _post(self, msg_id: str, body: bytes, now: float) -> None:
        import httpx

        if self._client is None:
            await self.start()
        assert self._client is not None
        timestamp = int(now)
        headers = {
            **self.config.headers,
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._keys:
            headers["webhook-signature"] = sign(self._keys, msg_id, timestamp, body)
        request = self._client.build_request("POST", self.config.url, content=body, headers=headers)
        # httpx's timeout is per read; this deadline bounds the whole exchange, so a receiver
        # that trickles its answer cannot hold the sink longer than `timeout` either.
        deadline = asyncio.get_running_loop().time() + self.config.timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except (TimeoutError, httpx.TimeoutException):
            raise Retry("timeout", f"no answer within {self.config.timeout:g} s") from None
        except httpx.HTTPError as exc:
            tls = _tls_failure(exc)
            if tls is not None:
                raise Retry("tls", _describe(tls)) from None
            raise Retry("connect", _describe(exc)) from None
        try:
            code, after = response.status_code, response.headers.get("retry-after")
            answer = b""
            # The status decides; a body cut short must not turn a 2xx into a retry.
            with contextlib.suppress(TimeoutError, httpx.HTTPError):
                async with asyncio.timeout_at(deadline):
                    answer = await _read_some(response, MAX_ANSWER)
        finally:
            await response.aclose()
        if 200 <= code < 300:
            return
        detail = redact_urls(" ".join(answer.decode("utf-8", "replace").split())[:DETAIL_CHARS])
        reason = f"http_{code}"
        if code == 410:
            raise Gone(reason, detail)
        if code in (408, 429) or code >= 500:
            raise Retry(reason, detail, after=retry_after(after, self._clock()))
        raise Reject(reason, detail)

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    # Raw bytes: the answer is only kept for a log line, never decompressed.
    got = bytearray()
    async for chunk in response.aiter_raw():
        got += chunk
        if len(got) >= limit:
            break
    return bytes(got)
