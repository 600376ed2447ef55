"""HTTP Basic auth: verified credentials cached per process but checked against the users table
(role, password hash and sending bounds, one read) twice a second, failed logins throttled and
accounts locked through the database, so every replica enforces the same limits and sees a
password, role, bounds or user change within a second."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import Forbidden, Unauthorized
from app.lockout import Lockout
from app.throttle import Throttle
from app.users.models import User
from app.users.passwords import DUMMY_HASH, verify_password

VERIFYING_AT_ONCE = 2
"""argon2 verifications running at once, at most: each holds 19 MiB while it runs (before, when
a cached credential expired under load, every request carrying it verified it, six at a time in
the default executor: 100 MiB of transient RSS)."""

RECHECK_SECONDS = 0.5
"""A cached credential's user row (role, hash, bounds) is read again after this long, in the
background while the last read is under twice as old, before the request otherwise: no request
is let in on a row read over a second ago, so a password, role or bounds change or a deletion
on any replica takes effect here within a second. One indexed SELECT per credential per half
second, where one per request would be a second transaction on every POST /messages (SQLite has
a single connection)."""

log = logging.getLogger("postroom.auth")

MAX_CACHED = 10_000
MAX_CLIENTS = 1_000

CHALLENGE = {"WWW-Authenticate": 'Basic realm="postroom", charset="UTF-8"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, with the sending bounds of its user row (None: the defaults; see
    app.messages.bounds), read with the role so a change to either reaches every replica within
    RECHECK_SECONDS."""

    name: str
    role: str
    allowed_from: tuple[str, ...] | None = None
    allowed_servers: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


PRINCIPAL_COLUMNS = (User.name, User.role, User.allowed_from, User.allowed_servers)
"""The user columns a Principal is made of: select them and hand the row to `principal_of`."""


def principal_of(row: Row[Any]) -> Principal:
    """The Principal of a row holding PRINCIPAL_COLUMNS."""
    return Principal(
        row.name,
        row.role,
        None if row.allowed_from is None else tuple(row.allowed_from),
        None if row.allowed_servers is None else frozenset(row.allowed_servers),
    )


def parse_basic(header: str | None) -> tuple[str, str]:
    if not header or not header[:6].lower() == "basic ":
        raise Unauthorized("HTTP Basic credentials required", headers=CHALLENGE)
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise Unauthorized("malformed Basic credentials", headers=CHALLENGE) from err
    name, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("malformed Basic credentials", headers=CHALLENGE)
    return name, password


@dataclass(slots=True)
class _Verified:
    """A credential verified against `stored` (the user's password hash at the time)."""

    stored: str
    principal: Principal
    until: float
    """Monotonic time after which argon2 runs again (POSTROOM_AUTH_CACHE_SECONDS)."""
    checked: float
    """Monotonic time the user row was last read."""
    clients: set[str] = field(default_factory=set)
    """Addresses that logged in with it: trusted, so the lockout need not be read for them."""


@dataclass(frozen=True, slots=True)
class _Row:
    principal: Principal
    password_hash: str


