"""One SMTP session: the greeting, EHLO, STARTTLS and AUTH, then one transaction per message
(transaction.py), and the close.

A connection knows its profile through SessionOptions, a small frozen object the transport builds
once, not through the transport itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import suppress
from dataclasses import dataclass

from app.transports.base import OutgoingMessage, VerifyStep
from app.transports.errors import ConfigError, ConfigurationError
from app.transports.oauth import TokenCache
from app.transports.result import SendResult
from app.transports.smtp.client import Client, Transcript
from app.transports.smtp.config import SmtpConfig, auth_plan, secret
from app.transports.smtp.connect import TlsContext
from app.transports.smtp.transaction import deliver
from app.transports.smtp.translate import NO_STARTTLS, Tracker
from app.transports.smtp.wire import Reply, ReplyError, SmtpError, Wire


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What a connection needs of its profile, shared by all its connections."""

    name: str
    """The profile's name, for the events and UnsupportedFeature."""
    config: SmtpConfig
    tls: TlsContext
    tokens: TokenCache | None
    """XOAUTH2's access tokens, when the profile has oauth2 settings."""
    events: logging.Logger | None
    """Where connection events go, when the profile's `logger` is on."""

    @property
    def socket_timeout(self) -> float:
        """socketTimeout in seconds: the longest wait for any reply once greeted."""
        return self.config.socket_timeout / 1000

    def event(self, message: str, *args: object) -> None:
        """Log a connection event at INFO when the profile's `logger` is on."""
        if self.events is not None:
            self.events.info("smtp %s: " + message, self.name, *args)


class Connection:
    """One SMTP session: greeted, TLS and AUTH done, then one transaction per send."""

    def __init__(self, options: SessionOptions, client: Client, tracker: Tracker) -> None:
        self._options = options
        self._client = client
        self._tracker = tracker
        self._address = f"{options.config.host}:{options.config.effective_port}"
        self._closed = False

    @classmethod
    async def open(
        cls,
        options: SessionOptions,
        tracker: Tracker,
        sock: socket.socket,
        *,
        ehlo_name: str,
        transcript: Transcript | None,
    ) -> Connection:
        """A session on the connected socket: greeting (with `secure`, TLS first, both within
        greetingTimeout), EHLO, STARTTLS as configured, EHLO again, AUTH."""
        config = options.config
        wire: Wire | None = None
        with tracker.phase("greeting") as step:
            context = await options.tls.get() if config.secure else None
            timeout = config.greeting_timeout / 1000
            try:
                async with asyncio.timeout(timeout):
                    wire = await Wire.open(
                        sock, tls=context, server_hostname=config.host, handshake_timeout=timeout
                    )
                    client = Client(wire, timeout=options.socket_timeout, transcript=transcript)
                    step.detail = str(await client.greeting())
            except BaseException:
                if wire is not None:
                    wire.abort()
                raise
        connection = cls(options, client, tracker)
        options.event("connected to %s", connection._address)
        try:
            await connection._handshake(ehlo_name)
        except Exception:
            await connection.aclose()
            raise
        except BaseException:
            connection.abort()
            raise
        return connection

    @property
    def alive(self) -> bool:
        return self._client.wire.alive

    async def deliver(self, message: OutgoingMessage) -> SendResult:
        """One transaction (transaction.py): a status per recipient."""
        result = await deliver(self._client, self._tracker, message, self._options.name)
        if result.reply_code is not None:
            self._options.event(
                "message %s accepted for %d of %d recipients: %d %s",
                message.message_id,
                sum(r.status == "sent" for r in result.recipients.values()),
                len(result.recipients),
                result.reply_code,
                result.provider_id,
            )
        return result

    async def quit(self) -> Reply:
        """Send QUIT and close."""
        try:
            return await self._client.quit()
        finally:
            self.abort()

    async def aclose(self) -> None:
        """QUIT if the connection is still up, then close; never raises."""
        if not self._client.wire.closed:
            with suppress(SmtpError, OSError):
                await self.quit()
        self.abort()

    def abort(self) -> None:
        """Close at once: no QUIT, and no wait for the server's TLS close_notify."""
        self._client.wire.abort()
        if not self._closed:
            self._closed = True
            self._options.event("connection to %s closed", self._address)

    async def _handshake(self, ehlo_name: str) -> None:
        options, config, client = self._options, self._options.config, self._client
        phase = self._tracker.phase
        if config.secure:
            with phase("tls") as step:
                self._tls_established(step)
                step.detail += " (implicit TLS, negotiated while connecting)"
        with phase("ehlo") as step:
            await self._ehlo(step, ehlo_name)
        if not config.secure and not config.ignore_tls:
            if client.supports("starttls"):
                with phase("tls") as step:
                    await client.starttls(await options.tls.get(), config.host)
                    self._tls_established(step)
                with phase("ehlo") as step:
                    await self._ehlo(step, ehlo_name)
            elif config.require_tls:
                with phase("tls"):
                    raise ConfigurationError(f"TLS: {NO_STARTTLS}", code="ETLS", field="requireTLS")
        plan = auth_plan(config, client.auth_methods)
        if plan is not None:
            method, user = plan
            with phase("auth") as step:
                await self._authenticate(method, user)
                step.detail = f"{user} with {method.upper()}"
            options.event("authenticated as %s with %s", user, method.upper())

    async def _ehlo(self, step: VerifyStep, name: str) -> None:
        client = self._client
        try:
            await client.ehlo(name)
        except ReplyError as err:
            if err.code < 500 or client.wire.closed:
                raise
            await client.helo(name)
        extensions = [f"{key.upper()} {value}".strip() for key, value in client.extensions.items()]
        step.data["capabilities"] = extensions
        step.detail = ", ".join(extensions) or "no extensions (HELO)"

    def _tls_established(self, step: VerifyStep) -> None:
        ssl_object = self._client.wire.ssl_object
        if ssl_object is None:
            raise SmtpError("no TLS after the handshake")
        version = ssl_object.version() or "unknown"
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
        self._options.event("TLS %s with %s", step.detail, step.data["subject"])

    async def _authenticate(self, method: str, user: str) -> None:
        client, config = self._client, self._options.config
        if method == "xoauth2":
            tokens = self._options.tokens
            if tokens is None:
                raise ConfigError("XOAUTH2 needs oauth2 settings", field="oauth2")
            try:
                await client.auth_xoauth2(user, await tokens.get())
            except ReplyError as err:
                if err.code != 535:
                    raise
                tokens.invalidate()
                await client.auth_xoauth2(user, await tokens.get())
            return
        password = secret(config.pass_) or ""
        if method == "plain":
            await client.auth_plain(user, password)
        elif method == "login":
            await client.auth_login(user, password)
        else:
            await client.auth_cram_md5(user, password)


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
