"""One delivery attempt of one claimed message, without a database: plan its transactions,
compose each, send it through the profile's transport (or its fallback's), and keep every
recipient's result and every transaction's attempt row in the job.

The dispatcher (app/delivery/dispatcher.py) runs the loop; the outbox (app/delivery/outbox.py)
loads the jobs before and writes them after, each in a short transaction of its own. What is here
touches neither the database nor anything but the transports it is given, so it is unit-tested
with fakes (tests/delivery/test_job.py).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from app.db import utcnow
from app.delivery.events import Suppressed
from app.delivery.links import Links
from app.delivery.rows import QueuedMessage, QueuedRecipient
from app.delivery.shape import Shape
from app.delivery.stored import StoredMessage
from app.delivery.transports import BUILTIN
from app.delivery.verp import Verp
from app.dkim.signer import Signer
from app.metrics import Metrics
from app.servers.models import ServerProfile
from app.themes.render import Layout
from app.transports.base import OutgoingMessage, Transport
from app.transports.errors import (
    ConfigurationError,
    PermanentError,
    TemporaryError,
    Throttled,
    TransportError,
)
from app.transports.result import FINAL_OK, PERMANENT, RecipientResult, RecipientStatus

log = logging.getLogger("postroom.dispatcher")
"""The dispatcher's logger: these lines were always its, and operators filter on it."""

CONNECTION_LEVEL = frozenset({"ECONNECTION", "ETIMEDOUT", "EDNS", "ETLS", "EAUTH", "EPOLICY"})
"""Errors that say the server cannot be reached at all: the rest of an attempt is not tried."""


@dataclass(slots=True)
class Job:
    """What one attempt needs, read in a short transaction before any I/O."""

    message: QueuedMessage
    stored: StoredMessage
    """What the message is to send: its payload, parsed once when the job is loaded."""
    attempt: int
    """The attempt number the claim gave: the outbox's finish is fenced on it."""
    recipients: list[QueuedRecipient]
    profile: ServerProfile | None
    fallback: ServerProfile | None
    layout: Layout | None = None
    """The theme the message goes out in: the one it names, else its profile's (none if null)."""
    results: dict[str, RecipientResult] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """The attempts table's rows for this attempt's transactions, written by the outbox."""
    retry_after: float | None = None
    config_error: str | None = None
    """Why the profile's configuration was refused (credentials, TLS, DNS): marks it failing."""
    delivered_any: bool = False
    servers: dict[str, str] = field(default_factory=dict)
    """The profile each recipient's last transaction went through (a fallback's, maybe)."""
    throttled: dict[str, float] = field(default_factory=dict)
    """Seconds each profile whose server said "too many" asked every worker to wait."""


class Transports(Protocol):
    """What an attempt needs of the live transports (app/delivery/transports.py's cache)."""

    @property
    def builtin(self) -> Transport: ...

    @property
    def verp(self) -> Verp: ...

    def get(self, profile: ServerProfile) -> Transport: ...

    def signer(self, profile: ServerProfile | None) -> Signer | None: ...


class Delivery:
    """Runs attempts: each sends what its job has pending and records the outcome in the job."""

    def __init__(
        self, transports: Transports, links: Links, metrics: Metrics, *, attempt_timeout: float
    ) -> None:
        self.transports = transports
        self.links = links
        self.metrics = metrics
        self.attempt_timeout = attempt_timeout

    async def attempt(self, job: Job) -> None:
        """One delivery attempt, its outcome recorded in the job; bounded by attempt_timeout.

        An unexpected exception (a bug, a library's surprise) is logged with its traceback and
        recorded on the message as a deferred attempt: it is retried on the normal schedule
        rather than left in `sending` until its lease expires."""
        started_at, started = utcnow(), time.perf_counter()
        try:
            async with asyncio.timeout(self.attempt_timeout) as deadline:
                await self._send(job)
        except TimeoutError:
            if not deadline.expired():
                self._unexpected(job, started_at, started)
            else:
                self._cut(job, started_at, started)
        except Exception:
            self._unexpected(job, started_at, started)

    def _unexpected(self, job: Job, started_at: datetime, started: float) -> None:
        log.exception("delivering message %s failed unexpectedly; it is retried", job.message.id)
        self.metrics.internal_errors.inc()
        kind, raised = sys.exc_info()[:2]
        error = TemporaryError(
            f"internal error: {kind.__name__ if kind else 'Exception'}: {raised}"[:1000],
            code="EINTERNAL",
        )
        self._fail_waiting(job, started_at, started, error)

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
        shape = Shape(message, job.stored, job.recipients, job.profile, job.layout, self.links)
        batches = shape.batches(pending)
        transport = self._transport(job.profile)
        for index, batch in enumerate(batches):
            try:
                outgoing = shape.compose(batch, self.transports.signer(job.profile))
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
        (app/delivery/verp.py), so its bounces name the message and recipient."""
        return self.transports.verp.envelope(outgoing, profile, job.message.id, job.recipients)

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
            if isinstance(error, Throttled):
                job.throttled[server] = max(job.throttled.get(server, 0.0), error.wait)
            if isinstance(error, ConfigurationError):
                job.config_error = str(error)
                self.metrics.configuration_errors.labels(profile=server, code=error.code).inc()
        self.metrics.transaction(outcome, _type_of(job, server), duration)
        job.attempts.append(
            {
                "message_pk": job.message.id,
                "number": job.attempt,
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
            f"({self.attempt_timeout:g} s) and was cut",
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


def hold_back(job: Job, listed: Suppressed) -> None:
    """A suppressed recipient's result is `suppressed`, before anything is sent: it is not sent
    to, and its companions go on."""
    if job.stored.ignore_suppressions:
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
