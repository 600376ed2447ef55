"""The submission listener (`postroom serve --submission-port 587`, off by default): an SMTP
server, aiosmtpd, for apps that can only speak SMTP.

A client says EHLO, STARTTLS, AUTH PLAIN or LOGIN as a Postroom user (the same check, failed-login
throttle and lockout as HTTP Basic), then sends; each message goes through the same intake as
POST /api/v1/messages (group commit, the sender's bounds, suppressions, limits) and the 250 comes
only once it is committed. Refusals say which rule refused: a bound is a 550 5.7.1, a message
Postroom cannot carry a 554 5.6.x, a message that could not be stored a 451 4.3.0 (the client
keeps it and tries again).

AUTH is never offered before STARTTLS when a certificate is configured, and without one only when
POSTROOM_SUBMISSION_INSECURE_AUTH says so: PLAIN and LOGIN carry the password itself, which
anyone on the path could read and replay against the API as well, since it is the same password.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
import ssl
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, TLSSetupException
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.delivery.liveness import HEARTBEAT_EVERY
from app.delivery.supervised import Readiness, Supervised
from app.deps import Authenticating
from app.errors import AppError, Forbidden, Invalid, TooManyRequests, Unauthorized
from app.identity import Principal
from app.messages.deps import Sending
from app.messages.schemas import Accepted, MessageIn
from app.messages.service import Caller
from app.schemas import EmailAddress, local_domains
from app.submission.mime import Refused, described, message_in

log = logging.getLogger("postroom.submission")

EMAIL: TypeAdapter[str] = TypeAdapter(EmailAddress)
MAX_REPLY = 400
"""Characters of explanation in a reply, at most (a reply line holds 512 octets)."""
NOT_STORED = "451 4.3.0 the message was not stored; try again later"


class CertificateError(Exception):
    """The configured certificate or key cannot be loaded: the listener cannot start."""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The STARTTLS context of POSTROOM_SUBMISSION_TLS_CERT and _KEY; None when unset."""
    cert, key = settings.submission_tls_cert, settings.submission_tls_key
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise CertificateError(
            f"POSTROOM_SUBMISSION_TLS_CERT={cert} and _TLS_KEY={key} cannot be loaded: {err}"
        ) from err
    return context


@dataclass(slots=True)
class Login:
    """Who authenticated on a connection. The password stays to check the credential again for
    each message, as HTTP Basic sends it with each request: a password, role or bounds change
    reaches an open connection too."""

    name: str
    password: str = field(repr=False)
    principal: Principal


def reply_for(err: AppError) -> str:
    """The SMTP reply for what the intake refused."""
    text = err.message
    if isinstance(err, Forbidden):
        return _reply("550 5.7.1", text)
    if isinstance(err, TooManyRequests):
        return _reply("451 4.7.1", f"{text} (in {err.retry_after} s)")
    field = err.details[0].get("field") if err.details else None
    if isinstance(err, Invalid) and field == "attachments":
        return _reply("552 5.3.4", text)
    return _reply("554 5.6.0", f"{field}: {text}" if field else text)


def _reply(code: str, text: str) -> str:
    text = " ".join(text.split())
    return f"{code} {text[:MAX_REPLY]}"


