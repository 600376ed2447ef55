"""A parsed report matched to the message and recipients it is about, and recorded as events.

The message: a valid VERP token among the addresses the report was sent to (or the returned
mail's Return-Path), else the returned mail's Message-ID. The recipient: the token's, when the
envelope had one recipient and the report has one block (a forwarded address reports its final
address, not ours), else the row whose address is the block's Final-Recipient or
Original-Recipient. A report about no message Postroom knows is stored as `unknown`, never
dropped: the events table is the record of what came in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction, utcnow
from app.delivery.models import Message, Recipient
from app.delivery.verp import Verp, VerpToken
from app.delivery.vocabulary import DeliveryEvent, tally
from app.events.bounces.dsn import RecipientStatus, Report, parse
from app.events.service import record_events
from app.metrics import Metrics


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one report became: the events stored now (none when it was seen before)."""

    report: Report
    message_pk: str | None
    events: list[DeliveryEvent]

    def summary(self) -> str:
        """One line for the CLI and the logs."""
        what = ", ".join(f"{e.email or '?'} {e.type}" for e in self.events) or "already recorded"
        about = f"message {self.message_pk}" if self.message_pk else "no known message"
        return f"{self.report.kind} report {self.report.report_id} ({about}): {what}"


class Bounces:
    """Takes raw reports from every way in (CLI, HTTP hook, SMTP listener, mailbox pollers)."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], verp: Verp, metrics: Metrics
    ) -> None:
        self.sessions = sessions
        self.verp = verp
        self.metrics = metrics

    async def ingest(self, raw: bytes, envelope: Sequence[str] = ()) -> Ingested:
        """Parse (raises NotAReport), then `record`."""
        return await self.record(parse(raw), envelope)

    async def record(self, report: Report, envelope: Sequence[str] = ()) -> Ingested:
        """Match and record in one transaction; returns once it is committed. `envelope`: the
        addresses the report was delivered to, when known (the SMTP listener's RCPT TO,
        `postroom ingest --recipient`)."""
        async with transaction(self.sessions) as session:
            done = await record_report(session, self.verp, report, envelope)
        self.metrics.count_events(tally(done.events))
        return done


async def record_report(
    session: AsyncSession, verp: Verp, report: Report, envelope: Sequence[str] = ()
) -> Ingested:
    """Match `report` and record its events in the session's transaction."""
    message, token = await _message(session, verp, report, envelope)
    rows: list[Recipient] = []
    if message is not None:
        rows = list(
            await session.scalars(
                select(Recipient).where(Recipient.message_pk == message.id).order_by(Recipient.id)
            )
        )
    lone = len(report.recipients) == 1
    events = [
        _event(report, status, message, _recipient(status, rows, token, lone))
        for status in report.recipients
    ]
    return Ingested(report, message.id if message else None, await record_events(session, events))


async def _message(
    session: AsyncSession, verp: Verp, report: Report, envelope: Sequence[str]
) -> tuple[Message | None, VerpToken | None]:
    for address in (*envelope, *report.addresses):
        token = verp.read(address)
        if token is not None:
            message = await session.get(Message, token.message_pk)
            if message is not None:
                return message, token
    if report.original_message_id:
        found = await session.scalar(
            select(Message).where(Message.message_id == report.original_message_id).limit(1)
        )
        return found, None
    return None, None


def _recipient(
    status: RecipientStatus, rows: list[Recipient], token: VerpToken | None, lone: bool
) -> Recipient | None:
    if token is not None and token.recipient_pk is not None:
        mine = next((r for r in rows if r.id == token.recipient_pk), None)
        if mine is not None and (lone or mine.email.lower() == status.email):
            return mine
    named = {status.email, status.original} - {None}
    return next((r for r in rows if r.email.lower() in named), None)


def _event(
    report: Report, status: RecipientStatus, message: Message | None, row: Recipient | None
) -> DeliveryEvent:
    known = message is not None
    reason = status.diagnostic
    if not known:
        reason = f"{status.event} for no known message: {status.diagnostic or status.status}"
    return DeliveryEvent(
        message_pk=message.id if message is not None else None,
        type=status.event if known else "unknown",
        recipient_pk=row.id if row is not None else None,
        email=row.email if row is not None else status.email,
        occurred_at=status.occurred_at or report.occurred_at or utcnow(),
        source=report.kind,
        profile=message.server if message is not None else None,
        bounce_type=status.bounce_type if known else None,
        provider_event_id=report.event_id(status),
        reason=reason,
        diagnostic_code=status.status,
    )
