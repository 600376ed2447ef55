"""SMTP through aiosmtplib, with nodemailer's options and meaning.

A connection is opened by hand: the host is resolved through the egress policy, the TCP socket (or
the proxy's) is connected to a checked address under `connectionTimeout`, and aiosmtplib gets that
socket for the greeting (`greetingTimeout`), TLS, AUTH and the transaction (`socketTimeout` per
command). Every library error becomes a TransportError in `_translate`, the one place mapping them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import ssl
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import ClassVar, Literal, Self
from urllib.parse import unquote, urlsplit

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.typing import Default
from pydantic import Field, SecretStr, field_validator, model_validator
from python_socks import ProxyError, ProxyType
from python_socks.async_.asyncio import Proxy

from app.egress import EgressDenied
from app.errors import FieldsError
from app.schemas import CamelModel, Integer, SafeStr, a_labels
from app.transports.base import (
    OutgoingMessage,
    TransportContext,
    VerifyReport,
    VerifyStep,
    refuse_options,
)
from app.transports.errors import (
    ConfigError,
    ConfigurationError,
    CredentialsError,
    PermanentError,
    TemporaryError,
    TransportError,
    UnsupportedFeature,
    unknown_host,
)
from app.transports.oauth import TokenCache, TokenRequest
from app.transports.pool import ConnectionPool, PoolClosed
from app.transports.proxy import http_tunnel
from app.transports.result import RecipientResult, RecipientStatus, SendResult

SecurityMode = Literal["none", "starttls", "starttls_required", "tls"]
"""Sage X3's four modes: no TLS / STARTTLS when available / STARTTLS required / implicit TLS."""

_SECURITY_FLAGS: dict[str, tuple[bool, bool, bool]] = {
    "none": (False, True, False),
    "starttls": (False, False, False),
    "starttls_required": (False, False, True),
    "tls": (True, False, False),
}


class OAuth2Settings(CamelModel):
    """Where XOAUTH2 gets its access token: a refresh token, or the client-credentials grant."""

    token_url: str = Field(max_length=2000, pattern=r"^https?://\S+$")
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: SecretStr | None = None
    refresh_token: SecretStr | None = None
    scope: str | None = Field(None, max_length=1000)
    """Office 365 app-only: https://outlook.office365.com/.default; Gmail: https://mail.google.com/"""
    user: SafeStr | None = Field(None, max_length=320)
    """The mailbox to authenticate as; defaults to the profile's `user`."""


class SmtpConfig(CamelModel):
    """An SMTP server, with nodemailer's option names and defaults (timeouts in milliseconds)."""

    credentials: ClassVar[str] = "user and pass (with XOAUTH2: user and the oauth2 settings)"
    """The settings that hold the credentials, as an admin checks them when they are refused."""

    host: SafeStr = Field("localhost", min_length=1, max_length=253, pattern=r"^[^\s/]+$")
    port: Integer | None = Field(None, ge=1, le=65535)
    """Defaults to 465 when `secure`, else 25."""
    secure: bool = False
    ignore_tls: bool = Field(False, alias="ignoreTLS")
    require_tls: bool = Field(False, alias="requireTLS")
    connection_timeout: Integer = Field(120_000, gt=0, le=3_600_000)
    greeting_timeout: Integer = Field(30_000, gt=0, le=3_600_000)
    socket_timeout: Integer = Field(600_000, gt=0, le=3_600_000)
    user: SafeStr | None = Field(None, max_length=320)
    pass_: SecretStr | None = Field(None, alias="pass", max_length=1000)
    auth_method: Literal["plain", "login", "cram-md5", "xoauth2"] | None = None
    """None: the first the server offers of PLAIN, LOGIN, CRAM-MD5 (nodemailer's order)."""
    oauth2: OAuth2Settings | None = None
    bounce_domain: SafeStr | None = Field(None, max_length=200, pattern=r"^[A-Za-z0-9.-]+$")
    """When set, each message's envelope sender is `bounces+<token>@<bounceDomain>` (VERP): the
    domain's MX hands bounces to Postroom (app/events/bounces)."""
    name: SafeStr | None = Field(None, max_length=253, pattern=r"^[^\s]+$")
    """The EHLO host name; default: POSTROOM_HOSTNAME, else this machine's name when it is a
    real one (not localhost), else the address literal of the connection ([192.0.2.1])."""
    ca_certificates: str | None = Field(None, max_length=200_000)
    client_certificate: str | None = Field(None, max_length=200_000)
    client_key: SecretStr | None = Field(None, max_length=200_000)
    proxy: SecretStr | None = Field(None, max_length=2000)
    """socks5://, socks5h://, socks4://, socks4a:// or http://[user:pass@]host[:port]. A secret as
    a whole, since it may carry credentials: encrypted at rest, answered as `proxySet`."""
    pool: bool = False
    max_connections: Integer = Field(5, ge=1, le=100)
    max_messages: Integer = Field(100, ge=1, le=100_000)
    logger: bool = False
    debug: bool = False

    @model_validator(mode="before")
    @classmethod
    def _security_mode(cls, data: object) -> object:
        if isinstance(data, dict) and "security" in data:
            data = dict(data)
            mode = data.pop("security")
            if mode not in _SECURITY_FLAGS:
                raise FieldsError(
                    f"security must be one of {', '.join(_SECURITY_FLAGS)}", "security"
                )
            data["secure"], data["ignoreTLS"], data["requireTLS"] = _SECURITY_FLAGS[mode]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.ignore_tls and self.require_tls:
            raise FieldsError(
                "ignoreTLS and requireTLS cannot both be true", "ignoreTLS", "requireTLS"
            )
        if self.auth_method == "xoauth2" and self.oauth2 is None:
            raise ValueError("authMethod xoauth2 needs oauth2 settings")
        if (
            self.auth_method == "xoauth2"
            and not (self.oauth2 and self.oauth2.user)
            and not self.user
        ):
            raise ValueError("authMethod xoauth2 needs a user (oauth2.user or user)")
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("clientCertificate and clientKey go together")
        return self

    @field_validator("ca_certificates", "client_certificate")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ssl.create_default_context(cadata=value)
            except (ssl.SSLError, ValueError, TypeError) as err:  # TypeError: not ASCII
                raise ValueError("is not a valid PEM certificate") from err
        return value

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                _ProxyUrl.parse(value.get_secret_value())
            except ConfigError as err:  # its message never holds the URL: it is a secret
                raise ValueError(err.message) from None
        return value

    @property
    def effective_port(self) -> int:
        """`port`, or the default for the mode: 465 with implicit TLS, else 25."""
        return self.port if self.port is not None else default_port(self.secure)


