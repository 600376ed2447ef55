"""One SMTP session: the greeting, EHLO, STARTTLS and AUTH, then one transaction per message
(MAIL, RCPT, DATA, pipelined when the server offers it), and the close.

A connection knows its profile through SessionOptions, a small frozen object the transport builds
once, not through the transport itself.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponse,
    SMTPServerDisconnected,
)

from app.schemas import a_labels
from app.transports.base import OutgoingMessage, VerifyStep
from app.transports.errors import ConfigError, ConfigurationError, TransportError
from app.transports.oauth import TokenCache
from app.transports.result import RecipientResult, SendResult
from app.transports.smtp.client import Client, PipeliningProtocol
from app.transports.smtp.config import SmtpConfig, auth_plan, secret
from app.transports.smtp.connect import TlsContext
from app.transports.smtp.envelope import (
    crlf_content,
    dot_stuffed,
    mail_options,
    needing_smtputf8,
    refusal,
)
from app.transports.smtp.translate import NO_STARTTLS, Tracker

_CHUNK_BYTES = 64 * 1024
_QUIT_TIMEOUT_SECONDS = 5.0


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
        options, config, client = self._options, self._options.config, self._client
        phase = self._tracker.phase
        with phase("greeting") as step:
            context = await options.tls.get() if config.secure else None
            greeting = await client.connect(
                timeout=config.greeting_timeout / 1000, tls_context=context
            )
            self._wire = client.transport
            if client.protocol is not None and client.transport is not None:
                client.protocol.__class__ = PipeliningProtocol
                client.transport.set_protocol(client.protocol)
            step.detail = str(greeting)
            if client.transcript is not None:
                client.transcript.server(greeting)
        options.event("connected to %s", self._address)
        if config.secure:
            with phase("tls") as step:
                self._tls_established(step)
                step.detail += " (implicit TLS, negotiated while connecting)"
        with phase("ehlo") as step:
            await self._ehlo(step)
        if not config.secure and not config.ignore_tls:
            if client.supports_extension("starttls"):
                with phase("tls") as step:
                    context = await options.tls.get()
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
        plan = auth_plan(config, client.server_auth_methods)
        if plan is not None:
            method, user = plan
            with phase("auth") as step:
                await self._authenticate(method, user)
                step.detail = f"{user} with {method.upper()}"
            options.event("authenticated as %s with %s", user, method.upper())

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
        content = crlf_content(message.mime)
        extensions = client.esmtp_extensions
        with phase("mail"):
            unsendable = needing_smtputf8(sender, wire, extensions, self._options.name)
            targets = list(dict.fromkeys(wire[r] for r in recipients if r not in unsendable))
            parameters = mail_options(sender, targets, content, extensions)
        encoding = "utf-8" if "SMTPUTF8" in parameters else "ascii"
        pipelining = client.supports_extension("pipelining")
        envelope = self._pipelined_envelope if pipelining else self._envelope
        refused, data_reply = await envelope(sender, targets, parameters, encoding)
        if len(refused) == len(targets):
            await self._reset()
            return SendResult(
                recipients={r: unsendable.get(r) or refused[wire[r]] for r in recipients},
                tls_version=self.tls_version,
            )
        reply = await self._data(dot_stuffed(content), data_reply)
        sent = RecipientResult("sent", reply.code, reply.message)
        results = {r: unsendable.get(r) or refused.get(wire[r], sent) for r in recipients}
        self._options.event(
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
                    refused[recipient] = refusal(err.code, err.message)
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
            refused[recipient] = refusal(reply.code, reply.message)
        return refused, data_reply

    async def _reply(self, command: bytes) -> SMTPResponse:
        """The next reply of a pipelined command, told to the transcript (when debugging)."""
        client = self._client
        protocol = client.protocol
        if protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        if client.transcript is not None:
            client.transcript.client(command)
        reply = await protocol.read_response(timeout=self._options.socket_timeout)
        if client.transcript is not None:
            client.transcript.server(reply)
        return reply

    async def quit(self) -> SMTPResponse:
        """Send QUIT and close."""
        timeout = min(self._options.socket_timeout, _QUIT_TIMEOUT_SECONDS)
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
            self._options.event("connection to %s closed", self._address)

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
        self._options.event("TLS %s with %s", step.detail, step.data["subject"])

    async def _authenticate(self, method: str, user: str) -> None:
        client, config = self._client, self._options.config
        if method == "xoauth2":
            tokens = self._options.tokens
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
        password = secret(config.pass_) or ""
        if method == "plain":
            await client.auth_plain(user, password)
        elif method == "login":
            await client.auth_login(user, password)
        else:
            await client.auth_crammd5(user, password)

    async def _reset(self) -> None:
        try:
            await self._client.rset()
        except (SMTPException, OSError):
            self.abort()

    async def _data(self, content: bytes, reply: SMTPResponse | None) -> SMTPResponse:
        """The content and its final reply, after DATA (sent now unless `reply` is its answer)."""
        client, phase = self._client, self._tracker.phase
        timeout = self._options.socket_timeout
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
