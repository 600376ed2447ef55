"""The messages' outbox: claim due messages under a lease, load what their attempts need, write
their results fenced on the attempt number, and sweep lost leases back into the queue.

The queue machinery is app/delivery/queue.py's (written once for the messages and the webhook
deliveries). Each step is one short transaction the dispatcher opens; no transaction stays open
while a transport talks to a server (app/delivery/job.py does that, with no session). Finishing
writes a message only where `attempts` still has the claimed number and `status` is `sending`: a
worker whose lease expired, and whose message another worker has claimed since, changes nothing.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import among, transaction, update_by_id, utcnow
from app.delivery import quota
from app.delivery.events import Ledger, attempt_event
from app.delivery.job import Job, hold_back
from app.delivery.models import ATTEMPTS, MESSAGES, RECIPIENTS, Message, Recipient
from app.delivery.queue import Lease, Queue, claim_due, release_expired
from app.delivery.rows import QueuedMessage, QueuedRecipient
from app.delivery.stored import StoredMessage
from app.delivery.transports import BUILTIN
from app.delivery.vocabulary import DeliveryEvent
from app.servers.models import ServerProfile
from app.servers.service import record_health
from app.themes.models import Theme
from app.themes.render import Layout
from app.themes.service import layout_of
from app.transports.result import FINAL_OK, RecipientResult

log = logging.getLogger("postroom.dispatcher")
"""The dispatcher's logger: these lines were always its, and operators filter on it."""

MESSAGE_QUEUE = Queue(
    Message,
    Message.id,
    Message.status,
    Message.attempts,
    Message.next_attempt_at,
    Message.lease_until,
)


Claim = Lease[str]
"""A claimed message."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float
    cap: float
    max_age: float

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt `attempt + 1`: base doubling per attempt, capped, with ±25 %
        jitter, and never sooner than the server asked (Retry-After)."""
        backoff = min(self.cap, self.base * 2.0 ** max(attempt - 1, 0))
        jittered = backoff * random.uniform(0.75, 1.25)
        return max(jittered, retry_after or 0.0)

    def expired(self, created_at: datetime, now: datetime) -> bool:
        return now - created_at >= timedelta(seconds=self.max_age)


async def claim(
    session: AsyncSession, *, limit: int, lease: float, now: datetime | None = None
) -> list[Claim]:
    """Claim up to `limit` due messages; call inside a transaction of its own. Those a rate
    limit holds back go back in the queue, due at their turn (app/delivery/quota.py)."""
    now = now or utcnow()
    claims = await claim_due(session, MESSAGE_QUEUE, limit=limit, lease=lease, now=now)
    return await quota.admit(session, claims, now)


async def next_due(session: AsyncSession) -> datetime | None:
    """When the next queued message is due (the due index's first row)."""
    return await session.scalar(
        select(Message.next_attempt_at)
        .where(Message.status == "queued")
        .order_by(Message.next_attempt_at)
        .limit(1)
    )


async def load(
    sessions: async_sessionmaker[AsyncSession], claims: list[Claim], ledger: Ledger
) -> list[Job]:
    """What the claimed messages need, in one short transaction: rows, recipients, profiles and
    themes, each looked up once for the whole batch. A message whose claim is no longer current
    (its lease expired and it was claimed again) is left out."""
    attempts = {claim.id: claim for claim in claims}
    async with transaction(sessions) as session:
        rows = await session.execute(
            select(*QueuedMessage.COLUMNS, Message.status, Message.attempts, Message.payload).where(
                among(session, Message.id, attempts)
            )
        )
        current = [
            (QueuedMessage.of(row), row.payload)
            for row in rows
            if row.status == "sending" and row.attempts == attempts[row.id].attempt
        ]
        stored = _readable(current)
        messages = [message for message, _ in current if message.id in stored]
        recipients: dict[str, list[QueuedRecipient]] = {message.id: [] for message in messages}
        for row in await session.execute(
            select(*QueuedRecipient.COLUMNS, Recipient.message_pk)
            .where(among(session, Recipient.message_pk, recipients))
            .order_by(Recipient.id)
        ):
            recipients[row.message_pk].append(QueuedRecipient.of(row))
        listed = await ledger.listed(session, _unsent(messages, stored, recipients))
        profiles = await _profiles(session, {m.server for m in messages if m.server})
        layouts = await _layouts(
            session, {name for m in messages if (name := _theme_name(m, stored, profiles))}
        )
        session.expunge_all()
    jobs = []
    for message in messages:
        profile = profiles.get(message.server) if message.server else None
        fallback = profiles.get(profile.fallback) if profile and profile.fallback else None
        name = _theme_name(message, stored, profiles)
        layout = layouts.get(name) if name else None
        if name and layout is None:
            log.warning("message %s: theme %r no longer exists; sent without it", message.id, name)
        attempt = attempts[message.id].attempt
        job = Job(
            message, stored[message.id], attempt, recipients[message.id], profile, fallback, layout
        )
        hold_back(job, listed)
        jobs.append(job)
    return jobs


