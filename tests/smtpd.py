"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 in its own thread, recording everything.

Use the fixtures (register them with `pytest_plugins = ["tests.smtpd"]`):

    def test_x(smtp_server_factory):
        server = smtp_server_factory(tls="starttls", users={"alice": "secret"})
        config = server.config(user="alice", pass_="secret", ca_certificates=server.ca_pem)
        ...  # send through an SmtpTransport built from `config`
        [transaction] = server.transactions        # envelope, raw data, TLS version, AUTH user
        assert "AUTH" in server.sessions[0].verbs  # every command each session sent

Behaviour is set with constructor arguments and may be changed while the server runs:
`replies` overrides the answer at a stage ({"MAIL": "451 4.3.0 try later", "DATA_END": DROP}),
`rcpt_replies` per recipient, `delays` waits before answering a stage, `greeting_delay` stalls the
220, `drop_mid_data_after` closes the connection after that many bytes of DATA content.
Stages: greeting, EHLO, HELO, STARTTLS, AUTH, MAIL, RCPT, DATA (the 354), DATA_END (the reply to
the final "."), RSET, NOOP, QUIT.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
import warnings
from base64 import b64decode
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, AnyStr, Literal, Self, cast

import httpx
import pytest
import trustme
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from app.egress import EgressPolicy
from app.transports.base import Address, Content, OutgoingMessage, TransportContext
from app.transports.smtp import SmtpConfig

DROP = "<drop>"
"""As a reply: close the connection instead of answering."""

TlsMode = Literal["none", "starttls", "implicit"]
_MECHANISMS = frozenset({"PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2"})


