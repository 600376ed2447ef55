"""The SMTP transport of one profile: a connection per send, or a pool of them, and verify."""

from __future__ import annotations

import asyncio
from contextlib import suppress

from app.transports.base import (
    OutgoingMessage,
    TransportContext,
    VerifyReport,
    refuse_options,
)
from app.transports.errors import TemporaryError, TransportError
from app.transports.oauth import TokenCache, TokenRequest
from app.transports.pool import ConnectionPool, PoolClosed
from app.transports.result import SendResult
from app.transports.smtp.client import Transcript
from app.transports.smtp.config import SmtpConfig, secret
from app.transports.smtp.connect import TlsContext, address_literal, machine_name, open_socket
from app.transports.smtp.envelope import check_envelope
from app.transports.smtp.session import Connection, SessionOptions
from app.transports.smtp.translate import Tracker

_MAX_IDLE_SECONDS = 30.0


def create(name: str, config: SmtpConfig, context: TransportContext) -> SmtpTransport:
    """Build the SMTP transport of one server profile."""
    return SmtpTransport(name, config, context)


class SmtpTransport:
    """Sends through one SMTP server, with nodemailer's options (see SmtpConfig).

    Without `pool` every send opens a connection, sends and QUITs. With `pool`, up to
    `maxConnections` connections stay open, each for at most `maxMessages` messages, closed after
    min(30 s, socketTimeout) idle and on `aclose`.

    Timeouts: `connectionTimeout` bounds DNS and TCP (or the proxy's handshake); `greetingTimeout`
    the 220, and with `secure` also the TLS handshake before it (both within one timeout);
    `socketTimeout` every later reply, STARTTLS's handshake and each write of the content.
    """

    def __init__(self, name: str, config: SmtpConfig, context: TransportContext) -> None:
        self.name = name
        self.config = config
        self._context = context
        self._ehlo_name = config.name or context.hostname
        """The EHLO name when set (the profile's `name`, else POSTROOM_HOSTNAME)."""
        self._machine_name: str | None = None
        """This machine's name when it is a real one ("" when it is not: use the address)."""
        self._sessions = 0
        tokens: TokenCache | None = None
        if config.oauth2 is not None:
            oauth2 = config.oauth2
            tokens = TokenCache(
                context.http,
                TokenRequest(
                    token_url=oauth2.token_url,
                    client_id=oauth2.client_id,
                    client_secret=secret(oauth2.client_secret),
                    scope=oauth2.scope,
                    refresh_token=secret(oauth2.refresh_token),
                    provider="the OAuth2 token endpoint (oauth2.tokenUrl)",
                    credentials_fix="check oauth2.clientId and oauth2.clientSecret"
                    + (" and oauth2.refreshToken" if oauth2.refresh_token else ""),
                    url_setting="oauth2.tokenUrl",
                ),
            )
        self._options = SessionOptions(
            name=name,
            config=config,
            tls=TlsContext(config),
            tokens=tokens,
            events=context.logger if config.logger else None,
        )
        self._pool: ConnectionPool[Connection] | None = None
        if config.pool:
            self._pool = ConnectionPool(
                self._connect,
                max_connections=config.max_connections,
                max_uses=config.max_messages,
                idle_timeout=min(_MAX_IDLE_SECONDS, self._options.socket_timeout),
            )

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send one message; a status per recipient, or a TransportError if it failed as a whole."""
        refuse_options(message, "SMTP")
        check_envelope(message)
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

    def _tracker(self, report: VerifyReport | None = None) -> Tracker:
        config = self.config
        return Tracker(
            report,
            field="proxy" if config.proxy else "host",
            secure=config.secure,
            client_certificate=config.client_certificate is not None,
        )

    async def _connect(self, tracker: Tracker | None = None) -> Connection:
        config = self.config
        if tracker is None:
            tracker = self._tracker()
        sock = await open_socket(config, self._context.egress, tracker)
        try:
            ehlo_name = self._ehlo_name
            if ehlo_name is None:
                if self._machine_name is None:
                    self._machine_name = await asyncio.to_thread(machine_name)
                ehlo_name = self._machine_name or address_literal(sock.getsockname()[0])
            self._sessions += 1
            transcript = None
            if config.debug:
                label = f"smtp {self.name} #{self._sessions}"
                transcript = Transcript(self._context.logger, label)
            return await Connection.open(
                self._options, tracker, sock, ehlo_name=ehlo_name, transcript=transcript
            )
        except BaseException:
            sock.close()
            raise
