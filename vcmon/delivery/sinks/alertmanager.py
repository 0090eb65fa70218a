"""The Alertmanager sink: ``POST /api/v2/alerts``, so a fleet of vcmon instances shares
Alertmanager's grouping, silences, inhibition and HA.

Alertmanager forgets an alert that is not sent again within its ``resolve_timeout`` (5 min by
default), so firing alerts are re-posted every ``repost_interval``; a resolve is sent with
``endsAt``. What is firing is rebuilt from the event log when the daemon starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from vcmon.config.alerts import Matchers
from vcmon.config.fields import PositiveSeconds
from vcmon.delivery.sinks.base import Maintained, Reject, Retry, Seedable, Sink
from vcmon.logs import event as log_event
from vcmon.logs import redact_urls

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


class AlertmanagerConfig(BaseModel):
    """``type: alertmanager``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["alertmanager"]
    name: str = "alertmanager"
    url: Annotated[str, AfterValidator(_http_url)]  # e.g. http://127.0.0.1:9093
    match: Matchers = Matchers()
    timeout: PositiveSeconds = 5.0
    # Below Alertmanager's resolve_timeout (5 min), or it resolves what still fires.
    repost_interval: PositiveSeconds = 60.0
    verify_tls: bool = True
    ca_file: str | None = None
    generator_url: str = ""  # where a human sees the alert, e.g. vcmon's /api/v1/alerts


def am_labels(event: Mapping[str, Any], *, alert_id: bool) -> dict[str, str]:
    """The one mapping of an event to Alertmanager labels (this sink's posts and the webhook's
    ``alertmanager`` body); with ``alert_id``, the label that keeps two alerts of the same
    endpoint and kind apart in Alertmanager. An empty label is no label there: left out."""
    ep = event.get("endpoint") or {}
    values = {
        "alertname": event.get("kind"),
        "alert_id": event.get("alert_id") if alert_id else None,
        "endpoint": ep.get("id"),
        "district": ep.get("district"),
        "level": ep.get("level"),
        "severity": event.get("severity"),
        "instance": event.get("instance"),
    }
    return {k: str(v) for k, v in values.items() if v is not None and str(v) != ""}


def am_annotations(event: Mapping[str, Any]) -> dict[str, str]:
    """An event's words as Alertmanager annotations."""
    return {
        "summary": str(event.get("summary") or ""),
        "description": str(event.get("description") or ""),
    }


def fingerprint(alert_id: str) -> str:
    """16 hex digits, stable for the alert's life (Alertmanager's fingerprint has this form)."""
    return hashlib.sha256(alert_id.encode("utf-8")).hexdigest()[:16]


def alert_body(event: Mapping[str, Any], generator_url: str = "") -> dict[str, Any]:
    """One event as an Alertmanager v2 postable alert."""
    body: dict[str, Any] = {
        "labels": am_labels(event, alert_id=True),
        "annotations": am_annotations(event) | {"affected": ",".join(event.get("affected") or ())},
        "startsAt": event["started_at"],
    }
    if event["status"] == "resolved" and event.get("ended_at"):
        body["endsAt"] = event["ended_at"]
    if generator_url:
        body["generatorURL"] = generator_url
    return body


class AlertmanagerSink(Sink, Seedable, Maintained):
    """Posts events to one Alertmanager and keeps what fires posted."""

    def __init__(self, config: AlertmanagerConfig) -> None:
        self.name = config.name
        self.config = config
        self._client: httpx.AsyncClient | None = None
        self.firing: dict[str, dict[str, Any]] = {}  # alert_id → its postable alert
        # One post at a time: a re-post in flight must not land after the resolve it predates.
        self._lock = asyncio.Lock()

    def seed(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Adopt the firing alerts of the event log (the newest firing event of each)."""
        for ev in events:
            if ev["status"] == "firing":
                self.firing[str(ev["alert_id"])] = alert_body(ev, self.config.generator_url)

    async def start(self) -> None:
        """Create the HTTP client."""
        import httpx  # here, not at the top: a daemon without this sink does not load it

        if self._client is None:
            verify: bool | str = self.config.verify_tls
            if self.config.verify_tls and self.config.ca_file:
                verify = self.config.ca_file
            self._client = httpx.AsyncClient(timeout=self.config.timeout, verify=verify)

    async def _post(self, alerts: list[dict[str, Any]]) -> None:
        import httpx

        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            resp = await self._client.post(f"{self.config.url}/api/v2/alerts", json=alerts)
        except httpx.TimeoutException as exc:
            raise Retry("timeout", redact_urls(str(exc))) from None
        except httpx.HTTPError as exc:  # its message may quote the URL, user info and all
            raise Retry("connect", redact_urls(str(exc))) from None
        if resp.status_code < 300:
            return
        detail = redact_urls(resp.text[:200])
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise Retry(f"http_{resp.status_code}", detail)
        raise Reject(f"http_{resp.status_code}", detail)

    async def send(self, event: Mapping[str, Any]) -> None:
        """Post one event; firing alerts are remembered for re-posting."""
        if event["status"] == "acknowledged":
            return  # Alertmanager has no acknowledgement; its silences play that part
        body = alert_body(event, self.config.generator_url)
        async with self._lock:
            await self._post([body])
            alert_id = str(event["alert_id"])
            if event["status"] == "firing":
                self.firing[alert_id] = body
            else:
                self.firing.pop(alert_id, None)

    async def maintain(self) -> None:
        """Re-post what fires every ``repost_interval`` seconds, until cancelled."""
        failing = False
        while True:
            await asyncio.sleep(self.config.repost_interval)  # a cadence
            try:
                async with self._lock:
                    if self.firing:
                        await self._post(list(self.firing.values()))
            except (Retry, Reject) as exc:
                if not failing:  # once per failing run
                    log_event(log, logging.WARNING, "alertmanager_repost_failed",
                              sink=self.name, reason=exc.reason)  # fmt: skip
                failing = True
            else:
                failing = False

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
