"""No secret in any output: the daemon's whole log and `vcmon check`/`vcmon alerts test` output,
with secrets planted in every place a config holds one (a bot token and a hook path in webhook
URLs, user:password@ in a URL, a webhook signing secret, an MQTT password), checked against a
real daemon delivering to real receivers and a real Mosquitto on loopback."""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import free_port, wait_for
from tests.support.mosquitto import HOST, Mosquitto, missing
from tests.support.receivers import Receiver, receiving
from vcmon import logs
from vcmon.logs import redact_url, redact_urls


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://api.telegram.org/bot123456:AAH-x9_Tok/sendMessage",
            "https://api.telegram.org/bot***",
        ),
        ("https://hooks.slack.com/services/T01/B02/XyZ", "https://hooks.slack.com/services/***"),
        ("https://u:pw@mm.example.org:8065/hooks/abc123", "https://mm.example.org:8065/hooks/***"),
        ("https://u:pw@h.example.org", "https://h.example.org"),
        ("http://127.0.0.1:9093", "http://127.0.0.1:9093"),
        ("http://127.0.0.1:9093/", "http://127.0.0.1:9093"),
        ("http://127.0.0.1:9093/api/v2/alerts", "http://127.0.0.1:9093/api/***"),
        ("http://[::1]:8080/vcmon?token=s3", "http://[::1]:8080/vcmon?***"),
        ("http://h.example.org/vcmon#s3", "http://h.example.org/vcmon?***"),
        ("http://h.example.org/?token=s3", "http://h.example.org/***"),
        # A long run of letters may be a token itself: none of it shows.
        ("http://h.example.org/qwertyuiopasdfghjkl", "http://h.example.org/***"),
        ("http://h.example.org/x9Secret", "http://h.example.org/x***"),
        ("not a url", "***"),
        ("http://h.example.org:99999/x", "***"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_urls_in_text() -> None:
    text = "POST 'https://a:b@api.telegram.org/bot1:TOK/sendMessage' failed; see http://h/x"
    assert redact_urls(text) == ("POST 'https://api.telegram.org/bot***' failed; see http://h/x")


def test_setup_quiets_the_http_client_loggers() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    quiet = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [q.level for q in quiet]
    try:
        logs.setup("debug")
        for logger in quiet:
            assert not logger.isEnabledFor(logging.INFO)
            assert logger.isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:], root.level = saved
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


# ---------------------------------------------------------------------------------------------
# The real daemon

TG_TOKEN = "7311984205:AAFplantedTelegramToken_q9Zx"
SLACK_HOOK = "T0PLANTED/B0PLANTED/plantedSlackHookSecret42"
HOOK_PATH = "hook-plantedPathSecret77"
AM_PASSWORD = "am-Planted-Passw0rd"
WHSEC_KEY = base64.b64encode(b"planted webhook signing secret!!").decode()
MQTT_PASSWORD = "mqtt-Planted-Passw0rd"
SECRETS = (TG_TOKEN, "AAFplantedTelegramToken", SLACK_HOOK, "plantedSlackHookSecret42",
           HOOK_PATH, AM_PASSWORD, WHSEC_KEY, MQTT_PASSWORD)  # fmt: skip
WAIT = 30.0  # s: a deadline, not a delay


def _config(port: int, broker: Mosquitto, tg: Receiver, slack: Receiver, hook: Receiver,
            am: Receiver, closed: int) -> str:  # fmt: skip
    return f"""
listen: 127.0.0.1:{port}
defaults: {{interval: 1.0, count: 3, spacing: 0.05, timeout: 0.5}}
alerts:
  state_file: state.db
  # Any round trip at all is "high", so an alert fires on the first round over loopback.
  quality: {{rtt_ms: {{warning: {{raise: 0, clear: 0}}, critical: null, rounds: 1}}}}
endpoints:
  - {{id: tinh, name: Trung tâm tỉnh, address: 127.0.0.1, district: Tỉnh, level: province}}
sinks:
  - {{type: mqtt, port: {broker.port}, username: vcmon, password: '{MQTT_PASSWORD}'}}
  - {{type: webhook, name: telegram, body: telegram, chat_id: '-1001234567890', group: false,
      url: '{tg.url}/bot{TG_TOKEN}/sendMessage'}}
  - {{type: webhook, name: slack, body: slack, group: false,
      url: '{slack.url}/services/{SLACK_HOOK}'}}
  - {{type: webhook, name: signed, url: '{hook.url}/{HOOK_PATH}',
      secrets: ['whsec_{WHSEC_KEY}']}}
  - {{type: webhook, name: nowhere, url: 'http://ops:{AM_PASSWORD}@127.0.0.1:{closed}/{HOOK_PATH}'}}
  - {{type: alertmanager, url: 'http://alice:{AM_PASSWORD}@127.0.0.1:{am.port}',
      repost_interval: 1}}
"""


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def _metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _delivered(receiver: Receiver) -> Callable[[], bool]:
    return lambda: bool(receiver.received)


def _vcmon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vcmon", *args], capture_output=True, text=True, timeout=60
    )


def _ack(port: int, topic: str) -> None:
    async def publish() -> None:
        async with aiomqtt.Client(HOST, port, username="oncall", password="oncall-pw") as c:
            await c.publish(topic, b'{"by": "lan"}', qos=1)

    asyncio.run(publish())


def test_no_planted_secret_in_the_daemon_log_or_cli_output(
    tmp_path: Path, require_root: None
) -> None:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    users = {"vcmon": MQTT_PASSWORD, "oncall": "oncall-pw"}
    with (
        Mosquitto(tmp_path / "broker", users=users) as broker,
        receiving() as tg, receiving() as slack, receiving(script=[503, 503]) as hook,
        receiving() as am,
    ):  # fmt: skip
        port = free_port()
        path = tmp_path / "vcmon.yaml"
        path.write_text(_config(port, broker, tg, slack, hook, am, free_port()), "utf-8")
        log_file = tmp_path / "daemon.log"
        with log_file.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vcmon", "run", "-c", str(path), "--log-level", "debug"],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: "mqtt_connected" in log_file.read_text(), WAIT, "MQTT connected")
            # Before anything is sent: the sink subscribed at start (an unknown id is counted).
            _ack(broker.port, "vcmon/ack/0000000000000000")
            wait_for(
                lambda: _metric(base, "vcmon_acks_total", source="mqtt", result="unknown_alert"),
                WAIT, "the ack counted",
            )  # fmt: skip
            for receiver in (tg, slack, hook, am):  # the signed one after two 503s
                wait_for(_delivered(receiver), WAIT, f"a delivery to {receiver.url}")
            wait_for(
                lambda: _metric(base, "vcmon_notifications_total", sink="mqtt", result="sent"),
                WAIT, "an MQTT delivery",
            )  # fmt: skip
            wait_for(lambda: "reason=connect" in log_file.read_text(), WAIT, "a failed send")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        daemon_log = log_file.read_text()
        assert "http_503" in daemon_log  # the failure paths ran and were logged
        assert tg.received[0].path == f"/bot{TG_TOKEN}/sendMessage"  # the secret was in use
        assert am.received[0].headers["authorization"].startswith("Basic ")
        assert _leaks(daemon_log) == [], daemon_log[-3000:]

        checked = _vcmon("check", "-c", str(path))
        assert checked.returncode == 0, checked.stderr
        assert _leaks(checked.stdout + checked.stderr) == []
        tested = _vcmon("alerts", "test", "-c", str(path))
        assert "nowhere" in tested.stdout  # the sink that cannot deliver is reported
        assert _leaks(tested.stdout + tested.stderr) == [], tested.stdout