def default_port(secure: bool) -> int:
    return 465 if secure else 25


_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_real_name(name: str) -> bool:
    """A name that tells the server who we are: a dotted host name, not localhost (RFC 5321
    4.1.4 wants the client's FQDN, else an address literal)."""
    labels = name.rstrip(".").split(".")
    return (
        len(labels) >= 2
        and labels[0].lower() not in _LOOPBACK_NAMES
        and labels[-1].lower() != "localdomain"
        and all(_LABEL.fullmatch(label) for label in labels)
    )


def choose_ehlo_name(fqdn: str, hostname: str) -> str | None:
    """This machine's name for EHLO: `getfqdn()` when it is a real name, else `gethostname()`
    when that is. `getfqdn()` answers `localhost` on the common /etc/hosts layout (127.0.0.1
    localhost <name>), which servers distrust; None means: use the address literal."""
    for name in (fqdn, hostname):
        if is_real_name(name):
            return name.rstrip(".")
    return None


def machine_name() -> str:
    """choose_ehlo_name of this machine ("" when it has no real name); blocking (DNS)."""
    return choose_ehlo_name(socket.getfqdn(), socket.gethostname()) or ""


def address_literal(address: str) -> str:
    """RFC 5321 4.1.3's address literal of the connection's local address: [192.0.2.1] or
    [IPv6:2001:db8::1]."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[{ip}]" if ip.version == 4 else f"[IPv6:{ip}]"


Phase = Literal[
    "dns",
    "connect",
    "greeting",
    "ehlo",
    "tls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "body",
    "end-of-data",
    "quit",
]
"""The steps of an SMTP session; `verify` reports those from `dns` to `auth`, then `quit`."""

_PHASE_TEXT: dict[Phase, str] = {
    "dns": "resolving the host name",
    "connect": "connecting",
    "greeting": "waiting for the greeting",
    "ehlo": "EHLO",
    "tls": "TLS",
    "auth": "AUTH",
    "mail": "MAIL FROM",
    "rcpt": "RCPT TO",
    "data": "DATA",
    "body": "sending the message content",
    "end-of-data": "waiting for the reply to the final '.'",
    "quit": "QUIT",
}
_AFTER_DATA: frozenset[Phase] = frozenset({"body", "end-of-data"})
_PERMANENT_ON_5XX: frozenset[Phase] = frozenset({"mail", "data", "end-of-data"})
_REPLY_ERROR_CODES: dict[Phase, str] = {
    "mail": "EENVELOPE",
    "rcpt": "EENVELOPE",
    "data": "EMESSAGE",
    "end-of-data": "EMESSAGE",
}
_AUTO_AUTH_ORDER = ("plain", "login", "cram-md5")
_PROXY_SCHEMES: dict[str, tuple[ProxyType, bool, int]] = {
    "socks5": (ProxyType.SOCKS5, False, 1080),
    "socks5h": (ProxyType.SOCKS5, True, 1080),
    "socks4": (ProxyType.SOCKS4, False, 1080),
    "socks4a": (ProxyType.SOCKS4, True, 1080),
    "http": (ProxyType.HTTP, True, 8080),
}
_BLANK = re.compile(r"\s")
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_NOT_IN_ENVELOPE = re.compile("[\r\n\0<>]")
_CHUNK_BYTES = 64 * 1024
_MAX_IDLE_SECONDS = 30.0
_QUIT_TIMEOUT_SECONDS = 5.0

REDACTED = "[REDACTED]"
"""What the debug transcript shows instead of a credential."""


def create(name: str, config: SmtpConfig, context: TransportContext) -> SmtpTransport:
    """Build the SMTP transport of one server profile."""
    return SmtpTransport(name, config, context)


class SmtpTransport:
    """Sends through one SMTP server, with nodemailer's options (see SmtpConfig).

    Without `pool` every send opens a connection, sends and QUITs. With `pool`, up to
    `maxConnections` connections stay open, each for at most `maxMessages` messages, closed after
    min(30 s, socketTimeout) idle and on `aclose`.

    Timeouts: `connectionTimeout` bounds DNS and TCP (or the proxy's handshake); `greetingTimeout`
    the 220, and with `secure` also the TLS handshake (aiosmtplib runs both under one timeout);
    `socketTimeout` every later reply and each write of the content.
    """

    def __init__(self, name: str, config: SmtpConfig, context: TransportContext) -> None:
        self.name = name
        self.config = config
        self._context = context
        self._events = context.logger if config.logger else None
        self._ehlo_name = config.name or context.hostname
        """The EHLO name when set (the profile's `name`, else POSTROOM_HOSTNAME)."""
        self._machine_name: str | None = None
        """This machine's name when it is a real one ("" when it is not: use the address)."""
        self._tls: ssl.SSLContext | None = None
        self._sessions = 0
        self.tokens: TokenCache | None = None
        if config.oauth2 is not None:
            oauth2 = config.oauth2
            self.tokens = TokenCache(
                context.http,
                TokenRequest(
                    token_url=oauth2.token_url,
                    client_id=oauth2.client_id,
                    client_secret=_secret(oauth2.client_secret),
                    scope=oauth2.scope,
                    refresh_token=_secret(oauth2.refresh_token),
                    provider="the OAuth2 token endpoint (oauth2.tokenUrl)",
                    credentials_fix="check oauth2.clientId and oauth2.clientSecret"
                    + (" and oauth2.refreshToken" if oauth2.refresh_token else ""),
                    url_setting="oauth2.tokenUrl",
                ),
            )
        self._pool: ConnectionPool[_Connection] | None = None
        if config.pool:
            self._pool = ConnectionPool(
                self._connect,
                max_connections=config.max_connections,
                max_uses=config.max_messages,
                idle_timeout=min(_MAX_IDLE_SECONDS, self.socket_timeout),
            )

    @property
    def socket_timeout(self) -> float:
        """socketTimeout in seconds: the longest wait for any reply once greeted."""
        return self.config.socket_timeout / 1000

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send one message; a status per recipient, or a TransportError if it failed as a whole."""
        refuse_options(message, "SMTP")
        _check_envelope(message)
        if self._pool is None:
            connection = await self._connect()
            try:
                return await connection.deliver(message)
            finally:
                await connection.aclose()
        try:
            async with self._pool.lease() as connection:
                result = await connection.deliver(message)
        except PoolClosed as err:
            raise TemporaryError(
                f"transport {self.name} is closed", code="ECONNECTION", before_data=True
            ) from err
        return result

    async def verify(self) -> VerifyReport:
        """Resolve, connect, greet, EHLO, TLS, AUTH and QUIT, one step each; nothing is sent."""
        report = VerifyReport(
            unchecked=["whether the server accepts the sender and the recipients"]
        )
        tracker = self._tracker(report)
        try:
            connection = await self._connect(tracker)
        except TransportError:
            return report
        with suppress(TransportError), tracker.phase("quit") as step:
            step.detail = str(await connection.quit())
        return report

    async def aclose(self) -> None:
        """Close the pooled connections (QUIT); sends after this fail."""
        if self._pool is not None:
            await self._pool.aclose()

    def event(self, message: str, *args: object) -> None:
        """Log a connection event at INFO when the profile's `logger` is on."""
        if self._events is not None:
            self._events.info("smtp %s: " + message, self.name, *args)

    async def tls_context(self) -> ssl.SSLContext:
        """The client TLS context, built once (it reads the CA store)."""
        if self._tls is None:
            self._tls = await asyncio.to_thread(_tls_context, self.config)
        return self._tls

    def auth_plan(self, client: aiosmtplib.SMTP) -> tuple[str, str] | None:
        """(method, user) to authenticate with, or None when no user is configured."""
        config = self.config
        method: str | None = config.auth_method
        if method is None and config.oauth2 is not None and config.pass_ is None:
            method = "xoauth2"
        if method == "xoauth2":
            user = (config.oauth2.user if config.oauth2 else None) or config.user
            return (method, user) if user else None
        if config.user is None:
            return None
        if method is None:
            offered = client.server_auth_methods
            method = next((name for name in _AUTO_AUTH_ORDER if name in offered), "plain")
        return method, config.user

    def _tracker(self, report: VerifyReport | None = None) -> _Tracker:
        config = self.config
        return _Tracker(
            report,
            field="proxy" if config.proxy else "host",
            secure=config.secure,
            client_certificate=config.client_certificate is not None,
        )

    async def _connect(self, tracker: _Tracker | None = None) -> _Connection:
        config = self.config
        if tracker is None:
            tracker = self._tracker()
        sock = await self._open_socket(tracker)
        connection: _Connection | None = None
        try:
            ehlo_name = self._ehlo_name
            if ehlo_name is None:
                if self._machine_name is None:
                    self._machine_name = await asyncio.to_thread(machine_name)
                ehlo_name = self._machine_name or address_literal(sock.getsockname()[0])
            client = _Client(
                hostname=config.host,
                sock=sock,
                use_tls=config.secure,
                start_tls=False,
                local_hostname=ehlo_name,
                timeout=self.socket_timeout,
            )
            self._sessions += 1
            if config.debug:
                label = f"smtp {self.name} #{self._sessions}"
                client.transcript = _Transcript(self._context.logger, label)
            connection = _Connection(self, client, tracker)
            await connection.handshake()
        except Exception:
            if connection is not None:
                await connection.aclose()
            sock.close()
            raise
        except BaseException:
            if connection is not None:
                connection.abort()
            sock.close()
            raise
        return connection

    async def _open_socket(self, tracker: _Tracker) -> socket.socket:
        config = self.config
        port = config.effective_port
        deadline = asyncio.get_running_loop().time() + config.connection_timeout / 1000
        with tracker.phase("dns") as step:
            proxy = _ProxyUrl.parse(config.proxy.get_secret_value()) if config.proxy else None
            host, host_port = (proxy.host, proxy.port) if proxy else (config.host, port)
            async with asyncio.timeout_at(deadline):
                addresses = await self._context.egress.resolve(host, host_port)
            step.detail = f"{host}: {', '.join(addresses)}"
            step.data["addresses"] = addresses
            if proxy is not None:
                step.data["proxy"] = proxy.display
        with tracker.phase("connect") as step:
            async with asyncio.timeout_at(deadline):
                if proxy is None:
                    sock = await _tcp_connect(addresses, port)
                else:
                    sock = await proxy.connect(addresses, config.host, port)
            try:
                peer = sock.getpeername()
            except OSError:
                sock.close()
                raise
            step.detail = f"{peer[0]} port {peer[1]}"
            if proxy is not None:
                step.detail = f"{config.host} port {port} through {proxy.display} ({step.detail})"
        return sock


class _Connection:
    """One SMTP session: greeted, TLS and AUTH done, then one transaction per send."""

    def __init__(self, transport: SmtpTransport, client: _Client, tracker: _Tracker) -> None:
        self._transport = transport
        self._client = client
        self._tracker = tracker
        self._address = f"{transport.config.host}:{transport.config.effective_port}"
        self._wire: asyncio.BaseTransport | None = None
        self._closed = False

    @property
    def alive(self) -> bool:
        return self._client.is_connected

    @property
    def tls_version(self) -> str | None:
        return self._tracker.tls_version

    async def handshake(self) -> None:
        """Greeting, EHLO, STARTTLS as configured, EHLO again, AUTH."""
        transport, config, client = self._transport, self._transport.config, self._client
        phase = self._tracker.phase
        with phase("greeting") as step:
            context = await transport.tls_context() if config.secure else None
            greeting = await client.connect(
                timeout=config.greeting_timeout / 1000, tls_context=context
            )
            self._wire = client.transport
            if client.protocol is not None and client.transport is not None:
                client.protocol.__class__ = _PipeliningProtocol
                client.transport.set_protocol(client.protocol)
            step.detail = str(greeting)
            if client.transcript is not None:
                client.transcript.server(greeting)
        transport.event("connected to %s", self._address)
        if config.secure:
            with phase("tls") as step:
                self._tls_established(step)
                step.detail += " (implicit TLS, negotiated while connecting)"
        with phase("ehlo") as step:
            await self._ehlo(step)
        if not config.secure and not config.ignore_tls:
            if client.supports_extension("starttls"):
                with phase("tls") as step:
                    context = await transport.tls_context()
                    if client.transcript is not None:
                        client.transcript.client(b"STARTTLS")
                    reply = await client.starttls(tls_context=context)
                    self._wire = client.transport
                    if client.transcript is not None:
                        client.transcript.server(reply)
                    self._tls_established(step)
                with phase("ehlo") as step:
                    await self._ehlo(step)
            elif config.require_tls:
                with phase("tls"):
                    raise ConfigurationError(f"TLS: {NO_STARTTLS}", code="ETLS", field="requireTLS")
        plan = transport.auth_plan(client)
        if plan is not None:
            method, user = plan
            with phase("auth") as step:
                await self._authenticate(method, user)
                step.detail = f"{user} with {method.upper()}"
            transport.event("authenticated as %s with %s", user, method.upper())

    async def deliver(self, message: OutgoingMessage) -> SendResult:
        """MAIL, RCPT for each recipient, DATA: a status per recipient.

        Domains go in A-labels (IDNA); an address with a non-ASCII local part needs SMTPUTF8, and
        a server without it fails that recipient only. When that is every recipient (or the
        sender), nothing is sent: UnsupportedFeature, so the profile's fallback may carry it.

        When the server offers PIPELINING (RFC 2920) MAIL, every RCPT and DATA go in one write and
        their replies are read after it: one round trip for the envelope instead of one each.
        """
        client, phase = self._client, self._tracker.phase
        recipients = list(dict.fromkeys(message.recipients))
        wire = {recipient: a_labels(recipient) for recipient in recipients}
        sender = a_labels(message.envelope_from)
        content = _LINE_ENDINGS.sub(b"\r\n", message.mime)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        with phase("mail"):
            unsendable = self._needing_smtputf8(sender, wire)
            targets = list(dict.fromkeys(wire[r] for r in recipients if r not in unsendable))
            options = self._mail_options(sender, targets, content)
        encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        pipelining = client.supports_extension("pipelining")
        envelope = self._pipelined_envelope if pipelining else self._envelope
        refused, data_reply = await envelope(sender, targets, options, encoding)
        if len(refused) == len(targets):
            await self._reset()
            return SendResult(
                recipients={r: unsendable.get(r) or refused[wire[r]] for r in recipients},
                tls_version=self.tls_version,
            )
        reply = await self._data(_LEADING_DOT.sub(b"..", content), data_reply)
        sent = RecipientResult("sent", reply.code, reply.message)
        results = {r: unsendable.get(r) or refused.get(wire[r], sent) for r in recipients}
        self._transport.event(
            "message %s accepted for %d of %d recipients: %s",
            message.message_id,
            sum(result is sent for result in results.values()),
            len(recipients),
            reply,
        )
        return SendResult(
            recipients=results,
            provider_id=reply.message,
            reply_code=reply.code,
            tls_version=self.tls_version,
        )

    async def _envelope(
        self, sender: str, recipients: list[str], options: list[str], encoding: str
    ) -> tuple[dict[str, RecipientResult], SMTPResponse | None]:
        """MAIL, then RCPT for each recipient, each awaiting its reply; the refused recipients
        (DATA is not sent yet: None)."""
        client, phase = self._client, self._tracker.phase
        with phase("mail"):
            await client.mail(sender, options=options, encoding=encoding)
        refused: dict[str, RecipientResult] = {}
        for recipient in recipients:
            with phase("rcpt"):
                try:
                    await client.rcpt(recipient, encoding=encoding)
                except SMTPRecipientRefused as err:
                    if err.code == 421 or not client.is_connected:
                        raise
                    refused[recipient] = _refusal(err.code, err.message)
        return refused, None

    async def _pipelined_envelope(
        self, sender: str, recipients: list[str], options: list[str], encoding: str
    ) -> tuple[dict[str, RecipientResult], SMTPResponse | None]:
        """MAIL, every RCPT and DATA in one write; the refused recipients and DATA's reply."""
        client, phase = self._client, self._tracker.phase
        mail = b" ".join(
            [b"MAIL FROM:<" + sender.encode(encoding) + b">"]
            + [option.encode("ascii") for option in options]
        )
        commands = [mail, *(b"RCPT TO:<" + r.encode(encoding) + b">" for r in recipients), b"DATA"]
        with phase("mail"):
            protocol = client.protocol
            if protocol is None:
                raise SMTPServerDisconnected("Connection lost")
            protocol.write(b"\r\n".join(commands) + b"\r\n")
            mail_reply = await self._reply(commands[0])
        replies = []
        for command in commands[1:-1]:
            with phase("rcpt"):
                replies.append(await self._reply(command))
        with phase("data"):
            data_reply = await self._reply(commands[-1])
        closing = 421 in (mail_reply.code, *(reply.code for reply in replies), data_reply.code)
        accepted = mail_reply.code == 250 and any(reply.code in (250, 251) for reply in replies)
        if closing or (data_reply.code == 354 and not accepted):
            self.abort()  # the server closes, or wants content for no recipient: end it here
        if mail_reply.code != 250:
            with phase("mail"):
                raise aiosmtplib.SMTPSenderRefused(mail_reply.code, mail_reply.message, sender)
        refused: dict[str, RecipientResult] = {}
        for recipient, reply in zip(recipients, replies, strict=True):
            if reply.code in (250, 251):
                continue
            if reply.code == 421:
                with phase("rcpt"):
                    raise SMTPRecipientRefused(reply.code, reply.message, recipient)
            refused[recipient] = _refusal(reply.code, reply.message)
        return refused, data_reply

    async def _reply(self, command: bytes) -> SMTPResponse:
        """The next reply of a pipelined command, told to the transcript (when debugging)."""
        client = self._client
        protocol = client.protocol
        if protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        if client.transcript is not None:
            client.transcript.client(command)
        reply = await protocol.read_response(timeout=self._transport.socket_timeout)
        if client.transcript is not None:
            client.transcript.server(reply)
        return reply

    async def quit(self) -> SMTPResponse:
        """Send QUIT and close."""
        timeout = min(self._transport.socket_timeout, _QUIT_TIMEOUT_SECONDS)
        try:
            return await self._client.quit(timeout=timeout)
        finally:
            self.abort()

    async def aclose(self) -> None:
        """QUIT if the connection is still up, then close; never raises."""
        if self._client.is_connected:
            with suppress(SMTPException, OSError):
                await self.quit()
        self.abort()

    def abort(self) -> None:
        """Close at once: no QUIT, and no wait for the server's TLS close_notify."""
        # uvloop's TLS transport is no asyncio.WriteTransport subclass, but it has abort()
        abort = getattr(self._wire, "abort", None)
        if abort is not None:
            abort()
        self._client.close()
        if not self._closed:
            self._closed = True
            self._transport.event("connection to %s closed", self._address)

    async def _ehlo(self, step: VerifyStep) -> None:
        client = self._client
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError as err:
            if err.code < 500 or not client.is_connected:
                raise
            await client.helo()
        extensions = [
            f"{key.upper()} {value}".strip() for key, value in client.esmtp_extensions.items()
        ]
        step.data["capabilities"] = extensions
        step.detail = ", ".join(extensions) or "no extensions (HELO)"

    def _tls_established(self, step: VerifyStep) -> None:
        ssl_object = self._client.get_transport_info("ssl_object")
        version: str = ssl_object.version()
        cipher = ssl_object.cipher()
        certificate = ssl_object.getpeercert() or {}
        self._tracker.tls_version = version
        step.detail = f"{version} {cipher[0]}" if cipher else version
        step.data.update(
            protocol=version,
            cipher=cipher[0] if cipher else None,
            subject=_distinguished_name(certificate.get("subject")),
            issuer=_distinguished_name(certificate.get("issuer")),
            notAfter=certificate.get("notAfter"),
        )
        self._transport.event("TLS %s with %s", step.detail, step.data["subject"])

    async def _authenticate(self, method: str, user: str) -> None:
        client, config = self._client, self._transport.config
        if method == "xoauth2":
            tokens = self._transport.tokens
            if tokens is None:
                raise ConfigError("XOAUTH2 needs oauth2 settings", field="oauth2")
            try:
                await client.auth_xoauth2(user, await tokens.get())
            except SMTPAuthenticationError as err:
                if err.code != 535:
                    raise
                tokens.invalidate()
                await client.auth_xoauth2(user, await tokens.get())
            return
        password = _secret(config.pass_) or ""
        if method == "plain":
            await client.auth_plain(user, password)
        elif method == "login":
            await client.auth_login(user, password)
        else:
            await client.auth_crammd5(user, password)

    def _needing_smtputf8(self, sender: str, wire: dict[str, str]) -> dict[str, RecipientResult]:
        """The recipients this server cannot take (a non-ASCII local part, no SMTPUTF8), failed;
        raises UnsupportedFeature when it is the sender's address."""
        if self._client.supports_extension("smtputf8"):
            return {}
        if not sender.isascii():
            raise UnsupportedFeature(
                f"the non-ASCII sender address {sender} (the server does not offer SMTPUTF8)",
                self._transport.name,
            )
        unsendable = {
            recipient: RecipientResult("failed", None, NEEDS_SMTPUTF8)
            for recipient, address in wire.items()
            if not address.isascii()
        }
        if len(unsendable) == len(wire):
            raise UnsupportedFeature(
                "non-ASCII addresses (the server does not offer SMTPUTF8)", self._transport.name
            )
        return unsendable

    def _mail_options(self, sender: str, recipients: list[str], content: bytes) -> list[str]:
        client = self._client
        options = [f"SIZE={len(content)}"] if client.supports_extension("size") else []
        if not all(address.isascii() for address in (sender, *recipients)):
            options.append("SMTPUTF8")
        if not content.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        return options

    async def _reset(self) -> None:
        try:
            await self._client.rset()
        except (SMTPException, OSError):
            self.abort()

    async def _data(self, content: bytes, reply: SMTPResponse | None) -> SMTPResponse:
        """The content and its final reply, after DATA (sent now unless `reply` is its answer)."""
        client, phase = self._client, self._tracker.phase
        timeout = self._transport.socket_timeout
        with phase("data"):
            if reply is None:
                reply = await client.execute_command(b"DATA")
            if reply.code != 354:
                raise SMTPDataError(reply.code, reply.message)
        try:
            with phase("body"):
                protocol = client.protocol
                if protocol is None:
                    raise SMTPServerDisconnected("Connection lost")
                # Written chunk by chunk, each drained, so that a connection lost during the
                # content is told apart from one lost after the final "." (the ambiguous case);
                # the last chunk goes with the "." (one write: small messages are one chunk).
                # A reply that comes early (a 5xx mid-content) is kept for read_response.
                protocol._response_pending = True
                starts = range(0, len(content), _CHUNK_BYTES)
                for start in starts[:-1]:
                    protocol.write(content[start : start + _CHUNK_BYTES])
                    async with asyncio.timeout(timeout):
                        await protocol._drain_helper()
                protocol.write(content[starts[-1] :] + b".\r\n")
                if client.transcript is not None:
                    client.transcript.note(f"<message content, {len(content)} bytes>")
                    client.transcript.client(b".")
            with phase("end-of-data"):
                reply = await protocol.read_response(timeout=timeout)
                if client.transcript is not None:
                    client.transcript.server(reply)
                if reply.code != 250:
                    raise SMTPDataError(reply.code, reply.message)
        except TransportError as err:
            if err.reply_code is None:
                self.abort()
            raise
        except BaseException:
            self.abort()
            raise
        return reply


class _PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, keeping the replies that arrive before they are read.

    aiosmtplib expects one reply per command awaited and drops bytes that arrive while a parsed
    reply waits to be picked up; with PIPELINING several replies come at once, so they are kept in
    the buffer and `read_response` takes the next one from there before waiting for more.

    aiosmtplib builds its own protocol when it connects; `_Connection.handshake` turns it into
    this class right after the greeting and hands it to the transport again, since uvloop's
    transports keep the protocol's bound methods from when they were given it.
    """

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if self._response_pending and waiter is not None and waiter.done():
            self._buffer.extend(data)
            return
        super().data_received(data)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:  # noqa: ASYNC109
        waiter = self._response_waiter
        if waiter is not None and not waiter.done() and self._buffer:
            buffered = self._read_response_from_buffer()
            if buffered is not None:
                return buffered
        return await super().read_response(timeout)


class _Client(aiosmtplib.SMTP):
    """aiosmtplib's client, telling the transcript (when debugging) each command and reply."""

    transcript: _Transcript | None = None

    async def execute_command(
        self,
        *args: bytes,
        timeout: float | Literal[Default.token] | None = Default.token,  # noqa: ASYNC109 (aiosmtplib's signature)
    ) -> SMTPResponse:
        if self.transcript is not None:
            self.transcript.client(*args)
        response = await super().execute_command(*args, timeout=timeout)
        if self.transcript is not None:
            self.transcript.server(response)
        return response


class _Transcript:
    """The SMTP conversation at DEBUG, every credential replaced by REDACTED.

    An AUTH command keeps its mechanism and loses its initial response; a line sent in answer to a
    334 challenge (LOGIN's user and password, CRAM-MD5's digest, XOAUTH2's error reply) is hidden.
    """

    def __init__(self, logger: logging.Logger, label: str) -> None:
        self._logger = logger
        self._label = label
        self._challenged = False

    def client(self, *args: bytes) -> None:
        if self._challenged:
            line = REDACTED
        elif args and args[0].upper() == b"AUTH":
            line = " ".join(arg.decode("ascii", "replace") for arg in args[:2])
            if len(args) > 2:
                line += " " + REDACTED
        else:
            line = b" ".join(args).decode("utf-8", "replace")
        self._logger.debug("%s C: %s", self._label, line)

    def server(self, response: SMTPResponse) -> None:
        self._challenged = response.code == 334
        *first, last = response.message.split("\n")
        lines = [f"{response.code}-{line}" for line in first] + [f"{response.code} {last}"]
        self._logger.debug("%s S: %s", self._label, "\n".join(lines))

    def note(self, text: str) -> None:
        self._logger.debug("%s C: %s", self._label, text)


class _Tracker:
    """Runs each phase of a session: maps its errors (`_translate`) and, in verify, records it."""

    def __init__(
        self,
        report: VerifyReport | None = None,
        *,
        field: str,
        secure: bool = False,
        client_certificate: bool = False,
    ) -> None:
        self.report = report
        self.field = field
        """The setting an egress denial points at: `host`, or `proxy` when one is used."""
        self.secure = secure
        self.client_certificate = client_certificate
        """Whether a client certificate is configured (to read a TLS refusal right)."""
        self.tls_version: str | None = None

    def phase(self, phase: Phase) -> _Phase:
        """`with tracker.phase("mail") as step:` runs one phase; its errors leave it mapped."""
        return _Phase(self, phase)

    def _failed(self, step: VerifyStep, err: TransportError) -> None:
        step.ok = False
        step.detail = str(err)
        if self.report is not None:
            self.report.error_code = err.code


class _Phase:
    """One phase: timed, recorded in a verify report, and its library errors mapped."""

    __slots__ = ("_phase", "_started", "_tracker", "step")

    def __init__(self, tracker: _Tracker, phase: Phase) -> None:
        self._tracker = tracker
        self._phase: Phase = phase
        self.step = VerifyStep(phase, ok=True, duration_ms=0.0)
        self._started = time.perf_counter()

    def __enter__(self) -> VerifyStep:
        return self.step

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, _: object
    ) -> None:
        tracker, step = self._tracker, self.step
        step.duration_ms = round((time.perf_counter() - self._started) * 1000, 1)
        if tracker.report is not None:
            tracker.report.steps.append(step)
        if isinstance(err, TransportError):
            tracker._failed(step, err)
        elif isinstance(err, SMTPException | OSError | ProxyError | EgressDenied | ValueError):
            mapped = _translate(err, self._phase, tracker)
            if mapped is not None:
                tracker._failed(step, mapped)
                raise mapped from err


def _translate(err: Exception, phase: Phase, tracker: _Tracker) -> TransportError | None:
    """The one mapping of aiosmtplib, socket, ssl, proxy and egress errors to TransportError.

    What an admin must fix (a host that does not exist, a certificate that fails verification,
    a TLS refusal of the client certificate, implicit TLS against a plain-text server) is a
    ConfigurationError naming the setting: still retried, and shown on the profile's health.
    None for an error that is not one of these (a bug): it propagates unchanged.
    """
    tls_version, field = tracker.tls_version, tracker.field
    where = _PHASE_TEXT[phase]
    before_data = phase not in _AFTER_DATA
    ambiguous = phase == "end-of-data"
    reply_code = err.code if isinstance(err, SMTPResponseException) and err.code > 0 else None
    reply = err.message if isinstance(err, SMTPResponseException) else None
    if isinstance(err, EgressDenied):
        return ConfigError(err.message, field=field, code="EPOLICY")
    if isinstance(err, socket.gaierror):
        if unknown_host(err):
            return ConfigurationError(f"{where}: {err.strerror or err}", code="EDNS", field=field)
        return TemporaryError(f"{where}: {err.strerror or err}", code="EDNS", before_data=True)
    tls_error = _ssl_cause(err)
    if tls_error is not None or (phase == "tls" and not isinstance(err, TimeoutError)):
        detail = str(tls_error) if tls_error is not None else (reply or str(err))
        setting = _tls_setting(tls_error, tracker) if tls_error is not None else _NOT_CONFIG
        if setting is not _NOT_CONFIG:
            return ConfigurationError(
                f"TLS: {detail}",
                code="ETLS",
                field=setting,
                reply_code=reply_code,
                reply=reply,
                tls_version=tls_version,
            )
        return TemporaryError(
            f"TLS: {detail}",
            code="ETLS",
            reply_code=reply_code,
            reply=reply,
            before_data=before_data,
            tls_version=tls_version,
        )
    if _lost_after_handshake(err, phase, tracker):
        return ConfigurationError(
            f"{where}: {CLOSED_AFTER_HANDSHAKE}", code="ETLS", field="clientCertificate"
        )
    if isinstance(err, TimeoutError):
        return TemporaryError(
            f"{where}: timed out",
            code="ETIMEDOUT",
            before_data=before_data,
            ambiguous=ambiguous,
            tls_version=tls_version,
        )
    if phase == "auth" and isinstance(err, SMTPException) and not isinstance(err, OSError):
        return CredentialsError(
            f"{where}: the server refused the credentials",
            code="EAUTH",
            reply_code=reply_code,
            reply=reply,
            before_data=True,
            tls_version=tls_version,
        )
    if isinstance(err, SMTPResponseException):
        permanent = reply_code is not None and reply_code >= 500 and phase in _PERMANENT_ON_5XX
        return (PermanentError if permanent else TemporaryError)(
            f"{where}: refused" if reply_code is not None else f"{where}: {err.message}",
            code=_REPLY_ERROR_CODES.get(phase, "EPROTOCOL"),
            reply_code=reply_code,
            reply=reply,
            before_data=before_data,
            ambiguous=ambiguous and reply_code is None,
            tls_version=tls_version,
        )
    if isinstance(err, OSError | ProxyError):
        cause = err.__cause__ if isinstance(err, SMTPConnectError) else None
        return TemporaryError(
            f"{where}: {cause or err}",
            code="ECONNECTION",
            before_data=before_data,
            ambiguous=ambiguous,
            tls_version=tls_version,
        )
    if isinstance(err, SMTPException):
        return TemporaryError(
            f"{where}: {err.message}",
            code="EPROTOCOL",
            before_data=before_data,
            tls_version=tls_version,
        )
    if isinstance(err, ValueError) and phase in ("mail", "rcpt"):
        return PermanentError(f"{where}: {err}", code="EENVELOPE", before_data=True)
    return None


_NOT_CONFIG = "<not a configuration error>"
_CLIENT_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)
"""The server's TLS alerts about our client certificate: missing, or not trusted."""
_TLS_SETTINGS: dict[str, str | None] = {
    **dict.fromkeys(_CLIENT_CERTIFICATE_ALERTS, "clientCertificate"),
    # TLS 1.2 servers answer a missing client certificate (or no common cipher) with this
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "clientCertificate",
    # a plain-text reply (the 220 greeting) read as a TLS record: implicit TLS on a STARTTLS port
    "WRONG_VERSION_NUMBER": "secure",
    "RECORD_LAYER_FAILURE": "secure",
    "PACKET_LENGTH_TOO_LONG": "secure",
    # the server speaks only TLS older than 1.2
    "TLSV1_ALERT_PROTOCOL_VERSION": None,
    "UNSUPPORTED_PROTOCOL": None,
    "NO_PROTOCOLS_AVAILABLE": None,
}
"""TLS failures an admin must fix, by OpenSSL reason, and the setting to look at."""

