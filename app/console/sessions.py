"""Console logins in the database: revocable, idle-expiring, bound to the password they used."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.console.models import ConsoleSession
from app.db import utcnow
from app.identity import Principal
from app.security import PRINCIPAL_COLUMNS, principal_of
from app.users import service as users
from app.users.models import User

IDLE_TIMEOUT = timedelta(hours=12)
"""A session nobody used for this long is over."""
TOUCH_EVERY = timedelta(minutes=1)
"""seen_at is written at most this often: a page view is a read, not a write."""


@dataclass(frozen=True, slots=True)
class Login:
    """The browser's logged-in user, as a console page sees it."""

    principal: Principal
    csrf: str
    token_hash: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(session: AsyncSession, name: str, client: str) -> tuple[str, str]:
    """A new session for a user whose password was just verified: (cookie token, CSRF token).
    Expired sessions of anyone are removed on the way (logins are rare, sessions few)."""
    user = await users.get_user(session, name)
    now = utcnow()
    await session.execute(delete(ConsoleSession).where(ConsoleSession.seen_at < now - IDLE_TIMEOUT))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(
            token_hash=token_hash(token),
            user_id=user.id,
            password_hash=user.password_hash,
            csrf=csrf,
            client_ip=client[:64],
            created_at=now,
            seen_at=now,
        )
    )
    await session.flush()
    return token, csrf


async def load(session: AsyncSession, token: str) -> Login | None:
    """The session behind a cookie, or None when it is unknown, idle too long, or its user was
    deleted or changed password since (those rows are removed)."""
    found = (
        await session.execute(
            select(ConsoleSession, User.password_hash, *PRINCIPAL_COLUMNS)
            .join(User, User.id == ConsoleSession.user_id)
            .where(ConsoleSession.token_hash == token_hash(token))
        )
    ).first()
    if found is None:
        return None
    row, password_hash = found[0], found.password_hash
    now = utcnow()
    if row.seen_at < now - IDLE_TIMEOUT or row.password_hash != password_hash:
        await session.delete(row)
        return None
    if now - row.seen_at >= TOUCH_EVERY:
        row.seen_at = now
    return Login(principal_of(found), row.csrf, row.token_hash)


async def close(session: AsyncSession, hashed: str) -> None:
    await session.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == hashed))


async def revoke_user(session: AsyncSession, name: str) -> int:
    """End every console session of a user (an admin's "sign out everywhere"): how many."""
    user = await users.get_user(session, name)
    done = await session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    return int(getattr(done, "rowcount", 0) or 0)


async def count_for(session: AsyncSession, user_ids: list[int]) -> dict[int, int]:
    """Open (not idle-expired) sessions per user, for the users page."""
    rows = await session.execute(
        select(ConsoleSession.user_id).where(
            ConsoleSession.user_id.in_(user_ids),
            ConsoleSession.seen_at >= utcnow() - IDLE_TIMEOUT,
        )
    )
    counts: dict[int, int] = {}
    for (user_id,) in rows:
        counts[user_id] = counts.get(user_id, 0) + 1
    return counts
