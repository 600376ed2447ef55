"""The dispatcher: claims due messages, sends them through their profile's transport, records
every attempt and schedules retries. Runs inside `postroom serve` or alone as `postroom worker`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import among, transaction, update_by_id, utcnow
from app.delivery import outbox
from app.delivery.compose import compose, group_names
from app.delivery.events import attempt_event
from app.delivery.grouping import Batch, plan
from app.delivery.liveness import HEARTBEAT_EVERY, Heartbeats, survived
from app.delivery.models import ATTEMPTS, MESSAGES, RECIPIENTS, Message, Recipient
from app.delivery.outbox import Claim, RetryPolicy
from app.delivery.transports import BUILTIN, TransportCache
from app.events.service import DeliveryEvent, record_events, tally
from app.metrics import Metrics
from app.servers.models import ServerProfile
from app.servers.service import record_health
from app.suppressions import service as suppressions
from app.suppressions.unsubscribe import Links, Unsubscribe
from app.themes.models import Theme
from app.themes.render import Layout
from app.themes.service import layout_of
from app.transports.base import Address, OutgoingMessage, Transport
from app.transports.errors import (
    ConfigurationError,
    PermanentError,
    TemporaryError,
    TransportError,
)
from app.transports.result import FINAL_OK, PERMANENT, RecipientResult, RecipientStatus

log = logging.getLogger("postroom.dispatcher")

CONNECTION_LEVEL = frozenset({"ECONNECTION", "ETIMEDOUT", "EDNS", "ETLS", "EAUTH", "EPOLICY"})
"""Errors that say the server cannot be reached at all: the rest of an attempt is not tried."""

BUSY_POLL = 0.02
"""Seconds between claims while messages keep coming: a worker in another process than the API
is not told when one is queued, so it looks again soon after a claim that found some."""


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
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """The attempts table's rows for this attempt's transactions, written by `_finish`."""
    retry_after: float | None = None
    config_error: str | None = None
    """Why the profile's configuration was refused (credentials, TLS, DNS): marks it failing."""
    delivered_any: bool = False
    servers: dict[str, str] = field(default_factory=dict)
    """The profile each recipient's last transaction went through (a fallback's, maybe)."""


