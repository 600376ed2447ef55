"""Per-profile rate limits and provider throttles, enforced by the claim through the database.

A claim (app/delivery/outbox.py) hands what it claimed to `admit`, in the same transaction. The
messages of profiles with a `rateLimit`, or that a provider throttled, are looked at under their
profile's bucket row lock (PostgreSQL: SELECT ... FOR UPDATE; SQLite: the claim's BEGIN
IMMEDIATE), so however many workers claim, the profile's windows count every message once. What
does not fit is put back in the queue, due when its turn comes (app/delivery/buckets.py), its
attempt number as it was: a message held back is neither failed nor counted as an attempt.

A provider's "slow down" (HTTP 429, SMTP 421 4.7.x, Graph's ApplicationThrottled: a `Throttled`
error) is written by the dispatcher's finish with `throttle`: no worker sends through that
profile again before the time the provider asked for (a minute when it did not say).

Messages of profiles with neither cost the claim one indexed read, and no lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import bindparam, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import among, insert_ignoring
from app.delivery.buckets import Bucket, micros, moment
from app.delivery.models import MESSAGES, QUOTA_BUCKETS, Message, QuotaBucket, Recipient
from app.servers.models import ServerProfile
from app.servers.schemas import RateLimit
from app.throttle import upsert


class Claimed(Protocol):
    @property
    def id(self) -> str: ...


C = TypeVar("C", bound=Claimed)


async def admit(session: AsyncSession, claims: list[C], now: datetime) -> list[C]:
    """The claims that may go now; the others are back in the queue, due when they fit."""
    if not claims:
        return claims
    metered = (
        await session.execute(
            select(
                Message.id,
                Message.server,
                Message.next_attempt_at,
                Message.created_at,
                ServerProfile.rate_limit,
            )
            .join(ServerProfile, ServerProfile.name == Message.server)
            .outerjoin(QuotaBucket, QuotaBucket.profile == Message.server)
            .where(
                among(session, Message.id, [claim.id for claim in claims]),
                or_(ServerProfile.rate_limit.is_not(None), QuotaBucket.throttled_until > now),
            )
            .order_by(Message.next_attempt_at, Message.id)
        )
    ).all()
    if not metered:
        return claims
    stored = {row.server: row.rate_limit for row in metered}
    limits = {name: _limit(limit) for name, limit in stored.items()}
    buckets = await _lock(session, sorted(limits), now)
    costs = await _costs(session, metered, limits)
    clock = micros(now)
    held: dict[str, datetime] = {}
    states: list[dict[str, Any]] = []
    for name, limit in limits.items():
        row = buckets[name]
        bucket = Bucket.load(limit, row.state, clock)
        until = row.throttled_until
        start = clock if until is None or until <= now else micros(until)
        waiting: list[tuple[str, int]] = []
        joining: list[tuple[str, int]] = []
        for message in (m for m in metered if m.server == name):
            cost = costs[message.id]
            due = micros(message.next_attempt_at)
            if not bucket.redeem(due, cost, clock if start == clock else None):
                new = message.next_attempt_at == message.created_at
                (joining if new else waiting).append((message.id, cost))
        line = waiting + joining
        times = bucket.place([cost for _, cost in line], clock, start, joining=len(waiting))
        later = {id_: moment(at) for (id_, _), at in zip(line, times, strict=True) if at > clock}
        held |= later
        states.append(
            {"name": name, "new_state": bucket.dump() if limit else None, "count": len(later)}
        )
    if held:
        await session.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == bindparam("row_id"))
            .values(
                status="queued",
                attempts=MESSAGES.c.attempts - 1,
                lease_until=None,
                next_attempt_at=bindparam("due"),
            ),
            [{"row_id": id_, "due": due} for id_, due in held.items()],
        )
    await session.execute(
        update(QUOTA_BUCKETS)
        .where(QUOTA_BUCKETS.c.profile == bindparam("name"))
        .values(
            state=bindparam("new_state"),
            held=QUOTA_BUCKETS.c.held + bindparam("count"),
            updated_at=now,
        ),
        states,
    )
    return [claim for claim in claims if claim.id not in held]


async def throttle(
    session: AsyncSession, waits: Iterable[Mapping[str, float]], now: datetime
) -> None:
    """Hold the named profiles back for the seconds their providers asked, for every worker
    (a throttle already further out stays). Profiles deleted meanwhile are left out."""
    longest: dict[str, float] = {}
    for wait in waits:
        for name, seconds in wait.items():
            longest[name] = max(longest.get(name, 0.0), seconds)
    if not longest:
        return
    names = set(
        await session.scalars(select(ServerProfile.name).where(ServerProfile.name.in_(longest)))
    )
    if not names:
        return
    statement = upsert(await session.connection(), QUOTA_BUCKETS)
    until = QUOTA_BUCKETS.c.throttled_until
    later = statement.excluded.throttled_until
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[QUOTA_BUCKETS.c.profile],
            set_={
                "throttled_until": case((or_(until.is_(None), until < later), later), else_=until)
            },
        ),
        [
            {
                "profile": name,
                "throttled_until": now + timedelta(seconds=longest[name]),
                "held": 0,
                "updated_at": now,
            }
            for name in sorted(names)
        ],
    )


def _limit(stored: dict[str, Any] | None) -> RateLimit | None:
    return RateLimit.model_validate(stored) if stored is not None else None


async def _lock(session: AsyncSession, names: list[str], now: datetime) -> dict[str, QuotaBucket]:
    """The profiles' bucket rows, locked in name order (every claim locks in the same order, so
    two never wait for each other); made first for a profile that has none yet."""
    query = (
        select(QuotaBucket)
        .where(QuotaBucket.profile.in_(names))
        .order_by(QuotaBucket.profile)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    found = {row.profile: row for row in await session.scalars(query)}
    missing = [name for name in names if name not in found]
    if missing:
        await session.execute(
            insert_ignoring(session, QUOTA_BUCKETS),
            [{"profile": name, "held": 0, "updated_at": now} for name in missing],
        )
        found = {row.profile: row for row in await session.scalars(query)}
    return found


async def _costs(
    session: AsyncSession, metered: Iterable[Any], limits: Mapping[str, RateLimit | None]
) -> dict[str, int]:
    """What each message costs: 1, or the recipients still to be sent to where the profile's
    limit counts recipients."""
    costs: dict[str, int] = {}
    for row in metered:
        limit = limits[row.server]
        costs[row.id] = 0 if limit is not None and limit.count == "recipients" else 1
    counted = [id_ for id_, cost in costs.items() if cost == 0]
    if counted:
        rows = await session.execute(
            select(Recipient.message_pk, func.count())
            .where(
                among(session, Recipient.message_pk, counted),
                Recipient.status.in_(("pending", "deferred")),
            )
            .group_by(Recipient.message_pk)
        )
        costs |= {message_pk: count for message_pk, count in rows}
    return costs
