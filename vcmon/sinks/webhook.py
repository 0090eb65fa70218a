"""The webhook sink: one signed HTTP POST per event (Standard Webhooks), in vcmon's native
envelope, the Alertmanager webhook v4 body, or a chat message (Telegram, Slack-compatible).

Headers ``webhook-id`` (the event id: receivers dedupe on it), ``webhook-timestamp`` and
``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` under the bytes
of each secret after ``whsec_`` — several secrets give several signatures, so a receiver can
rotate. 2xx is delivered; 408, 429 and 5xx are retried (Retry-After honoured); 410 disables
the target; other 4xx go to the dead letters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import os
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, PrivateAttr, model_validator

from vcmon.alerts.model import rfc3339
from vcmon.alerts.policy import Matchers
from vcmon.sinks.base import Gone, Reject, Retry

if TYPE_CHECKING:
    import httpx

MAX_RETRY_AFTER = 3600.0  # s; a receiver asking for longer gets an hour


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _secret_key(value: str) -> bytes:
    if not value.startswith("whsec_"):
        raise ValueError("expected a secret of the form whsec_<base64>")
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not base64") from None
    if len(key) < 16:
        raise ValueError("expected at least 16 bytes of secret after whsec_")
    return key


def _secrets(value: tuple[str, ...]) -> tuple[str, ...]:
    for secret in value:
        _secret_key(secret)
    return value


class WebhookConfig(BaseModel):
    """``type: webhook``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["webhook"]
    name: str = "webhook"
    url: Annotated[str, AfterValidator(_http_url)]
    match: Matchers = Matchers()
    body: Literal["vcmon", "alertmanager", "telegram", "slack"] = "vcmon"
    secrets: Annotated[tuple[str, ...], AfterValidator(_secrets)] = ()
    secret_env: str | None = None  # or one secret from this environment variable
    secret_file: str | None = None  # or from this file
    chat_id: str | None = None  # Telegram's chat
    timeout: float = 5.0
    verify_tls: bool = True
    ca_file: str | None = None
    headers: Mapping[str, str] = {}

    _keys: tuple[bytes, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _resolve(self) -> WebhookConfig:
        secrets = list(self.secrets)
        if self.secret_env is not None:
            value = os.environ.get(self.secret_env)
            if value is None:
                raise ValueError(f"secret_env: environment variable {self.secret_env} is unset")
            secrets.append(value.strip())
        if self.secret_file is not None:
            try:
                secrets.append(Path(self.secret_file).read_text(encoding="utf-8").strip())
            except OSError as exc:
                raise ValueError(f"secret_file: cannot read {self.secret_file}: {exc}") from None
        self._keys = tuple(_secret_key(s) for s in secrets)
        if self.body == "telegram" and not self.chat_id:
            raise ValueError("body telegram needs chat_id")
        return self

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The HMAC keys, from every source."""
        return self._keys


def sign(keys: tuple[bytes, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
        for k in keys
    )


def verify_signature(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance: float = 300
) -> bool:
    """What a receiver checks: the timestamp is recent and one signature matches ``secret``."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        given = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    (expected,) = sign((_secret_key(secret),), msg_id, timestamp, body).split()
    return any(hmac.compare_digest(expected, g) for g in given)


def body_for(kind: str, event: Mapping[str, Any], now: float, chat_id: str | None = None) -> bytes:
    """The request body of one event in the configured form."""
    status = str(event["status"])
    doc: Any
    if kind == "vcmon":
        doc = {"type": f"vcmon.alert.{status}", "timestamp": rfc3339(now), "data": event}
    elif kind == "alertmanager":
        doc = _alertmanager_v4(event)
    else:
        icon = {"firing": "🔴", "resolved": "✅", "acknowledged": "👀"}.get(status, "•")
        summary, description = str(event.get("summary", "")), str(event.get("description", ""))
        if kind == "telegram":
            text = f"{icon} <b>{html.escape(summary)}</b>\n{html.escape(description)}"
            doc = {"chat_id": chat_id, "text": text, "parse_mode": "HTML"}
        else:  # Slack, Mattermost, Rocket.Chat incoming webhooks
            doc = {"text": f"{icon} *{summary}*\n{description}"}
    return json.dumps(doc, ensure_ascii=False).encode()


def _alertmanager_v4(event: Mapping[str, Any]) -> dict[str, Any]:
    ep = event.get("endpoint") or {}
    labels = {
        "alertname": str(event["kind"]),
        "endpoint": str(ep.get("id", "")),
        "district": str(ep.get("district", "")),
        "level": str(ep.get("level", "")),
        "severity": str(event["severity"]),
        "instance": str(event.get("instance", "")),
    }
    resolved = event["status"] == "resolved"
    alert = {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": {
            "summary": event.get("summary", ""),
            "description": event.get("description", ""),
        },
        "startsAt": event["started_at"],
        "endsAt": event.get("ended_at") or "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": hashlib.sha256(str(event["alert_id"]).encode()).hexdigest()[:16],
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alert_id="{event["alert_id"]}"}}',
        "truncatedAlerts": 0,
        "status": alert["status"],
        "receiver": "vcmon",
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"],
        "externalURL": "",
        "alerts": [alert],
    }


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped at an hour."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


class WebhookSink:
    """Posts each event to one URL."""

    def __init__(self, config: WebhookConfig, clock: Callable[[], float] = time.time) -> None:
        self.name = config.name
        self.config = config
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Create the HTTP client (reused for every send)."""
        import httpx  # here, not at the top: a daemon without this sink does not load it

        if self._client is None:
            verify: bool | str = self.config.verify_tls
            if self.config.verify_tls and self.config.ca_file:
                verify = self.config.ca_file
            self._client = httpx.AsyncClient(timeout=self.config.timeout, verify=verify)

    async def send(self, event: Mapping[str, Any]) -> None:
        """POST one event; return on 2xx, raise Retry, Reject or Gone otherwise."""
        import httpx

        await self.start()
        assert self._client is not None
        now = self._clock()
        body = body_for(self.config.body, event, now, self.config.chat_id)
        headers = {**self.config.headers, "content-type": "application/json",
                   "webhook-id": str(event["id"]), "webhook-timestamp": str(int(now))}  # fmt: skip
        if self.config.keys:
            headers["webhook-signature"] = sign(self.config.keys, str(event["id"]), int(now), body)
        try:
            resp = await self._client.post(self.config.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise Retry("timeout", str(exc)) from None
        except httpx.ConnectError as exc:
            reason = "tls" if "SSL" in str(exc) or "certificate" in str(exc) else "connect"
            raise Retry(reason, str(exc)) from None
        except httpx.HTTPError as exc:
            raise Retry("connect", str(exc)) from None
        code = resp.status_code
        if 200 <= code < 300:
            return
        detail = resp.text[:200]
        if code == 410:
            raise Gone("http_410", detail)
        if code in (408, 429) or code >= 500:
            raise Retry(f"http_{code}", detail, after=retry_after(resp.headers.get("retry-after")))
        raise Reject(f"http_{code}", detail)

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
