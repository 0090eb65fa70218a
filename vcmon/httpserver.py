"""A small HTTP/1.1 server on asyncio streams and h11, for vcmon's few JSON and text routes.

A web framework would cost more memory than the rest of the daemon together (DESIGN's budget
is 60 MB at 231 rooms); h11 does the protocol, this module only routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from vcmon.logs import event

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # requests are small JSON documents
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle
READ_SIZE = 65536


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


class _BadRequest(Exception):
    pass


def _pattern(path: str) -> re.Pattern[str]:
    """'/api/v1/silences/{id}' → a regex with a named group per {name}, one segment each."""
    parts = re.split(r"\{(\w+)\}", path)
    regex = "".join(
        f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    return re.compile(regex)


class HttpServer:
    """Serves ``routes`` ({(method, path): handler}); HEAD is answered for every GET route."""

    def __init__(self, routes: Mapping[tuple[str, str], Handler]) -> None:
        self._routes = {k: v for k, v in routes.items() if "{" not in k[1]}
        # Routes with {name} segments, each matching one path segment, tried after exact ones.
        self._patterns = [
            (method, _pattern(path), handler)
            for (method, path), handler in routes.items()
            if "{" in path
        ]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int, ssl: SSLContext | None = None) -> None:
        """Listen on host:port (TLS with ``ssl``); raises OSError when the address is taken."""
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, ssl=ssl
        )

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
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        client, tls_peer = _peer(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        try:
            while True:
                try:
                    request = await self._read_request(conn, reader, client, tls_peer)
                except _BadRequest as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await self._send(conn, writer, text(400, f"bad request: {exc}\n"), False)
                    return
                if request is None:
                    return
                response = await self._dispatch(request)
                await self._send(conn, writer, response, request.method == "HEAD")
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, TimeoutError, h11.LocalProtocolError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, client: str, tls_peer: str | None
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _BadRequest(str(exc)) from None
            if ev is h11.NEED_DATA:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    data = await reader.read(READ_SIZE)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None  # the client closed a keep-alive connection
                continue
            if isinstance(ev, h11.Request):
                head = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > MAX_BODY:
                    raise _BadRequest("body too large")
            elif isinstance(ev, h11.EndOfMessage):
                assert head is not None
                target = urlsplit(head.target.decode("ascii", "replace"))
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(head.method.decode(), target.path, parse_qs(target.query),
                               headers, bytes(body), client=client, tls_peer=tls_peer)  # fmt: skip
            elif isinstance(ev, h11.ConnectionClosed):
                return None

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

    @staticmethod
    async def _send(
        conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, head_only: bool
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
        if response.body and not head_only:
            writer.write(conn.send(h11.Data(data=response.body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
