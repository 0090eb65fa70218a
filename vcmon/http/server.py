"""A small HTTP/1.1 server on asyncio streams and h11, for vcmon's few JSON and text routes.

A web framework would cost more memory than the rest of the daemon together (DESIGN's budget
is 60 MB at 231 rooms); h11 does the protocol, this module only routes — and bounds what a
client can make the server hold: connections, time, header bytes, body bytes, unread output.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import re
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from vcmon.logs import event

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # requests are small JSON documents
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle
READ_SIZE = 16384
# Kernel socket buffers per connection: what one recv() can hand us at once, and how much
# unread output the kernel holds for a client before our own write buffer starts to fill.
SOCKET_RCVBUF = 65536
SOCKET_SNDBUF = 262144
WRITE_CHUNK = 65536  # a body is handed to the transport in slices, draining between them
WRITE_HIGH_WATER = 65536
# Descriptors kept out of the connection cap for probes, the resolver, sinks and state.
FD_RESERVE = 256
ACCEPT_ERROR_MESSAGE = "socket.accept() out of system resource"

# Reasons a connection is refused or dropped, as counted in HttpServer.counters.
REASONS = (
    "limit",  # over the connection cap: answered 503 and closed without reading
    "head_timeout",  # the request head did not arrive in time
    "body_timeout",  # the request body did not arrive in time
    "header_too_large",  # 431
    "body_too_large",  # 413, from Content-Length or Expect: 100-continue up front
    "bad_request",  # 400: not HTTP/1.1 that h11 accepts
    "write_timeout",  # the client stopped reading its responses
    "write_backlog",  # dropped to keep unsent responses of all clients within budget
    "pipeline_limit",  # closed after max_requests pipelined requests in a row
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound the server keeps; the defaults are the daemon's."""

    max_connections: int = 512
    head_timeout: float = 10.0  # whole request head, from accept or from its first byte
    idle_timeout: float = IDLE_TIMEOUT  # keep-alive wait for the next request's first byte
    body_timeout: float = 30.0  # whole request body, from the end of its head
    write_timeout: float = 10.0  # a stalled write (client not reading) is dropped after this
    max_header: int = 16384
    max_body: int = MAX_BODY
    max_requests: int = 100  # pipelined in a row; the last response says Connection: close
    write_budget: int = 8 << 20  # bytes of responses being sent, all connections together
    accept_log_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as handlers see it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""
    params: Mapping[str, str] = field(default_factory=dict)  # from {name} segments of the route
    client: str = ""  # the peer's address, for rate limits and logs
    tls_peer: str | None = None  # the verified client certificate's subject CN, if any


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[Request], Awaitable[Response]]


def text(status: int, body: str) -> Response:
    """A plain-text response."""
    return Response(status, body.encode())


def _peer(writer: asyncio.StreamWriter) -> tuple[str, str | None]:
    """The peer's host, and the CN of its verified client certificate over TLS."""
    peername = writer.get_extra_info("peername")
    client = str(peername[0]) if isinstance(peername, tuple) and peername else ""
    cert = writer.get_extra_info("peercert")
    cn = None
    if isinstance(cert, dict):
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = str(value)
    return client, cn