NEEDS_SMTPUTF8 = (
    "not sent: the address has a non-ASCII local part, which needs SMTPUTF8, and the server "
    "does not offer it"
)
NO_STARTTLS = "requireTLS is set and the server does not offer STARTTLS"
CLOSED_AFTER_HANDSHAKE = (
    "the server closed the connection right after the TLS handshake; it may require a client "
    "certificate (clientCertificate and clientKey)"
)
"""Read by the hints (app/delivery/probe.py): what the server did, in the error's message."""


def _tls_setting(error: ssl.SSLError, tracker: _Tracker) -> str | None:
    """The setting to fix for a TLS failure that is a configuration error, None when no one
    setting is at fault, or _NOT_CONFIG when it is not a configuration error."""
    if isinstance(error, ssl.SSLCertVerificationError):
        mismatch = "mismatch" in (error.verify_message or "")
        return "host" if mismatch else "caCertificates"
    reason = error.reason or ""
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and tracker.client_certificate:
        return None  # a certificate was sent: more likely no common cipher or version
    return _TLS_SETTINGS.get(reason, _NOT_CONFIG)


def _lost_after_handshake(err: Exception, phase: Phase, tracker: _Tracker) -> bool:
    """The connection closed by the server just after TLS was set up and before it said a word:
    a TLS 1.3 server refusing a missing client certificate does that (its alert may be lost).
    Only said when no client certificate is configured."""
    if tracker.client_certificate or not isinstance(err, SMTPServerDisconnected | SMTPConnectError):
        return False
    lost = err if isinstance(err, SMTPServerDisconnected) else err.__cause__
    if not isinstance(lost, SMTPServerDisconnected):
        return False
    after_starttls = phase == "ehlo" and tracker.tls_version is not None and not tracker.secure
    return after_starttls or (phase == "greeting" and tracker.secure)


