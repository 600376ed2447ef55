"""Errors a transport raises when a whole send fails.

    TransportError                 code: nodemailer's words (ECONNECTION, ETIMEDOUT, EAUTH, ...)
    ├── TemporaryError             retry later (SMTP 4xx, timeouts, HTTP 408/5xx, ...)
    │   ├── Throttled              the server said "too many" (HTTP 429, SMTP 421 4.7.x): the
    │   │                          whole profile waits, on every worker
    │   └── ConfigurationError     a setting is wrong (untrusted certificate, requireTLS without
    │       │                      STARTTLS, client certificate refused, host that does not
    │       │                      exist): retried, and shown on the profile's health
    │       └── CredentialsError   credentials refused (SMTP 535, HTTP 401/403): an admin can fix it
    └── PermanentError             do not retry (SMTP 5xx on MAIL or DATA, other HTTP 4xx)
        ├── UnsupportedFeature     the transport cannot carry something the message asks for
        └── ConfigError            the profile cannot work as configured (names the field)

Partial failure (one recipient refused) is not an error: it is data in the SendResult.
"""

from __future__ import annotations

import socket

ErrorCode = str
"""ECONNECTION, ETIMEDOUT, EDNS, ETLS, EAUTH, EENVELOPE, EMESSAGE, EPROTOCOL, ECONFIG, EUNSUPPORTED,
EPOLICY, EAPI."""


class TransportError(Exception):
    """A send failed as a whole."""

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode,
        reply_code: int | None = None,
        reply: str | None = None,
        before_data: bool = False,
        ambiguous: bool = False,
        retry_after: float | None = None,
        tls_version: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reply_code = reply_code
        """The SMTP reply code or HTTP status, when the server answered."""
        self.reply = reply
        """The server's reply text, when it answered."""
        self.before_data = before_data
        """True when it failed before any content was sent: failing over is safe."""
        self.ambiguous = ambiguous
        """True when the server may have taken the message (lost after the final '.')."""
        self.retry_after = retry_after
        """Seconds the server asked us to wait, if it said."""
        self.tls_version = tls_version

    def __str__(self) -> str:
        if self.reply_code is not None:
            return f"{self.code}: {self.message} ({self.reply_code} {self.reply or ''})".rstrip()
        return f"{self.code}: {self.message}"


class TemporaryError(TransportError):
    """Retry later: the same send may succeed."""


class Throttled(TemporaryError):
    """The server asked us to slow down: this send is retried, and no worker sends through the
    profile again before `wait` seconds (app/delivery/quota.py)."""

    DEFAULT_WAIT = 60.0
    """Seconds to wait when the server did not say (SMTP never does; Amazon SES does not)."""

    @property
    def wait(self) -> float:
        return self.retry_after if self.retry_after is not None else self.DEFAULT_WAIT


class ConfigurationError(TemporaryError):
    """The profile's settings (or the server's, or DNS) are wrong in a way an admin must fix.

    Still temporary: retried on the normal schedule, since the admin (or the server's) fix
    makes the same send work; meanwhile the dispatcher marks the profile's health `failing`
    with this message. `field` names the setting to look at, when one is known.

    Unlike ConfigError (a profile that cannot work at all as configured: permanent), this is
    what the server or the network said about the settings.
    """

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode,
        field: str | None = None,
        reply_code: int | None = None,
        reply: str | None = None,
        before_data: bool = True,
        ambiguous: bool = False,
        retry_after: float | None = None,
        tls_version: str | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code,
            reply_code=reply_code,
            reply=reply,
            before_data=before_data,
            ambiguous=ambiguous,
            retry_after=retry_after,
            tls_version=tls_version,
        )
        self.field = field


class CredentialsError(ConfigurationError):
    """The server refused the credentials. Retried, and shown on the profile's health."""


class PermanentError(TransportError):
    """Do not retry: the same send will fail again."""


class UnsupportedFeature(PermanentError):
    """The transport cannot carry a feature the message uses; it is never dropped silently.

    Raised before any content is sent, so a profile's fallback may carry the message instead."""

    def __init__(self, feature: str, transport: str) -> None:
        super().__init__(
            f"{transport} cannot send {feature}", code="EUNSUPPORTED", before_data=True
        )
        self.feature = feature


class ConfigError(PermanentError):
    """The profile cannot work as configured; `field` names the setting to fix."""

    def __init__(
        self,
        message: str,
        *,
        field: str,
        code: ErrorCode = "ECONFIG",
        reply_code: int | None = None,
        reply: str | None = None,
    ) -> None:
        super().__init__(message, code=code, before_data=True, reply_code=reply_code, reply=reply)
        self.field = field


_NO_SUCH_HOST = frozenset(
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY")
    if hasattr(socket, name)
)


def unknown_host(err: BaseException) -> bool:
    """True when DNS answered that the name has no address (a typo, a name that is gone): an
    admin must fix it. A DNS failure (EAI_AGAIN: no answer) is not this, it is temporary."""
    return isinstance(err, socket.gaierror) and err.errno in _NO_SUCH_HOST
