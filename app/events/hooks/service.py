"""Provider events in: find the profile's receiver, verify and parse with no session open (SES may
fetch its certificate), then match and record in one transaction. The 2xx is answered only after
that commit, so a process killed while receiving loses nothing: the provider retries a request
that got no 2xx, and a retry of a stored event is stored once (its provider event id)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import SecretBox
from app.db import among, transaction, utcnow
from app.delivery.models import Attempt, Message, Recipient
from app.delivery.vocabulary import DeliveryEvent, tally
from app.errors import AppError, NotFound, PayloadTooLarge
from app.events.hooks.guard import first_use
from app.events.providers import receiver
from app.events.providers.base import (
    Incoming,
    Malformed,
    Received,
    Receiver,
    Refused,
    Replayed,
    Reported,
)
from app.events.providers.sns import Sns, SnsUnavailable
from app.events.service import record_events
from app.metrics import Metrics
from app.servers.service import config_of, get_profile

log = logging.getLogger("postroom.hooks")

MAX_BODY_BYTES = 1024 * 1024
"""A webhook request is at most 1 MiB (a Mandrill batch of 1000 events fits)."""

_OUTCOMES: dict[type[AppError], str] = {
    Refused: "refused",
    Replayed: "replayed",
    Malformed: "malformed",
    PayloadTooLarge: "too_large",
    SnsUnavailable: "unavailable",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one accepted request did."""

    received: int
    """Events in the request."""
    recorded: int
    """Events stored now (a retried event was stored before)."""
    unknown: int
    """Of those, events about no message Postroom knows (stored as `unknown`)."""
    note: str | None = None


class EventHooks:
    """The receiving side of every profile's provider webhook."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        metrics: Metrics,
        sns: Sns,
    ) -> None:
        self.sessions = sessions
        self.box = box
        self.metrics = metrics
        self.sns = sns
        """SES's certificate fetches and confirmations: the seam tests replace (see sns.py)."""

    async def receiver_of(self, name: str) -> Receiver:
        """The profile's receiver; NotFound for no profile, or one whose type reports nothing."""
        async with self.sessions() as session:
            try:
                profile = await get_profile(session, name)
            except NotFound:
                self.metrics.hooks.labels(provider="none", outcome="not_found").inc()
                raise
        found = receiver(config_of(profile, self.box), self.sns)
        if found is None:
            self.metrics.hooks.labels(provider=profile.type, outcome="not_found").inc()
            raise NotFound(f"profile {name!r} is of type {profile.type}: it receives no events")
        return found

    async def receive(
        self, name: str, chunks: AsyncIterable[bytes], headers: Mapping[str, str]
    ) -> Outcome:
        """Verify, parse, record, count. Raises (and logs) what the provider is answered with."""
        hook = await self.receiver_of(name)
        try:
            body = await _read(chunks)
            received = await hook.receive(Incoming(body, headers, utcnow()))
            if received.confirm_url is not None:
                await self.sns.confirm(received.confirm_url)
            async with transaction(self.sessions) as session:
                stored = await record(session, name, hook.source, received)
        except tuple(_OUTCOMES) as err:
            assert isinstance(err, AppError)
            outcome = _OUTCOMES[type(err)]
            self.metrics.hooks.labels(provider=hook.source, outcome=outcome).inc()
            log.warning("%s hook for profile %s %s: %s", hook.source, name, outcome, err.message)
            raise
        self.metrics.count_events(tally(stored))
        self.metrics.hooks.labels(provider=hook.source, outcome="accepted").inc()
        if received.note:
            log.info("%s hook for profile %s: %s", hook.source, name, received.note)
        unknown = sum(1 for event in stored if event.message_pk is None)
        return Outcome(len(received.events), len(stored), unknown, received.note)


async def _read(chunks: AsyncIterable[bytes]) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"a webhook request is at most {MAX_BODY_BYTES} bytes")
    return bytes(body)


async def record(
    session: AsyncSession, profile: str, source: str, received: Received
) -> list[DeliveryEvent]:
    """In the session's transaction: refuse a replayed nonce, match, store; returns the events
    stored now."""
    if received.nonce is not None and not await first_use(
        session, source, received.nonce, utcnow()
    ):
        raise Replayed("this signed request was received before: it is not applied again")
    return await record_events(session, await match(session, profile, source, received.events))


async def match(
    session: AsyncSession, profile: str, source: str, reported: Sequence[Reported]
) -> list[DeliveryEvent]:
    """Each event on its message (by the provider's message id Postroom stored on the attempt,
    else by Message-ID) and recipient (by address); an event about no known message is stored as
    `unknown`, with what the provider said in its reason."""
    by_provider: dict[str, str] = {}
    provider_ids = {r.provider_message_id for r in reported if r.provider_message_id}
    if provider_ids:
        attempts = await session.execute(
            select(Attempt.provider_id, Attempt.message_pk).where(
                among(session, Attempt.provider_id, provider_ids)
            )
        )
        by_provider = {provider_id: pk for provider_id, pk in attempts if provider_id}
    by_message_id: dict[str, str] = {}
    message_ids = {
        r.message_id
        for r in reported
        if r.message_id and by_provider.get(r.provider_message_id or "") is None
    }
    if message_ids:
        messages = await session.execute(
            select(Message.message_id, Message.id).where(
                among(session, Message.message_id, message_ids)
            )
        )
        by_message_id = {message_id: pk for message_id, pk in messages}
    found = set(by_provider.values()) | set(by_message_id.values())
    recipients: dict[tuple[str, str], int] = {}
    if found:
        rows = await session.execute(
            select(Recipient.message_pk, Recipient.email, Recipient.id).where(
                among(session, Recipient.message_pk, found)
            )
        )
        recipients = {(pk, email.lower()): rid for pk, email, rid in rows}
    events = []
    for r in reported:
        pk = by_provider.get(r.provider_message_id or "") or by_message_id.get(r.message_id or "")
        email = (r.email or "").lower()
        events.append(
            DeliveryEvent(
                message_pk=pk,
                type=r.type if pk else "unknown",
                recipient_pk=recipients.get((pk, email)) if pk else None,
                email=r.email,
                occurred_at=r.occurred_at,
                source=source,
                profile=profile,
                bounce_type=r.bounce_type if pk else None,
                provider_event_id=r.provider_event_id,
                reason=r.reason if pk else f"{r.type} for no known message: {r.reason}",
                diagnostic_code=r.diagnostic_code,
            )
        )
    return events