def _ssl_cause(err: BaseException) -> ssl.SSLError | None:
    current: BaseException | None = err
    for _ in range(10):
        if current is None or isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__
    return None


@dataclass(frozen=True, slots=True)
class _ProxyUrl:
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> _ProxyUrl:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _PROXY_SCHEMES or not parts.hostname or _BLANK.search(url):
            raise ConfigError(
                "must be a socks5://, socks5h://, socks4://, socks4a:// or http:// URL: "
                "scheme://[user:password@]host[:port]",
                field="proxy",
            )
        try:
            port = parts.port or _PROXY_SCHEMES[scheme][2]
        except ValueError as err:
            raise ConfigError("proxy has an invalid port", field="proxy") from err
        return cls(
            scheme,
            parts.hostname,
            port,
            unquote(parts.username) if parts.username is not None else None,
            unquote(parts.password) if parts.password is not None else None,
        )

    @property
    def display(self) -> str:
        """The URL without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def connect(self, addresses: list[str], host: str, port: int) -> socket.socket:
        """A socket tunnelled to host:port through the proxy at the first address that answers.

        HTTP CONNECT is done here (app/transports/proxy.py) so that the server's greeting, when it
        comes in the proxy's 200 segment, is not lost; SOCKS goes through python-socks."""
        proxy_type, remote_dns, _ = _PROXY_SCHEMES[self.scheme]
        if proxy_type is ProxyType.HTTP:
            tunnel = await _tcp_connect(addresses, self.port)
            try:
                await http_tunnel(
                    tunnel,
                    host,
                    port,
                    username=self.username,
                    password=self.password,
                    proxy=f"the proxy {self.display}",
                )
            except BaseException:
                tunnel.close()
                raise
            return tunnel
        error: OSError = OSError(f"no address for the proxy {self.display}")
        for address in addresses:
            proxy = Proxy(
                proxy_type, address, self.port, self.username, self.password, rdns=remote_dns
            )
            try:
                sock: socket.socket = await proxy.connect(host, port)
            except OSError as err:
                error = err
            else:
                return sock
        raise error