async def finish(
    sessions: async_sessionmaker[AsyncSession],
    jobs: list[Job],
    retry: RetryPolicy,
    now: datetime,
    ledger: Ledger,
) -> tuple[list[tuple[Job, dict[str, Any]]], list[DeliveryEvent]]:
    """Write the results of finished attempts in one transaction, each fenced on its attempt
    number: a job whose lease expired and whose message was claimed again changes nothing.
    Returns the jobs written with their message's new values, and the events recorded (for the
    metrics, once committed)."""
    updates = [outcome(job, now, retry) for job in jobs]
    async with transaction(sessions) as session:
        fence = (
            select(Message.id, Message.attempts, Message.status)
            .where(among(session, Message.id, [job.message.id for job in jobs]))
            .with_for_update()
        )
        current = {
            (row.id, row.attempts)
            for row in await session.execute(fence)
            if row.status == "sending"
        }
        live = []
        for job, values in zip(jobs, updates, strict=True):
            if (job.message.id, job.attempt) in current:
                live.append((job, values))
            else:
                log.warning(
                    "message %s: attempt %d lost its lease; its result is dropped",
                    job.message.id,
                    job.attempt,
                )
        await quota.throttle(session, [job.throttled for job in jobs], now)
        if not live:
            return [], []
        await session.execute(*update_by_id(MESSAGES, [values for _, values in live]))
        rows = [
            {
                "id": recipient_ids[email],
                "status": result.status,
                "code": result.code,
                "response": result.message[:2000],
                "updated_at": now,
            }
            for job, _ in live
            for recipient_ids in ({r.email: r.id for r in job.recipients},)
            for email, result in job.results.items()
            if email in recipient_ids
        ]
        if rows:
            await session.execute(*update_by_id(RECIPIENTS, rows))
        events = [event for job, _ in live for event in _events(job, now)]
        events = await ledger.record(session, events)
        attempts = [row for job, _ in live for row in job.attempts]
        if attempts:
            await session.execute(insert(ATTEMPTS), attempts)
        await _record_health(session, [job for job, _ in live])
    return live, events


def outcome(job: Job, now: datetime, retry: RetryPolicy) -> dict[str, Any]:
    """The message row's new values after this attempt: queued for a retry, or final."""
    message = job.message
    statuses = {r.email: r.status for r in job.recipients}
    statuses.update({email: result.status for email, result in job.results.items()})
    waiting = [e for e, s in statuses.items() if s in ("pending", "deferred")]
    if waiting and retry.expired(message.starts_at, now):
        for email in waiting:
            old = job.results.get(email)
            job.results[email] = RecipientResult(
                "failed",
                old.code if old else None,
                f"gave up after {job.attempt} attempts: {old.message if old else ''}",
            )
            statuses[email] = "failed"
        waiting = []
    errors = [a["error"] for a in job.attempts if a["error"]]
    values: dict[str, Any] = {
        "id": message.id,
        "lease_until": None,
        "last_error": errors[-1] if errors else None,
        "theme": job.layout.name if job.layout is not None else message.theme,
        "next_attempt_at": message.next_attempt_at,
        "sent_at": message.sent_at,
    }
    if waiting:
        delay = retry.delay(job.attempt, job.retry_after)
        values |= {"status": "queued", "next_attempt_at": now + timedelta(seconds=delay)}
    else:
        tried = [s for s in statuses.values() if s != "suppressed"]
        ok = sum(s in FINAL_OK for s in tried)
        status = "sent" if ok == len(tried) else ("failed" if ok == 0 else "partially_sent")
        values |= {"status": status if tried else "suppressed", "sent_at": now if ok else None}
    return values


