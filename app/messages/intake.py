"""Group commit for POST /messages.

Every accepted message must be committed before its 202, and a commit costs an fsync (SQLite) or
a WAL flush (PostgreSQL) plus, on SQLite, a dozen hops to the driver's thread. So concurrent
requests are not committed one by one: each hands its message to the intake, which stores every
message that arrived while the previous transaction was being written in one transaction, and
answers each request with its own result (its id, or the error it alone caused).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.delivery.notify import Notifier
from app.errors import AppError
from app.messages import service
from app.messages.schemas import MessageIn
from app.messages.service import Caller, Stored

log = logging.getLogger("postroom.intake")

MAX_BATCH = 256
"""Messages stored by one transaction at most."""


@dataclass(slots=True)
class _Request:
    caller: Caller
    body: MessageIn
    idempotency_key: str | None
    answer: asyncio.Future[Stored] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Intake:
    """Stores messages in shared transactions; `submit` returns once its message is committed,
    and the notifier has been told when that transaction queued any."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        notifier: Notifier,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._notifier = notifier
        self._waiting: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(
        self, caller: Caller, body: MessageIn, idempotency_key: str | None = None
    ) -> Stored:
        """Store one message: its answer, whether it replays an earlier request, its events.

        Raises the AppError this message caused (a 4xx), or the database's error when the shared
        transaction failed (then none of its messages was stored)."""
        request = _Request(caller, body, idempotency_key)
        self._waiting.append(request)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await asyncio.shield(request.answer)

    async def aclose(self) -> None:
        """Wait until every submitted message is stored."""
        if self._writer is not None:
            await self._writer

    async def _write(self) -> None:
        try:
            await self._gather()
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                await self._store(batch)
        finally:
            self._writer = None

    async def _gather(self) -> None:
        """Let the requests that have already arrived join the first transaction: yield to the
        event loop as long as that brings more (each yield costs microseconds; without it, the
        first request of a burst is written alone and the rest wait for that transaction)."""
        seen = 0
        while seen < len(self._waiting) < MAX_BATCH:
            seen = len(self._waiting)
            await asyncio.sleep(0)

    async def _store(self, batch: list[_Request]) -> None:
        try:
            async with self._sessions() as session, session.begin():
                outcomes = await service.enqueue_each(
                    session,
                    self._settings,
                    [(r.caller, r.body, r.idempotency_key) for r in batch],
                )
        except Exception as err:
            log.warning("storing %d messages failed: %s", len(batch), err)
            for request in batch:
                request.answer.set_exception(err)
            return
        if any(isinstance(outcome, Stored) and not outcome.replayed for outcome in outcomes):
            self._notifier.notify()  # something new is queued (not only replayed answers)
        for request, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, AppError):
                request.answer.set_exception(outcome)
            else:
                request.answer.set_result(outcome)
