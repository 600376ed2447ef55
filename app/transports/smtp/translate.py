"""The phases of an SMTP session, and the one mapping of library errors to TransportError.

Every step of a connection runs as a phase of a Tracker (`with tracker.phase("mail"):`): timed,
recorded step by step when verifying, and its SMTP (wire.py), socket, ssl, proxy and egress
errors mapped by `translate`, which knows in which phase they came and so whether a message could
have been delivered already.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from typing import Literal

from python_socks import ProxyError

from app.egress import EgressDenied
from app.transports.base import VerifyReport, VerifyStep
from app.transports.errors import (
    ConfigError,
    ConfigurationError,
    CredentialsError,
    PermanentError,
    TemporaryError,
    Throttled,
    TransportError,
    unknown_host,
)
from app.transports.smtp.wire import Disconnected, ReplyError, SmtpError

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
_PERMANENT_ON_5XX: frozenset[Phase] = frozenset({"mail", "data", "body", "end-of-data"})
"""A 5xx in `body` is a refused BDAT chunk (RFC 3030): the content's, as at the final "."."""
_REPLY_ERROR_CODES: dict[Phase, str] = {
    "mail": "EENVELOPE",
    "rcpt": "EENVELOPE",
    "data": "EMESSAGE",
    "body": "EMESSAGE",
    "end-of-data": "EMESSAGE",
}

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


class Tracker:
    """Runs each phase of a session: maps its errors (`translate`) and, in verify, records it."""

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

    def __init__(self, tracker: Tracker, phase: Phase) -> None:
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
        elif isinstance(err, SmtpError | OSError | ProxyError | EgressDenied | ValueError):
            mapped = translate(err, self._phase, tracker)
            if mapped is not None:
                tracker._failed(step, mapped)
                raise mapped from err


def translate(err: Exception, phase: Phase, tracker: Tracker) -> TransportError | None:
    """The one mapping of SMTP, socket, ssl, proxy and egress errors to TransportError.

    What an admin must fix (a host that does not exist, a certificate that fails verification,
    a TLS refusal of the client certificate, implicit TLS against a plain-text server) is a
    ConfigurationError naming the setting: still retried, and shown on the profile's health.
    None for an error that is not one of these (a bug): it propagates unchanged.
    """
    tls_version, field = tracker.tls_version, tracker.field
    where = _PHASE_TEXT[phase]
    before_data = phase not in _AFTER_DATA
    ambiguous = phase == "end-of-data"
    reply_code = err.code if isinstance(err, ReplyError) else None
    reply = err.message if isinstance(err, ReplyError) else None
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
    if phase == "auth" and isinstance(err, SmtpError) and not isinstance(err, OSError):
        return CredentialsError(
            f"{where}: the server refused the credentials",
            code="EAUTH",
            reply_code=reply_code,
            reply=reply,
            before_data=True,
            tls_version=tls_version,
        )
    if isinstance(err, ReplyError):
        permanent = err.code >= 500 and phase in _PERMANENT_ON_5XX
        kind = PermanentError if permanent else TemporaryError
        return (Throttled if throttling(reply_code, reply) else kind)(
            f"{where}: refused",
            code=_REPLY_ERROR_CODES.get(phase, "EPROTOCOL"),
            reply_code=reply_code,
            reply=reply,
            before_data=before_data,
            tls_version=tls_version,
        )
    if isinstance(err, OSError | ProxyError):
        return TemporaryError(
            f"{where}: {err}",
            code="ECONNECTION",
            before_data=before_data,
            ambiguous=ambiguous,
            tls_version=tls_version,
        )
    if isinstance(err, SmtpError):  # not SMTP: whatever it answered, the content may be taken
        return TemporaryError(
            f"{where}: {err.message}",
            code="EPROTOCOL",
            before_data=before_data,
            ambiguous=ambiguous,
            tls_version=tls_version,
        )
    if isinstance(err, ValueError) and phase in ("mail", "rcpt"):
        return PermanentError(f"{where}: {err}", code="EENVELOPE", before_data=True)
    return None


_SLOW_DOWN = re.compile(
    r"throttl|rate.?limit|(sending|message|submission) rate|limit exceeded|quota exceeded"
    r"|too many (messages|mails?|e-?mails|connections|requests|sessions)",
    re.IGNORECASE,
)
"""What servers say when they throttle: SES's "454 Throttling failure: Maximum sending rate
exceeded", Postfix's "421 4.7.0 Error: too many connections", Exchange's "432 4.3.2 ... thread
limit exceeded". Not "452 4.5.3 Too many recipients": that one is about this message."""


def throttling(code: int | None, reply: str | None) -> bool:
    """Whether an SMTP reply asks the client to slow down: a 4xx that says so, or a 421 with a
    4.7.x status (Gmail's and Microsoft's "421 4.7.0 Try again later")."""
    if code is None or not 400 <= code < 500 or not reply:
        return False
    return bool(_SLOW_DOWN.search(reply)) or (code == 421 and reply.startswith("4.7."))


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


def _tls_setting(error: ssl.SSLError, tracker: Tracker) -> str | None:
    """The setting to fix for a TLS failure that is a configuration error, None when no one
    setting is at fault, or _NOT_CONFIG when it is not a configuration error."""
    if isinstance(error, ssl.SSLCertVerificationError):
        mismatch = "mismatch" in (error.verify_message or "")
        return "host" if mismatch else "caCertificates"
    reason = error.reason or ""
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and tracker.client_certificate:
        return None  # a certificate was sent: more likely no common cipher or version
    return _TLS_SETTINGS.get(reason, _NOT_CONFIG)


def _lost_after_handshake(err: Exception, phase: Phase, tracker: Tracker) -> bool:
    """The connection closed by the server just after TLS was set up and before it said a word:
    a TLS 1.3 server refusing a missing client certificate does that (its alert may be lost).
    Only said when no client certificate is configured."""
    if tracker.client_certificate or not isinstance(err, Disconnected):
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
