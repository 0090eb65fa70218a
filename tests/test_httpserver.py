"""The small HTTP server over real sockets: routing, keep-alive, HEAD, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from vcmon.httpserver import HttpServer, Request, Response, text


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
