"""The replay guard: a signed nonce is accepted once, across every replica (the database decides:
two requests with one nonce race on the primary key, and one loses)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_ignoring
from app.events.hooks.models import NONCES
from app.events.providers.base import Nonce


async def first_use(session: AsyncSession, source: str, nonce: Nonce, now: datetime) -> bool:
    """Record `nonce` in the session's transaction; False when it is already recorded. Expired
    nonces are purged on the way (their timestamps are refused as stale before they get here)."""
    await session.execute(delete(NONCES).where(NONCES.c.expires_at < now))
    digest = hashlib.sha256(nonce.value.encode()).hexdigest()
    row = {"source": source, "digest": digest, "expires_at": nonce.expires_at}
    statement = insert_ignoring(session, NONCES).values(row).returning(NONCES.c.digest)
    inserted = (await session.execute(statement)).first()
    return inserted is not None
