"""The small HTTP server over real sockets: routing, keep-alive, HEAD, errors, and its bounds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vcmon.http.metrics import HttpCollector
from vcmon.http.server import (
    HttpServer,
    Limits,
    RateLimitedLog,
    Request,
    Response,
    connection_cap,
    text,
)


async def _hello(request: Request) -> Response:
    return text(200, f"hello {request.query.get('who', ['world'])[0]}\n")


async def _echo(request: Request) -> Response:
    return Response(201, request.body, "application/json")


async def _broken(request: Request) -> Response:
    raise RuntimeError("bug")


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    srv = HttpServer(
        {("GET", "/hello"): _hello, ("POST", "/echo"): _echo, ("GET", "/broken"): _broken}
    )
    await srv.start("127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.close()


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        reply = await reader.read()
    writer.close()
    return reply


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/hello", 200, b"hello world\n"),
        ("GET", "/hello?who=C%C3%B4%20T%C3%B4", 200, "hello Cô Tô\n".encode()),
        ("HEAD", "/hello", 200, b""),
        ("GET", "/nowhere", 404, b"not found\n"),
        ("DELETE", "/hello", 405, b"method not allowed\n"),
        ("GET", "/broken", 500, b"internal error\n"),
    ],
)
async def test_routes(server: HttpServer, method: str, path: str, status: int, body: bytes) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.request(method, f"http://127.0.0.1:{server.port}{path}")
    assert r.status_code == status
    assert r.content == body


async def test_post_body_and_keep_alive(server: HttpServer) -> None:
    async with httpx.AsyncClient() as client:
        for i in range(3):
            r = await client.post(f"http://127.0.0.1:{server.port}/echo", content=b'{"n": %d}' % i)
            assert (r.status_code, r.content) == (201, b'{"n": %d}' % i)
    assert r.headers["content-type"] == "application/json"


async def test_garbage_gets_400_and_the_server_lives_on(server: HttpServer) -> None:
    reply = await _raw(server.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{server.port}/hello")).status_code == 200


async def test_close_drops_idle_keep_alive_connections(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        await reader.readuntil(b"hello world\n")
        await server.close()
        assert await reader.read() == b""
    writer.close()


async def _params(request: Request) -> Response:
    return text(200, " ".join(f"{k}={v}" for k, v in sorted(request.params.items())) + "\n")


@pytest.fixture
async def param_server() -> AsyncIterator[HttpServer]:
    srv = HttpServer(
        {
            ("GET", "/things"): _params,
            ("GET", "/things/{id}"): _params,
            ("DELETE", "/things/{id}"): _params,
            ("POST", "/things/{id}/notes/{note}"): _params,
            ("GET", "/things/special"): _hello,  # an exact route wins over a pattern
        }
    )
    await srv.start("127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.close()


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/things", 200, b"\n"),
        ("GET", "/things/a1", 200, b"id=a1\n"),
        ("HEAD", "/things/a1", 200, b""),
        ("DELETE", "/things/a1", 200, b"id=a1\n"),
        ("GET", "/things/C%C3%B4%20T%C3%B4", 200, "id=Cô Tô\n".encode()),
        ("POST", "/things/a1/notes/7", 200, b"id=a1 note=7\n"),
        ("GET", "/things/special", 200, b"hello world\n"),
        ("GET", "/things/a1/b2", 404, b"not found\n"),  # {id} is one segment
        ("GET", "/things/", 404, b"not found\n"),  # and not an empty one
        ("GET", "/other/a1", 404, b"not found\n"),
    ],
)
async def test_path_parameters(
    param_server: HttpServer, method: str, path: str, status: int, body: bytes
) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.request(method, f"http://127.0.0.1:{param_server.port}{path}")
    assert (r.status_code, r.content) == (status, body)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/things/a1", "DELETE, GET"),
        ("GET", "/things/a1/notes/7", "POST"),
        ("POST", "/things", "GET"),
    ],
)
async def test_405_names_the_methods_of_parameterised_paths(
    param_server: HttpServer, method: str, path: str, allow: str
) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.request(method, f"http://127.0.0.1:{param_server.port}{path}")
    assert r.status_code == 405
    assert r.headers["allow"] == allow


# ── Bounds: each shown with a real client on loopback, while a normal client is served ─────

BIG = b"x" * (2 << 20)


class _Counted:
    """A route that counts its calls, to show what a client made the server render."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0

    async def __call__(self, request: Request) -> Response:
        self.calls += 1
        return Response(200, self.body)


