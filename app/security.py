"""HTTP Basic and Bearer (API token) auth: verified credentials cached per process but checked
against the users table (role, password hash and sending bounds, one read; a token's row with
its user's) twice a second, failed logins throttled and accounts locked through the database, so
every replica enforces the same limits and sees a password, role, bounds, user or token change
within a second."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import utcnow
from app.errors import Unauthorized
from app.identity import CHALLENGE, Principal, parse_basic
from app.lockout import Lockout
from app.throttle import Throttle
from app.users import tokens
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

TOUCH_SECONDS = 60.0
"""A token's last use is written at most this often per process, after the request."""

log = logging.getLogger("postroom.auth")
T = TypeVar("T")

MAX_CACHED = 10_000
MAX_CLIENTS = 1_000

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


@dataclass(slots=True)
class _Token:
    """What a cached credential needs to know when it is an API token."""

    id: str
    hash: str
    """The SHA-256 (hex) the row is found by."""
    touched: float = float("-inf")
    """Monotonic time its last use was last written."""


@dataclass(slots=True)
class _Verified:
    """A credential verified against `stored` (the user's password hash at the time, or the
    token's id)."""

    stored: str
    principal: Principal
    until: float
    """Monotonic time after which it is verified again: argon2 for a password
    (POSTROOM_AUTH_CACHE_SECONDS), the token's expiry for a token."""
    checked: float
    """Monotonic time the user row was last read."""
    clients: set[str] = field(default_factory=set)
    """Addresses that logged in with it: trusted, so the lockout need not be read for them."""
    token: _Token | None = None


@dataclass(frozen=True, slots=True)
class _Row:
    principal: Principal
    stored: str


@dataclass(frozen=True, slots=True)
class _Refused:
    """A token found in the table that lets no one in: why (for the log, not the answer)."""

    reason: str