class _Refused(Exception):
    """The request cannot be served: answer ``response`` (if still possible) and close."""

    def __init__(self, reason: str, response: Response | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


def _pattern(path: str) -> re.Pattern[str]:
    """'/api/v1/silences/{id}' → a regex with a named group per {name}, one segment each."""
    parts = re.split(r"\{(\w+)\}", path)
    regex = "".join(
        f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    return re.compile(regex)


def connection_cap(wanted: int, fd_soft_limit: int) -> int:
    """The cap actually used: at most half the descriptors left after FD_RESERVE.

    Connections over the cap still take a descriptor until they are closed (up to 100 per
    loop pass), so the cap sits well below the limit; probes and the resolver keep theirs.
    """
    if fd_soft_limit == resource.RLIM_INFINITY or fd_soft_limit <= 0:
        return wanted
    return max(1, min(wanted, (fd_soft_limit - FD_RESERVE) // 2))


class RateLimitedLog:
    """Decides when a repeated failure is logged: the first at once, then once per interval."""

    def __init__(self, interval: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._monotonic = monotonic
        self._last: float | None = None
        self._suppressed = 0

    def occurred(self) -> int | None:
        """Record one occurrence; the count to log (this one included), or None to stay quiet."""
        now = self._monotonic()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return None
        count, self._suppressed, self._last = self._suppressed + 1, 0, now
        return count


def _head_size(head: h11.Request) -> int:
    """Bytes of a request head as sent, give or take whitespace h11 stripped."""
    line = len(head.method) + len(head.target) + len(b"  HTTP/1.1\r\n\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in head.headers.raw_items())


async def _read_until(reader: asyncio.StreamReader, deadline: float) -> bytes | None:
    """What the client sent next (b"" at its end), or None if nothing came by ``deadline``."""
    try:
        async with asyncio.timeout_at(deadline):
            return await reader.read(READ_SIZE)
    except TimeoutError:
        return None


class _Refuse(asyncio.Protocol):
    """A connection over the cap: a short 503 and close, without reading anything."""

    BODY = b"too many connections\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        with contextlib.suppress(OSError, RuntimeError):
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(self.BODY), self.BODY)
            )
        transport.close()


class _Connection:
    """One client connection: its h11 state, deadlines and share of the write budget."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_header: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        # h11 buffers only an incomplete head (bodies come out as they arrive): so this caps
        # the request head, and a longer one is refused with 431.
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header)
        self.client, self.tls_peer = _peer(writer)
        self.requests = 0
        self.pipelined = 0  # requests in a row that arrived before the previous answer went
        self.pipelining = False
        self.backlog = 0  # bytes of the response being sent, counted against the budget
        self.stalled_since: float | None = None  # loop time a drain began to wait
        self.dropped: str | None = None  # why the server aborted it, if it did

    def abort(self, reason: str) -> None:
        self.dropped = reason
        self.writer.transport.abort()


class HttpServer:
    """Serves ``routes`` ({(method, path): handler}); HEAD is answered for every GET route."""

    def __init__(
        self, routes: Mapping[tuple[str, str], Handler], limits: Limits | None = None
    ) -> None:
        self.limits = limits or Limits()
        self._routes = {k: v for k, v in routes.items() if "{" not in k[1]}
        # Routes with {name} segments, each matching one path segment, tried after exact ones.
        self._patterns = [
            (method, _pattern(path), handler)
            for (method, path), handler in routes.items()
            if "{" in path
        ]
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._cap = self.limits.max_connections
        self._backlog = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_handler: Any = None
        self._accept_log = RateLimitedLog(self.limits.accept_log_interval)
        self.counters: dict[str, int] = dict.fromkeys((*REASONS, "accept_error"), 0)

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        return len(self._conns)

    def stats(self) -> tuple[Mapping[str, int], int]:
        """(refusal and drop counters by reason, open connections) for the metrics."""
        return dict(self.counters), len(self._conns)

    async def start(self, host: str, port: int, ssl: SSLContext | None = None) -> None:
        """Listen on host:port (TLS with ``ssl``); raises OSError when the address is taken."""
        loop = asyncio.get_running_loop()
        self._cap = connection_cap(
            self.limits.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        )
        if self._cap < self.limits.max_connections:
            event(log, logging.WARNING, "http_connection_cap_lowered", cap=self._cap,
                  wanted=self.limits.max_connections, reason="descriptor limit")  # fmt: skip
        self._server = await loop.create_server(
            self._protocol, host, port, reuse_address=True, ssl=ssl,
            # A TLS handshake happens before a connection counts: bound it like a head.
            ssl_handshake_timeout=self.limits.head_timeout if ssl is not None else None,
        )  # fmt: skip
        self._loop = loop
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop open connections at once."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._conns):
            conn.writer.transport.abort()
        await self._server.wait_closed()
        self._server = None
        loop = self._loop
        if loop is not None and loop.get_exception_handler() == self._loop_exception:
            loop.set_exception_handler(self._previous_handler)

    # ── accepting ────────────────────────────────────────────────────────────────────────

    def _protocol(self) -> asyncio.BaseProtocol:
        if len(self._conns) >= self._cap:
            self.counters["limit"] += 1
            return _Refuse()
        reader = asyncio.StreamReader(limit=READ_SIZE)
        return asyncio.StreamReaderProtocol(reader, self._serve)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Count and rate-limit asyncio's accept failures (EMFILE…) on our sockets.

        asyncio reports each failed accept() through the loop's exception handler, up to 100
        times per loop pass and again every second while descriptors are short; logged each
        time, that is hundreds of thousands of lines. Everything else goes on as before.
        """
        if context.get("message") == ACCEPT_ERROR_MESSAGE and self._is_ours(context.get("socket")):
            self.counters["accept_error"] += 1
            count = self._accept_log.occurred()
            if count is not None:
                exc = context.get("exception")
                code = errno.errorcode.get(getattr(exc, "errno", 0) or 0, "unknown")
                event(log, logging.ERROR, "http_accept_failed", error=code, count=count,
                      interval_s=self.limits.accept_log_interval)  # fmt: skip
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def _is_ours(self, sock: object) -> bool:
        if self._server is None or not hasattr(sock, "fileno"):
            return False
        return sock.fileno() in {s.fileno() for s in self._server.sockets}

    # ── serving ──────────────────────────────────────────────────────────────────────────

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer, self.limits.max_header)
        self._conns.add(conn)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SNDBUF)
        try:
            await self._serve_requests(conn)
        except (ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            self._conns.discard(conn)
            self._release(conn)
            if conn.dropped is not None:
                self.counters[conn.dropped] += 1
            writer.close()
            # A client that stopped reading would keep a graceful close waiting forever.
            try:
                async with asyncio.timeout(self.limits.write_timeout):
                    await writer.wait_closed()
            except (ConnectionError, TimeoutError):
                writer.transport.abort()

    async def _serve_requests(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                request = await self._read_request(conn, started)
            except _Refused as refused:
                conn.dropped = refused.reason
                if refused.response is not None and conn.h11.our_state in (
                    h11.IDLE,
                    h11.SEND_RESPONSE,
                ):
                    await self._send(conn, refused.response, False, close=True)
                return
            if request is None:
                return
            conn.requests += 1
            # Only requests sent before their predecessor's answer count: a keep-alive client
            # that waits for each answer (Prometheus) keeps its connection as long as it likes.
            conn.pipelined = conn.pipelined + 1 if conn.pipelining else 1
            last = conn.pipelined >= self.limits.max_requests
            response = await self._dispatch(request)
            await self._send(conn, response, request.method == "HEAD", close=last)
            if last:
                conn.dropped = "pipeline_limit"
                return
            if h11.MUST_CLOSE in (conn.h11.our_state, conn.h11.their_state):
                return
            conn.h11.start_next_cycle()
            started = loop.time()

    async def _read_request(self, conn: _Connection, started: float) -> Request | None:
        """The next request; None when the client is done; _Refused when a bound is hit."""
        limits = self.limits
        loop = asyncio.get_running_loop()
        first = conn.requests == 0
        pending = bool(conn.h11.trailing_data[0])  # pipelined bytes already here
        conn.pipelining = pending
        # The head deadline runs from accept (first request) or from the request's first byte
        # (keep-alive): never extended by later bytes, so a dribbling client cannot hold on.
        deadline = started + (limits.head_timeout if first or pending else limits.idle_timeout)
        heard = first or pending
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                ev = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 431:
                    raise _Refused("header_too_large", self._head_too_large()) from None
                raise _Refused("bad_request", text(status, f"bad request: {exc}\n")) from None
            if ev is h11.NEED_DATA:
                data = await _read_until(conn.reader, deadline)
                if data is None:
                    if head is not None:
                        raise _Refused("body_timeout", text(408, "request body timeout\n"))
                    if not heard:
                        return None  # an idle keep-alive connection: closed, nothing wrong
                    raise _Refused("head_timeout", text(408, "request header timeout\n"))
                if data and not heard:
                    heard = True
                    deadline = loop.time() + limits.head_timeout
                conn.h11.receive_data(data)
                if not data and conn.h11.their_state is h11.IDLE:
                    return None  # the client closed a keep-alive connection
                continue
            if isinstance(ev, h11.Request):
                head = ev
                if _head_size(ev) > limits.max_header:  # arrived whole in one read
                    raise _Refused("header_too_large", self._head_too_large())
                self._check_body_size(conn, ev)
                deadline = loop.time() + limits.body_timeout
            elif isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > limits.max_body:
                    raise _Refused("body_too_large", self._too_large())
            elif isinstance(ev, h11.EndOfMessage):
                assert head is not None
                target = urlsplit(head.target.decode("ascii", "replace"))
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(head.method.decode(), target.path, parse_qs(target.query),
                               headers, bytes(body), client=conn.client,
                               tls_peer=conn.tls_peer)  # fmt: skip
            elif isinstance(ev, h11.ConnectionClosed):
                return None
            elif ev is h11.PAUSED:
                return None  # cannot happen mid-request; be safe rather than spin

    def _check_body_size(self, conn: _Connection, head: h11.Request) -> None:
        """Refuse a declared body over the limit before reading it; honour 100-continue."""
        length = next((v for k, v in head.headers if k == b"content-length"), None)
        if length is not None and int(length) > self.limits.max_body:
            raise _Refused("body_too_large", self._too_large())
        if conn.h11.they_are_waiting_for_100_continue:
            conn.writer.write(conn.h11.send(h11.InformationalResponse(status_code=100, headers=[])))

    def _head_too_large(self) -> Response:
        return text(431, f"request header too large (limit {self.limits.max_header} bytes)\n")

    def _too_large(self) -> Response:
        return text(413, f"request body too large (limit {self.limits.max_body} bytes)\n")

    async def _dispatch(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        handler = self._routes.get((method, request.path))
        allowed = {m for m, p in self._routes if p == request.path}
        if handler is None:
            for m, pattern, h in self._patterns:
                found = pattern.fullmatch(request.path)
                if found is None:
                    continue
                allowed.add(m)
                if m == method:
                    params = {k: unquote(v) for k, v in found.groupdict().items()}
                    request = dataclasses.replace(request, params=params)
                    handler = h
                    break
        if handler is None:
            if allowed:
                allow = ", ".join(sorted(allowed))
                return Response(405, b"method not allowed\n", headers=(("Allow", allow),))
            return text(404, "not found\n")
        try:
            return await handler(request)
        except Exception as exc:  # a handler bug must cost one request, not the server
            event(log, logging.ERROR, "http_handler_failed", path=request.path, error=repr(exc))
            return text(500, "internal error\n")

    # ── writing ──────────────────────────────────────────────────────────────────────────

    async def _send(
        self, conn: _Connection, response: Response, head_only: bool, close: bool = False
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        body = b"" if head_only else response.body
        self._reserve(conn, len(body))
        try:
            writer = conn.writer
            writer.write(conn.h11.send(h11.Response(status_code=response.status, headers=headers)))
            # In slices, so our own buffer holds at most a slice beyond the high-water mark.
            for start in range(0, len(body), WRITE_CHUNK):
                writer.write(conn.h11.send(h11.Data(data=body[start : start + WRITE_CHUNK])))
                await self._drain(conn)
            writer.write(conn.h11.send(h11.EndOfMessage()))
            await self._drain(conn)
        finally:
            self._release(conn)

    async def _drain(self, conn: _Connection) -> None:
        """Wait for the client to take our output, at most write_timeout per wait."""
        transport = conn.writer.transport
        if transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
            return
        conn.stalled_since = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await conn.writer.drain()
        except TimeoutError:
            conn.abort("write_timeout")
            raise ConnectionResetError("client stopped reading") from None
        finally:
            conn.stalled_since = None

    def _reserve(self, conn: _Connection, size: int) -> None:
        """Count a response against the write budget; over it, drop the longest-stalled."""
        conn.backlog = size
        self._backlog += size
        while self._backlog > self.limits.write_budget:
            stalled = [c for c in self._conns if c.stalled_since is not None and c is not conn]
            if not stalled:
                return  # only responses that are moving: let them
            victim = min(stalled, key=lambda c: c.stalled_since or 0.0)
            self._release(victim)
            victim.abort("write_backlog")

    def _release(self, conn: _Connection) -> None:
        self._backlog -= conn.backlog
        conn.backlog = 0