async def _bounded(limits: Limits, big: _Counted | None = None) -> HttpServer:
    routes = {("GET", "/hello"): _hello, ("POST", "/echo"): _echo}
    if big is not None:
        routes[("GET", "/big")] = big
    srv = HttpServer(routes, limits)
    await srv.start("127.0.0.1", 0)
    return srv


async def _normal_get(port: int) -> None:
    """A well-behaved client gets its answer at once, whatever else is going on."""
    async with httpx.AsyncClient(timeout=2) as client:
        r = await client.get(f"http://127.0.0.1:{port}/hello")
    assert (r.status_code, r.content) == (200, b"hello world\n")


async def _until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _read_all(reader: asyncio.StreamReader, within: float = 3) -> bytes:
    async with asyncio.timeout(within):
        return await reader.read()


async def test_connections_over_the_cap_get_503_without_being_read() -> None:
    srv = await _bounded(Limits(max_connections=3, head_timeout=5))
    try:
        held = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(3)]
        await _until(lambda: srv.open_connections == 3, 2, "three connections open")
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        reply = await _read_all(reader)
        assert reply.startswith(b"HTTP/1.1 503 ")
        assert reply.endswith(b"too many connections\n")
        writer.close()
        assert srv.counters["limit"] == 1
        held[0][1].close()  # one leaves: a normal client gets in
        await _until(lambda: srv.open_connections == 2, 2, "a slot freed")
        await _normal_get(srv.port)
        for _, w in held[1:]:
            w.close()
    finally:
        await srv.close()


async def test_a_dribbling_head_is_dropped_at_the_deadline_though_bytes_keep_coming() -> None:
    srv = await _bounded(Limits(head_timeout=0.5))
    try:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        started = loop.time()
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        sent_late = 0

        async def dribble() -> None:
            nonlocal sent_late
            with contextlib.suppress(ConnectionError):
                for _ in range(60):  # one header byte every 50 ms, for up to 3 s
                    writer.write(b"a")
                    await writer.drain()
                    if loop.time() - started > 0.4:
                        sent_late += 1
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(dribble())
        await _normal_get(srv.port)
        reply = await _read_all(reader)
        elapsed = loop.time() - started
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert 0.45 <= elapsed < 1.5, elapsed
        assert sent_late > 0  # it was still sending when it was dropped
        assert srv.counters["head_timeout"] == 1
        task.cancel()
        writer.close()
    finally:
        await srv.close()


async def test_a_silent_new_connection_is_dropped_at_the_head_deadline() -> None:
    srv = await _bounded(Limits(head_timeout=0.3, idle_timeout=30))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()
    finally:
        await srv.close()


async def test_an_idle_keep_alive_connection_is_closed_quietly() -> None:
    srv = await _bounded(Limits(idle_timeout=0.3))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await _read_all(reader)
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert reply.endswith(b"hello world\n")
        assert sum(srv.counters.values()) == 0
        writer.close()
    finally:
        await srv.close()


async def test_a_body_that_does_not_arrive_in_time_gets_408() -> None:
    srv = await _bounded(Limits(body_timeout=0.3))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12")
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 408 ")
        assert srv.counters["body_timeout"] == 1
        writer.close()
    finally:
        await srv.close()


async def test_a_20_kb_head_gets_431() -> None:
    srv = await _bounded(Limits())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        reply = await _read_all(reader)
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert b"limit 16384 bytes" in reply
        assert srv.counters["header_too_large"] == 1
        writer.close()
        await _normal_get(srv.port)
    finally:
        await srv.close()


@pytest.mark.parametrize("expect", [True, False])
async def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent(expect: bool) -> None:
    srv = await _bounded(Limits())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        extra = b"Expect: 100-continue\r\n" if expect else b""
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n%s\r\n" % extra)
        reply = await _read_all(reader)  # the body was never sent, yet the answer comes
        assert reply.startswith(b"HTTP/1.1 413 ")
        assert b"100 Continue" not in reply
        assert srv.counters["body_too_large"] == 1
        writer.close()
    finally:
        await srv.close()


