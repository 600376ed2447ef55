"""Trying a profile now: send the test mail, or verify the server step by step without sending.

Both take unsaved changes (a merge patch onto the stored profile, stored secrets included), so an
admin can check a change before saving it without retyping the password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.delivery.compose import compose, new_message_id
from app.delivery.grouping import Batch
from app.schemas import CamelModel
from app.servers import service as servers
from app.servers.service import Profiles
from app.transports import registry
from app.transports.base import Address, TransportContext, VerifyReport, VerifyStep
from app.transports.errors import TemporaryError, TransportError
from app.transports.result import FINAL_OK
from app.transports.smtp import SmtpConfig

log = logging.getLogger("postroom.probe")
T = TypeVar("T")

TEST_SUBJECT = "Congratulation! Your mail server is configured successfully."


@dataclass(frozen=True, slots=True)
class Candidate:
    """A profile with unsaved changes applied, ready to build a transport from."""

    name: str
    type: str
    config: Any
    sender: Address | None


async def candidate(
    session: AsyncSession, ctx: Profiles, name: str, changes: dict[str, Any]
) -> Candidate:
    profile = await servers.get_profile(session, name)
    whole = servers.merge_patch(servers.as_body(profile, ctx.box), changes)
    body = servers.PROFILE_BODY.validate_python({**whole, "name": name})
    sender = Address(body.sender_email, body.sender_name or "") if body.sender_email else None
    return Candidate(name, body.type, body.settings, sender)


def hint(error: TransportError, config: Any) -> str | None:
    """A plain-words guess at the usual mistake behind an error."""
    port = getattr(config, "port", None)
    secure = getattr(config, "secure", False)
    reply = error.reply or ""
    if error.code == "ETLS" and "certificate" in error.message.lower():
        return "the server's certificate is not trusted: give its CA in caCertificates"
    if error.code in ("ETIMEDOUT", "ETLS", "ECONNECTION") and secure and port == 587:
        return "port 587 expects STARTTLS: set secure to false (or use port 465 for implicit TLS)"
    if error.code in ("ETIMEDOUT", "EPROTOCOL", "ECONNECTION") and not secure and port == 465:
        return "port 465 expects implicit TLS: set secure to true"
    if error.reply_code == 535 and "5.7.139" in reply:
        return "basic authentication is disabled for this tenant: use xoauth2 or a msgraph profile"
    if error.code == "EAUTH":
        settings = getattr(config, "credentials", "the profile's credentials")
        return f"the server refused the credentials: check {settings}"
    if error.code == "ECONNECTION":
        return "no connection: check host and port, and any firewall in between"
    if error.code == "EDNS":
        return "the host name does not resolve: check host"
    return None


class TestOutcome(CamelModel):
    ok: bool
    server: str
    to: str
    message_id: str
    duration_ms: float
    tls_version: str | None = None
    reply_code: int | None = None
    reply: str | None = None
    error_code: str | None = None
    error: str | None = None
    hint: str | None = None
    """What an admin most likely has to change, when the error is a usual mistake."""


class VerifyStepOut(CamelModel):
    name: str
    ok: bool
    duration_ms: float
    detail: str
    data: dict[str, Any]


class VerifyOutcome(CamelModel):
    ok: bool
    server: str
    steps: list[VerifyStepOut]
    unchecked: list[str]
    """What could not be checked without sending."""
    error_code: str | None
    hint: str | None = None


def text_of_test_mail(found: Candidate) -> str:
    """The test mail's body: what was tested (an SMTP server's port as it connects, defaults
    applied)."""
    config = found.config
    smtp = isinstance(config, SmtpConfig)
    host, port = (config.host, config.effective_port) if smtp else ("-", "-")
    user = getattr(config, "user", None)
    return (
        f"{TEST_SUBJECT}\n\nServer: {found.name}\nType: {found.type}\n"
        f"Host: {host}\nPort: {port}\nUsername: {user or '-'}\n"
    )


async def send_test(found: Candidate, to: str, context: TransportContext) -> TestOutcome:
    """Send the test mail now (not queued) and say how it went."""
    sender = found.sender or Address(to)
    text = text_of_test_mail(found)
    message_id = new_message_id(sender.email)
    payload = {"subject": TEST_SUBJECT, "text": text, "to": [{"email": to}]}
    outgoing = compose(
        payload,
        sender=sender,
        batch=Batch("visible", (to,)),
        message_id=message_id,
        date=utcnow(),
    )
    transport = registry.build(found.type, found.name, found.config, context)
    started = time.perf_counter()
    try:
        result = await _guarded(transport.send(outgoing), found.name)
    except TransportError as err:
        return TestOutcome(
            ok=False,
            server=found.name,
            to=to,
            message_id=message_id,
            duration_ms=_since(started),
            tls_version=err.tls_version,
            reply_code=err.reply_code,
            reply=err.reply,
            error_code=err.code,
            error=err.message,
            hint=hint(err, found.config),
        )
    finally:
        await transport.aclose()
    refused = {r: s for r, s in result.recipients.items() if s.status not in FINAL_OK}
    return TestOutcome(
        ok=not refused,
        server=found.name,
        to=to,
        message_id=message_id,
        duration_ms=_since(started),
        tls_version=result.tls_version,
        reply_code=result.reply_code,
        reply=result.provider_id,
        error_code="EENVELOPE" if refused else None,
        error="; ".join(f"{r}: {s.code} {s.message}" for r, s in refused.items()) or None,
    )


async def _guarded(call: Awaitable[T], profile: str) -> T:
    """An exception no transport error explains (a bug, a library's surprise) becomes an
    EINTERNAL error in the report, logged with its traceback, rather than a 500."""
    try:
        return await call
    except TransportError:
        raise
    except Exception as err:
        log.exception("probing profile %s failed unexpectedly", profile)
        message = f"internal error: {type(err).__name__}: {err}"[:1000]
        raise TemporaryError(message, code="EINTERNAL") from err


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def verify(found: Candidate, context: TransportContext) -> VerifyOutcome:
    transport = registry.build(found.type, found.name, found.config, context)
    started = time.perf_counter()
    try:
        report = await _guarded(transport.verify(), found.name)
    except TransportError as err:
        step = VerifyStep("verify", False, _since(started), err.message)
        report = VerifyReport(steps=[step], error_code=err.code)
    finally:
        await transport.aclose()
    failed = next((step for step in report.steps if not step.ok), None)
    guess = None
    if failed is not None and report.error_code is not None:
        guess = hint(TransportError(failed.detail, code=report.error_code), found.config)
    return VerifyOutcome(
        ok=report.ok,
        server=found.name,
        steps=[VerifyStepOut.model_validate(step, from_attributes=True) for step in report.steps],
        unchecked=report.unchecked,
        error_code=report.error_code,
        hint=guess,
    )
