"""The Transport protocol: one async send, one aclose. Every mail server type implements it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from app.egress import EgressPolicy
from app.transports.errors import UnsupportedFeature
from app.transports.result import SendResult


@dataclass(frozen=True, slots=True)
class Address:
    email: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Content:
    """The message as structured parts, for providers that take no raw MIME (SendGrid)."""

    sender: Address
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    """Custom headers only (never From, To, Subject, ...)."""
    undisclosed: bool = False
    """True for a BCC group: the visible To is `undisclosed-recipients:;`."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One transaction: the envelope, the composed MIME and the same message as parts.

    `mime` is 7-bit clean and carries no Bcc header; `mime_with_bcc` keeps it for transports whose
    API has no envelope (Microsoft Graph). `recipients` is the envelope: everyone who must get it.
    """

    envelope_from: str
    recipients: tuple[str, ...]
    mime: bytes
    message_id: str
    content: Content
    mime_with_bcc: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)


def refuse_options(message: OutgoingMessage, provider: str) -> None:
    """Refuse provider options (`OutgoingMessage.extra`) instead of dropping them: no transport
    takes any yet."""
    if message.extra:
        names = ", ".join(repr(key) for key in sorted(message.extra))
        plural = "s" if len(message.extra) > 1 else ""
        raise UnsupportedFeature(f"the option{plural} {names}", provider)


class Transport(Protocol):
    """Sends composed messages through one configured mail server.

    `send` returns a SendResult with a status per envelope recipient; it raises TemporaryError or
    PermanentError (app.transports.errors) only when the message failed as a whole. A transport may
    keep connections open between sends; `aclose` releases them.
    """

    name: str

    async def send(self, message: OutgoingMessage) -> SendResult: ...

    async def verify(self) -> VerifyReport:
        """Check the configuration against the server without sending a message."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TransportContext:
    """What the service hands every transport it builds: shared clients and policies."""

    http: httpx.AsyncClient
    """The one shared client for provider APIs: no redirects, timeouts from settings."""
    egress: EgressPolicy
    """Checked on the resolved address before every connection a transport opens itself."""
    logger: logging.Logger
    hostname: str | None = None
    """The EHLO name of SMTP profiles that set none (POSTROOM_HOSTNAME); None: the machine's."""


@dataclass(slots=True)
class VerifyStep:
    """One step of a verification: connect, greet, EHLO, TLS, AUTH, a credentials check, ..."""

    name: str
    ok: bool
    duration_ms: float
    detail: str = ""
    data: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class VerifyReport:
    """What a transport could check without sending anything, step by step."""

    steps: list[VerifyStep] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    """What could not be checked without sending, in plain words."""
    error_code: str | None = None

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)
