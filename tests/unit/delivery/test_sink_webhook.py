"""The webhook sink against a real HTTP(S) receiver on 127.0.0.1 that checks signatures as a
receiver would and answers as scripted; through the outbox for the fault cases: 500 five
times then 200, 410, a receiver that never answers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import h11
import pytest
from pydantic import ValidationError

from tests.support.helpers import free_port
from vcmon.alerts.model import AlertEvent, Changes, Kind, Measurements, Severity, Status, Target
from vcmon.alerts.store import Store
from vcmon.delivery.grouping import GroupPolicy, Notification
from vcmon.delivery.outbox import Backoff, Dispatcher
from vcmon.delivery.sinks.base import Gone, Reject, Retry
from vcmon.delivery.sinks.webhook import (
    MAX_RETRY_AFTER,
    WebhookConfig,
    WebhookSetupError,
    WebhookSink,
    retry_after,
    sign,
    verify_signature,
)
from vcmon.delivery.sinks.webhook_bodies import (
    TELEGRAM_MAX_TEXT,
    ZERO_TIME,
    body_for,
    group_body_for,
)

OLD = "whsec_" + base64.b64encode(b"old secret, 32 bytes long......!").decode()
NEW = "whsec_" + base64.b64encode(b"new secret, 32 bytes long......!").decode()
OTHER = "whsec_" + base64.b64encode(b"someone else's secret, 32 bytes.").decode()
TARGET = Target("co-to", "UBND huyện Cô Tô", "127.0.0.1", "Cô Tô", "district")
FAST = Backoff(base=0.001, cap=0.01)
T0 = 1_800_000_000.0  # a fixed "now" for sinks and receivers that share a clock


def event(
    seq: int = 1, status: Status = Status.FIRING, alert_id: str = "a1", **changes: Any
) -> dict[str, Any]:
    doc = AlertEvent(
        id=f"ev-{seq}", seq=seq, alert_id=alert_id, status=status, kind=Kind.GROUP_DOWN,
        severity=Severity.CRITICAL, instance="lab", target=TARGET, affected=("c1",),
        measurements=Measurements(loss_pct=100.0), started_at=T0 - 60,
        ended_at=T0 if status is Status.RESOLVED else None, at=T0,
        summary="Huyện Cô Tô: mất kết nối", description="3 điểm cầu không liên lạc được",
    ).to_json()  # fmt: skip
    doc.update(changes)
    return doc


# -- a receiver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What the receiver does with one request."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    hang: bool = False  # never answer
    stall: bool = False  # send the status and headers, then nothing more


@dataclass
class Got:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool | None  # None: the receiver has no secret
    status: int | None  # what it answered; None while it hangs

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HookReceiver:
    """An HTTP/1.1 server (h11) in the test's own event loop.

    Answers ``script`` in turn, then 200. With a ``secret`` it verifies each request as a
    receiver following Standard Webhooks would, at time ``now()``, and answers 401 to one
    that fails; ``holding`` makes it answer nothing until ``release()``.
    """

    script: list[Answer] = field(default_factory=list)
    secret: str | None = None
    now: Callable[[], float] = time.time
    tls: ssl.SSLContext | None = None
    holding: bool = False
    requests: list[Got] = field(default_factory=list)
    connections: int = 0  # accepted in all
    open: int = 0  # open now
    port: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[Got]:
        return [g for g in self.requests if g.status is not None and 200 <= g.status < 300]

    def ids(self) -> list[str]:
        return [g.headers["webhook-id"] for g in self.delivered()]

    def release(self) -> None:
        """Stop holding: requests held so far end unanswered (their senders gave up)."""
        self.holding = False
        self._released.set()

    async def wait(self, check: Callable[[], bool], what: str, within: float = 10.0) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(check), within)
            except TimeoutError:
                raise AssertionError(f"timed out after {within}s waiting for {what}") from None

    async def _changed_now(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def __aenter__(self) -> HookReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Ended from outside rather than cancelled: asyncio (3.11) logs an error for each
        # cancelled connection handler of start_server.
        self._released.set()
        for writer in self._writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 10)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.open += 1
        await self._changed_now()
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(ev, h11.Request):
                    request, body = ev, bytearray()
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    assert request is not None
                    if not await self._answer(conn, writer, request, bytes(body)):
                        return
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                else:  # ConnectionClosed
                    return
        except (ConnectionError, h11.ProtocolError, ssl.SSLError):
            return
        finally:
            writer.close()
            self.open -= 1
            await self._changed_now()

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> bool:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        answer = self.script.pop(0) if self.script else Answer()
        verified = None
        if self.secret is not None:
            verified = verify_signature(self.secret, headers, body, self.now())
            if not verified:
                answer = Answer(401)
        got = Got(request.target.decode(), headers, body, verified, None)
        self.requests.append(got)
        if self.holding or answer.hang:
            await self._changed_now()
            await self._released.wait()
            return False
        got.status = answer.status
        reply = b'{"ok": true}' if answer.status < 300 else b'{"error": "as scripted"}'
        response = h11.Response(
            status_code=answer.status,
            headers=[("content-type", "application/json"), ("content-length", str(len(reply))),
                     *answer.headers],
        )  # fmt: skip
        writer.write(conn.send(response) or b"")
        await writer.drain()
        await self._changed_now()
        if answer.stall:
            await self._released.wait()
            return False
        writer.write(conn.send(h11.Data(data=reply)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return True


def answers(*items: int | Answer) -> list[Answer]:
    return [a if isinstance(a, Answer) else Answer(a) for a in items]


def config(url: str, **settings: Any) -> WebhookConfig:
    return WebhookConfig(type="webhook", name="noc", url=url, **settings)


async def send_once(url: str, ev: dict[str, Any] | None = None, **settings: Any) -> None:
    clock = settings.pop("clock", time.time)
    sink = WebhookSink(config(url, **settings), clock=clock)
    await sink.start()
    try:
        await sink.send(ev or event())
    finally:
        await sink.close()


# -- config -----------------------------------------------------------------------------------


def test_defaults_and_secrets_kept_out_of_repr() -> None:
    cfg = config("https://127.0.0.1:8443/vcmon", secrets=(OLD,), headers={"X-Token": "t0ken"})
    assert (cfg.body, cfg.timeout, cfg.verify_tls, cfg.ca_file) == ("vcmon", 5.0, True, None)
    assert OLD not in repr(cfg)
    assert "t0ken" not in repr(cfg)
    assert WebhookConfig(url="http://127.0.0.1/").type == "webhook"
    # YAML reads a Telegram chat id as a number.
    assert config("http://127.0.0.1/", body="telegram", chat_id=-1001234).chat_id == "-1001234"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"secrets": ("plain",)}, "secrets[0]: expected a secret of the form whsec_"),
        ({"secrets": (OLD, "whsec_not*base64")}, "secrets[1]: the part after whsec_ is not"),
        ({"secrets": ("whsec_" + base64.b64encode(b"short").decode(),)}, "at least 16 bytes"),
        ({"secrets": (OLD,), "secret_env": "X"}, "give one of secrets, secret_env"),
        ({"secret_env": "X", "secret_file": "/x"}, "give one of secrets, secret_env"),
        ({"body": "telegram"}, "body telegram needs chat_id"),
        ({"chat_id": "42"}, "chat_id is for body telegram"),
        ({"verify_tls": False, "ca_file": "/ca.pem"}, "ca_file has no use"),
        ({"url": "ftp://127.0.0.1/"}, "expected an http:// or https:// URL"),
        ({"url": "http:///path"}, "expected an http:// or https:// URL"),
        ({"url": "http://127.0.0.1:99999/"}, "expected an http:// or https:// URL"),
        ({"url": "http://127.0.0.1/a b"}, "expected an http:// or https:// URL"),
        ({"timeout": 0}, "expected a number of seconds greater than 0"),
        ({"timeout": True}, "expected a number, got true"),
        ({"headers": {"Webhook-Signature": "x"}}, "set by vcmon itself"),
        ({"headers": {"Content-Type": "text/plain"}}, "set by vcmon itself"),
        ({"headers": {"X-A": "b\r\nX-Injected: 1"}}, "line break"),
        ({"headers": {"X A": "b"}}, "not a valid header name"),
        ({"name": ""}, "non-empty name"),
        ({"body": "teams"}, "body"),
    ],
)
def test_config_errors(settings: dict[str, Any], message: str) -> None:
    settings = {"url": "http://127.0.0.1/", **settings}
    with pytest.raises(ValidationError) as caught:
        WebhookConfig(**settings)
    assert message in str(caught.value)
    assert "plain" not in str(caught.value)  # the (bad) secret is not echoed


def test_secret_env_is_read_when_the_sink_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCMON_TEST_HOOK_SECRET", raising=False)
    cfg = config("http://127.0.0.1/", secret_env="VCMON_TEST_HOOK_SECRET")  # loads: lazy
    with pytest.raises(WebhookSetupError, match="VCMON_TEST_HOOK_SECRET is not set"):
        WebhookSink(cfg)
    monkeypatch.setenv("VCMON_TEST_HOOK_SECRET", "")
    with pytest.raises(WebhookSetupError, match="VCMON_TEST_HOOK_SECRET is empty"):
        WebhookSink(cfg)
    monkeypatch.setenv("VCMON_TEST_HOOK_SECRET", "whsec_c2VjcmV0")
    with pytest.raises(WebhookSetupError, match="VCMON_TEST_HOOK_SECRET: expected at least 16"):
        WebhookSink(cfg)
    monkeypatch.setenv("VCMON_TEST_HOOK_SECRET", f"{OLD}\n")
    assert WebhookSink(cfg)._keys == (base64.b64decode(OLD[6:]),)


def test_secret_file_errors_name_the_file_not_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "hook-secret"
    cfg = config("http://127.0.0.1/", secret_file=str(path))
    with pytest.raises(WebhookSetupError, match=f"secret_file: cannot read {path}: No such file"):
        WebhookSink(cfg)
    path.write_text("hunter2-not-a-secret\n", encoding="utf-8")
    with pytest.raises(WebhookSetupError, match=f"secret_file {path}: expected a secret") as bad:
        WebhookSink(cfg)
    assert "hunter2" not in str(bad.value)
    path.write_text(f"{OLD}\n{NEW}\n", encoding="utf-8")  # mid-rotation: both
    assert len(WebhookSink(cfg)._keys) == 2


def test_a_missing_ca_file_is_named_when_the_sink_is_built(tmp_path: Path) -> None:
    cfg = config("https://127.0.0.1/", ca_file=str(tmp_path / "ca.pem"))
    with pytest.raises(WebhookSetupError, match=f"cannot load ca_file {tmp_path / 'ca.pem'}"):
        WebhookSink(cfg)


# -- signatures -------------------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    key = base64.b64decode(secret[6:])
    assert sign((key,), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == signature
    headers = {
        "Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek",  # header names in any case
        "Webhook-Timestamp": "1614265330",
        "Webhook-Signature": f"v1,bm90IHRoaXMgb25l {signature}",
    }
    assert verify_signature(secret, headers, body, now=1614265330 + 299)
    assert not verify_signature(secret, headers, body, now=1614265330 + 301)  # too old
    assert not verify_signature(secret, headers, body, now=1614265330 - 301)  # from the future
    assert not verify_signature(secret, headers, body + b" ", now=1614265330)  # tampered
    assert not verify_signature(OLD, headers, body, now=1614265330)  # not its secret
    forged = {**headers, "Webhook-Id": "msg_other"}
    assert not verify_signature(secret, forged, body, now=1614265330)
    for broken in ({"Webhook-Signature": "v1,ünïcode"}, {"Webhook-Timestamp": "soon"}):
        assert not verify_signature(secret, {**headers, **broken}, body, now=1614265330)
    assert not verify_signature(secret, {}, body, now=1614265330)


# -- bodies -----------------------------------------------------------------------------------


def test_vcmon_body_is_the_event_in_an_envelope() -> None:
    for status, kind in ((Status.FIRING, "firing"), (Status.RESOLVED, "resolved")):
        ev = event(status=status)
        doc = json.loads(body_for("vcmon", ev, T0))
        assert doc == {"type": f"vcmon.alert.{kind}", "timestamp": "2027-01-15T08:00:00.000Z",
                       "data": ev}  # fmt: skip


def test_alertmanager_body_has_the_v4_fields() -> None:
    firing = json.loads(body_for("alertmanager", event(1), T0, receiver="noc"))
    resolved = json.loads(body_for("alertmanager", event(2, Status.RESOLVED), T0, receiver="noc"))
    assert set(firing) == {"version", "groupKey", "truncatedAlerts", "status", "receiver",
                           "groupLabels", "commonLabels", "commonAnnotations", "externalURL",
                           "alerts"}  # fmt: skip
    assert (firing["version"], firing["status"], resolved["status"]) == ("4", "firing", "resolved")
    assert (firing["receiver"], firing["truncatedAlerts"]) == ("noc", 0)
    (alert,) = firing["alerts"]
    assert set(alert) == {"status", "labels", "annotations", "startsAt", "endsAt",
                          "generatorURL", "fingerprint"}  # fmt: skip
    assert alert["labels"] == {
        "alertname": "group_down", "endpoint": "co-to", "district": "Cô Tô", "level": "district",
        "severity": "critical", "instance": "lab",
    }  # fmt: skip
    assert alert["annotations"] == {"summary": "Huyện Cô Tô: mất kết nối",
                                    "description": "3 điểm cầu không liên lạc được"}  # fmt: skip
    assert alert["endsAt"] == ZERO_TIME
    assert alert["startsAt"] == event()["started_at"]
    assert resolved["alerts"][0]["endsAt"] == event(2, Status.RESOLVED)["ended_at"] != ZERO_TIME
    # The same alert keeps its group key and fingerprint from firing to resolve; another has
    # its own fingerprint.
    assert (
        firing["groupKey"]
        == resolved["groupKey"]
        == ('{}:{alertname="group_down", endpoint="co-to"}')
    )
    assert alert["fingerprint"] == resolved["alerts"][0]["fingerprint"]
    assert len(alert["fingerprint"]) == 16
    other = json.loads(body_for("alertmanager", event(3, alert_id="a2"), T0))
    assert other["alerts"][0]["fingerprint"] != alert["fingerprint"]


def test_telegram_body_escapes_html_and_fits_one_message() -> None:
    ev = event(summary="Phòng <họp> A&B", description="loss > 5%")
    doc = json.loads(body_for("telegram", ev, T0, chat_id="-100"))
    assert doc == {"chat_id": "-100", "parse_mode": "HTML",
                   "text": "🔴 <b>Phòng &lt;họp&gt; A&amp;B</b>\nloss &gt; 5%"}  # fmt: skip
    plain = json.loads(body_for("telegram", ev, T0, chat_id="-100", parse_mode=None))
    assert plain == {"chat_id": "-100", "text": "🔴 Phòng <họp> A&B\nloss > 5%"}
    resolved = json.loads(body_for("telegram", event(status=Status.RESOLVED), T0, chat_id="1"))
    assert resolved["text"].startswith("✅ <b>Huyện Cô Tô")
    long = json.loads(body_for("telegram", event(description="&" * 5000), T0, chat_id="1"))
    assert len(long["text"]) <= TELEGRAM_MAX_TEXT
    assert long["text"].endswith("&amp;…")  # cut between entities, never inside one


def test_slack_body_and_fallback_summary() -> None:
    doc = json.loads(body_for("slack", event(), T0))
    assert doc == {
        "text": ":red_circle: *Huyện Cô Tô: mất kết nối*\n3 điểm cầu không liên lạc được"
    }
    bare = json.loads(body_for("slack", event(status=Status.RESOLVED, summary="",
                                              description=""), T0))  # fmt: skip
    assert bare == {"text": ":white_check_mark: *group_down UBND huyện Cô Tô*"}


def group_note(*changes: dict[str, Any], firing: tuple[dict[str, Any], ...] = ()) -> Notification:
    return Notification(
        id="grp-1", group=(("district", "Cô Tô"), ("kind", "group_down")), changes=changes,
        firing=firing, seqs=tuple(int(e["seq"]) for e in changes), due_at=T0,
    )  # fmt: skip


GROUP = group_note(
    event(1, alert_id="a1"),
    event(2, Status.RESOLVED, alert_id="a2", summary="Phòng <B> có lại kết nối"),
    firing=(event(3, alert_id="a3", summary="Xã C: mất kết nối"),),
)


def test_group_bodies_carry_the_whole_group() -> None:
    native = json.loads(group_body_for("vcmon", GROUP, T0))
    assert native["type"] == "vcmon.alert.group"
    assert native["data"]["group"] == {"district": "Cô Tô", "kind": "group_down"}
    assert [e["id"] for e in native["data"]["changes"]] == ["ev-1", "ev-2"]
    assert [e["id"] for e in native["data"]["firing"]] == ["ev-3"]

    am = json.loads(group_body_for("alertmanager", GROUP, T0, receiver="noc"))
    assert am["groupLabels"] == {"district": "Cô Tô", "alertname": "group_down"}
    assert am["groupKey"] == '{}:{alertname="group_down", district="Cô Tô"}'
    assert [a["status"] for a in am["alerts"]] == ["firing", "resolved", "firing"]
    assert am["status"] == "firing"
    assert am["commonLabels"]["district"] == "Cô Tô"
    assert "summary" not in am["commonAnnotations"]  # they differ

    tg = json.loads(group_body_for("telegram", GROUP, T0, chat_id="-100"))
    assert tg["text"].split("\n") == [
        "<b>Cô Tô · group_down</b> 🔴 2 ✅ 1",
        "🔴 Huyện Cô Tô: mất kết nối",
        "✅ Phòng &lt;B&gt; có lại kết nối",
        "",
        "🔴 Xã C: mất kết nối",
    ]
    slack = json.loads(group_body_for("slack", GROUP, T0))
    assert slack["text"].startswith("*Cô Tô · group_down* :red_circle: 2 :white_check_mark: 1\n")


def test_a_repeat_says_so_and_a_big_group_fits_one_message() -> None:
    repeat = group_note(firing=(event(1, alert_id="a1"),))
    text = json.loads(group_body_for("telegram", repeat, T0, chat_id="1"))["text"]
    assert text.startswith("🔁 <b>Cô Tô · group_down</b> 🔴 1\n")
    many = group_note(*(event(i, alert_id=f"a{i}", summary="x" * 90) for i in range(1, 201)))
    text = json.loads(group_body_for("telegram", many, T0, chat_id="1"))["text"]
    assert len(text) <= TELEGRAM_MAX_TEXT
    shown = text.count("🔴 x")
    assert text.endswith(f"… +{200 - shown}")
    assert 30 < shown < 200


def test_body_for_refuses_unknown_kinds_and_options() -> None:
    with pytest.raises(ValueError, match="unknown body 'teams'"):
        body_for("teams", event(), T0)
    with pytest.raises(TypeError):
        body_for("slack", event(), T0, chat_id="1")


# -- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0), (" 120 ", 120.0), ("0", 0.0), ("999999", MAX_RETRY_AFTER),
        (formatdate(T0 + 30, usegmt=True), 30.0), (formatdate(T0 - 30, usegmt=True), 0.0),
        (formatdate(T0 + 86400, usegmt=True), MAX_RETRY_AFTER),
        ("Fri, 15 Jan 2027 08:01:00 -0000", 60.0),
        ("-5", None), ("1.5", None), ("nan", None), ("soon", None), ("", None), (None, None),
    ],
)  # fmt: skip
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert retry_after(header, now=T0) == seconds


# -- the sink against a receiver ------------------------------------------------------------


async def test_signed_with_every_secret_and_verified_by_the_receiver() -> None:
    async with HookReceiver(secret=OLD, now=lambda: T0) as r:
        ev = event()
        await send_once(r.url, ev, secrets=(OLD, NEW), headers={"X-Tenant": "qn"},
                        clock=lambda: T0 + 0.9)  # fmt: skip
    (got,) = r.requests
    assert (got.verified, got.status, got.path) == (True, 200, "/hook")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == "ev-1"
    assert got.headers["webhook-timestamp"] == str(int(T0))
    assert got.headers["x-tenant"] == "qn"
    assert len(got.headers["webhook-signature"].split()) == 2
    for secret in (OLD, NEW):  # a receiver mid-rotation accepts either
        assert verify_signature(secret, got.headers, got.body, T0)
    assert not verify_signature(OTHER, got.headers, got.body, T0)
    assert not verify_signature(NEW, got.headers, got.body.replace(b"ev-1", b"ev-9"), T0)
    assert got.body == body_for("vcmon", ev, T0 + 0.9)


async def test_a_wrong_secret_or_a_skewed_clock_is_refused_by_the_receiver() -> None:
    async with HookReceiver(secret=NEW, now=lambda: T0) as r:
        with pytest.raises(Reject) as caught:
            await send_once(r.url, secrets=(OLD,), clock=lambda: T0)
        assert caught.value.reason == "http_401"
        with pytest.raises(Reject):  # ten minutes slow: outside the receiver's tolerance
            await send_once(r.url, secrets=(NEW,), clock=lambda: T0 - 600)
        await send_once(r.url, secrets=(NEW,), clock=lambda: T0 - 60)
    assert [g.verified for g in r.requests] == [False, False, True]


async def test_bodies_as_sent_for_alertmanager_and_telegram() -> None:
    async with HookReceiver() as r:
        await send_once(r.url, body="alertmanager")
        await send_once(r.url, body="telegram", chat_id=-100123)
    am, tg = (g.json() for g in r.requests)
    assert (am["version"], am["receiver"]) == ("4", "noc")
    assert (tg["chat_id"], tg["parse_mode"]) == ("-100123", "HTML")
    assert "webhook-signature" not in r.requests[0].headers  # no secret, no signature


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [(200, None, ""), (201, None, ""), (204, None, ""),
     (500, Retry, "http_500"), (503, Retry, "http_503"), (408, Retry, "http_408"),
     (429, Retry, "http_429"), (410, Gone, "http_410"), (400, Reject, "http_400"),
     (404, Reject, "http_404"), (422, Reject, "http_422"), (301, Reject, "http_301")],
)  # fmt: skip
async def test_status_mapping(status: int, error: type[Exception] | None, reason: str) -> None:
    async with HookReceiver(answers(status)) as r:
        if error is None:
            await send_once(r.url)
            return
        with pytest.raises(error) as caught:
            await send_once(r.url)
    assert getattr(caught.value, "reason", None) == reason
    assert getattr(caught.value, "after", None) is None
    if status != 204:
        assert "as scripted" in getattr(caught.value, "detail", "")


async def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    later = formatdate(T0 + 120, usegmt=True)
    script = answers(Answer(429, (("Retry-After", "7"),)), Answer(503, (("Retry-After", later),)),
                     Answer(500, (("Retry-After", "86400"),)))  # fmt: skip
    async with HookReceiver(script) as r:
        got = []
        for _ in range(3):
            with pytest.raises(Retry) as caught:
                await send_once(r.url, clock=lambda: T0)
            got.append((caught.value.reason, caught.value.after))
    assert got == [("http_429", 7.0), ("http_503", 120.0), ("http_500", MAX_RETRY_AFTER)]


async def test_one_connection_is_reused_and_closed_with_the_sink() -> None:
    async with HookReceiver() as r:
        sink = WebhookSink(config(r.url))
        await sink.start()
        for seq in (1, 2, 3):
            await sink.send(event(seq))
        assert (r.connections, r.ids()) == (1, ["ev-1", "ev-2", "ev-3"])
        await sink.close()
        await r.wait(lambda: r.open == 0, "the sink's connection to close")


async def test_nothing_listening_is_a_retry() -> None:
    with pytest.raises(Retry) as caught:
        await send_once(f"http://127.0.0.1:{free_port()}/hook", timeout=2.0)
    assert caught.value.reason == "connect"


async def test_a_receiver_that_never_answers_is_a_retry_within_the_timeout() -> None:
    async with HookReceiver(answers(Answer(hang=True), Answer(500, stall=True))) as r:
        for expected in ("timeout", "http_500"):
            started = time.monotonic()
            with pytest.raises(Retry) as caught:
                await send_once(r.url, timeout=0.5)
            assert caught.value.reason == expected
            assert 0.4 < time.monotonic() - started < 2.0


async def test_a_2xx_whose_body_never_ends_is_delivered_all_the_same() -> None:
    async with HookReceiver(answers(Answer(200, stall=True))) as r:
        started = time.monotonic()
        await send_once(r.url, timeout=0.5)
        assert time.monotonic() - started < 2.0
    assert r.requests[0].status == 200


async def test_an_event_that_cannot_be_built_is_a_dead_letter() -> None:
    async with HookReceiver() as r:
        ev = event()
        del ev["status"]
        with pytest.raises(Reject) as caught:
            await send_once(r.url, ev)
    assert caught.value.reason == "bad_event"
    assert r.requests == []


# -- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A certificate for 127.0.0.1, signed by itself, made now."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is missing (apt-get install openssl)")
        pytest.skip("openssl is missing")
    where = tmp_path_factory.mktemp("tls")
    cert = Cert(where / "cert.pem", where / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(cert.key), "-out", str(cert.cert), "-days", "2",
         "-subj", "/CN=vcmon test receiver", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert


async def test_tls_with_the_receivers_ca_is_delivered(self_signed: Cert) -> None:
    async with HookReceiver(tls=self_signed.server_context(), secret=NEW) as r:
        await send_once(r.url, secrets=(NEW,), ca_file=str(self_signed.cert))
    assert r.url.startswith("https://127.0.0.1:")
    assert [g.verified for g in r.requests] == [True]


async def test_tls_with_an_untrusted_certificate_is_a_tls_retry(self_signed: Cert) -> None:
    async with HookReceiver(tls=self_signed.server_context()) as r:
        with pytest.raises(Retry) as caught:
            await send_once(r.url)  # the system's CAs do not know this certificate
        assert caught.value.reason == "tls"
        assert "certificate verify failed" in caught.value.detail
        await send_once(r.url, verify_tls=False)  # unless checking is turned off
    assert len(r.delivered()) == 1


async def test_https_to_a_plain_http_receiver_is_a_tls_retry() -> None:
    async with HookReceiver() as r:
        with pytest.raises(Retry) as caught:
            await send_once(r.url.replace("http://", "https://"))
    assert caught.value.reason == "tls"


# -- through the outbox -----------------------------------------------------------------------


def write(store: Store, *seqs: int) -> None:
    store.apply(Changes(events=tuple(_ev(s) for s in seqs)))


def _ev(seq: int) -> AlertEvent:
    return AlertEvent(
        id=f"ev-{seq}", seq=seq, alert_id=f"a{seq}", status=Status.FIRING,
        kind=Kind.ENDPOINT_DOWN, severity=Severity.CRITICAL, instance="lab", target=TARGET,
        affected=(), measurements=Measurements(), started_at=1.0, ended_at=None, at=1.0,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state.db") as s:
        s.advance("noc", 0)
        yield s


async def until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Wait for ``check`` to hold, looking every 10 ms; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)  # a poll interval, not a synchronisation


async def dispatching(d: Dispatcher, check: Callable[[], bool], what: str) -> None:
    task = asyncio.create_task(d.run())
    try:
        await until(check, what)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_500_five_times_then_200_is_delivered_once_in_order(store: Store) -> None:
    write(store, 1, 2)
    async with HookReceiver(answers(*[500] * 5), secret=NEW) as r:
        d = Dispatcher(WebhookSink(config(r.url, secrets=(NEW,))), store, backoff=FAST)
        await dispatching(d, lambda: d.stats.sent == 2, "both events")
    assert [g.status for g in r.requests] == [500] * 5 + [200, 200]
    assert r.ids() == ["ev-1", "ev-2"]
    assert all(g.verified for g in r.requests)
    assert d.stats.failed == {"http_500": 5}
    assert (d.stats.sent, d.stats.dead) == (2, 0)
    assert store.cursor("noc") == 2


async def test_400_is_a_dead_letter_and_the_next_event_goes_on(store: Store) -> None:
    write(store, 1, 2)
    async with HookReceiver(answers(400)) as r:
        d = Dispatcher(WebhookSink(config(r.url)), store, backoff=FAST)
        await dispatching(d, lambda: d.stats.sent == 1, "the second event")
    assert r.ids() == ["ev-2"]
    assert (d.stats.dead, d.stats.failed) == (1, {"http_400": 1})
    assert [seq for _, seq, _, _ in store.dead_letters("noc")] == [1]


async def test_410_disables_the_target(store: Store) -> None:
    write(store, 1, 2)
    async with HookReceiver(answers(410)) as r:
        d = Dispatcher(WebhookSink(config(r.url)), store, backoff=FAST)
        await asyncio.wait_for(d.run(), 10)  # returns: the target is disabled
    assert d.stats.disabled == "http_410"
    assert [g.status for g in r.requests] == [410]
    assert store.cursor("noc") == 0  # nothing passed over: it is all there if re-enabled


async def test_a_receiver_that_never_answers_loses_nothing(store: Store) -> None:
    write(store, *range(1, 251))  # more than the outbox reads at once
    async with HookReceiver(holding=True) as r:
        d = Dispatcher(WebhookSink(config(r.url, timeout=0.2)), store, backoff=FAST)
        task = asyncio.create_task(d.run())
        try:
            await r.wait(lambda: len(r.requests) >= 3, "three tries")
            # A third try follows two timeouts, each counted before the next try.
            assert d.stats.failed.get("timeout", 0) >= 2
            assert store.cursor("noc") == 0
            r.release()  # it comes back
            await until(lambda: d.stats.sent == 250, "the backlog", within=30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert r.ids() == [f"ev-{i}" for i in range(1, 251)]
    # The try in flight when it came back ends unanswered: a connection dropped, retried too.
    assert set(d.stats.failed) <= {"timeout", "connect"}


async def test_a_chat_webhook_gets_one_signed_message_per_group(store: Store) -> None:
    write(store, 1, 2, 3)  # decided long ago: due as soon as read
    async with HookReceiver(secret=NEW) as r:
        cfg = config(r.url, body="slack", secrets=(NEW,))
        assert cfg.grouping() == GroupPolicy()  # chat bodies group by default
        d = Dispatcher(WebhookSink(cfg), store, backoff=FAST, group=cfg.grouping())
        await dispatching(d, lambda: store.cursor("noc") == 3, "the group")
    (got,) = r.requests
    assert got.verified
    assert got.headers["webhook-id"].startswith("grp-")
    lines = got.json()["text"].split("\n")
    assert lines[0] == "*Cô Tô · endpoint_down* :red_circle: 3"
    assert len(lines) == 4


def test_grouping_is_off_for_machine_bodies_and_can_be_set() -> None:
    assert config("http://127.0.0.1/").grouping() is None
    assert config("http://127.0.0.1/", body="slack", group=False).grouping() is None
    assert config("http://127.0.0.1/", group=True).grouping() == GroupPolicy()
    cfg = config("http://127.0.0.1/", group={"by": ["district"], "wait": 10})
    assert cfg.grouping() == GroupPolicy(by=("district",), wait=10)


async def test_alerts_test_sends_a_grouped_sink_what_people_will_see(tmp_path: Path) -> None:
    from vcmon.cli.outbox import send_test
    from vcmon.config import load_config

    async with HookReceiver() as r:
        path = tmp_path / "vcmon.yaml"
        path.write_text(
            f"sinks:\n  - {{type: webhook, name: chat, url: '{r.url}', body: slack}}\n"
            "endpoints:\n  - {id: a, name: A, address: 127.0.0.1, district: X, level: commune}\n",
            encoding="utf-8",
        )
        (result,) = await send_test(load_config(path, env={}))
    assert result.ok
    heads = [g.json()["text"].split("\n")[0] for g in r.delivered()]
    assert len(heads) == 2
    assert heads[0].endswith(":red_circle: 1")
    assert heads[1].endswith(":white_check_mark: 1")
    assert all(g.headers["webhook-id"].startswith("grp-") for g in r.delivered())
