"""HTTP Basic auth: verified credentials cached briefly, failed logins throttled per client and
per account."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import Forbidden, TooManyRequests, Unauthorized
from app.users.models import User
from app.users.passwords import DUMMY_HASH, verify_password

VERIFYING_AT_ONCE = 2
"""argon2 verifications running at once, at most: each holds 19 MiB while it runs (before, when
a cached credential expired under load, every request carrying it verified it, six at a time in
the default executor: 100 MiB of transient RSS)."""

CHALLENGE = {"WWW-Authenticate": 'Basic realm="postroom", charset="UTF-8"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


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


class RateLimit:
    """At most `limit` events per key in a sliding window; past it, `check` answers 429."""

    def __init__(self, limit: int, what: str, window: float = 60.0) -> None:
        self.limit = limit
        self.what = what
        self.window = window
        self._events: dict[str, deque[float]] = {}

    def check(self, key: str) -> None:
        events = self._recent(key)
        if len(events) >= self.limit:
            retry = int(events[0] + self.window - time.monotonic()) + 1
            raise TooManyRequests(f"too many {self.what}; try again later", retry_after=retry)

    def record(self, key: str) -> None:
        self._recent(key).append(time.monotonic())

    def _recent(self, key: str) -> deque[float]:
        events = self._events.setdefault(key, deque())
        cutoff = time.monotonic() - self.window
        while events and events[0] < cutoff:
            events.popleft()
        if not events and len(self._events) > 100_000:
            self._events.clear()
            events = self._events.setdefault(key, deque())
        return events


class AccountLockout:
    """Consecutive failed logins per user name (known or not, so a lock reveals nothing): after
    `limit` of them in a row the name is locked for `seconds` (NIST SP 800-63B 5.2.2: at most 100).

    While locked, only a client that logged in with that very password before (same address,
    same name and password) is still let in, so an attacker can lock a service account away from
    new guesses but not from its own clients; such a success does not lift the lock.
    """

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self._failures: dict[str, tuple[int, float]] = {}
        """name -> (consecutive failures, locked until on the monotonic clock, or 0)."""

    def locked(self, name: str) -> bool:
        until = self._failures.get(name, (0, 0.0))[1]
        if until and until <= time.monotonic():
            self._failures.pop(name, None)
            return False
        return bool(until)

    def check(self, name: str, *, trusted: bool) -> None:
        if self.locked(name) and not trusted:
            until = self._failures[name][1]
            raise TooManyRequests(
                "too many failed logins for this account; try again later",
                retry_after=int(until - time.monotonic()) + 1,
            )

    def failed(self, name: str) -> None:
        count, until = self._failures.get(name, (0, 0.0))
        count += 1
        if count >= self.limit and not until:
            until = time.monotonic() + self.seconds
        if len(self._failures) > 100_000:
            self._failures = {n: v for n, v in self._failures.items() if v[1]}
        self._failures[name] = (count, until)

    def succeeded(self, name: str) -> None:
        if not self._failures.get(name, (0, 0.0))[1]:
            self._failures.pop(name, None)

    def failures(self, name: str) -> int:
        return self._failures.get(name, (0, 0.0))[0]


class Authenticator:
    """Checks Basic credentials against the users table.

    A verified (name, password) pair is remembered for `cache_seconds` under an HMAC of both, so
    argon2 is paid once per client per period rather than on every request. Unknown users are
    verified against a dummy hash, so they take as long as a wrong password. Failed logins are
    throttled per client address (`failures_per_minute`) and per account (AccountLockout).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        cache_seconds: float,
        failures_per_minute: int,
        lockout_failures: int = 100,
        lockout_seconds: float = 900.0,
    ) -> None:
        self._sessions = sessions
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, Principal]] = {}
        self._trusted: set[bytes] = set()
        """(client address, name, password) of every login since start (or since `forget`), as
        their HMAC: who still gets in while the account is locked."""
        self._pepper = secrets.token_bytes(32)
        self.throttle = RateLimit(failures_per_minute, "failed logins")
        self.lockout = AccountLockout(lockout_failures, lockout_seconds)
        self._verifying: dict[bytes, asyncio.Future[Principal | None]] = {}
        self._argon2 = asyncio.Semaphore(VERIFYING_AT_ONCE)

    def forget(self) -> None:
        """Drop every cached credential (a user changed or was deleted)."""
        self._cache.clear()
        self._trusted.clear()

    async def authenticate(self, header: str | None, client: str) -> Principal:
        name, password = parse_basic(header)
        key = hmac.new(self._pepper, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        known = hmac.new(self._pepper, f"{client}\0".encode() + key, hashlib.sha256).digest()
        trusted = known in self._trusted
        principal = self._cached(key, name, trusted=trusted)
        if principal is not None:
            return principal
        self.throttle.check(client)
        self.lockout.check(name, trusted=trusted)
        verifying = self._verifying.get(key)
        if verifying is None:
            verifying = asyncio.ensure_future(self._verify(name, password))
            self._verifying[key] = verifying
            verifying.add_done_callback(lambda _: self._verifying.pop(key, None))
        principal = await asyncio.shield(verifying)
        if principal is None:
            self.throttle.record(client)
            self.lockout.failed(name)
            raise Unauthorized("invalid credentials", headers=CHALLENGE)
        self.lockout.succeeded(name)
        if len(self._cache) > 10_000:
            self._cache.clear()
        if len(self._trusted) > 10_000:
            self._trusted.clear()
        self._cache[key] = (time.monotonic() + self._cache_seconds, principal)
        self._trusted.add(known)
        return principal

    async def _verify(self, name: str, password: str) -> Principal | None:
        """The user these credentials are valid for, or None. Requests carrying the same
        credentials at the same time share one call, and at most VERIFYING_AT_ONCE run argon2."""
        async with self._sessions() as session:
            query = select(User).where(User.name == name)
            user = None if "\0" in name else await session.scalar(query)  # PG refuses NUL
            stored = user.password_hash if user is not None else DUMMY_HASH
        async with self._argon2:
            valid = await asyncio.to_thread(verify_password, password, stored)
        return Principal(user.name, user.role) if user is not None and valid else None

    def _cached(self, key: bytes, name: str, *, trusted: bool) -> Principal | None:
        cached = self._cache.get(key)
        fresh = cached is not None and cached[0] > time.monotonic()
        if cached is not None and fresh and (trusted or not self.lockout.locked(name)):
            return cached[1]
        return None


def require_role(principal: Principal, *roles: str) -> Principal:
    if principal.role not in roles:
        raise Forbidden(f"this needs the {' or '.join(roles)} role")
    return principal
