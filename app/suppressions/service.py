"""The suppression list's rules: the per-recipient check delivery makes, the entries delivery
events add, and the admin's own entries.

Every address is compared in one spelling, `comparable` (lower case, the domain in A-labels), so
an entry stored from a bounce report matches the address a later message spells differently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Insert, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import service as audit
from app.config import Settings
from app.db import among, utcnow
from app.delivery.transports import BUILTIN
from app.errors import Conflict, Invalid, NotFound
from app.identity import Actor
from app.paging import newest_first
from app.schemas import comparable
from app.servers.models import ServerProfile
from app.suppressions.models import (
    GLOBAL,
    SOFT_BOUNCES,
    SUPPRESSIONS,
    Reason,
    SoftBounce,
    Suppression,
)

if TYPE_CHECKING:
    from app.delivery.vocabulary import DeliveryEvent

API_SOURCE = "api"
IMPORT_SOURCE = "import"


@dataclass(frozen=True, slots=True)
class SoftBouncePolicy:
    """`limit` soft bounces within `days` suppress an address (0: soft bounces never do)."""

    limit: int = 3
    days: float = 7.0


_POLICY = "postroom.soft_bounce_policy"


def configure(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    """Give every session of `sessions` the soft-bounce policy of `settings`: events are recorded
    wherever a session is (the dispatcher, a provider's webhook), and the rule goes with it."""
    policy = SoftBouncePolicy(settings.soft_bounce_limit, settings.soft_bounce_days)
    sessions.configure(info={_POLICY: policy})


def _policy(session: AsyncSession) -> SoftBouncePolicy:
    policy = session.info.get(_POLICY)
    return policy if isinstance(policy, SoftBouncePolicy) else SoftBouncePolicy()


@dataclass(frozen=True, slots=True)
class Listed:
    """The entries of some addresses, as one query found them: address -> scope -> reason."""

    spellings: dict[str, str]
    """Each address asked about -> its comparable spelling."""
    entries: dict[str, dict[str, str]]

    def why(self, email: str, profile: str) -> str | None:
        """Why `email` is not sent to through `profile`; None when it is not suppressed."""
        scopes = self.entries.get(self.spellings.get(email) or comparable(email))
        if not scopes:
            return None
        if GLOBAL in scopes:
            return f"on the suppression list: {scopes[GLOBAL]}"
        if profile in scopes:
            return f"on the suppression list of profile {profile}: {scopes[profile]}"
        return None


async def listed(session: AsyncSession, emails: Iterable[str]) -> Listed:
    """The entries of `emails`, in every scope, with one indexed query."""
    spellings = {email: comparable(email) for email in emails}
    entries: dict[str, dict[str, str]] = {}
    if spellings:
        query = select(Suppression.address, Suppression.scope, Suppression.reason).where(
            among(session, Suppression.address, set(spellings.values()))
        )
        for address, scope, reason in await session.execute(query):
            entries.setdefault(address, {})[scope] = reason
    return Listed(spellings, entries)


def _entry(
    address: str,
    reason: Reason,
    *,
    scope: str = GLOBAL,
    source: str,
    event_id: str | None = None,
    message_pk: str | None = None,
) -> dict[str, Any]:
    return {
        "address": comparable(address),
        "scope": scope,
        "reason": reason,
        "source": source,
        "event_id": event_id,
        "message_pk": message_pk,
        "created_at": utcnow(),
    }


def _of_event(event: DeliveryEvent, reason: Reason, scope: str = GLOBAL) -> dict[str, Any]:
    assert event.email is not None
    return _entry(
        event.email,
        reason,
        scope=scope,
        source=event.source,
        event_id=event.provider_event_id,
        message_pk=event.message_pk,
    )


async def suppress_from_events(session: AsyncSession, events: Sequence[DeliveryEvent]) -> None:
    """Add what `events` (as just stored, in this transaction) say must not be mailed again.

    A hard bounce or a complaint suppresses the address everywhere (the mailbox is gone, or its
    owner calls the mail spam, whichever profile sent it); an unsubscribe, for the profile it
    came through. Soft bounces count: the policy's limit of them within its days suppress the
    address as a hard bounce would. An entry already there is kept as it is."""
    entries: list[dict[str, Any]] = []
    soft: list[DeliveryEvent] = []
    for event in events:
        if event.email is None:
            continue
        if event.type == "bounced" and event.bounce_type == "hard":
            entries.append(_of_event(event, "hard_bounce"))
        elif event.type == "complained":
            entries.append(_of_event(event, "complaint"))
        elif event.type == "unsubscribed":
            entries.append(_of_event(event, "unsubscribe", event.profile or GLOBAL))
        elif event.type == "bounced" and event.bounce_type == "soft":
            soft.append(event)
    if soft:
        entries += await _soft_bounces(session, soft)
    if entries:
        await session.execute(_insert_new(session), entries)


async def _soft_bounces(session: AsyncSession, events: list[DeliveryEvent]) -> list[dict[str, Any]]:
    """Count these soft bounces in the window; the entries of the addresses now over the limit."""
    policy = _policy(session)
    if policy.limit == 0:
        return []
    cutoff = utcnow() - timedelta(days=policy.days)
    latest = {comparable(e.email or ""): e for e in events if e.occurred_at >= cutoff}
    if not latest:
        return []
    rows = [
        {"address": comparable(e.email or ""), "occurred_at": e.occurred_at}
        for e in events
        if e.occurred_at >= cutoff
    ]
    await session.execute(SOFT_BOUNCES.insert(), rows)
    addresses = among(session, SoftBounce.address, list(latest))
    await session.execute(
        delete(SoftBounce).where(addresses, SoftBounce.occurred_at < cutoff),
        execution_options={"synchronize_session": False},
    )
    counts = await session.execute(
        select(SoftBounce.address, func.count())
        .where(addresses, SoftBounce.occurred_at >= cutoff)
        .group_by(SoftBounce.address)
    )
    return [
        _of_event(latest[address], "hard_bounce")
        for address, count in counts
        if count >= policy.limit
    ]


def _insert_new(session: AsyncSession) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(SUPPRESSIONS).on_conflict_do_nothing()
    return sqlite.insert(SUPPRESSIONS).on_conflict_do_nothing()


async def check_scope(session: AsyncSession, profile: str | None, field: str = "profile") -> str:
    """The scope `profile` names: GLOBAL for none, else an existing profile or the built-in."""
    if profile is None:
        return GLOBAL
    if profile != BUILTIN:
        found = await session.scalar(select(ServerProfile.id).where(ServerProfile.name == profile))
        if found is None:
            raise Invalid(f"no server profile {profile!r}", field=field)
    return profile


async def add(
    session: AsyncSession, address: str, profile: str | None, reason: Reason, actor: Actor
) -> Suppression:
    """An admin's entry; 409 when the address is already suppressed in that scope."""
    scope = await check_scope(session, profile)
    row = Suppression(**_entry(address, reason, scope=scope, source=API_SOURCE))
    session.add(row)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as err:
        where = f"for profile {profile}" if profile else "globally"
        raise Conflict(f"{row.address} is already suppressed {where}") from err
    what = audit.changes(None, {"profile": profile, "reason": reason})
    await audit.record(session, actor, "suppression.create", row.address, what)
    return row


async def add_many(session: AsyncSession, rows: list[dict[str, Any]], actor: Actor) -> int:
    """Entries from an import, each a dict of `_entry`'s keys; those already there are kept.
    Returns how many were added. The audit log gets one entry for the import: its counts."""
    statement = _insert_new(session).returning(SUPPRESSIONS.c.id)
    added = 0
    for start in range(0, len(rows), 5000):
        added += len((await session.execute(statement, rows[start : start + 5000])).all())
    what = audit.changes(None, {"rows": len(rows), "added": added})
    await audit.record(session, actor, "suppression.import", None, what)
    return added


def import_row(address: str, profile: str | None, reason: Reason) -> dict[str, Any]:
    return _entry(address, reason, scope=profile or GLOBAL, source=IMPORT_SOURCE)


async def remove(session: AsyncSession, address: str, profile: str | None, actor: Actor) -> None:
    """Delete the entry of `address` in the scope `profile` names (none: the global one)."""
    result = await session.execute(
        delete(Suppression)
        .where(Suppression.address == comparable(address))
        .where(Suppression.scope == (profile or GLOBAL))
        .returning(Suppression.address, Suppression.reason)
    )
    removed = result.first()
    if removed is None:
        where = f"for profile {profile}" if profile else "globally"
        raise NotFound(f"{address} is not suppressed {where}")
    what = audit.changes({"profile": profile, "reason": removed.reason}, None)
    await audit.record(session, actor, "suppression.delete", removed.address, what)


@dataclass(frozen=True, slots=True)
class Filter:
    text: str | None = None
    """A part of the address."""
    profile: str | None = None
    reason: str | None = None


async def search(
    session: AsyncSession, where: Filter, *, limit: int, cursor: str | None
) -> tuple[list[Suppression], str | None]:
    """Entries, the latest added first, `limit` a page; the cursor continues after the last."""
    query = select(Suppression)
    if where.text:
        pattern = comparable(where.text) if "@" in where.text else where.text.lower()
        for special in ("\\", "%", "_"):
            pattern = pattern.replace(special, "\\" + special)
        query = query.where(Suppression.address.like(f"%{pattern}%", escape="\\"))
    if where.profile is not None:
        query = query.where(Suppression.scope == where.profile)
    if where.reason is not None:
        query = query.where(Suppression.reason == where.reason)
    return await newest_first(session, query, Suppression.id, limit=limit, cursor=cursor)