class Authenticator:
    """Checks Basic credentials and API tokens against the users table.

    A verified credential is cached in this process under an HMAC of name and password, with the
    hash it was verified against: argon2 is paid once per credential per `cache_seconds`, and
    the user row is read again every RECHECK_SECONDS, so a changed hash or a deleted user drops
    the entry and a changed role applies. Unknown users are verified against a dummy hash, so
    they take as long as a wrong password. Failed logins are throttled per client address
    (`failures_per_minute`, a Throttle) and counted by the Lockout, both in the database.

    An API token is cached the same way under its SHA-256, and its row (with its user's) is read
    again every RECHECK_SECONDS: a revoked token, a deleted user or a changed role applies within
    a second on every replica. No argon2 for a token: it is found by its hash. A refused token
    counts in the per-address throttle; the account lockout, which guards passwords against
    guessing, neither counts nor stops tokens (256 random bits are not guessed).
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
        """Passwords under a 32-byte HMAC, tokens under b"t" and their 32-byte SHA-256."""
        self._pepper = secrets.token_bytes(32)
        """Keys the cache's HMAC: per process, as the cache is."""
        self.throttle = Throttle(
            engine, name="login", limit=failures_per_minute, what="failed logins"
        )
        self.lockout = Lockout(
            engine, limit=lockout_failures, seconds=lockout_seconds, pepper=pepper
        )
        self._logins: dict[tuple[bytes, str], asyncio.Future[Any]] = {}
        self._argon2 = asyncio.Semaphore(VERIFYING_AT_ONCE)
        self._background: set[asyncio.Task[Any]] = set()
        """Background re-reads of user rows and writes of tokens' last use (held so they are
        not collected mid-flight)."""

    async def authenticate(self, header: str | None, client: str) -> Principal:
        if header is not None and header[:7].lower() == "bearer ":
            return await self.bearer(header[7:].strip(), client)
        name, password = parse_basic(header)
        return await self.verify(name, password, client)

    async def bearer(self, token: str, client: str) -> Principal:
        """An API token (Authorization: Bearer)."""
        if not tokens.is_token(token):
            raise Unauthorized("malformed Bearer token", headers=CHALLENGE)
        principal = await self._token(token, client)
        if principal is None:
            raise await self._refuse(client, "no such token")
        return principal

    async def verify(
        self, name: str, password: str, client: str, *, accept_tokens: bool = True
    ) -> Principal:
        """A name and password, from Basic auth, the console's login form or an SMTP AUTH: one
        throttle, one lockout and one cache for all. With `accept_tokens`, one of the user's API
        tokens is taken as its password (found by its hash: no argon2)."""
        if accept_tokens and tokens.is_token(password):
            principal = await self._token(password, client)
            if principal is not None and principal.name != name:
                raise await self._refuse(client, f"a token of {principal.name!r} given as {name!r}")
            if principal is not None:
                return principal
        key = hmac.new(self._pepper, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        entry = self._cache.get(key)
        if entry is not None and await self._still_valid(key, entry, name, client):
            return entry.principal
        return await self._once(key, client, lambda: self._login(name, password, client, key))

    async def _token(self, token: str, client: str) -> Principal | None:
        """The token's user, or None when no token has this hash; a token found that lets no
        one in (revoked, expired) is refused here."""
        hashed = hashlib.sha256(token.encode()).digest()
        key = b"t" + hashed
        entry = self._cache.get(key)
        if entry is not None and await self._still_valid(key, entry, entry.principal.name, client):
            self._used(entry)
            return entry.principal
        found = await self._once(key, client, lambda: self._token_login(key, hashed.hex(), client))
        if isinstance(found, _Refused):
            raise await self._refuse(client, found.reason)
        return found

    async def _once(self, key: bytes, client: str, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The slow path of a credential, run once at a time per credential and client: the
        requests carrying it meanwhile wait for that one."""
        flight = (key, client)
        login = self._logins.get(flight)
        if login is None:
            login = asyncio.ensure_future(work())
            self._logins[flight] = login
            login.add_done_callback(lambda _: self._logins.pop(flight, None))
        found: T = await asyncio.shield(login)
        return found

    async def _refuse(self, client: str, reason: str) -> Unauthorized:
        """A refused token: counted against the client's address, logged with the reason, and
        answered as any wrong credential is (the reason tells a holder too much)."""
        await self.throttle.record(client)
        log.warning("token refused from %s: %s", client, reason)
        return Unauthorized("invalid credentials", headers=CHALLENGE)

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
        failed = "re-reading a user row failed (the next request tries again)"
        self._later(self._reread(key, entry, name, before), failed)

    def _later(self, work: Awaitable[Any], failed: str) -> None:
        """Run `work` in the background; a failure is logged as `failed`, with its reason."""
        task = asyncio.ensure_future(work)
        self._background.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._background.discard(task)
            if not task.cancelled() and (err := task.exception()) is not None:
                log.warning("%s: %s", failed, err)

        task.add_done_callback(done)

    async def aclose(self) -> None:
        """Let the background reads and writes end (before the engine is disposed)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)

    async def _recheck(self, key: bytes, entry: _Verified, name: str) -> bool:
        """Read the user row again: False (and the entry dropped) when the user is gone or its
        hash changed. Requests meanwhile keep using the entry: one read per credential."""
        before, entry.checked = entry.checked, time.monotonic()
        return await self._reread(key, entry, name, before)

    async def _reread(self, key: bytes, entry: _Verified, name: str, before: float) -> bool:
        """The read of `_recheck` and `_refresh`, the entry already marked read (`before` is put
        back when the read fails, so the next request tries again)."""
        try:
            row = await self._user(name) if entry.token is None else await self._reread_token(entry)
        except BaseException:
            entry.checked = before  # the next request tries again
            raise
        if row is None or row.stored != entry.stored:
            if self._cache.get(key) is entry:
                del self._cache[key]
            return False
        if row.principal != entry.principal:
            entry.principal = row.principal
        return True

    def changed(self, name: str) -> None:
        """The user `name` (or one of its tokens) is being changed or deleted by this process:
        its credentials re-read the row on their next request (other processes see it within
        RECHECK_SECONDS). Called before the change commits: a request reading the old row
        meanwhile keeps it at most RECHECK_SECONDS, as on any other replica."""
        for entry in self._cache.values():
            if entry.principal.name == name:
                entry.checked = float("-inf")

    async def _login(self, name: str, password: str, client: str, key: bytes) -> Principal:
        """The slow path of a password: throttle, lockout, argon2 (unless this process verified
        the credential against the same hash already)."""
        await self.throttle.check(client)
        row = await self._user(name)
        state = await self.lockout.state(name, client)
        stored = row.stored if row is not None else DUMMY_HASH
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
        if entry is None or not known:
            entry = self._store(
                key, _Verified(stored, row.principal, now + self._cache_seconds, now)
            )
        self._admit(entry, client, row.principal, now)
        return row.principal

    async def _token_login(
        self, key: bytes, hashed: str, client: str
    ) -> Principal | _Refused | None:
        """The slow path of a token: throttle, then its row (None: no such token)."""
        await self.throttle.check(client)
        found = await tokens.find(self._engine, hashed, *PRINCIPAL_COLUMNS)
        if found is None:
            return None
        reason = tokens.refusal(found.expires_at, found.revoked_at)
        if reason is not None:
            return _Refused(f"token {found.token_id} of {found.name!r} {reason}")
        principal, now = principal_of(found), time.monotonic()
        entry = self._cache.get(key)
        if entry is None:
            until = _monotonic(found.expires_at) if found.expires_at else float("inf")
            entry = self._store(key, _Verified(found.token_id, principal, until, now))
            entry.token = _Token(found.token_id, hashed)
        self._admit(entry, client, principal, now)
        self._used(entry)
        return principal

    def _store(self, key: bytes, entry: _Verified) -> _Verified:
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[key] = entry
        return entry

    def _admit(self, entry: _Verified, client: str, principal: Principal, now: float) -> None:
        """The entry was just verified for this client, against a row read now."""
        if len(entry.clients) >= MAX_CLIENTS:
            entry.clients.clear()
        entry.clients.add(client)
        entry.principal, entry.checked = principal, now

    def _used(self, entry: _Verified) -> None:
        """Record the token's use in the background, at most every TOUCH_SECONDS: a request
        waits for no write."""
        token, now = entry.token, time.monotonic()
        if token is None or now - token.touched < TOUCH_SECONDS:
            return
        token.touched = now
        failed = f"recording the use of token {token.id} failed (a use a minute later tries again)"
        self._later(tokens.touch(self._engine, token.id, utcnow()), failed)

    async def _user(self, name: str) -> _Row | None:
        if "\0" in name:  # PostgreSQL refuses NUL in text; no user has one
            return None
        query = select(*PRINCIPAL_COLUMNS, User.password_hash).where(User.name == name)
        async with self._engine.connect() as conn:
            found = (await conn.execute(query)).first()
        return None if found is None else _Row(principal_of(found), found.password_hash)

    async def _reread_token(self, entry: _Verified) -> _Row | None:
        """A cached token's row again: None when it is gone (its user deleted), revoked or
        expired."""
        assert entry.token is not None
        found = await tokens.find(self._engine, entry.token.hash, *PRINCIPAL_COLUMNS)
        if found is None or tokens.refusal(found.expires_at, found.revoked_at) is not None:
            return None
        return _Row(principal_of(found), found.token_id)


def _monotonic(when: datetime) -> float:
    """The monotonic time of a wall-clock instant (an expiry): cached entries compare those."""
    return time.monotonic() + (when - utcnow()).total_seconds()