class Dispatcher:
    """Claims due messages in batches, sends each through its transport, and writes the results
    of every attempt that finished meanwhile in one transaction (a group commit): a batch costs
    three short transactions (claim, load, finish) rather than three per message."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        transports: TransportCache,
        metrics: Metrics,
        *,
        loop: str = "dispatcher",
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.transports = transports
        self.metrics = metrics
        self.retry = RetryPolicy(settings.retry_base, settings.retry_max, settings.max_message_age)
        self.wakeup = asyncio.Event()
        self._done: list[Job] = []
        self._done_changed = asyncio.Event()
        self._in_flight = 0
        """Claimed messages whose result is not written yet."""
        self._closing = False
        self._next_sweep = 0.0
        self.heartbeats = Heartbeats(sessions, loop)
        self.links = Links.of(settings, transports.box)
        self.task: asyncio.Task[None] | None = None
        """The running loop, set by whoever starts it (for /readyz)."""
        self.last_error: str | None = None
        """The last exception a pass survived; cleared by the next heartbeat's pass."""

    def notify(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self.wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set, then finish what is in flight.

        Supervised: a pass that raises (the database away, a bug) is logged with its traceback
        and counted, and the loop backs off and goes on. It beats only after passes that
        worked, so a loop that keeps failing goes stale in /readyz and /metrics."""
        sending: set[asyncio.Task[None]] = set()
        self._closing = False
        writer = asyncio.create_task(self._write_results())
        failures = 0
        try:
            while not stopping.is_set():
                try:
                    await self._pass(stopping, sending)
                    failures = 0
                except Exception as err:
                    failures += 1
                    await self._survive(err, failures, stopping)
            if sending:
                await asyncio.gather(*sending, return_exceptions=True)
        finally:
            self._closing = True
            self._done_changed.set()
            await writer
            await self._say_goodbye()

    async def _pass(self, stopping: asyncio.Event, sending: set[asyncio.Task[None]]) -> None:
        """Sweep and beat when due, claim what there is room for, and wait a little."""
        now = time.monotonic()
        if now >= self._next_sweep:
            await self._sweep()
            self._next_sweep = now + min(self.settings.lease_seconds / 4, 30.0)
        self.wakeup.clear()
        free = self.settings.dispatcher_concurrency - self._in_flight
        jobs: list[Job] = []
        if free >= self._claim_at() or (free > 0 and not self._in_flight):
            jobs = await self._claim(min(free, self.settings.dispatcher_batch))
        for job in jobs:
            task = asyncio.create_task(self._attempt_and_queue(job))
            sending.add(task)
            task.add_done_callback(sending.discard)
        beat = self.heartbeats.last
        if beat is None or now - beat >= HEARTBEAT_EVERY:
            await self.heartbeats.beat(now)
        if not jobs:
            await self._idle(stopping, min(self.settings.poll_interval, HEARTBEAT_EVERY))
        elif free <= len(jobs) or len(jobs) < self.settings.dispatcher_batch:
            await self._idle(stopping, BUSY_POLL)

    async def _survive(self, err: Exception, failures: int, stopping: asyncio.Event) -> None:
        self.last_error, delay = await survived(err, failures, self.heartbeats, self.metrics, log)
        await self._idle(stopping, delay)

    async def _say_goodbye(self) -> None:
        try:
            await self.heartbeats.remove()
        except Exception as err:
            log.warning("the heartbeat row %s stays behind: %s", self.heartbeats.id, err)

    def _claim_at(self) -> int:
        """Free slots worth a claim: claiming for every slot freed would make many tiny claims."""
        return max(
            1, min(self.settings.dispatcher_batch, self.settings.dispatcher_concurrency) // 2
        )

    async def _sweep(self) -> None:
        async with transaction(self.sessions) as session:
            swept = await outbox.sweep(session, max_age=self.settings.max_message_age)
        if swept:
            log.warning("%d messages had an expired lease and went back to the queue", swept)

    async def _claim(self, limit: int) -> list[Job]:
        claiming = time.perf_counter()
        async with transaction(self.sessions) as session:
            claims = await outbox.claim(session, limit=limit, lease=self.settings.lease_seconds)
        if not claims:
            return []
        elapsed = (time.perf_counter() - claiming) * 1000
        log.debug("claim transaction: %d messages in %.2f ms", len(claims), elapsed)
        self._in_flight += len(claims)
        try:
            jobs = await self._load(claims)
        except BaseException:
            self._in_flight -= len(claims)
            raise
        self._in_flight -= len(claims) - len(jobs)
        return jobs

    async def _idle(self, stopping: asyncio.Event, seconds: float) -> None:
        """Until something is queued or finished, `stopping` is set, or `seconds` pass."""
        waiters = [
            asyncio.ensure_future(self.wakeup.wait()),
            asyncio.ensure_future(stopping.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _attempt_and_queue(self, job: Job) -> None:
        await self._attempt(job)
        self._done.append(job)
        self._done_changed.set()

    def _take_done(self) -> list[Job]:
        jobs, self._done = self._done, []
        self._done_changed.clear()
        return jobs

    async def _write_results(self) -> None:
        """The group commit: whatever finished while the last write ran goes in the next one.
        Returns once `run` is closing and everything is written."""
        while True:
            await self._done_changed.wait()
            jobs = self._take_done()
            if jobs:
                try:
                    await self._finish(jobs)
                except Exception:
                    log.exception(
                        "writing the results of %d messages failed; their leases will expire "
                        "and they are retried",
                        len(jobs),
                    )
                finally:
                    self._in_flight -= len(jobs)
                    self.wakeup.set()
            if self._closing and not self._done:
                return

    async def drain(self) -> None:
        """Deliver everything due now, then return (for tests and `postroom worker --once`)."""
        while True:
            async with transaction(self.sessions) as session:
                claims = await outbox.claim(
                    session, limit=self.settings.dispatcher_batch, lease=self.settings.lease_seconds
                )
            if not claims:
                return
            jobs = await self._load(claims)
            await asyncio.gather(*(self._attempt(job) for job in jobs))
            await self._finish(jobs)

    async def _attempt(self, job: Job) -> None:
        """One delivery attempt, its outcome recorded in the job; bounded by attempt_timeout.

        An unexpected exception (a bug, a library's surprise) is logged with its traceback and
        recorded on the message as a deferred attempt: it is retried on the normal schedule
        rather than left in `sending` until its lease expires."""
        started_at, started = utcnow(), time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.attempt_timeout) as deadline:
                await self._send(job)
        except TimeoutError:
            if not deadline.expired():
                self._unexpected(job, started_at, started)
            else:
                self._cut(job, started_at, started)
        except Exception:
            self._unexpected(job, started_at, started)

    def _unexpected(self, job: Job, started_at: datetime, started: float) -> None:
        log.exception("delivering message %s failed unexpectedly; it is retried", job.claim.id)
        self.metrics.internal_errors.inc()
        kind, raised = sys.exc_info()[:2]
        error = TemporaryError(
            f"internal error: {kind.__name__ if kind else 'Exception'}: {raised}"[:1000],
            code="EINTERNAL",
        )
        self._fail_waiting(job, started_at, started, error)

    async def _load(self, claims: list[Claim]) -> list[Job]:
        """What the claimed messages need, in one short transaction: rows, recipients, profiles
        and themes, each looked up once for the whole batch."""
        attempts = {claim.id: claim for claim in claims}
        async with transaction(self.sessions) as session:
            messages = [
                message
                for message in await session.scalars(
                    select(Message).where(among(session, Message.id, attempts))
                )
                if message.status == "sending" and message.attempts == attempts[message.id].attempt
            ]
            recipients: dict[str, list[Recipient]] = {message.id: [] for message in messages}
            for row in await session.scalars(
                select(Recipient)
                .where(among(session, Recipient.message_pk, recipients))
                .order_by(Recipient.id)
            ):
                recipients[row.message_pk].append(row)
            listed = await suppressions.listed(session, _unsent(messages, recipients))
            profiles = await _profiles(session, {m.server for m in messages if m.server})
            layouts = await _layouts(
                session, {name for m in messages if (name := _theme_name(m, profiles))}
            )
            session.expunge_all()
        jobs = []
        for message in messages:
            profile = profiles.get(message.server) if message.server else None
            fallback = profiles.get(profile.fallback) if profile and profile.fallback else None
            name = _theme_name(message, profiles)
            layout = layouts.get(name) if name else None
            claim = attempts[message.id]
            if name and layout is None:
                log.warning(
                    "message %s: theme %r no longer exists; sent without it", message.id, name
                )
            job = Job(claim, message, recipients[message.id], profile, fallback, layout)
            _hold_back(job, listed)
            jobs.append(job)
        return jobs

    async def _send(self, job: Job) -> None:
        message = job.message
        pending = [
            r.email
            for r in job.recipients
            if r.status in ("pending", "deferred") and r.email not in job.results
        ]
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
            each=self._unsubscribe(job),
        )
        transport = self._transport(job.profile)
        sender = Address(message.payload["from"]["email"], message.payload["from"].get("name", ""))
        signature = job.profile.signature if job.profile is not None else None
        names = group_names(message.payload)
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
                    names=names,
                    unsubscribe_url=self._unsubscribe_url(job, batch),
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
                await self._transaction(job, transport, self._envelope(job, job.profile, outgoing))
            except TransportError as err:
                if err.before_data and job.fallback is not None:
                    try:
                        fallback = self._transport(job.fallback)
                        await self._transaction(
                            job, fallback, self._envelope(job, job.fallback, outgoing)
                        )
                        continue
                    except TransportError as fallback_err:
                        err = fallback_err
                self._fail_all(job, list(outgoing.recipients), err)
                if err.code in CONNECTION_LEVEL and isinstance(err, TemporaryError):
                    rest = [r for later in batches[index + 1 :] for r in later.recipients]
                    self._fail_all(job, rest, err)
                    return

    def _envelope(
        self, job: Job, profile: ServerProfile | None, outgoing: OutgoingMessage
    ) -> OutgoingMessage:
        """The envelope sender `profile` gets: a signed VERP address when it has a bounce domain
        (app/events/bounces/verp.py), so its bounces name the message and recipient."""
        return self.transports.verp.envelope(outgoing, profile, job.message.id, job.recipients)

    def _unsubscribe(self, job: Job) -> bool:
        """Whether the message carries one-click unsubscribe links: its own `listUnsubscribe`,
        else its profile's (and the service knows its public URL)."""
        wanted = job.message.payload.get("listUnsubscribe")
        if wanted is None:
            wanted = job.profile is not None and job.profile.list_unsubscribe
        return bool(wanted) and self.links.base_url is not None

    def _unsubscribe_url(self, job: Job, batch: Batch) -> str | None:
        """The batch's link: only a batch of one recipient can carry one (see `plan`'s `each`;
        visible mail to several people goes without)."""
        if len(batch.recipients) != 1 or not self._unsubscribe(job):
            return None
        profile = job.message.server or BUILTIN
        return self.links.url(Unsubscribe(batch.recipients[0], profile, job.message.id))

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
        job.servers.update(dict.fromkeys(recipients, transport.name))
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
        duration = time.perf_counter() - started
        if error is not None:
            outcome = "deferred" if isinstance(error, TemporaryError) else "failed"
            if error.ambiguous:
                self.metrics.ambiguous.inc()
            if isinstance(error, ConfigurationError):
                job.config_error = str(error)
                self.metrics.configuration_errors.labels(profile=server, code=error.code).inc()
        self.metrics.transactions.labels(outcome=outcome).inc()
        self.metrics.attempt_duration.labels(type=_type_of(job, server)).observe(duration)
        job.attempts.append(
            {
                "message_pk": job.message.id,
                "number": job.claim.attempt,
                "server": server,
                "started_at": started_at,
                "duration_ms": round(duration * 1000, 3),
                "outcome": outcome,
                "recipients": count,
                "tls_version": error.tls_version if error else tls_version,
                "reply_code": error.reply_code if error else reply_code,
                "reply": error.reply if error else None,
                "provider_id": provider_id,
                "error_code": error.code if error else None,
                "error": error.message if error else None,
                "ambiguous": error.ambiguous if error else False,
            }
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
        self._fail_waiting(job, started_at, started, error)

    def _fail_waiting(
        self, job: Job, started_at: datetime, started: float, error: TransportError
    ) -> None:
        """Record `error` as an attempt for every recipient this attempt has no result for."""
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

    async def _finish(self, jobs: list[Job]) -> None:
        """Write the results of finished attempts in one transaction, each fenced on its attempt
        number: a job whose lease expired and whose message was claimed again changes nothing."""
        if not jobs:
            return
        now = utcnow()
        updates = [self._outcome(job, now) for job in jobs]
        async with transaction(self.sessions) as session:
            fenced = (
                select(Message.id, Message.attempts, Message.status)
                .where(among(session, Message.id, [job.claim.id for job in jobs]))
                .with_for_update()
            )
            current = {
                (row.id, row.attempts)
                for row in await session.execute(fenced)
                if row.status == "sending"
            }
            live = []
            for job, values in zip(jobs, updates, strict=True):
                if (job.claim.id, job.claim.attempt) in current:
                    live.append((job, values))
                else:
                    log.warning(
                        "message %s: attempt %d lost its lease; its result is dropped",
                        job.claim.id,
                        job.claim.attempt,
                    )
            if not live:
                return
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
            events = [event for job, _ in live for event in self._events(job, now)]
            events = await record_events(session, events)
            attempts = [row for job, _ in live for row in job.attempts]
            if attempts:
                await session.execute(insert(ATTEMPTS), attempts)
            await self._record_health(session, [job for job, _ in live])
        self.metrics.count_events(tally(events))
        for job, values in live:
            if values["status"] != "queued":
                self.metrics.messages.labels(status=values["status"]).inc()
                age = (now - job.message.starts_at).total_seconds()
                self.metrics.delivery_latency.observe(age)

    def _events(self, job: Job, now: datetime) -> list[DeliveryEvent]:
        """Each recipient's outcome of this attempt, as an event (after `_outcome`, which turns
        the deferrals of an expired message into failures)."""
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

    def _outcome(self, job: Job, now: datetime) -> dict[str, Any]:
        """The message row's new values after this attempt: queued for a retry, or final."""
        message = job.message
        statuses = {r.email: r.status for r in job.recipients}
        statuses.update({email: result.status for email, result in job.results.items()})
        waiting = [e for e, s in statuses.items() if s in ("pending", "deferred")]
        if waiting and self.retry.expired(message.starts_at, now):
            for email in waiting:
                old = job.results.get(email)
                job.results[email] = RecipientResult(
                    "failed",
                    old.code if old else None,
                    f"gave up after {job.claim.attempt} attempts: {old.message if old else ''}",
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
            delay = self.retry.delay(job.claim.attempt, job.retry_after)
            values |= {"status": "queued", "next_attempt_at": now + timedelta(seconds=delay)}
        else:
            tried = [s for s in statuses.values() if s != "suppressed"]
            ok = sum(s in FINAL_OK for s in tried)
            status = "sent" if ok == len(tried) else ("failed" if ok == 0 else "partially_sent")
            values |= {"status": status if tried else "suppressed", "sent_at": now if ok else None}
        return values

    async def _record_health(self, session: AsyncSession, jobs: list[Job]) -> None:
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


def _unsent(messages: list[Message], recipients: dict[str, list[Recipient]]) -> list[str]:
    """The addresses the suppression list is checked for: the recipients still to be sent to,
    of the messages that do not ignore the list."""
    return [
        r.email
        for message in messages
        if not message.payload.get("ignoreSuppressions")
        for r in recipients[message.id]
        if r.status in ("pending", "deferred")
    ]


def _hold_back(job: Job, listed: suppressions.Listed) -> None:
    """A suppressed recipient's result is `suppressed`, before anything is sent: it is not sent
    to, and its companions go on."""
    if job.message.payload.get("ignoreSuppressions"):
        return
    profile = job.message.server or BUILTIN
    for r in job.recipients:
        if r.status in ("pending", "deferred") and (why := listed.why(r.email, profile)):
            job.results[r.email] = RecipientResult("suppressed", None, why)


def _type_of(job: Job, server: str) -> str:
    """The type of the profile a transaction went through (its fallback's, or the built-in)."""
    for profile in (job.profile, job.fallback):
        if profile is not None and profile.name == server:
            return profile.type
    return "builtin"


def _theme_name(message: Message, profiles: dict[str, ServerProfile]) -> str | None:
    """A message naming a theme (or null) decides; otherwise its profile's theme applies."""
    if message.payload.get("themeSet"):
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