def _client(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class SubmissionHandler:
    """aiosmtpd's handler: AUTH against the users table, every message into the intake."""

    def __init__(self, auth: Authenticating, settings: Settings, sending: Sending) -> None:
        self.auth = auth
        self.settings = settings
        self.sending = sending

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        response = await _response(server, args, "")
        if response is None:
            return AuthResult(success=False, handled=True)
        parts = response.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 PLAIN takes authzid NUL authcid NUL password")
            return AuthResult(success=False, handled=True)
        authzid, name, password = parts
        if authzid not in (b"", name):  # RFC 4616: acting as another user, which no one may
            message = "535 5.7.8 an authorization identity other than the user is not supported"
            return AuthResult(success=False, handled=False, message=message)
        return await self._login(server, name, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        name = await _response(server, args, "Username:")
        if name is None:
            return AuthResult(success=False, handled=True)
        password = await _challenge(server, "Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._login(server, name, password)

    async def _login(self, server: SMTP, name: bytes, password: bytes) -> AuthResult:
        try:
            credential = name.decode(), password.decode()
        except UnicodeDecodeError:
            await server.push("501 5.5.2 the user name and password must be UTF-8")
            return AuthResult(success=False, handled=True)
        assert server.session is not None
        checked = await self._verify(*credential, server.session)
        if isinstance(checked, str):
            return AuthResult(success=False, handled=False, message=checked)
        return AuthResult(success=True, auth_data=Login(*credential, checked))

    async def _verify(self, name: str, password: str, session: Session) -> Principal | str:
        """Check the credential: its Principal, else the reply. A wrong one is counted by the
        failed-login throttle and the lockout, as on the API."""
        try:
            return await self.auth.verify(name, password, _client(session))
        except Unauthorized:
            return "535 5.7.8 Authentication credentials invalid"
        except TooManyRequests as err:
            return _reply("454 4.7.0", f"{err.message} (in {err.retry_after} s)")
        except (SQLAlchemyError, OSError) as err:
            log.error("a login from %s could not be checked: %s", session.peer, err)
            return "454 4.7.0 Temporary authentication failure; try again later"

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        login = session.auth_data
        assert isinstance(login, Login)  # aiosmtpd asks for AUTH before MAIL (see _Protocol)
        checked = await self._verify(login.name, login.password, session)
        if isinstance(checked, str):
            if checked.startswith("535"):  # a changed password or a deleted user: AUTH again
                session.authenticated, session.auth_data = False, None
            return checked
        login.principal = checked
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        most = self.settings.max_visible_recipients
        if len(envelope.rcpt_tos) >= most:
            return f"452 4.5.3 too many recipients: {most} per message; send the rest in another"
        try:
            with local_domains(self.settings.allow_local_domains):
                EMAIL.validate_python(address)
        except ValidationError as err:
            return _reply("553 5.1.3", f"{address}: {described(err).removeprefix('body: ')}")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data
        assert isinstance(login, Login)
        try:
            with local_domains(self.settings.allow_local_domains):
                body = message_in(
                    envelope.original_content or b"", envelope.mail_from or "", envelope.rcpt_tos
                )
            accepted = await self._submit(login.principal, _client(session), body)
        except Refused as err:
            return err.reply
        except AppError as err:
            return reply_for(err)
        except Exception:
            log.exception("a message from %s (%s) was not stored", login.name, session.peer)
            return NOT_STORED
        log.info("%s submitted %s %s", login.name, accepted.id, accepted.message_id)
        reply = f"250 2.0.0 Ok: queued as {accepted.id} {accepted.message_id}"
        if accepted.suppressed:
            reply += f"; {len(accepted.suppressed)} recipients on the suppression list skipped"
        return reply

    async def _submit(self, principal: Principal, client: str, body: MessageIn) -> Accepted:
        """As POST /messages does: the per-user send rate, then the intake (returns once
        committed, and has woken the dispatcher), then count the events."""
        await self.sending.hit(principal.name)
        taken = await self.sending.intake.submit(Caller(principal, client), body)
        self.sending.metrics.count_events(taken.events)
        return taken.answer

    async def handle_exception(self, error: Exception) -> str:
        """A command that raised: logged here, and a reply that does not show the error (aiosmtpd
        would answer 500 with its text). A failed TLS handshake is the client's: the
        connection is closed, nothing else happens."""
        if isinstance(error, TLSSetupException):
            log.info("a STARTTLS handshake failed: %s", error.__cause__)
        else:
            log.error("the submission listener failed on a command", exc_info=error)
        return "451 4.3.0 internal error; try again later"


async def _response(server: SMTP, args: list[str], challenge: str) -> bytes | None:
    """The client's first AUTH response: given with the command (`=` for an empty one, RFC
    4954), or asked for. None once a 501 is sent."""
    if len(args) < 2:
        return await _challenge(server, challenge)
    if args[1] == "=":
        return b""
    try:
        return base64.b64decode(args[1], validate=True)
    except binascii.Error:
        await server.push("501 5.5.2 Cannot decode base64")
        return None


async def _challenge(server: SMTP, challenge: str) -> bytes | None:
    answer = await server.challenge_auth(challenge)
    return None if answer is MISSING else bytes(answer)


class _Session(Session):
    """aiosmtpd's session without `login_data`, deprecated: aiosmtpd sets it on every AUTH,
    and each time logs a warning saying so."""

    @property
    def login_data(self) -> Any:
        return None

    @login_data.setter
    def login_data(self, value: Any) -> None:
        pass


class _Protocol(SMTP):
    """aiosmtpd's SMTP with AUTH required before MAIL, RCPT and DATA (530). Its own
    `auth_required` also warns on every connection when AUTH may go in clear, which
    POSTROOM_SUBMISSION_INSECURE_AUTH allows on purpose."""

    def _create_session(self) -> Session:
        return _Session(self.loop)

    async def check_auth_needed(self, caller_method: str) -> bool:
        assert self.session is not None
        if self.session.authenticated:
            return False
        await self.push("530 5.7.0 Authentication required")
        return True


class SubmissionListener:
    """Owns the listening socket; `ensure` (the supervised loop's step) opens it when it is not
    serving, so a port that was taken is tried again."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        auth: Authenticating,
        sending: Sending,
    ) -> None:
        assert settings.submission_port is not None
        self.handler = SubmissionHandler(auth, settings, sending)
        self.host = settings.submission_host
        self.port = settings.submission_port
        self.tls = tls_context(settings)
        self.insecure_auth = settings.submission_insecure_auth
        self.hostname = settings.hostname or socket.gethostname()
        self.max_bytes = settings.submission_max_message_bytes
        self.server: asyncio.Server | None = None
        self.loop = Supervised(
            sessions,
            sending.metrics,
            "submission-listener",
            self.ensure,
            HEARTBEAT_EVERY,
            what="submission listener",
        )
        self._connections: weakref.WeakSet[_Protocol] = weakref.WeakSet()

    def _protocol(self) -> SMTP:
        protocol = _Protocol(
            self.handler,
            data_size_limit=self.max_bytes,
            enable_SMTPUTF8=True,
            hostname=self.hostname,
            ident="Postroom submission",
            tls_context=self.tls,
            require_starttls=self.tls is not None,
            auth_require_tls=self.tls is not None or not self.insecure_auth,
        )
        self._connections.add(protocol)
        return protocol

    async def ensure(self) -> None:
        if self.server is not None and self.server.is_serving():
            return
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.host, self.port)
        log.info(
            "submission listener on %s:%d (%s)",
            self.host,
            self.port,
            "STARTTLS" if self.tls is not None else "no TLS: AUTH in clear",
        )

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The supervised loop that keeps the port open."""
        return self.loop.task

    async def readiness(self, session: AsyncSession) -> Readiness:
        """Not ready while the listener does not take mail: its loop is not running, or the
        port is not open (taken, say: the loop's last error says so)."""
        running = await self.loop.readiness(session)
        if running.problem is None and (self.server is None or not self.server.is_serving()):
            why = f" ({self.loop.last_error})" if self.loop.last_error else ""
            problem = f"the submission listener is not listening on {self.host}:{self.port}{why}"
            return Readiness(problem, running.shown)
        return running

    async def aclose(self) -> None:
        """Stop listening and close the open connections (an app's idle pooled connection
        would otherwise hold the shutdown until aiosmtpd's 5-minute timeout)."""
        if self.server is not None:
            self.server.close()
            for protocol in list(self._connections):
                if protocol.transport is not None:
                    protocol.transport.close()
            await self.server.wait_closed()
            self.server = None


@asynccontextmanager
async def running_submission(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    auth: Authenticating,
    sending: Sending,
) -> AsyncIterator[SubmissionListener | None]:
    """The supervised listener when POSTROOM_SUBMISSION_PORT is set, for the block's duration;
    /readyz asks it for its `readiness` meanwhile."""
    if settings.submission_port is None:
        yield None
        return
    listener = SubmissionListener(settings, sessions, auth, sending)
    with contextlib.suppress(OSError):  # the loop tries again, and says why
        await listener.ensure()
    stopping = asyncio.Event()
    task = listener.loop.start(stopping)
    try:
        yield listener
    finally:
        stopping.set()
        await asyncio.gather(task, return_exceptions=True)
        await listener.aclose()