async def _tcp_connect(addresses: list[str], port: int) -> socket.socket:
    """A TCP socket connected to the first of `addresses` that accepts."""
    loop = asyncio.get_running_loop()
    error: OSError = OSError("no address to connect to")
    for address in addresses:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (address, port))
        except OSError as err:
            sock.close()
            error = err
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    raise error


def _tls_context(config: SmtpConfig) -> ssl.SSLContext:
    """TLS 1.2 or later with verified certificates; `caCertificates` replaces the system CAs."""
    if config.ca_certificates is None:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=config.ca_certificates)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.client_certificate is not None and config.client_key is not None:
        _load_client_certificate(
            context, config.client_certificate, config.client_key.get_secret_value()
        )
    return context


def _load_client_certificate(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """ssl loads a certificate chain only from a file: a 0600 temporary one, removed at once."""
    fd, path = tempfile.mkstemp(prefix="postroom-", suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(f"{certificate.strip()}\n{key.strip()}\n")
        context.load_cert_chain(path)
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError(
            "clientCertificate and clientKey are not a matching PEM certificate and key",
            field="clientKey",
        ) from err
    finally:
        os.unlink(path)


def _refusal(code: int, text: str) -> RecipientResult:
    """A refused RCPT: rejected on a 5xx, retried on a 4xx."""
    status: RecipientStatus = "rejected" if code >= 500 else "deferred"
    return RecipientResult(status, code, text)


def _check_envelope(message: OutgoingMessage) -> None:
    if not message.recipients:
        raise PermanentError("the message has no recipients", code="EENVELOPE", before_data=True)
    for address in (message.envelope_from, *message.recipients):
        if _NOT_IN_ENVELOPE.search(address):
            raise PermanentError(
                f"invalid envelope address {address!r}", code="EENVELOPE", before_data=True
            )


def _distinguished_name(value: object) -> str | None:
    """`getpeercert()`'s (((name, value),), ...) as "commonName=x, organizationName=y"."""
    if not isinstance(value, tuple):
        return None
    return ", ".join(
        f"{pair[0]}={pair[1]}"
        for rdn in value
        if isinstance(rdn, tuple)
        for pair in rdn
        if isinstance(pair, tuple) and len(pair) == 2
    )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