class Authenticator:
    """Checks Basic credentials against the users table.

    A verified credential is cached in this process under an HMAC of name and password, with the
    hash it was verified against: argon2 is paid once per credential per `cache_seconds`, and
    the user row is read again every RECHECK_SECONDS, so a changed hash or a deleted user drops
    the entry and a changed role applies. Unknown users are verified against a dummy hash, so
    they take as long as a wrong password. Failed logins are throttled per client address
    (`failures_per_minute`, a Throttle) and counted by the Lockout, both in the database.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        pepper: bytes,
        cache_seconds: float,
        failures_per_minute: int,
        lockout_failures: int = 100,
        lockout_seconds: float = 900.0,
    ) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, _Verified] = {}
        self._pepper = secrets.token_bytes(32)
        """Keys the cache's HMAC: per process, as the cache is."""
        self.throttle = Throttle(
            engine, name="login", limit=failures_per_minute, what="failed logins"
        )
        self.lockout = Lockout(
            engine, limit=lockout_failures, seconds=lockout_seconds, pepper=pepper
        )
        self._logins: dict[tuple[bytes, str], asyncio.Future[Principal]] = {}
        self._argon2 = asyncio.Semaphore(VERIFYING_AT_ONCE)
        self._refreshing: set[asyncio.Task[bool]] = set()
        """Background re-reads of user rows (held so they are not collected mid-flight)."""

    async def authenticate(self, header: str | None, client: str) -> Principal:
        name, password = parse_basic(header)
        return await self.verify(name, password, client)

    async def verify(self, name: str, password: str, client: str) -> Principal:
        """A name and password, from Basic auth or the console's login form: one throttle,
        one lockout and one cache for both."""
        key = hmac.new(self._pepper, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        entry = self._cache.get(key)
        if entry is not None and await self._still_valid(key, entry, name, client):
            return entry.principal
        flight = (key, client)
        login = self._logins.get(flight)
        if login is None:
            login = asyncio.ensure_future(self._login(name, password, client, key))
            self._logins[flight] = login
            login.add_done_callback(lambda _: self._logins.pop(flight, None))
        return await asyncio.shield(login)

    async def _still_valid(self, key: bytes, entry: _Verified, name: str, client: str) -> bool:
        """Whether the cached entry lets this client in now (re-reading the row when due)."""
        now = time.monotonic()
        if entry.until <= now or client not in entry.clients:
            return False
        age = now - entry.checked
        if age < RECHECK_SECONDS:
            return True
        if age < 2 * RECHECK_SECONDS:
            # Due, not late: read it in the background. A request that waited for the read would
            # miss its group commit, and under a steady load of N clients the intake's batches
            # then stay split in two cohorts: twice the transactions per message on SQLite.
            self._refresh(key, entry, name)
            return True
        return await self._recheck(key, entry, name)

    def _refresh(self, key: bytes, entry: _Verified, name: str) -> None:
        # Marked read now, not when the task starts: the requests of this very loop iteration
        # would each start a re-read of their own otherwise.
        before, entry.checked = entry.checked, time.monotonic()
        task = asyncio.create_task(self._reread(key, entry, name, before))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Task[bool]) -> None:
        self._refreshing.discard(task)
        if not task.cancelled() and (err := task.exception()) is not None:
            log.warning("re-reading a user row failed (the next request tries again): %s", err)

    async def _recheck(self, key: bytes, entry: _Verified, name: str) -> bool:
        """Read the user row again: False (and the entry dropped) when the user is gone or its
        hash changed. Requests meanwhile keep using the entry: one read per credential."""
        before, entry.checked = entry.checked, time.monotonic()
        return await self._reread(key, entry, name, before)

    async def _reread(self, key: bytes, entry: _Verified, name: str, before: float) -> bool:
        """The read of `_recheck` and `_refresh`, the entry already marked read (`before` is put
        back when the read fails, so the next request tries again)."""
        try:
            row = await self._user(name)
        except BaseException:
            entry.checked = before  # the next request tries again
            raise
        if row is None or row.password_hash != entry.stored:
            if self._cache.get(key) is entry:
                del self._cache[key]
            return False
        if row.principal != entry.principal:
            entry.principal = row.principal
        return True

    def changed(self, name: str) -> None:
        """The user `name` is being changed or deleted by this process: its credentials re-read
        the row on their next request (other processes see it within RECHECK_SECONDS). Called
        before the change commits: a request reading the old row meanwhile keeps it at most
        RECHECK_SECONDS, as on any other replica."""
        for entry in self._cache.values():
            if entry.principal.name == name:
                entry.checked = float("-inf")

    async def _login(self, name: str, password: str, client: str, key: bytes) -> Principal:
        """The slow path, once at a time per credential and client: throttle, lockout, argon2
        (unless this process verified the credential against the same hash already)."""
        await self.throttle.check(client)
        row = await self._user(name)
        state = await self.lockout.state(name, client)
        stored = row.password_hash if row is not None else DUMMY_HASH
        locked = state.locked_until is not None
        if locked and not await self.lockout.trusted(name, client, password, stored):
            raise self.lockout.refuse(state)
        entry = self._cache.get(key)
        now = time.monotonic()
        known = entry is not None and entry.until > now and entry.stored == stored
        if row is not None and known:
            valid = True
        else:
            async with self._argon2:
                valid = await asyncio.to_thread(verify_password, password, stored)
        if row is None or not valid:
            await self.throttle.record(client)
            await self.lockout.failed(name, client)
            raise Unauthorized("invalid credentials", headers=CHALLENGE)
        await self.lockout.succeeded(name, client, password, stored, state)
        principal = row.principal
        if entry is None or not known:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            entry = _Verified(stored, principal, now + self._cache_seconds, now)
            self._cache[key] = entry
        if len(entry.clients) >= MAX_CLIENTS:
            entry.clients.clear()
        entry.clients.add(client)
        entry.principal, entry.checked = principal, now
        return principal

    async def _user(self, name: str) -> _Row | None:
        if "\0" in name:  # PostgreSQL refuses NUL in text; no user has one
            return None
        query = select(*PRINCIPAL_COLUMNS, User.password_hash).where(User.name == name)
        async with self._engine.connect() as conn:
            found = (await conn.execute(query)).first()
        return None if found is None else _Row(principal_of(found), found.password_hash)


def require_role(principal: Principal, *roles: str) -> Principal:
    if principal.role not in roles:
        raise Forbidden(f"this needs the {' or '.join(roles)} role")
    return principal
