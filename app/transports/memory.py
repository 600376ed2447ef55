"""An in-memory transport that records what it was given and answers what it is told to.

For tests and for trying the API: register it like any real transport.
"""

from __future__ import annotations

from collections.abc import Callable

from app.schemas import CamelModel
from app.transports.base import (
    OutgoingMessage,
    TransportContext,
    VerifyReport,
    VerifyStep,
    refuse_options,
)
from app.transports.result import SendResult


class MemoryConfig(CamelModel):
    pass


Responder = Callable[[OutgoingMessage], SendResult]


class MemoryTransport:
    def __init__(self, name: str, responder: Responder | None = None) -> None:
        self.name = name
        self.sent: list[OutgoingMessage] = []
        self.responder = responder
        """Called for each send; raise a TransportError from it to simulate a failure."""

    async def send(self, message: OutgoingMessage) -> SendResult:
        refuse_options(message, "memory")
        self.sent.append(message)
        if self.responder is not None:
            return self.responder(message)
        return SendResult.all(list(message.recipients), "sent", code=250, message="OK")

    async def verify(self) -> VerifyReport:
        return VerifyReport(steps=[VerifyStep("memory", True, 0.0)])

    async def aclose(self) -> None:
        return None


def create(name: str, config: MemoryConfig, context: TransportContext) -> MemoryTransport:
    return MemoryTransport(name)
