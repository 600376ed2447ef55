"""The in-process dispatcher's wake-up: whoever makes a message due (the intake, a retry, a
resend) tells the notifier, and the dispatcher that waits on it looks at once rather than at its
next poll. A process without a dispatcher keeps one too, and no one waits on it: the workers of
a scale-out poll (and may be woken by LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session


class Notifier:
    """Something was queued: set by `notify`, waited on and cleared by the dispatcher."""

    __slots__ = ("_due",)

    def __init__(self) -> None:
        self._due = asyncio.Event()

    def notify(self) -> None:
        """A message is due now (committed: a dispatcher woken earlier would not see it)."""
        self._due.set()

    def after_commit(self, session: AsyncSession) -> None:
        """Notify once the session's transaction commits; not at all when it rolls back."""

        def committed(_: Session) -> None:
            self.notify()

        event.listen(session.sync_session, "after_commit", committed, once=True)

    def clear(self) -> None:
        self._due.clear()

    async def wait(self) -> None:
        await self._due.wait()