async def test_100_continue_within_the_limit() -> None:
    srv = await _bounded(Limits())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        async with asyncio.timeout(2):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 \r\n\r\n"
        writer.write(b"hello")
        async with asyncio.timeout(2):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 201 ")
            assert await reader.readexactly(5) == b"hello"
        writer.close()
    finally:
        await srv.close()


async def test_a_chunked_body_over_the_limit_gets_413() -> None:
    srv = await _bounded(Limits(max_body=1000))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"800\r\n" + b"a" * 0x800 + b"\r\n")
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 413 ")
        writer.close()
    finally:
        await srv.close()


async def test_pipelined_requests_are_capped_per_connection() -> None:
    srv = await _bounded(Limits(max_requests=3))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
        reply = await _read_all(reader)
        assert reply.count(b"HTTP/1.1 200 ") == 3
        assert reply.count(b"Connection: close") == 1
        assert srv.counters["pipeline_limit"] == 1
        writer.close()
        # One request at a time, waiting for each answer, is not pipelining: no limit.
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        for _ in range(5):
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(2):
                await reader.readuntil(b"hello world\n")
        assert srv.counters["pipeline_limit"] == 1
        writer.close()
    finally:
        await srv.close()


async def _non_reader(port: int, requests: int) -> asyncio.StreamWriter:
    """A client with a small receive buffer that pipelines GET /big and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * requests)
    return writer


async def test_a_client_that_does_not_read_is_dropped_after_the_write_timeout() -> None:
    big = _Counted(BIG)
    srv = await _bounded(Limits(write_timeout=0.5), big)
    try:
        started = asyncio.get_running_loop().time()
        writer = await _non_reader(srv.port, 50)
        await _until(lambda: srv.counters["write_timeout"] == 1, 3, "the non-reader dropped")
        assert asyncio.get_running_loop().time() - started >= 0.5
        # It got one response rendered, not fifty: we stopped reading while it stalled.
        assert big.calls == 1
        await _until(lambda: srv.open_connections == 0, 2, "its connection gone")
        assert srv._backlog == 0  # nothing of its response is held
        await _normal_get(srv.port)
        writer.close()
    finally:
        await srv.close()


async def test_stalled_responses_over_the_write_budget_drop_the_longest_stalled() -> None:
    big = _Counted(BIG)
    srv = await _bounded(Limits(write_timeout=30, write_budget=3 << 20), big)
    try:
        first = await _non_reader(srv.port, 1)
        await _until(lambda: srv._backlog > 0, 2, "the first stalled")
        second = await _non_reader(srv.port, 1)
        await _until(lambda: srv.counters["write_backlog"] == 1, 3, "the first dropped")
        async with httpx.AsyncClient(timeout=5) as client:  # a reader still gets it whole
            r = await client.get(f"http://127.0.0.1:{srv.port}/big")
        assert r.content == BIG
        assert srv.counters["write_backlog"] == 2  # the second made room for it
        first.close()
        second.close()
    finally:
        await srv.close()


@pytest.mark.parametrize(
    ("times", "logged"),
    [
        ([0.0], [1]),
        ([0.0, 1.0, 2.0], [1, None, None]),
        ([0.0, 1.0, 2.0, 10.0], [1, None, None, 3]),
        ([0.0, 10.0, 10.5, 25.0], [1, 1, None, 2]),
    ],
)
def test_repeated_failures_are_logged_once_per_interval(
    times: list[float], logged: list[int | None]
) -> None:
    now = iter(times)
    limiter = RateLimitedLog(10.0, monotonic=lambda: next(now))
    assert [limiter.occurred() for _ in times] == logged


@pytest.mark.parametrize(
    ("wanted", "soft", "cap"),
    [(512, 65536, 512), (512, 1024, 384), (512, 300, 22), (512, 100, 1), (10, 1024, 10)],
)
def test_the_connection_cap_stays_well_below_the_descriptor_limit(
    wanted: int, soft: int, cap: int
) -> None:
    assert connection_cap(wanted, soft) == cap


async def test_accept_failures_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    others: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: others.append(context))
    srv = await _bounded(Limits(accept_log_interval=60))
    clients = [socket.socket() for _ in range(20)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for c in clients:
            c.setblocking(False)
        # No descriptor left for the server's accept(): the clients connect, it cannot take them.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
        for c in clients:
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", srv.port))
        with caplog.at_level(logging.ERROR, logger="vcmon.http.server"):
            await _until(lambda: srv.counters["accept_error"] >= 20, 3, "failed accepts")
        lines = [r for r in caplog.records if r.getMessage() == "http_accept_failed"]
        assert len(lines) == 1
        assert others == []  # nothing else reached the loop's handler
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # asyncio retries accepting a second later: let it, so no retry outlives the server.
        await _until(lambda: srv.open_connections > 0, 3, "accepting again")
        for c in clients:
            c.close()
        await srv.close()
    assert loop.get_exception_handler() is not None  # ours gone, the test's back


# ── Fuzzing the request path over a real socket ──────────────────────────────────────────

VALID = [
    b"GET /hello?who=x HTTP/1.1\r\nHost: x\r\n\r\n",
    b'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{"a":1}',
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HEAD /hello HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
    b"GET /hello HTTP/1.0\r\n\r\n",
]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)) * draw(st.integers(1, 3)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "repeat"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=40))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 200))] * draw(st.integers(1, 100))
    return bytes(data)


class _ThreadServer:
    """A bounded server in a thread of its own, so the fuzzer talks to it with plain sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, object]] = []
        self.server = HttpServer(
            {("GET", "/hello"): _hello, ("POST", "/echo"): _echo},
            Limits(head_timeout=0.3, body_timeout=0.3, max_header=2048, max_body=4096),
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.loop.call_soon_threadsafe(
            self.loop.set_exception_handler, lambda _l, ctx: self.loop_errors.append(ctx)
        )
        asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(5)

    def exchange(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=3) as s:
            with contextlib.suppress(ConnectionError):
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            reply = b""
            with contextlib.suppress(ConnectionError):
                while chunk := s.recv(65536):
                    reply += chunk
            return reply

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def thread_server() -> Iterator[_ThreadServer]:
    srv = _ThreadServer()
    try:
        yield srv
    finally:
        srv.stop()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(_mutated(), st.binary(max_size=3000)))
