"""A real HTTP receiver for delivery tests: records what arrives, answers as scripted.

Runs in a thread on a free loopback port; ``script`` is a list of statuses to answer in turn
(then 200), ``hang`` makes it never answer, and it can be stopped and started again on the
same port to simulate an outage.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .helpers import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    script: list[int] = field(default_factory=list)
    retry_after: str | None = None
    # While held, requests get no answer at all (a receiver that hangs); release() ends it.
    _released: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        """From now on, answer nothing."""
        self._released.clear()

    def release(self) -> None:
        """Answer again (requests held so far get no answer: their clients gave up)."""
        self._released.set()

    def start(self) -> None:
        receiver = self
        self._released.set()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if not receiver._released.is_set():
                    receiver._released.wait(3600)  # until released (or the test ends)
                    return
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.answered.append(status)
                    if 200 <= status < 300:
                        receiver.received.append(
                            Received(
                                self.path, {k.lower(): v for k, v in self.headers.items()}, body
                            )
                        )
                self.send_response(status)
                if receiver.retry_after and status in (429, 503):
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[str]:
        """Event ids of what arrived, from the native body or the webhook-id header."""
        with self._lock:
            return [r.headers.get("webhook-id") or r.json()["data"]["id"] for r in self.received]


@contextmanager
def receiving(**kwargs: Any) -> Iterator[Receiver]:
    r = Receiver(**kwargs)
    r.start()
    try:
        yield r
    finally:
        r.release()
        r.stop()
