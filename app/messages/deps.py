"""The parts of the running service the messages API declares, set by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from app.delivery.notify import Notifier
from app.deps import Part
from app.messages.intake import Intake
from app.metrics import Metrics
from app.throttle import Throttle


@dataclass(frozen=True, slots=True)
class Sending:
    """What queueing a message needs: one dependency on the hot path (POST /messages)."""

    intake: Intake
    """Stores POST /messages in shared transactions (group commit), then notifies."""
    notifier: Notifier
    """For what is queued outside the intake (a batch, a retry, a resend): wakes the dispatcher."""
    metrics: Metrics
    throttle: Throttle | None
    """The per-user send limit (POSTROOM_SEND_RATE_PER_MINUTE), when set; across replicas."""

    async def hit(self, user: str, count: int = 1) -> None:
        """Count `count` messages against the user's send limit (a 429 past it), when set."""
        if self.throttle is not None:
            await self.throttle.hit(user, count)


SENDING: Part[Sending] = Part("sending")
SendingDep = Annotated[Sending, Depends(SENDING.dependency())]
