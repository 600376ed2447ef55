"""Cursor paging newest first over an increasing integer key (the suppression list, the audit
log): a page asks for one row more than it shows, and the cursor is the last key it shows."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import BadRequest

Row = TypeVar("Row")


def _after(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
        raise BadRequest("invalid cursor", details=[{"field": "cursor", "message": "invalid"}])
    return int(cursor)


async def newest_first(
    session: AsyncSession,
    query: Select[Row],
    key: InstrumentedAttribute[int],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Row], str | None]:
    """`limit` rows of `query` by `key` descending, after `cursor`; and the next page's cursor
    (None on the last page). A cursor that is not one is a 400 naming `cursor`."""
    after = _after(cursor)
    if after is not None:
        query = query.where(key < after)
    rows = list(await session.scalars(query.order_by(key.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, str(getattr(rows[-1], key.key)) if more and rows else None
