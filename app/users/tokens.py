"""API tokens: issued by an admin for a user, shown once, kept as a SHA-256, listed, revoked.

A token is `pr_` and 32 random bytes (base64url): 256 bits no one guesses, so a plain SHA-256
is as good a store as argon2 and costs a microsecond, where argon2 costs 19 MiB and ~50 ms per
check (GitHub and Stripe keep their tokens the same way). No pepper: it would tie every token to
the first secret key, and rotating the keys would then void them all."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Row, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.audit import service as audit
from app.db import utcnow
from app.errors import NotFound
from app.identity import Actor
from app.users.models import ApiToken, User
from app.users.service import get_user

PREFIX = "pr_"
"""Marks a Postroom token (secret scanners can match `pr_` and 43 base64url characters)."""
_SHAPE = re.compile(r"pr_[A-Za-z0-9_-]{43}")
_ID = re.compile(r"[0-9a-f]{32}")


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def is_token(value: str) -> bool:
    """Whether `value` has a token's shape (checked before anything is hashed or read)."""
    return _SHAPE.fullmatch(value) is not None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def refusal(expires_at: datetime | None, revoked_at: datetime | None) -> str | None:
    """Why a token found in the table does not let its holder in now, or None when it does."""
    if revoked_at is not None:
        return f"revoked at {revoked_at.isoformat()}"
    if expires_at is not None and expires_at <= utcnow():
        return f"expired at {expires_at.isoformat()}"
    return None


async def issue(
    session: AsyncSession,
    user_name: str,
    name: str,
    expires_at: datetime | None,
    *,
    actor: Actor | None,
) -> tuple[ApiToken, str]:
    """A new token for the user: its row, and the token itself (to be shown this once)."""
    user = await get_user(session, user_name)
    token = new_token()
    row = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=token_hash(token),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    what = {"id": row.id, "name": name, "expiresAt": expires_at}
    await audit.record(session, actor, "token.create", user_name, audit.changes(None, what))
    return row, token


async def list_tokens(session: AsyncSession, user_name: str) -> list[ApiToken]:
    """The user's tokens, revoked and expired ones included, oldest first."""
    user = await get_user(session, user_name)
    query = select(ApiToken).where(ApiToken.user_id == user.id)
    return list(await session.scalars(query.order_by(ApiToken.created_at, ApiToken.id)))


async def revoke(
    session: AsyncSession, user_name: str, token_id: str, *, actor: Actor | None
) -> ApiToken:
    """Revoke one of the user's tokens (a token revoked already keeps its first revocation)."""
    user = await get_user(session, user_name)
    row = await session.get(ApiToken, token_id) if _ID.fullmatch(token_id) else None
    if row is None or row.user_id != user.id:
        raise NotFound(f"user {user_name!r} has no token {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        what = {"id": row.id, "name": row.name}
        await audit.record(session, actor, "token.revoke", user_name, audit.changes(what, None))
    return row


async def find(engine: AsyncEngine, hashed: str, *columns: Any) -> Row[*tuple[Any, ...]] | None:
    """The token with this SHA-256 (`token_id`, `expires_at`, `revoked_at`) and `columns` of its
    user, whatever its state; None when there is none."""
    query = (
        select(*columns, ApiToken.id.label("token_id"), ApiToken.expires_at, ApiToken.revoked_at)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == hashed)
    )
    async with engine.connect() as conn:
        return (await conn.execute(query)).first()


async def touch(engine: AsyncEngine, token_id: str, when: datetime) -> None:
    """Record a use of the token at `when` (never moving its last use back)."""
    newer = or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < when)
    async with engine.begin() as conn:
        await conn.execute(
            update(ApiToken).where(ApiToken.id == token_id, newer).values(last_used_at=when)
        )
