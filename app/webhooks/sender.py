"""The webhook sender: claims due deliveries, POSTs each signed (Standard Webhooks), records the
outcome fenced on its attempt, retries with backoff, and disables an endpoint that keeps failing.

The queue is app/delivery/queue.py's (claim under a lease, fenced finish, sweep) with the outbox's
RetryPolicy; a pass is three short transactions (claim and load, the HTTP calls with no session
open, finish).
Deliveries of one message to one endpoint go in order: the next is not claimed while the one
before is waiting or in flight. Runs beside the dispatcher, in `postroom serve` and `postroom
worker`, supervised like it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from standardwebhooks import Webhook

from app.config import Settings
from app.crypto import SecretBox
from app.db import among, transaction, update_by_id, utcnow
from app.delivery.liveness import HEARTBEAT_EVERY, Heartbeats, survived
from app.delivery.outbox import RetryPolicy
from app.delivery.queue import Lease, claim_due, release_expired
from app.delivery.supervised import Readiness, task_readiness
from app.metrics import Metrics
from app.transports.errors import TransportError
from app.transports.http import Api, Refusal, request, text_of
from app.webhooks import service
from app.webhooks.models import DELIVERIES, DELIVERY_QUEUE, WebhookDelivery, WebhookEndpoint

log = logging.getLogger("postroom.webhooks")

TIMEOUT = 10.0
"""Seconds one delivery may take, connection to answer."""
LEASE = 60.0
"""Seconds a claimed delivery stays reserved: well past TIMEOUT."""
BATCH = 32
"""Deliveries claimed, and sent concurrently, by one pass."""
DISABLE_AFTER = timedelta(days=3)
"""An endpoint whose every attempt failed for this long is disabled."""
ERROR_LENGTH = 1000
PENDING = ("queued", "sending", "paused")

ENDPOINT_API = Api(
    provider="the webhook endpoint",
    parse_error=lambda response: Refusal(None, text_of(response)),
    credentials_fix="the receiver refused the request (401/403)",
    url_setting="url",
)


@dataclass(slots=True)
class Job:
    """One claimed delivery, what sending it needs, and its outcome."""

    lease: Lease[int]
    endpoint_id: str
    webhook_id: str
    url: str
    secret: str
    body: str
    created_at: datetime
    attempted_at: datetime | None = None
    delivered: bool = False
    code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    duration_ms: float | None = None


class Sender:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        box: SecretBox,
        http: httpx.AsyncClient,
        metrics: Metrics,
        *,
        loop: str = "webhooks",
        disable_after: timedelta = DISABLE_AFTER,
        timeout: float = TIMEOUT,
        lease: float = LEASE,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.box = box
        self.http = http
        self.metrics = metrics
        self.retry = RetryPolicy(
            settings.webhook_retry_base, settings.webhook_retry_max, settings.webhook_max_age
        )
        self.disable_after = disable_after
        self.timeout = timeout
        self.lease = lease
        self.heartbeats = Heartbeats(sessions, loop)
        self.task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self._next_sweep = 0.0

    async def run(self, stopping: asyncio.Event) -> None:
        """Send until `stopping` is set. Supervised: a pass that raises is logged, counted and
        backed off from; the heartbeat is written only after passes that worked."""
        failures = 0
        try:
            while not stopping.is_set():
                try:
                    sent = await self._pass()
                    failures = 0
                    if not sent:
                        await _wait(stopping, self.settings.poll_interval)
                except Exception as err:
                    failures += 1
                    self.last_error, delay = await survived(
                        err, failures, self.heartbeats, self.metrics, log
                    )
                    await _wait(stopping, delay)
        finally:
            await self.heartbeats.goodbye(log)

    async def readiness(self, session: AsyncSession) -> Readiness:
        """For /readyz: the loop runs (deliveries wait in the database while it does not)."""
        return task_readiness("webhook sender", self.task, self.last_error)

    async def drain(self) -> None:
        """Send everything due now, then return (tests and `postroom worker --once`: no
        heartbeat, no sweep)."""
        while await self._send_due():
            pass

    async def _pass(self) -> int:
        """Sweep and beat when due, and send one batch; returns how many were sent."""
        now = time.monotonic()
        if now >= self._next_sweep:
            async with transaction(self.sessions) as session:
                swept = await release_expired(session, DELIVERY_QUEUE, utcnow())
            if swept:
                log.warning("%d webhook deliveries had an expired lease and are retried", swept)
            self._next_sweep = now + self.lease / 4
        sent = await self._send_due()
        beat = self.heartbeats.last
        if beat is None or now - beat >= HEARTBEAT_EVERY:
            await self.heartbeats.beat(now)
        return sent

    async def _send_due(self) -> int:
        jobs = await self._claim()
        if jobs:
            await asyncio.gather(*(self._attempt(job) for job in jobs))
            await self._finish(jobs)
        return len(jobs)

    async def _claim(self) -> list[Job]:
        """Claim due deliveries (none that waits behind an earlier one of its message to its
        endpoint) and read what sending them needs, in one short transaction."""
        earlier = aliased(WebhookDelivery)
        in_order = ~exists().where(
            earlier.endpoint_id == WebhookDelivery.endpoint_id,
            earlier.message_pk == WebhookDelivery.message_pk,
            earlier.id < WebhookDelivery.id,
            earlier.status.in_(PENDING),
        )
        async with transaction(self.sessions) as session:
            leases = await claim_due(
                session, DELIVERY_QUEUE, limit=BATCH, lease=self.lease, where=(in_order,)
            )
            if not leases:
                return []
            rows = await session.execute(
                select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(among(session, WebhookDelivery.id, [lease.id for lease in leases]))
            )
            found = {delivery.id: (delivery, url, secret) for delivery, url, secret in rows}
        jobs = []
        for lease in leases:
            delivery, url, token = found[lease.id]
            secret = self.box.decrypt(token)["secret"]
            jobs.append(
                Job(
                    lease,
                    delivery.endpoint_id,
                    delivery.webhook_id,
                    url,
                    secret,
                    delivery.body,
                    delivery.created_at,
                )
            )
        return jobs

    async def _attempt(self, job: Job) -> None:
        """POST the body with the Standard Webhooks headers; the outcome goes into the job."""
        body = job.body.encode()
        job.attempted_at = at = utcnow()
        headers = {
            "content-type": "application/json",
            "user-agent": "Postroom-Webhooks/1",
            "webhook-id": job.webhook_id,
            "webhook-timestamp": str(math.floor(at.timestamp())),
            "webhook-signature": Webhook(job.secret).sign(job.webhook_id, at, body),
        }
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                response = await request(
                    self.http,
                    ENDPOINT_API,
                    "POST",
                    job.url,
                    content=body,
                    headers=headers,
                    timeout=self.timeout,
                    logger=log,
                )
            job.delivered, job.code = True, response.status_code
        except TransportError as err:
            job.code, job.retry_after = err.reply_code, err.retry_after
            job.error = (
                f"HTTP {err.reply_code}: {err.reply or err.message}"
                if err.reply_code is not None
                else err.message
            )
        except TimeoutError:
            job.error = f"no answer within {self.timeout:g} s"
        except Exception as err:  # a bug or a library's surprise: recorded, retried
            log.exception("webhook delivery %s failed unexpectedly", job.webhook_id)
            self.metrics.internal_errors.inc()
            job.error = f"internal error: {type(err).__name__}: {err}"
        job.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if job.error is not None:
            job.error = job.error[:ERROR_LENGTH]

    async def _finish(self, jobs: list[Job]) -> None:
        """Record every outcome in one transaction, each fenced on its attempt number, and keep
        the endpoints' failure clocks (disabling those that failed for `disable_after`).

        The endpoints' rows are locked before their deliveries', in the order a DELETE of an
        endpoint takes them (its row, then by ON DELETE CASCADE its deliveries): the other order
        deadlocks with a concurrent delete on PostgreSQL."""
        now = utcnow()
        outcomes: list[str] = []
        async with transaction(self.sessions) as session:
            endpoints = {
                endpoint.id: endpoint
                for endpoint in await session.scalars(
                    select(WebhookEndpoint)
                    .where(among(session, WebhookEndpoint.id, {job.endpoint_id for job in jobs}))
                    .with_for_update()
                )
            }
            ids = [job.lease.id for job in jobs]
            current = {
                (row.id, row.attempts)
                for row in await session.execute(
                    select(WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.status)
                    .where(among(session, WebhookDelivery.id, ids))
                    .with_for_update()
                )
                if row.status == "sending"
            }
            live = [job for job in jobs if (job.lease.id, job.lease.attempt) in current]
            outcomes += ["lost"] * (len(jobs) - len(live))
            rows = []
            for job in live:
                row, outcome = self._outcome(job, endpoints.get(job.endpoint_id), now)
                rows.append(row)
                outcomes.append(outcome)
            if rows:
                await session.execute(*update_by_id(DELIVERIES, rows))
            disabled = await self._judge(session, live, endpoints, now)
        for outcome in outcomes:
            self.metrics.webhook_deliveries.labels(outcome=outcome).inc()
        self.metrics.webhook_endpoints_disabled.inc(disabled)

    def _outcome(
        self, job: Job, endpoint: WebhookEndpoint | None, now: datetime
    ) -> tuple[dict[str, Any], str]:
        """The delivery row's new values, and the outcome for the metrics."""
        values: dict[str, Any] = {
            "id": job.lease.id,
            "lease_until": None,
            "last_attempt_at": job.attempted_at,
            "response_code": job.code,
            "error": job.error,
            "duration_ms": job.duration_ms,
        }
        if job.delivered:
            return values | {"status": "delivered", "delivered_at": now}, "delivered"
        if job.code == 410 or self.retry.expired(job.created_at, now):
            return values | {"status": "failed"}, "failed"
        delay = self.retry.delay(job.lease.attempt, job.retry_after)
        status = "queued" if endpoint is not None and endpoint.enabled else "paused"
        next_at = now + timedelta(seconds=delay)
        return values | {"status": status, "next_attempt_at": next_at}, "retry"

    async def _judge(
        self,
        session: AsyncSession,
        jobs: list[Job],
        endpoints: dict[str, WebhookEndpoint],
        now: datetime,
    ) -> int:
        """A delivery that went through stops an endpoint's failure clock; a failure starts it.
        An enabled endpoint that answered 410 Gone, or whose clock ran `disable_after`, is
        disabled with the reason. Returns how many were disabled."""
        disabled = 0
        for endpoint_id, endpoint in endpoints.items():
            mine = [job for job in jobs if job.endpoint_id == endpoint_id]
            if any(job.delivered for job in mine):
                endpoint.failing_since = None
                continue
            first = min(job.attempted_at or now for job in mine)
            endpoint.failing_since = endpoint.failing_since or first
            if not endpoint.enabled:
                continue
            last = mine[-1].error or "failed"
            if any(job.code == 410 for job in mine):
                reason = "the endpoint answered 410 Gone: it asked for no more deliveries"
            elif now - endpoint.failing_since >= self.disable_after:
                since = endpoint.failing_since.isoformat(timespec="seconds")
                reason = (
                    f"every delivery failed since {since} ({_span(self.disable_after)}); "
                    f"the last: {last}"
                )
            else:
                continue
            await service.disable(session, endpoint, reason[:ERROR_LENGTH], now)
            log.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)
            disabled += 1
        return disabled


def _span(span: timedelta) -> str:
    days = span / timedelta(days=1)
    return f"{days:g} days" if days >= 1 else f"{span.total_seconds():g} s"


async def _wait(stopping: asyncio.Event, seconds: float) -> None:
    """Until `stopping` is set or `seconds` pass."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
