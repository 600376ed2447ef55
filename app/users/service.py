"""API users: create, change, delete; passwords are only ever stored as argon2id hashes."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, Invalid, NotFound
from app.users.models import User
from app.users.passwords import generate_password, hash_password


async def create_user(
    session: AsyncSession, name: str, role: str, password: str | None = None
) -> tuple[User, str | None]:
    """Create a user; returns the generated password when none was given."""
    generated = generate_password() if password is None else None
    user = User(
        name=name,
        role=role,
        password_hash=await asyncio.to_thread(hash_password, password or generated or ""),
    )
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as err:
        raise Conflict(f"user {name!r} already exists") from err
    return user, generated


async def get_user(session: AsyncSession, name: str) -> User:
    user = None if "\0" in name else await session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


async def list_users(session: AsyncSession) -> list[User]:
    return list(await session.scalars(select(User).order_by(User.name)))


async def update_user(
    session: AsyncSession, name: str, *, role: str | None, password: str | None
) -> User:
    user = await get_user(session, name)
    if role is not None and role != user.role:
        if user.role == "admin" and await _admin_count(session) == 1:
            raise Invalid("the last admin cannot lose the admin role", field="role")
        user.role = role
    if password is not None:
        user.password_hash = await asyncio.to_thread(hash_password, password)
    return user


async def delete_user(session: AsyncSession, name: str) -> None:
    user = await get_user(session, name)
    if user.role == "admin" and await _admin_count(session) == 1:
        raise Conflict("the last admin cannot be deleted")
    await session.delete(user)


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def _admin_count(session: AsyncSession) -> int:
    query = select(func.count()).select_from(User).where(User.role == "admin")
    return int(await session.scalar(query) or 0)