@dataclass
class Transaction:
    """One message the server accepted (or received before dropping the connection)."""

    session: int
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    """The content as received: CRLF line ends, dot-stuffing undone."""
    mail_options: list[str]
    tls_version: str | None
    authenticated_as: str | None
    received_at: float = field(default_factory=time.monotonic)
    """When the server took it (time.monotonic), for tests that measure a rate."""

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class SessionRecord:
    """One TCP connection as the server saw it."""

    id: int
    peer: Any
    commands: list[str] = field(default_factory=list)
    """Each command line with its argument, AUTH initial responses included."""
    waiting: list[bytes] = field(default_factory=list)
    """For each command, what the client had already sent after it (pipelined commands)."""
    tls_version: str | None = None
    client_certificate: dict[str, Any] | None = None
    authenticated_as: str | None = None
    transactions: int = 0
    closed: bool = False

    @property
    def verbs(self) -> list[str]:
        return [command.split(" ", 1)[0] for command in self.commands]


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 and a free port, in a thread with its own event loop."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        tls: TlsMode = "none",
        ca: trustme.CA | None = None,
        certificate: trustme.LeafCert | None = None,
        require_client_certificate: bool = False,
        max_tls_version: ssl.TLSVersion | None = None,
        auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        auth_require_tls: bool = False,
        users: dict[str, str] | None = None,
        oauth_tokens: dict[str, str] | None = None,
        replies: dict[str, str] | None = None,
        rcpt_replies: dict[str, str] | None = None,
        delays: dict[str, float] | None = None,
        greeting_delay: float = 0.0,
        drop_mid_data_after: int | None = None,
        require_starttls: bool = False,
        pipelining: bool = True,
        smtputf8: bool = True,
        hostname: str = "smtp.test",
    ) -> None:
        if tls != "none" and (ca is None or certificate is None):
            raise ValueError("a TLS server needs `ca` and `certificate`")
        if not set(auth_mechanisms) <= _MECHANISMS:
            raise ValueError(f"auth_mechanisms must be among {sorted(_MECHANISMS)}")
        self.tls = tls
        self.ca = ca
        self.certificate = certificate
        self.require_client_certificate = require_client_certificate
        self.max_tls_version = max_tls_version
        self.auth_mechanisms = auth_mechanisms
        self.auth_require_tls = auth_require_tls
        self.users = users if users is not None else {}
        """login -> password, for PLAIN, LOGIN and CRAM-MD5."""
        self.oauth_tokens = oauth_tokens if oauth_tokens is not None else {}
        """user -> the access token XOAUTH2 accepts."""
        self.replies = replies if replies is not None else {}
        self.rcpt_replies = rcpt_replies if rcpt_replies is not None else {}
        self.delays = delays if delays is not None else {}
        self.greeting_delay = greeting_delay
        self.drop_mid_data_after = drop_mid_data_after
        self.require_starttls = require_starttls
        self.pipelining = pipelining
        """Offer PIPELINING, as every mainstream server does (aiosmtpd reads one command at a
        time, so it takes pipelined commands as they come)."""
        self.smtputf8 = smtputf8
        """Offer SMTPUTF8 (RFC 6531); without it, non-ASCII in commands is refused."""
        self.hostname = hostname
        self.port = 0
        self.open_sessions = 0
        self.max_open_sessions = 0
        self._sessions: list[SessionRecord] = []
        self._transactions: list[Transaction] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._protocols: set[_RecordingSMTP] = set()
        self._error: BaseException | None = None

    @property
    def sessions(self) -> list[SessionRecord]:
        with self._lock:
            return list(self._sessions)

    @property
    def transactions(self) -> list[Transaction]:
        with self._lock:
            return list(self._transactions)

    @property
    def ca_pem(self) -> str:
        """The CA that signed the server certificate, as `caCertificates` takes it."""
        if self.ca is None:
            raise ValueError("this server has no CA")
        return str(self.ca.cert_pem.bytes().decode())

    def config(self, **overrides: Any) -> SmtpConfig:
        """An SmtpConfig pointing at this server; `overrides` by field name or camelCase alias."""
        return SmtpConfig.model_validate({"host": self.host, "port": self.port, **overrides})

    def disconnect_all(self) -> None:
        """Close every open connection from the server side, as an idle timeout would."""
        assert self._loop is not None
        for protocol in list(self._protocols):
            self._loop.call_soon_threadsafe(protocol.abort)

    async def wait_until(self, predicate: Callable[[], bool], within: float = 2.0) -> None:
        """Wait (without blocking the caller's loop) until `predicate()` holds, or fail."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("the SMTP server did not reach the expected state")
            await asyncio.sleep(0.01)

    def start(self) -> Self:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="smtpd", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the SMTP server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        implicit = self._server_tls_context() if self.tls == "implicit" else None
        try:
            server = loop.run_until_complete(
                loop.create_server(self._factory, self.host, 0, ssl=implicit)
            )
        except OSError as err:
            self._error = err
            loop.close()
            ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._shutdown(server))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        # Python 3.11's wait_closed does not wait for accepted connections, and one still in its
        # TLS handshake has no protocol yet: abort until the server counts none left open.
        deadline = time.monotonic() + 2.0
        while True:
            for protocol in list(self._protocols):
                protocol.abort()
            await asyncio.sleep(0.01)
            if not getattr(server, "_active_count", 0) or time.monotonic() > deadline:
                break
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def _factory(self) -> _RecordingSMTP:
        excluded = _MECHANISMS - set(self.auth_mechanisms)
        handler = RecordingHandler(self)
        return _RecordingSMTP(
            self,
            handler,
            hostname=self.hostname,
            tls_context=self._server_tls_context() if self.tls == "starttls" else None,
            require_starttls=self.require_starttls,
            auth_require_tls=self.auth_require_tls,
            auth_exclude_mechanism=excluded,
            authenticator=handler.authenticate,
            enable_SMTPUTF8=self.smtputf8,
            loop=self._loop,
        )

    def _server_tls_context(self) -> ssl.SSLContext:
        assert self.certificate is not None
        assert self.ca is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.certificate.configure_cert(context)
        if self.require_client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(context)
        if self.max_tls_version is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
                context.maximum_version = self.max_tls_version
        return context

    def _opened(self, protocol: _RecordingSMTP, peer: Any) -> SessionRecord:
        with self._lock:
            record = SessionRecord(len(self._sessions) + 1, peer)
            self._sessions.append(record)
            self._protocols.add(protocol)
            self.open_sessions += 1
            self.max_open_sessions = max(self.max_open_sessions, self.open_sessions)
        return record

    def _closed(self, protocol: _RecordingSMTP, record: SessionRecord) -> None:
        with self._lock:
            record.closed = True
            self._protocols.discard(protocol)
            self.open_sessions -= 1

    def _received(self, record: SessionRecord, envelope: Envelope) -> Transaction:
        with self._lock:
            record.transactions += 1
            transaction = Transaction(
                session=record.id,
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content or b"",
                mail_options=list(envelope.mail_options),
                tls_version=record.tls_version,
                authenticated_as=record.authenticated_as,
            )
            self._transactions.append(transaction)
        return transaction


class RecordingHandler:
    """aiosmtpd hooks: per-recipient and end-of-data replies, the AUTH mechanisms, recording."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self.server.auth_mechanisms:
            responses = [line for line in responses if not line[4:].upper().startswith("AUTH")]
        if self.server.pipelining:
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.server.rcpt_replies.get(address)
        if reply == DROP:
            cast(_RecordingSMTP, smtp).drop_next_reply()
        elif reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        protocol = cast(_RecordingSMTP, smtp)
        await asyncio.sleep(self.server.delays.get("DATA_END", 0.0))
        transaction = self.server._received(protocol.record, envelope)
        reply = self.server.replies.get("DATA_END")
        if reply == DROP:
            protocol.drop_next_reply()
        elif reply is not None:
            return reply
        return f"250 2.0.0 OK queued as Q{transaction.session}x{protocol.record.transactions}"

    def authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        credentials = cast(LoginPassword, data)
        login = credentials.login.decode()
        accepted = self.server.users.get(login) == credentials.password.decode()
        return self._result(smtp, login if accepted else None)

    async def auth_CRAM__MD5(self, smtp: SMTP, args: list[str]) -> AuthResult:
        challenge = f"<{secrets.token_hex(8)}@{self.server.hostname}>".encode()
        response = await smtp.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        login, _, digest = response.decode().rpartition(" ")
        password = self.server.users.get(login)
        expected = hmac.new(password.encode(), challenge, "md5").hexdigest() if password else ""
        accepted = password is not None and hmac.compare_digest(expected, digest)
        return self._result(smtp, login if accepted else None)

    async def auth_XOAUTH2(self, smtp: SMTP, args: list[str]) -> AuthResult:
        if len(args) < 2:
            await smtp.push("501 5.5.2 XOAUTH2 needs an initial response")
            return AuthResult(success=False, handled=True)
        fields = dict(
            part.split("=", 1) for part in b64decode(args[1]).decode().split("\x01") if "=" in part
        )
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        if user in self.server.oauth_tokens and self.server.oauth_tokens[user] == token:
            return self._result(smtp, user)
        error = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        await smtp.challenge_auth(json.dumps(error))
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )

    def _result(self, smtp: SMTP, user: str | None) -> AuthResult:
        if user is None:
            return AuthResult(success=False, handled=False)
        cast(_RecordingSMTP, smtp).record.authenticated_as = user
        return AuthResult(success=True, auth_data=user)


