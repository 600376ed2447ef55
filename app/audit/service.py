"""The audit log's rules: what an entry holds (a secret only as "changed"), writing it in the
transaction of the change it is about, searching it, and purging what retention lets go.

Each service that changes the configuration takes the `Actor` and calls `record` once the change
is made: the API's routes, the console's pages and the CLI all go through those services, so a
change is audited whichever door it came through."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import KINDS, Action, AuditEntry
from app.db import utcnow
from app.errors import Invalid
from app.identity import Actor
from app.paging import newest_first

CHANGED = "changed"
"""What the log says of a secret that changed (set, replaced or cleared)."""


SYSTEM = Actor("postroom", "system")
"""Postroom itself (the first admin, created at start-up)."""


class Secret:
    """A secret's value in a snapshot: compared with the other snapshot's, recorded only as
    "changed" (even when handed to `record` as it is), never shown by repr."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return "Secret(...)"


def _secret(value: object) -> str:
    if isinstance(value, Secret):
        return CHANGED
    raise TypeError(f"{type(value).__name__} is not JSON")


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """What differs between two snapshots of a thing (None: it did not exist, or no longer
    does): field -> {"from": old, "to": new}, nested fields by dotted path ("settings.host"),
    a Secret -> "changed"."""
    old, new = _flat(before or {}), _flat(after or {})
    found: dict[str, Any] = {}
    for key in dict.fromkeys([*old, *new]):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        secret = isinstance(was, Secret) or isinstance(now, Secret)
        found[key] = CHANGED if secret else {"from": was, "to": now}
    return found


def _flat(snapshot: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in snapshot.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


async def record(
    session: AsyncSession,
    actor: Actor | None,
    action: Action,
    target: str | None,
    what: dict[str, Any],
) -> None:
    """Write the entry in the session's transaction: it is committed with the change, or rolled
    back with it. Flushed now, so that a savepoint the caller rolls back later (a lost race it
    recovers from) cannot take the entry without the change. `actor` None: the caller records
    the change itself, in its own terms (the Sisense mirror over the profile service)."""
    if actor is None:
        return
    session.add(
        AuditEntry(
            at=utcnow(),
            actor=actor.name,
            via=actor.via,
            address=actor.address,
            action=action,
            target_kind=action.partition(".")[0],
            target_name=target,
            changes=to_jsonable_python(what, fallback=_secret),
        )
    )
    await session.flush()


@dataclass(frozen=True, slots=True)
class Filter:
    actor: str | None = None
    action: Action | None = None
    target: str | None = None
    """A kind ("server"), or a kind and a name ("server:relay", "suppression:a@example.com")."""
    since: datetime | None = None
    """Inclusive."""
    until: datetime | None = None
    """Exclusive."""


def _target(target: str) -> tuple[str, str | None]:
    kind, colon, name = target.partition(":")
    if kind not in KINDS:
        raise Invalid(
            f"a target is a kind ({', '.join(KINDS)}), or a kind and a name (server:relay)",
            field="target",
        )
    return kind, name if colon else None


async def search(
    session: AsyncSession, where: Filter, *, limit: int, cursor: str | None
) -> tuple[list[AuditEntry], str | None]:
    """Entries, newest first, `limit` a page; the cursor continues after the last."""
    query = select(AuditEntry)
    if where.actor is not None:
        query = query.where(AuditEntry.actor == where.actor)
    if where.action is not None:
        query = query.where(AuditEntry.action == where.action)
    if where.target is not None:
        kind, name = _target(where.target)
        query = query.where(AuditEntry.target_kind == kind)
        if name is not None:
            query = query.where(AuditEntry.target_name == name)
    if where.since is not None:
        query = query.where(AuditEntry.at >= where.since)
    if where.until is not None:
        query = query.where(AuditEntry.at < where.until)
    return await newest_first(session, query, AuditEntry.id, limit=limit, cursor=cursor)


async def purge(session: AsyncSession, before: datetime, limit: int) -> int:
    """Delete up to `limit` of the oldest entries made before `before`; returns how many went.
    Call it, each time in a short transaction of its own, until it returns less than `limit`:
    one batch never holds the table's locks long."""
    oldest = select(AuditEntry.id).where(AuditEntry.at < before).order_by(AuditEntry.id)
    done = await session.execute(
        delete(AuditEntry).where(AuditEntry.id.in_(oldest.limit(limit).scalar_subquery())),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(done, "rowcount", 0) or 0)
