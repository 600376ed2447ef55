"""Trying a profile now: send the test mail, or verify the server step by step without sending.

Both take unsaved changes (a merge patch onto the stored profile, stored secrets included), so an
admin can check a change before saving it without retyping the password.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import dns.asyncresolver
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession

from app.branding import service as branding
from app.db import utcnow
from app.delivery.compose import compose, new_message_id
from app.delivery.events import Ledger, event_type
from app.delivery.grouping import Batch
from app.delivery.hints import hint
from app.delivery.models import Attempt, Message, Recipient
from app.delivery.stored import StoredMessage
from app.delivery.vocabulary import DeliveryEvent
from app.dkim import service as dkim
from app.dkim.schemas import DkimCheck
from app.dkim.signer import Signer
from app.errors import Invalid
from app.schemas import CamelModel
from app.servers import service as servers
from app.servers.service import Profiles
from app.transports import registry
from app.transports.base import Address, TransportContext, VerifyReport, VerifyStep
from app.transports.errors import TemporaryError, TransportError
from app.transports.result import FINAL_OK, RecipientStatus
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
    dkim: dkim.DkimState = field(default_factory=dkim.DkimState)
    """The profile's DKIM keys (public side), for verify's DNS checks."""
    signer: Signer | None = None
    """Signs the test mail as the profile's mail is signed."""


async def candidate(
    session: AsyncSession, ctx: Profiles, name: str, changes: dict[str, Any]
) -> Candidate:
    profile = await servers.get_profile(session, name)
    whole = servers.merge_patch(servers.as_body(profile, ctx.box), changes)
    body = servers.PROFILE_BODY.validate_python({**whole, "name": name})
    sender = Address(body.sender_email, body.sender_name or "") if body.sender_email else None
    signer = dkim.signer_of(profile, ctx.box, body.type)
    return Candidate(name, body.type, body.settings, sender, dkim.state_of(profile), signer)


async def test_recipient(session: AsyncSession, found: Candidate, to: str | None) -> str:
    """Where the test mail goes: `to`, else the profile's sender, else the branding sender."""
    to = to or (found.sender.email if found.sender else None)
    if to is None:
        to = (await branding.get_branding(session)).sender_email
    if to is None:
        raise Invalid(
            "give `to`: neither the profile nor the branding has a sender to default to",
            field="to",
        )
    return to


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
    record: str | None = None
    """The test mail's sending record (GET /api/v1/messages/{record})."""


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
    dkim: list[DkimCheck] = Field(default_factory=list)
    """Each DKIM key's DNS record, looked up. A record of the active key that is missing or holds
    another key makes `ok` false: receivers would find every signature broken."""


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
    """Send the test mail now (not queued) and say how it went; `record_test` then keeps it in
    the sending records."""
    sender = _test_sender(found, to)
    text = text_of_test_mail(found)
    message_id = new_message_id(sender.email)
    payload = StoredMessage(sender=sender, to=(Address(to),), subject=TEST_SUBJECT, text=text)
    outgoing = compose(
        payload,
        batch=Batch("visible", (to,)),
        message_id=message_id,
        date=utcnow(),
        dkim=found.signer,
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


def _test_sender(found: Candidate, to: str) -> Address:
    return found.sender or Address(to)


async def record_test(
    session: AsyncSession,
    ledger: Ledger,
    found: Candidate,
    test: TestOutcome,
    *,
    by: str,
    client_ip: str | None,
) -> list[DeliveryEvent]:
    """Keep a test mail that was sent (or refused) in the sending records, as a message with its
    one attempt and its event, so it is found there like any other mail; sets `test.record`.
    Returns the events recorded, for the metrics once committed."""
    now = utcnow()
    recipient_status: RecipientStatus = (
        "sent" if test.ok else "rejected" if test.error_code == "EENVELOPE" else "failed"
    )
    sender = _test_sender(found, test.to)
    recipient = Recipient(
        email=test.to,
        kind="to",
        status=recipient_status,
        code=test.reply_code,
        response=test.error or test.reply,
        updated_at=now,
    )
    attempt = Attempt(
        number=1,
        server=found.name,
        started_at=now - timedelta(milliseconds=test.duration_ms),
        duration_ms=test.duration_ms,
        outcome="sent" if test.ok else "failed",
        recipients=1,
        tls_version=test.tls_version,
        reply_code=test.reply_code,
        reply=test.reply,
        error_code=test.error_code,
        error=test.error,
    )
    message = Message(
        message_id=test.message_id,
        status="sent" if test.ok else "failed",
        sender=sender.email,
        subject=TEST_SUBJECT,
        server=found.name,
        payload=StoredMessage(
            sender=sender, to=(Address(test.to),), subject=TEST_SUBJECT, test=True
        ).to_json(),
        created_by=by,
        client_ip=client_ip,
        attempts=1,
        last_error=test.error,
        created_at=attempt.started_at,
        sent_at=now if test.ok else None,
        recipients=[recipient],
        attempt_log=[attempt],
    )
    session.add(message)
    await session.flush()
    test.record = message.id
    event = DeliveryEvent(
        message_pk=message.id,
        type=event_type(recipient_status),
        recipient_pk=recipient.id,
        email=test.to,
        occurred_at=now,
        profile=found.name,
        reason=test.error or test.reply,
        diagnostic_code=None if test.reply_code is None else str(test.reply_code),
    )
    return await ledger.record(session, [event])


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


async def verify(
    found: Candidate, context: TransportContext, resolver: dns.asyncresolver.Resolver
) -> VerifyOutcome:
    """The transport's own checks, and each DKIM key's DNS record, at the same time."""
    report, checks = await asyncio.gather(
        _verify_transport(found, context), dkim.checks(resolver, found.dkim)
    )
    failed = next((step for step in report.steps if not step.ok), None)
    guess = None
    if failed is not None and report.error_code is not None:
        guess = hint(TransportError(failed.detail, code=report.error_code), found.config)
    broken = [c for c in checks if c.slot == "active" and c.status in ("missing", "mismatch")]
    if broken and guess is None:
        guess = (
            f"publish the DKIM record {broken[0].name} (GET /api/v1/servers/{found.name}/dkim "
            "shows it): until then receivers find every signature broken"
        )
    return VerifyOutcome(
        ok=report.ok and not broken,
        server=found.name,
        steps=[VerifyStepOut.model_validate(step, from_attributes=True) for step in report.steps],
        unchecked=report.unchecked,
        error_code=report.error_code,
        hint=guess,
        dkim=checks,
    )


async def _verify_transport(found: Candidate, context: TransportContext) -> VerifyReport:
    transport = registry.build(found.type, found.name, found.config, context)
    started = time.perf_counter()
    try:
        return await _guarded(transport.verify(), found.name)
    except TransportError as err:
        step = VerifyStep("verify", False, _since(started), err.message)
        return VerifyReport(steps=[step], error_code=err.code)
    finally:
        await transport.aclose()
