"""The MQTT sink's config (``type: mqtt``), apart from the sink so that loading a config does
not load the MQTT client library."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PrivateAttr,
    SecretStr,
    model_validator,
)

from vcmon.config.alerts import Matchers
from vcmon.config.fields import PositiveSeconds, between, not_bool, positive
from vcmon.config.secrets import read_secret

MIN_ACK_SECRET = 16  # bytes: a shared secret shorter than this is guessable


def _qos(value: int) -> int:
    if value not in (0, 1, 2):
        raise ValueError(f"expected a QoS of 0, 1 or 2, got {value}")
    return value


def _prefix(value: str) -> str:
    segments = value.split("/")
    if not value or any(not s for s in segments) or any(c in value for c in "+#\0"):
        raise ValueError(
            f"expected topic segments separated by '/', none empty, without + or #, got {value!r}"
        )
    return value


def _protocol(value: object) -> object:
    # YAML reads `protocol: 5` as a number.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _readable(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"no such file: {value}")
    return value


Port = Annotated[int, BeforeValidator(not_bool), AfterValidator(between(1, 65535, "a port"))]
File = Annotated[str, AfterValidator(_readable)]


class _TlsContext(ssl.SSLContext):
    """Remembers the socket it wrapped last: paho drops, unclosed, one whose handshake failed."""

    last: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.last = super().wrap_socket(*args, **kwargs)
        return self.last


class TlsConfig(BaseModel):
    """``tls:`` of an MQTT sink; without ``ca_file`` the system's CAs are trusted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: File | None = None
    cert_file: File | None = None  # a client certificate, for brokers that require one
    key_file: File | None = None
    insecure: bool = False  # skip the host name check (the chain is still verified)

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def context(self) -> _TlsContext:
        """A client context built from these files (read now)."""
        ctx = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
        if self.ca_file is not None:
            ctx.load_verify_locations(self.ca_file)
        else:
            ctx.load_default_certs()
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure:
            ctx.check_hostname = False
        return ctx


class MqttConfig(BaseModel):
    """``type: mqtt``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["mqtt"] = "mqtt"
    name: str = "mqtt"
    match: Matchers = Matchers()
    host: str = "127.0.0.1"
    port: Port = 1883
    prefix: Annotated[str, AfterValidator(_prefix)] = "vcmon"
    client_id: str | None = None  # None: vcmon-<instance>
    username: str | None = None
    password: SecretStr | None = None
    password_env: str | None = None  # read from this environment variable when loaded
    password_file: str | None = None  # read from this file (one line) when loaded
    tls: TlsConfig | None = None
    keepalive: Annotated[
        int, BeforeValidator(not_bool), AfterValidator(between(5, 65535, "a keepalive", " seconds"))
    ] = 30
    qos: Annotated[int, BeforeValidator(not_bool), AfterValidator(_qos)] = 1
    protocol: Annotated[Literal["auto", "5", "3.1.1"], BeforeValidator(_protocol)] = "auto"
    message_expiry: (
        Annotated[int, BeforeValidator(not_bool), AfterValidator(positive("seconds"))] | None
    ) = None  # s an event waits for an offline persistent subscriber (MQTT 5)
    timeout: PositiveSeconds = 10.0
    # Acks taken from the broker: a token bucket, so a flood cannot drive the alert store.
    ack_per_minute: Annotated[
        float,
        BeforeValidator(not_bool),
        AfterValidator(between(0, 6000, "acks per minute", above=True)),
    ] = 10.0
    ack_burst: Annotated[
        int, BeforeValidator(not_bool), AfterValidator(between(1, 10000, "a burst", " acks"))
    ] = 20
    # A shared secret acks must be signed with (for brokers without ACLs): only from the
    # environment or a file, so that it is never in the config itself.
    ack_secret_env: str | None = None
    ack_secret_file: str | None = None

    _secret: str | None = PrivateAttr(default=None)
    _ack_secret: bytes | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> MqttConfig:
        given = [
            k for k in ("password", "password_env", "password_file") if getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give one of password, password_env, password_file, not {given}")
        if given and self.username is None:
            raise ValueError(f"{given[0]} needs a username")
        if self.message_expiry is not None and self.protocol == "3.1.1":
            raise ValueError("message_expiry needs MQTT 5 (protocol: 5 or auto)")
        if self.password is not None:
            self._secret = self.password.get_secret_value()
        else:
            found = read_secret("password", self.password_env, self.password_file)
            self._secret = None if found is None else found.text
        self._ack_secret = self._read_ack_secret()
        return self

    def _read_ack_secret(self) -> bytes | None:
        if self.ack_secret_env is not None and self.ack_secret_file is not None:
            raise ValueError("give one of ack_secret_env, ack_secret_file, not both")
        found = read_secret("ack_secret", self.ack_secret_env, self.ack_secret_file)
        if found is None:
            return None
        value, where = found.text, found.where
        if len(value.encode()) < MIN_ACK_SECRET:
            # The length only, never the value.
            raise ValueError(f"{where} holds {len(value.encode())} bytes, at least "
                             f"{MIN_ACK_SECRET} are needed")  # fmt: skip
        return value.encode()

    @property
    def secret(self) -> str | None:
        """The password, wherever it came from."""
        return self._secret

    @property
    def ack_secret(self) -> bytes | None:
        """The key acks are signed with, None when they need no signature."""
        return self._ack_secret
