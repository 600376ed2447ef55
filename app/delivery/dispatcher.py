"""The dispatcher: claims due messages, sends them through their profile's transport, records
every attempt and schedules retries. Runs inside `postroom serve` or alone as `postroom worker`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import transaction, utcnow
from app.delivery import outbox
from app.delivery.compose import compose
from app.delivery.grouping import plan
from app.delivery.models import Attempt, Message, Recipient
from app.delivery.outbox import Claim, RetryPolicy
from app.delivery.transports import TransportCache
from app.metrics import Metrics
from app.servers.models import ServerProfile
from app.servers.service import record_health
from app.themes.models import Theme
from app.themes.render import Layout
from app.themes.service import layout_of
from app.transports.base import Address, OutgoingMessage, Transport
from app.transports.errors import (
    CredentialsError,
    PermanentError,
    TemporaryError,
    TransportError,
)
from app.transports.result import FINAL_OK, PERMANENT, RecipientResult, RecipientStatus

log = logging.getLogger("postroom.dispatcher")

CONNECTION_LEVEL = frozenset({"ECONNECTION", "ETIMEDOUT", "EDNS", "ETLS", "EAUTH", "EPOLICY"})
"""Errors that say the server cannot be reached at all: the rest of an attempt is not tried."""


@dataclass(slots=True)
class Job:
    """What one attempt needs, read in a short transaction before any I/O."""

    claim: Claim
    message: Message
    recipients: list[Recipient]
    profile: ServerProfile | None
    fallback: ServerProfile | None
    layout: Layout | None = None
    """The theme the message goes out in: the one it names, else its profile's (none if null)."""
    results: dict[str, RecipientResult] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    retry_after: float | None = None
    credentials_error: str | None = None
    delivered_any: bool = False


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        transports: TransportCache,
        metrics: Metrics,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.transports = transports
        self.metrics = metrics
        self.retry = RetryPolicy(settings.retry_base, settings.retry_max, settings.max_message_age)
        self.wakeup = asyncio.Event()

    def notify(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self.wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set, then finish what is in flight."""
        tasks: set[asyncio.Task[None]] = set()
        next_sweep = 0.0
        while not stopping.is_set():
            if time.monotonic() >= next_sweep:
                async with transaction(self.sessions) as session:
                    swept = await outbox.sweep(session, max_age=self.settings.max_message_age)
                if swept:
                    log.warning(
                        "%d messages had an expired lease and went back to the queue", swept
                    )
                next_sweep = time.monotonic() + min(self.settings.lease_seconds / 4, 30.0)
            free = self.settings.dispatcher_concurrency - len(tasks)
            claims: list[Claim] = []
            if free > 0:
                self.wakeup.clear()
                claiming = time.perf_counter()
                async with transaction(self.sessions) as session:
                    claims = await outbox.claim(
                        session,
                        limit=min(free, self.settings.dispatcher_batch),
                        lease=self.settings.lease_seconds,
                    )
                if claims:
                    elapsed = (time.perf_counter() - claiming) * 1000
                    log.debug("claim transaction: %d messages in %.2f ms", len(claims), elapsed)
            for claim in claims:
                task = asyncio.create_task(self.deliver(claim))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if not claims or free <= len(claims):
                await self._idle(tasks, stopping)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _idle(self, tasks: set[asyncio.Task[None]], stopping: asyncio.Event) -> None:
        waiters = [
            asyncio.ensure_future(self.wakeup.wait()),
            asyncio.ensure_future(stopping.wait()),
        ]
        try:
            await asyncio.wait(
                [*waiters, *tasks],
                timeout=self.settings.poll_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def drain(self) -> None:
        """Deliver everything due now, then return (for tests and `postroom worker --once`)."""
        while True:
            async with transaction(self.sessions) as session:
                claims = await outbox.claim(
                    session, limit=self.settings.dispatcher_batch, lease=self.settings.lease_seconds
                )
            if not claims:
                return
            await asyncio.gather(*(self.deliver(claim) for claim in claims))

    async def deliver(self, claim: Claim) -> None:
        try:
            job = await self._load(claim)
            if job is None:
                return
            started_at, started = utcnow(), time.perf_counter()
            try:
                async with asyncio.timeout(self.settings.attempt_timeout) as deadline:
                    await self._send(job)
            except TimeoutError:
                if not deadline.expired():
                    raise
                self._cut(job, started_at, started)
            await self._finish(job)
        except Exception:
            log.exception(
                "delivering message %s failed; its lease will expire and it is retried", claim.id
            )
            raise

    async def _load(self, claim: Claim) -> Job | None:
        async with transaction(self.sessions) as session:
            message = await session.scalar(select(Message).where(*outbox.fenced(claim)))
            if message is None:
                return None
            recipients = list(
                await session.scalars(
                    select(Recipient)
                    .where(Recipient.message_pk == message.id)
                    .order_by(Recipient.id)
                )
            )
            profile = fallback = None
            if message.server is not None:
                profile = await session.scalar(
                    select(ServerProfile).where(ServerProfile.name == message.server)
                )
                if profile is not None and profile.fallback:
                    fallback = await session.scalar(
                        select(ServerProfile).where(ServerProfile.name == profile.fallback)
                    )
            layout = await self._layout(session, message, profile)
            session.expunge_all()
        return Job(claim, message, recipients, profile, fallback, layout)

    async def _layout(
        self, session: AsyncSession, message: Message, profile: ServerProfile | None
    ) -> Layout | None:
        """A message naming a theme (or null) decides; otherwise its profile's theme applies."""
        explicit = message.payload.get("themeSet")
        name = message.theme if explicit else (profile.theme if profile is not None else None)
        if name is None:
            return None
        theme = await session.scalar(select(Theme).where(Theme.name == name))
        if theme is None:
            log.warning("message %s: theme %r no longer exists; sent without it", message.id, name)
            return None
        return layout_of(theme)

    async def _send(self, job: Job) -> None:
        message = job.message
        pending = [r.email for r in job.recipients if r.status in ("pending", "deferred")]
        if message.server is not None and job.profile is None:
            error = TemporaryError(
                f"server profile {message.server!r} no longer exists", code="ECONFIG"
            )
            self._fail_all(job, pending, error)
            return
        batches = plan(
            group=message.payload.get("group") is not None,
            group_size=len(job.recipients),
            pending=pending,
            personal=frozenset(r.email for r in job.recipients if r.data),
            chunk=job.profile.max_recipients_per_message if job.profile else None,
            builtin=job.profile is None,
        )
        transport = self._transport(job.profile)
        sender = Address(message.payload["from"]["email"], message.payload["from"].get("name", ""))
        signature = job.profile.signature if job.profile is not None else None
        for index, batch in enumerate(batches):
            try:
                outgoing = compose(
                    message.payload,
                    sender=sender,
                    batch=batch,
                    message_id=message.message_id,
                    date=message.created_at,
                    layout=job.layout,
                    signature=signature,
                )
            except (PermanentError, ValueError) as raised:
                # ValueError: a header Python's email refuses (a line separator in a subject the
                # API let through): it would fail on every retry, so it fails now, recorded.
                err = raised if isinstance(raised, PermanentError) else None
                if err is None:
                    err = PermanentError(f"cannot be composed: {raised}", code="EMESSAGE")
                started_at, started = utcnow(), time.perf_counter()
                self._record(
                    job, transport.name, started_at, started, len(batch.recipients), error=err
                )
                self._fail_all(job, list(batch.recipients), err)
                continue
            try:
                await self._transaction(job, transport, outgoing)
            except TransportError as err:
                if err.before_data and job.fallback is not None:
                    try:
                        fallback = self._transport(job.fallback)
                        await self._transaction(job, fallback, outgoing)
                        continue
                    except TransportError as fallback_err:
                        err = fallback_err
                self._fail_all(job, list(outgoing.recipients), err)
                if err.code in CONNECTION_LEVEL and isinstance(err, TemporaryError):
                    rest = [r for later in batches[index + 1 :] for r in later.recipients]
                    self._fail_all(job, rest, err)
                    return

    async def _transaction(self, job: Job, transport: Transport, outgoing: OutgoingMessage) -> None:
        """One SMTP transaction or API call; its outcome goes into the job."""
        recipients = outgoing.recipients
        started_at = utcnow()
        started = time.perf_counter()
        try:
            result = await transport.send(outgoing)
        except TransportError as err:
            self._record(job, transport.name, started_at, started, len(recipients), error=err)
            raise
        statuses = {
            r: result.recipients.get(
                r, RecipientResult("deferred", None, "no answer for this recipient")
            )
            for r in recipients
        }
        job.results.update(statuses)
        values = set(s.status for s in statuses.values())
        outcome = "sent" if values <= FINAL_OK else ("failed" if values <= PERMANENT else "partial")
        if values == {"deferred"}:
            outcome = "deferred"
        job.delivered_any = job.delivered_any or bool(values & FINAL_OK)
        self._record(
            job,
            transport.name,
            started_at,
            started,
            len(recipients),
            outcome=outcome,
            tls_version=result.tls_version,
            reply_code=result.reply_code,
            provider_id=result.provider_id,
        )
        self.metrics.inc("transactions_total", outcome=outcome)

    def _record(
        self,
        job: Job,
        server: str,
        started_at: datetime,
        started: float,
        count: int,
        *,
        outcome: str = "",
        error: TransportError | None = None,
        tls_version: str | None = None,
        reply_code: int | None = None,
        provider_id: str | None = None,
    ) -> None:
        if error is not None:
            outcome = "deferred" if isinstance(error, TemporaryError) else "failed"
            if error.ambiguous:
                self.metrics.inc("ambiguous_attempts_total")
            if isinstance(error, CredentialsError):
                job.credentials_error = str(error)
            self.metrics.inc("transactions_total", outcome=outcome)
        job.attempts.append(
            Attempt(
                message_pk=job.message.id,
                number=job.claim.attempt,
                server=server,
                started_at=started_at,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                outcome=outcome,
                recipients=count,
                tls_version=error.tls_version if error else tls_version,
                reply_code=error.reply_code if error else reply_code,
                reply=error.reply if error else None,
                provider_id=provider_id,
                error_code=error.code if error else None,
                error=error.message if error else None,
                ambiguous=error.ambiguous if error else False,
            )
        )

    def _cut(self, job: Job, started_at: datetime, started: float) -> None:
        """The attempt outlived POSTROOM_ATTEMPT_TIMEOUT, so that it ends before its lease: every
        recipient without a result is retried; the cut transaction may have gone through."""
        error = TemporaryError(
            f"the attempt took longer than POSTROOM_ATTEMPT_TIMEOUT "
            f"({self.settings.attempt_timeout:g} s) and was cut",
            code="ETIMEDOUT",
            ambiguous=True,
        )
        waiting = [
            r.email
            for r in job.recipients
            if r.status in ("pending", "deferred") and r.email not in job.results
        ]
        server = job.profile.name if job.profile is not None else self.transports.builtin.name
        self._record(job, server, started_at, started, len(waiting), error=error)
        self._fail_all(job, waiting, error)

    def _fail_all(self, job: Job, recipients: list[str], error: TransportError) -> None:
        status: RecipientStatus = "deferred" if isinstance(error, TemporaryError) else "failed"
        result = RecipientResult(status, error.reply_code, str(error))
        for rcpt in recipients:
            job.results[rcpt] = result
        if isinstance(error, TemporaryError) and error.retry_after:
            job.retry_after = max(job.retry_after or 0.0, error.retry_after)

    def _transport(self, profile: ServerProfile | None) -> Transport:
        return self.transports.builtin if profile is None else self.transports.get(profile)

    async def _finish(self, job: Job) -> None:
        now = utcnow()
        statuses = {r.email: r.status for r in job.recipients}
        statuses.update({email: result.status for email, result in job.results.items()})
        expired = self.retry.expired(job.message.created_at, now)
        waiting = [e for e, s in statuses.items() if s in ("pending", "deferred")]
        if waiting and expired:
            for email in waiting:
                old = job.results.get(email)
                job.results[email] = RecipientResult(
                    "failed",
                    old.code if old else None,
                    f"gave up after {job.claim.attempt} attempts: {old.message if old else ''}",
                )
                statuses[email] = "failed"
            waiting = []
        values: dict[str, Any] = {"lease_until": None}
        if waiting:
            delay = self.retry.delay(job.claim.attempt, job.retry_after)
            values |= {"status": "queued", "next_attempt_at": now + timedelta(seconds=delay)}
        else:
            ok = sum(s in FINAL_OK for s in statuses.values())
            status = "sent" if ok == len(statuses) else ("failed" if ok == 0 else "partially_sent")
            values |= {"status": status, "sent_at": now if ok else None}
            self.metrics.inc("messages_total", status=status)
        errors = [a.error for a in job.attempts if a.error]
        values["last_error"] = errors[-1] if errors else None
        if job.layout is not None:
            values["theme"] = job.layout.name
        async with transaction(self.sessions) as session:
            updated = await session.execute(
                update(Message)
                .where(*outbox.fenced(job.claim))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if not getattr(updated, "rowcount", 0):
                log.warning(
                    "message %s: attempt %d lost its lease; its result is dropped",
                    job.message.id,
                    job.claim.attempt,
                )
                return
            ids = {r.email: r.id for r in job.recipients}
            rows = [
                {
                    "id": ids[email],
                    "status": result.status,
                    "code": result.code,
                    "response": result.message[:2000],
                    "updated_at": now,
                }
                for email, result in job.results.items()
                if email in ids
            ]
            if rows:
                await session.execute(update(Recipient), rows)
            session.add_all(job.attempts)
            profile = job.profile
            if profile is not None:
                if job.credentials_error is not None:
                    await record_health(session, profile.id, ok=False, error=job.credentials_error)
                elif job.delivered_any and profile.health != "ok":
                    await record_health(session, profile.id, ok=True)