class _RecordingSMTP(SMTP):
    """aiosmtpd's protocol, recording each command and applying the server's stage behaviour."""

    def __init__(self, server: SmtpServer, handler: RecordingHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._server = server
        self._record: SessionRecord | None = None
        self._dropping = False
        self._smtp_methods = {
            verb: self._staged(verb, method) for verb, method in self._smtp_methods.items()
        }

    @property
    def record(self) -> SessionRecord:
        assert self._record is not None
        return self._record

    def drop_next_reply(self) -> None:
        """Close the connection instead of sending the next reply (and any after it)."""
        self._dropping = True

    def abort(self) -> None:
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None
        super().connection_made(transport)
        if first:
            self._record = self._server._opened(self, transport.get_extra_info("peername"))

    def connection_lost(self, error: Exception | None) -> None:
        if self._record is not None:
            self._server._closed(self, self._record)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if self._dropping:
            self.abort()
            return
        await super().push(status)

    async def _handle_client(self) -> None:
        await asyncio.sleep(self._server.greeting_delay)
        reply = self._server.replies.get("greeting")
        if reply is None:
            await super()._handle_client()
            return
        if reply != DROP:
            await super().push(reply)
        self.abort()

    def _staged(
        self, verb: str, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        async def run(arg: str | None) -> None:
            self._note(verb, arg)
            await asyncio.sleep(self._server.delays.get(verb, 0.0))
            reply = self._server.replies.get(verb)
            if verb == "DATA" and reply is None and self._server.drop_mid_data_after is not None:
                await self._drop_mid_data(self._server.drop_mid_data_after)
            elif reply == DROP:
                self.drop_next_reply()
                await method(arg)
            elif reply is not None:
                await self.push(reply)
            else:
                await method(arg)

        return run

    async def _drop_mid_data(self, after: int) -> None:
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.readexactly(after)
        self.abort()

    def _note(self, verb: str, arg: str | None) -> None:
        record = self.record
        record.commands.append(f"{verb} {arg}" if arg else verb)
        record.waiting.append(bytes(getattr(self._reader, "_buffer", b"")))  # typeshed lacks it
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is not None:
            record.tls_version = ssl_object.version()
            record.client_certificate = ssl_object.getpeercert() or None


@pytest.fixture(scope="session")
def smtp_ca() -> trustme.CA:
    """A throwaway CA; its PEM is what `caCertificates` needs to trust the test servers."""
    return trustme.CA()


@pytest.fixture(scope="session")
def smtp_certificate(smtp_ca: trustme.CA) -> trustme.LeafCert:
    return smtp_ca.issue_cert("localhost", "127.0.0.1", "::1")


StartServer = Callable[..., SmtpServer]
"""`smtp_server_factory(**kwargs)`: start an SmtpServer with these arguments (see its __init__)."""


@pytest.fixture
def smtp_server_factory(
    smtp_ca: trustme.CA, smtp_certificate: trustme.LeafCert
) -> Iterator[StartServer]:
    """Start servers with any SmtpServer arguments; every one is stopped after the test."""
    servers: list[SmtpServer] = []

    def start(**kwargs: Any) -> SmtpServer:
        kwargs.setdefault("ca", smtp_ca)
        kwargs.setdefault("certificate", smtp_certificate)
        server = SmtpServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: StartServer) -> SmtpServer:
    """A plain server: no TLS, AUTH PLAIN and LOGIN offered, every message accepted."""
    return smtp_server_factory()


def make_message(
    *,
    sender: str = "sender@example.com",
    to: Sequence[str] = ("rcpt@example.com",),
    bcc: Sequence[str] = (),
    subject: str = "Hello",
    body: str = "Hello there.\n",
    message_id: str | None = None,
) -> OutgoingMessage:
    """An OutgoingMessage as the delivery engine builds it: 7-bit MIME without Bcc, every
    recipient (To and Bcc) in the envelope."""
    mime = EmailMessage(policy=email.policy.SMTP)
    message_id = message_id or email.utils.make_msgid(domain="example.com")
    mime["From"] = sender
    mime["To"] = ", ".join(to)
    mime["Subject"] = subject
    mime["Message-ID"] = message_id
    mime.set_content(body, cte="quoted-printable")
    return OutgoingMessage(
        envelope_from=sender,
        recipients=(*to, *bcc),
        mime=mime.as_bytes(),
        message_id=message_id,
        content=Content(
            sender=Address(sender),
            to=tuple(Address(a) for a in to),
            bcc=tuple(Address(a) for a in bcc),
            subject=subject,
            text=body,
        ),
    )


@pytest.fixture
async def smtp_context(anyio_backend: object) -> AsyncIterator[TransportContext]:
    """A TransportContext with an open egress policy and the `tests.smtp` logger."""
    async with httpx.AsyncClient() as http:
        yield TransportContext(
            http=http, egress=EgressPolicy(deny=()), logger=logging.getLogger("tests.smtp")
        )
