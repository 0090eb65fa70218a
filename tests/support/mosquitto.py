"""A real Mosquitto broker for tests: a free loopback port, a generated config, optional
password file and TLS (certificates made with the ``openssl`` CLI), stop and restart on the
same port. Also ``Proxy``, a TCP relay that can cut every connection at once or refuse MQTT 5
like a 3.1.1-only broker.

    with Mosquitto(tmp_path, users={"vcmon": "s3cret"}, tls=True, acl_file=acl) as broker:
        ...broker.port, broker.ca_file...
        broker.stop(); broker.start()
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from .helpers import free_port, wait_for

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto",) if Path(p).is_file()), None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
OPENSSL = shutil.which("openssl")
HOST = "127.0.0.1"


def missing() -> str | None:
    """Why a broker cannot be started here, or None."""
    if MOSQUITTO is None:
        return "mosquitto is not installed (make test installs it)"
    if MOSQUITTO_PASSWD is None or OPENSSL is None:
        return "mosquitto_passwd or openssl is missing"
    return None


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")


def make_certs(directory: Path, server_name: str = "IP:127.0.0.1") -> None:
    """A CA, a server certificate for ``server_name`` (a subjectAltName) and a client
    certificate, all EC P-256."""
    assert OPENSSL is not None
    directory.mkdir(parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run(OPENSSL, "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
         "-subj", "/CN=vcmon test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    for name, extra in (
        ("server", f"subjectAltName={server_name}\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        ext = directory / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + extra,
            encoding="utf-8",
        )
        _run(OPENSSL, "req", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN=vcmon test {name}", cwd=directory)  # fmt: skip
        _run(OPENSSL, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt",
             cwd=directory)  # fmt: skip


class Mosquitto:
    """One broker process on ``HOST:port``; its files live in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: bool = False,
        require_certificate: bool = False,
        server_name: str = "IP:127.0.0.1",
        acl_file: Path | None = None,
    ) -> None:
        reason = missing()
        if reason is not None:
            raise RuntimeError(reason)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.certs = workdir / "certs"
        self.log_file = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {HOST}",
            "persistence false",  # a restart loses retained messages, as a fresh broker does
            f"log_dest file {self.log_file}",
            # Started as root it would switch to the user "mosquitto", who cannot read the
            # test's private directory; naming ourselves keeps it as it is.
            f"user {getpass.getuser()}",
            "log_type all",
            "connection_messages true",
        ]
        if users:
            assert MOSQUITTO_PASSWD is not None
            passwd = workdir / "passwd"
            for i, (user, password) in enumerate(users.items()):
                flags = ("-b", "-c") if i == 0 else ("-b",)
                _run(MOSQUITTO_PASSWD, *flags, str(passwd), user, password, cwd=workdir)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
            if acl_file is not None:  # who may publish or read which topics
                lines.append(f"acl_file {acl_file}")
        else:
            lines.append("allow_anonymous true")
        if tls:
            make_certs(self.certs, server_name)
            lines += [
                f"cafile {self.ca_file}",
                f"certfile {self.certs / 'server.crt'}",
                f"keyfile {self.certs / 'server.key'}",
            ]
            if require_certificate:
                lines.append("require_certificate true")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def ca_file(self) -> str:
        return str(self.certs / "ca.crt")

    @property
    def client_cert(self) -> tuple[str, str]:
        return str(self.certs / "client.crt"), str(self.certs / "client.key")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker and wait until its port accepts connections."""
        assert MOSQUITTO is not None
        assert not self.running
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        proc = self._proc

        def listening_or_exited() -> bool:
            if proc.poll() is not None:
                return True
            with socket.create_connection((HOST, self.port), timeout=1):
                return True

        wait_for(listening_or_exited, 10, f"mosquitto on {HOST}:{self.port}")
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            self._proc = None
            raise RuntimeError(f"mosquitto exited: {err.strip()}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM) and wait for it to exit; its port is free again."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the broker's log, for assertion messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Proxy:
    """A TCP relay on a free loopback port to ``HOST:upstream`` in the running event loop.

    ``cut()`` drops every relayed connection at once, as a network failure does: the broker
    sees its client vanish without DISCONNECT. While ``holding``, what clients send is
    swallowed (``held`` counts it), so a publish waits for an acknowledgement that never
    comes. With ``refuse_v5`` an MQTT 5 CONNECT gets the
    3.1.1 refusal "unacceptable protocol version", as from a broker older than MQTT 5.
    """

    def __init__(self, upstream: int, *, refuse_v5: bool = False) -> None:
        self.upstream = upstream
        self.refuse_v5 = refuse_v5
        self.port = 0
        self.versions: list[int] = []  # protocol level of each CONNECT seen
        self.holding = False
        self.held = 0
        self.held_some = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()  # which ends every relay; cancelling them instead makes asyncio log errors
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Abort every relayed connection (RST, no goodbye on either side)."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            connect = await _read_packet(reader)
            # CONNECT: fixed header, remaining length, then "\x00\x04MQTT" and the level.
            level = connect[connect.index(b"MQTT") + 4]
            self.versions.append(level)
            if level == 5 and self.refuse_v5:
                writer.write(b"\x20\x02\x00\x01")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream)
            self._writers.add(up_writer)
            up_writer.write(connect)
            await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass  # the peer went away, or the proxy cut it: nothing left to relay
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_client: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if from_client and self.holding:
                    self.held += len(data)
                    self.held_some.set()
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(OSError):
                writer.transport.abort()


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(1)
    length, shift, raw = 0, 0, b""
    while True:
        byte = await reader.readexactly(1)
        raw += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    return head + raw + await reader.readexactly(length)