def test_fuzzed_requests_never_break_the_server(thread_server: _ThreadServer, data: bytes) -> None:
    reply = thread_server.exchange(data)
    # 501 (an unknown transfer coding) is an answer; 500 and the like would be a failure.
    assert not re.search(rb"HTTP/1\.[01] 5(0[02-9]|[1-9]\d) ", reply), reply[:200]
    ok = thread_server.exchange(VALID[0])
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:200]
    assert ok.endswith(b"hello x\n"), ok[:200]
    assert thread_server.loop_errors == []


async def test_the_bounds_are_exported_as_metrics() -> None:
    srv = await _bounded(Limits(max_connections=1, head_timeout=5))
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(HttpCollector(srv.stats))
        held = await asyncio.open_connection("127.0.0.1", srv.port)
        await _until(lambda: srv.open_connections == 1, 2, "one connection open")
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        await _read_all(reader)
        writer.close()
        exposition = generate_latest(registry).decode()
        assert 'vcmon_http_connections_rejected_total{reason="limit"} 1.0' in exposition
        assert 'vcmon_http_connections_rejected_total{reason="head_timeout"} 0.0' in exposition
        assert "vcmon_http_connections_open 1.0" in exposition
        assert "vcmon_http_accept_errors_total 0.0" in exposition
        held[1].close()
    finally:
        await srv.close()


async def test_concurrent_scrapes_share_one_render() -> None:
    from vcmon.http.api import Api
    from vcmon.measure.results import Results

    renders = 0

    class Slow(Collector):
        def collect(self) -> Iterator[Metric]:
            nonlocal renders
            renders += 1
            time.sleep(0.1)  # in the render thread: the scrapes below all arrive meanwhile
            yield GaugeMetricFamily("slow", "a slow collector", value=1)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Slow())
    api = Api(Results([]), registry, {})
    get = Request("GET", "/metrics", {}, {})
    replies = await asyncio.gather(*(api.metrics(get) for _ in range(20)))
    expected = b"# HELP slow a slow collector\n# TYPE slow gauge\nslow 1.0\n"
    assert {r.body for r in replies} == {expected}
    assert renders == 1
    assert (await api.metrics(get)).status == 200  # a later scrape renders afresh
    assert renders == 2