def _events(job: Job, now: datetime) -> list[DeliveryEvent]:
    """Each recipient's outcome of this attempt, as an event (after `outcome`, which turns the
    deferrals of an expired message into failures)."""
    profile = job.message.server or BUILTIN
    recipients = {r.email: r.id for r in job.recipients}
    return [
        attempt_event(
            job.message.id,
            recipients[email],
            email,
            result,
            profile=job.servers.get(email, profile),
            at=now,
        )
        for email, result in job.results.items()
        if email in recipients
    ]


async def _record_health(session: AsyncSession, jobs: list[Job]) -> None:
    """A refused configuration marks a profile failing; a delivery through it marks it ok."""
    health: dict[int, str | None] = {}
    for job in jobs:
        profile = job.profile
        if profile is None:
            continue
        if job.config_error is not None:
            health[profile.id] = job.config_error
        elif job.delivered_any and profile.health != "ok":
            health.setdefault(profile.id, None)
    for profile_id, error in health.items():
        await record_health(session, profile_id, ok=error is None, error=error)


GAVE_UP = "gave up: the message outlived POSTROOM_MAX_MESSAGE_AGE with its attempt unfinished"


async def sweep(
    session: AsyncSession, now: datetime | None = None, *, max_age: float | None = None
) -> int:
    """Put messages whose lease expired back in the queue; returns how many.

    With `max_age`, such a message older than that fails instead (its pending recipients too): a
    message whose every attempt crashes the worker is not retried for ever.
    """
    now = now or utcnow()
    lost = (Message.status == "sending", Message.lease_until < now)
    if max_age is not None:
        cutoff = now - timedelta(seconds=max_age)
        old = list(
            await session.scalars(
                select(Message.id).where(
                    *lost, func.coalesce(Message.send_at, Message.created_at) < cutoff
                )
            )
        )
        if old:
            await session.execute(
                update(Message)
                .where(among(session, Message.id, old), *lost)
                .values(status="failed", lease_until=None, last_error=GAVE_UP)
                .execution_options(synchronize_session=False)
            )
            await session.execute(
                update(Recipient)
                .where(
                    among(session, Recipient.message_pk, old),
                    Recipient.status.in_(("pending", "deferred")),
                )
                .values(status="failed", response=GAVE_UP, updated_at=now)
                .execution_options(synchronize_session=False)
            )
    return await release_expired(session, MESSAGE_QUEUE, now)


def _readable(messages: list[tuple[QueuedMessage, dict[str, Any]]]) -> dict[str, StoredMessage]:
    """Each message's payload, parsed once. One that cannot be read (no version wrote such a
    row, but a hand edit could) is logged and left out, so it cannot fail its whole batch's load
    on every pass: its lease expires and the sweep gives up on it at POSTROOM_MAX_MESSAGE_AGE."""
    stored = {}
    for message, payload in messages:
        try:
            stored[message.id] = StoredMessage.of(payload)
        except ValidationError:
            log.exception("message %s: its stored payload cannot be read; not sent", message.id)
    return stored


def _unsent(
    messages: list[QueuedMessage],
    stored: dict[str, StoredMessage],
    recipients: dict[str, list[QueuedRecipient]],
) -> list[str]:
    """The addresses the suppression list is checked for: the recipients still to be sent to,
    of the messages that do not ignore the list."""
    return [
        r.email
        for message in messages
        if not stored[message.id].ignore_suppressions
        for r in recipients[message.id]
        if r.status in ("pending", "deferred")
    ]


def _theme_name(
    message: QueuedMessage, stored: dict[str, StoredMessage], profiles: dict[str, ServerProfile]
) -> str | None:
    """A message naming a theme (or null) decides; otherwise its profile's theme applies."""
    if stored[message.id].theme_set:
        return message.theme
    profile = profiles.get(message.server) if message.server else None
    return profile.theme if profile is not None else None


async def _profiles(session: AsyncSession, names: set[str]) -> dict[str, ServerProfile]:
    """The named profiles and their fallbacks."""
    query = select(ServerProfile)
    found = {p.name: p for p in await session.scalars(query.where(ServerProfile.name.in_(names)))}
    fallbacks = {p.fallback for p in found.values() if p.fallback} - set(found)
    if fallbacks:
        found |= {
            p.name: p for p in await session.scalars(query.where(ServerProfile.name.in_(fallbacks)))
        }
    return found


async def _layouts(session: AsyncSession, names: set[str]) -> dict[str, Layout]:
    if not names:
        return {}
    themes = await session.scalars(select(Theme).where(Theme.name.in_(names)))
    return {theme.name: layout_of(theme) for theme in themes}
