"""API users: create, change, delete; passwords are only ever stored as argon2id hashes."""

from __future__ import annotations

import asyncio
from types import EllipsisType
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.service import Secret
from app.errors import Conflict, Invalid, NotFound
from app.identity import Actor
from app.servers.models import ServerProfile
from app.users.models import User
from app.users.passwords import generate_password, hash_password
from app.users.schemas import UserCreate

KEEP = ...
"""An update's "leave this field as it is"."""


async def create_user(
    session: AsyncSession,
    name: str,
    role: str,
    password: str | None = None,
    *,
    allowed_from: list[str] | None = None,
    allowed_servers: list[str] | None = None,
    actor: Actor,
) -> tuple[User, str | None]:
    """Create a user; returns the generated password when none was given."""
    allowed_servers = await _check_servers(session, allowed_servers)
    generated = generate_password() if password is None else None
    user = User(
        name=name,
        role=role,
        password_hash=await asyncio.to_thread(hash_password, password or generated or ""),
        allowed_from=allowed_from,
        allowed_servers=allowed_servers,
    )
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as err:
        raise Conflict(f"user {name!r} already exists") from err
    await audit.record(session, actor, "user.create", name, audit.changes(None, _audited(user)))
    return user, generated


async def create_from(
    session: AsyncSession, body: UserCreate, *, actor: Actor
) -> tuple[User, str | None]:
    """create_user with a checked body: the API's and the console's."""
    return await create_user(
        session,
        body.name,
        body.role,
        body.password,
        allowed_from=body.allowed_from,
        allowed_servers=body.allowed_servers,
        actor=actor,
    )


def _audited(user: User) -> dict[str, Any]:
    """The user as the audit log compares it (a new hash, even of the same password, is a
    change: someone set it)."""
    return {
        "role": user.role,
        "password": Secret(user.password_hash),
        "allowedFrom": user.allowed_from,
        "allowedServers": user.allowed_servers,
    }


async def get_user(session: AsyncSession, name: str) -> User:
    user = None if "\0" in name else await session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


async def list_users(session: AsyncSession) -> list[User]:
    return list(await session.scalars(select(User).order_by(User.name)))


async def update_user(
    session: AsyncSession,
    name: str,
    *,
    role: str | None,
    password: str | None,
    allowed_from: list[str] | EllipsisType | None = KEEP,
    allowed_servers: list[str] | EllipsisType | None = KEEP,
    actor: Actor,
) -> User:
    """Change what is given; `allowed_*` set to None go back to the defaults."""
    user = await get_user(session, name)
    before = _audited(user)
    if not isinstance(allowed_servers, EllipsisType):
        user.allowed_servers = await _check_servers(session, allowed_servers)
    if not isinstance(allowed_from, EllipsisType):
        user.allowed_from = allowed_from
    if role is not None and role != user.role:
        if user.role == "admin":
            await _keep_an_admin(session, user, "lose the admin role")
        user.role = role
    if password is not None:
        user.password_hash = await asyncio.to_thread(hash_password, password)
    await audit.record(session, actor, "user.update", name, audit.changes(before, _audited(user)))
    return user


async def delete_user(session: AsyncSession, name: str, *, actor: Actor) -> None:
    user = await get_user(session, name)
    if user.role == "admin":
        await _keep_an_admin(session, user, "be deleted")
    await session.delete(user)
    await audit.record(session, actor, "user.delete", name, audit.changes(_audited(user), None))


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def _keep_an_admin(session: AsyncSession, user: User, change: str) -> None:
    """409 unless another admin remains. The admin rows are locked first (PostgreSQL; SQLite
    runs one writer at a time anyway), so two requests demoting or deleting the last two admins
    at once cannot both see the other one and leave none: the second waits for the first to
    commit, then no longer counts the row it changed."""
    admins = select(User.id).where(User.role == "admin").order_by(User.id).with_for_update()
    if not any(admin != user.id for admin in await session.scalars(admins)):
        raise Conflict(
            f"{user.name} is the last admin and cannot {change}: make another user an admin first"
        )


async def _check_servers(session: AsyncSession, names: list[str] | None) -> list[str] | None:
    """The allowedServers entries once each; 422 naming each one that is not a profile."""
    if not names:
        return names
    query = select(ServerProfile.name).where(ServerProfile.name.in_(names))
    known = set(await session.scalars(query))
    unknown = [(i, name) for i, name in enumerate(names) if name not in known]
    if unknown:
        raise Invalid(
            "no server profile " + ", ".join(repr(name) for _, name in unknown),
            details=[
                {"field": f"allowedServers[{i}]", "message": f"no server profile {name!r}"}
                for i, name in unknown
            ],
        )
    return list(dict.fromkeys(names))
