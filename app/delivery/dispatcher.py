"""The dispatcher: claims due messages, sends them through their profile's transport, records
every attempt and schedules retries. Runs inside `postroom serve` or alone as `postroom worker`."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import transaction, utcnow
from app.delivery import outbox
from app.delivery.events import Ledger
from app.delivery.job import Delivery, Job
from app.delivery.links import Links
from app.delivery.liveness import (
    HEARTBEAT_EVERY,
    STALE_AFTER,
    Heartbeats,
    heartbeat_age,
    survived,
)
from app.delivery.notify import Notifier
from app.delivery.outbox import Claim, RetryPolicy
from app.delivery.supervised import Readiness, task_readiness
from app.delivery.transports import TransportCache
from app.delivery.vocabulary import tally
from app.metrics import Metrics

log = logging.getLogger("postroom.dispatcher")

BUSY_POLL = 0.02
"""Seconds between claims while messages keep coming: a worker in another process than the API
is not told when one is queued, so it looks again soon after a claim that found some."""


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
        ledger: Ledger,
        *,
        notifier: Notifier | None = None,
        loop: str = "dispatcher",
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.transports = transports
        self.metrics = metrics
        self.ledger = ledger
        """Where the attempts' events go, and who is suppressed (app.events.service.LEDGER)."""
        self.retry = RetryPolicy(settings.retry_base, settings.retry_max, settings.max_message_age)
        self.wakeup = notifier or Notifier()
        """Set when something was queued, or when finished attempts freed room."""
        self._done: list[Job] = []
        self._done_changed = asyncio.Event()
        self._in_flight = 0
        """Claimed messages whose result is not written yet."""
        self._closing = False
        self._next_sweep = 0.0
        self.heartbeats = Heartbeats(sessions, loop)
        self.links = Links.of(settings, transports.box)
        self.delivery = Delivery(
            transports, self.links, metrics, attempt_timeout=settings.attempt_timeout
        )
        self.task: asyncio.Task[None] | None = None
        """The running loop, set by whoever starts it (for /readyz)."""
        self.last_error: str | None = None
        """The last exception a pass survived; cleared by the next heartbeat's pass."""

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
            await self.heartbeats.goodbye(log)

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
            await self._idle(stopping, await self._until_due())
        elif free <= len(jobs) or len(jobs) < self.settings.dispatcher_batch:
            await self._idle(stopping, BUSY_POLL)

    async def _until_due(self) -> float:
        """Seconds to wait for work: until the next queued message is due (a message a rate
        limit held back goes at its turn, not at the next poll), at most the poll interval."""
        longest = min(self.settings.poll_interval, HEARTBEAT_EVERY)
        async with transaction(self.sessions) as session:
            due = await outbox.next_due(session)
        wait = longest if due is None else (due - utcnow()).total_seconds()
        return min(longest, max(wait, BUSY_POLL))

    async def _survive(self, err: Exception, failures: int, stopping: asyncio.Event) -> None:
        self.last_error, delay = await survived(err, failures, self.heartbeats, self.metrics, log)
        await self._idle(stopping, delay)

    async def readiness(self, session: AsyncSession) -> Readiness:
        """Not ready when the loop is not running or its heartbeat is stale: messages would be
        accepted and not sent. Shows its heartbeat row, its age and the last error survived."""
        age = await heartbeat_age(session, self.heartbeats.id)
        running = task_readiness("dispatcher", self.task, self.last_error)
        shown = {"id": self.heartbeats.id, "heartbeatAge": age} | running.shown
        problem = running.problem
        if problem is None and (age is None or age > STALE_AFTER):
            since = "its row is gone" if age is None else f"the last was {age:.0f} s ago"
            problem = (
                f"the dispatcher's heartbeat is stale ({since}; stale after {STALE_AFTER:g} s)"
            )
        return Readiness(problem, shown)

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
                    self.wakeup.notify()
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
        await self.delivery.attempt(job)

    async def _load(self, claims: list[Claim]) -> list[Job]:
        return await outbox.load(self.sessions, claims, self.ledger)

    async def _finish(self, jobs: list[Job]) -> None:
        """Write the results of finished attempts (outbox.finish: one transaction, fenced), then
        count what was written."""
        if not jobs:
            return
        now = utcnow()
        live, events = await outbox.finish(self.sessions, jobs, self.retry, now, self.ledger)
        if not live:
            return
        self.metrics.count_events(tally(events))
        for job, values in live:
            if values["status"] != "queued":
                age = (now - job.message.starts_at).total_seconds()
                self.metrics.finished(values["status"], age)
