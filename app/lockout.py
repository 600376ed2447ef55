"""Account lockout shared through the database, so it holds across replicas.

Two counters of consecutive failed logins, in `login_failures`:

- per user name, from every address: at `limit` failures (POSTROOM_ACCOUNT_LOCKOUT_FAILURES,
  default 100: NIST SP 800-63B 5.2.2's most) the name is locked for `seconds`
  (POSTROOM_ACCOUNT_LOCKOUT_SECONDS) for every client that is not trusted.
- per (user name, client address): at a PAIR_SHARE-th of that (10 by default) the pair is locked
  for `seconds`. A brute-forcing client thus locks itself out of that account long before it
  could lock the account: while its pair is locked its tries are refused unverified and not
  counted, so the name's counter sees `seconds` without a failure and starts again. One address
  can never lock the real user out from another; it takes PAIR_SHARE addresses guessing together.

A success resets its pair's counter (not the name's: the real admin logging in must not hand a
distributed guesser a fresh allowance); a counter with no failure for `seconds` starts again.
Known and unknown names lock alike, so a lock reveals nothing.

While locked, a trusted client still gets in: one that logged in before from that address with
that name and that very password (NIST SP 800-63B 5.2.2). So an attacker can lock an account
away from new guesses, never from its own clients; such a success does not lift the lock.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from sqlalchemy import and_, case, delete, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import UTCDateTime, table_of, utcnow
from app.errors import TooManyRequests
from app.throttle import upsert
from app.users.models import LoginFailures, TrustedLogin

PAIR_SHARE = 10
"""One address locks itself out of a name after this fraction of the name's limit (rounded up):
10 of the default 100."""
TRUST_DAYS = 30
"""A trusted login not seen again for this long is forgotten (each login refreshes it)."""
PRUNE_EVERY = 60.0
"""Seconds between two clean-ups of stale counters and trusted logins, per process."""

FAILURES = table_of(LoginFailures)
TRUSTED = table_of(TrustedLogin)


@dataclass(frozen=True, slots=True)
class LockState:
    """What the database says about one (name, client) before a login is verified."""

    pair_failures: int = 0
    name_failures: int = 0
    locked_until: datetime | None = None
    """The later of the pair's and the name's lock, when either is in force."""


class Lockout:
    """The two counters and the trusted logins (see the module's docstring). Each method is one
    short transaction of its own: never call it while holding a session."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        limit: int,
        seconds: float,
        pepper: bytes,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.limit = limit
        self.seconds = seconds
        self._pepper = pepper
        """Keys the trusted-login HMAC: the same on every replica (derived from the secret
        keys), never stored in the database."""
        self.clock = clock
        self._prune_at = 0.0

    @property
    def pair_limit(self) -> int:
        return max(1, math.ceil(self.limit / PAIR_SHARE))

    async def state(self, name: str, client: str) -> LockState:
        pair, whole = _keys(name, client)
        now = self.clock()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(FAILURES.c.key, FAILURES.c.failures, FAILURES.c.locked_until).where(
                    FAILURES.c.key.in_((pair, whole))
                )
            )
            found = {key: (failures, until) for key, failures, until in rows}
        locks = [until for _, until in found.values() if until is not None and until > now]
        return LockState(
            pair_failures=found.get(pair, (0, None))[0],
            name_failures=found.get(whole, (0, None))[0],
            locked_until=max(locks, default=None),
        )

    def refuse(self, state: LockState) -> TooManyRequests:
        assert state.locked_until is not None
        left = (state.locked_until - self.clock()).total_seconds()
        return TooManyRequests(
            "too many failed logins for this account; try again later",
            retry_after=max(1, math.ceil(left)),
        )

    def trust_key(self, name: str, client: str, password: str, stored: str) -> str:
        """HMAC-SHA256 under the secret-key-derived pepper of (stored hash, client, name,
        password). The pepper is not in the database, so these rows are no faster way to test
        password guesses than the argon2 hashes next to them; the stored hash in the message
        makes every trusted login of a user void when its password changes."""
        message = "\0".join((stored, client, name, password)).encode(errors="surrogatepass")
        return hmac.new(self._pepper, message, hashlib.sha256).hexdigest()

    async def trusted(self, name: str, client: str, password: str, stored: str) -> bool:
        key = self.trust_key(name, client, password, stored)
        async with self.engine.connect() as conn:
            found = await conn.scalar(select(TRUSTED.c.key).where(TRUSTED.c.key == key))
        return found is not None

    async def failed(self, name: str, client: str) -> None:
        """Count a failed login for the pair and for the name; lock whichever reaches its limit."""
        pair, whole = _keys(name, client)
        now = self.clock()
        async with self.engine.begin() as conn:
            await self._fail(conn, pair, self.pair_limit, now)
            await self._fail(conn, whole, self.limit, now)
        await self._maybe_prune(now)

    async def succeeded(
        self, name: str, client: str, password: str, stored: str, state: LockState
    ) -> None:
        """Reset the pair's counter (unless it is locked) and remember this client as trusted."""
        pair, _ = _keys(name, client)
        now = self.clock()
        trust_key = self.trust_key(name, client, password, stored)
        async with self.engine.begin() as conn:
            if state.pair_failures:
                unlocked = or_(FAILURES.c.locked_until.is_(None), FAILURES.c.locked_until <= now)
                await conn.execute(delete(FAILURES).where(FAILURES.c.key == pair, unlocked))
            trust = upsert(conn, TRUSTED).values(key=trust_key, seen_at=now)
            await conn.execute(
                trust.on_conflict_do_update(
                    index_elements=[TRUSTED.c.key], set_={"seen_at": trust.excluded.seen_at}
                )
            )
        await self._maybe_prune(now)

    async def failures(self, name: str, client: str | None = None) -> int:
        """Consecutive failures of the name (or of the name from `client`), for tests."""
        state = await self.state(name, client or "")
        return state.pair_failures if client is not None else state.name_failures

    async def _fail(self, conn: AsyncConnection, key: str, limit: int, now: datetime) -> None:
        """One upsert: a new row counts 1; a locked row counts on and stays locked as it was; an
        expired lock or a counter quiet for `seconds` starts again at 1; reaching `limit` locks."""
        c = FAILURES.c
        until = literal(now + timedelta(seconds=self.seconds), UTCDateTime())
        at = literal(now, UTCDateTime())
        locked = c.locked_until > at
        restart = or_(
            c.locked_until <= at, c.updated_at < literal(now - self._quiet(), UTCDateTime())
        )
        counted = case((locked, c.failures + 1), (restart, 1), else_=c.failures + 1)
        statement = upsert(conn, FAILURES).values(
            key=key, failures=1, locked_until=until if limit <= 1 else None, updated_at=now
        )
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[c.key],
                set_={
                    "failures": counted,
                    "locked_until": case(
                        (locked, c.locked_until), (counted >= limit, until), else_=None
                    ),
                    "updated_at": at,
                },
            )
        )

    def _quiet(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    async def _maybe_prune(self, now: datetime) -> None:
        """Forget counters quiet for `seconds` and not locked, and trusted logins not seen for
        TRUST_DAYS: at most once a minute per process, two deletes."""
        tick = time.monotonic()
        if tick < self._prune_at:
            return
        self._prune_at = tick + PRUNE_EVERY
        stale = and_(
            FAILURES.c.updated_at < now - self._quiet(),
            or_(FAILURES.c.locked_until.is_(None), FAILURES.c.locked_until <= now),
        )
        async with self.engine.begin() as conn:
            await conn.execute(delete(FAILURES).where(stale))
            old = now - timedelta(days=TRUST_DAYS)
            await conn.execute(delete(TRUSTED).where(TRUSTED.c.seen_at < old))


def _keys(name: str, client: str) -> tuple[str, str]:
    """The pair's and the name's row keys: readable for ordinary names (percent-encoded, so a
    NUL or an "@" in a name cannot collide with another key), hashed when long."""
    encoded = quote(name, safe="")
    if len(encoded) > 300:
        encoded = "#" + hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()
    return f"pair:{encoded}@{quote(client, safe='')}", f"name:{encoded}"
