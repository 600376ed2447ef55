"""A small connection pool with nodemailer's limits: connections open at once, uses per connection.

The pool knows nothing about SMTP: it opens connections with the factory it is given, lends one
per `lease()`, reuses it while it is alive and under `max_uses`, closes it after `idle_timeout`
seconds without work, and discards it when the work done with it raised.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class PooledConnection(Protocol):
    """What the pool needs from a connection."""

    @property
    def alive(self) -> bool:
        """False once the peer or an error closed it: it must not be lent again."""
        ...

    async def aclose(self) -> None:
        """Close politely (SMTP: QUIT); never raises."""
        ...

    def abort(self) -> None:
        """Close at once, without talking to the peer."""
        ...


C = TypeVar("C", bound=PooledConnection)


class Lease(Generic[C]):
    """One lease of a pooled connection (`ConnectionPool.lease`)."""

    __slots__ = ("_entry", "_pool")

    def __init__(self, pool: ConnectionPool[C]) -> None:
        self._pool = pool
        self._entry: _Entry[C] | None = None

    async def __aenter__(self) -> C:
        self._entry = await self._pool._acquire()
        return self._entry.connection

    async def __aexit__(
        self, kind: type[BaseException] | None, raised: BaseException | None, _: object
    ) -> None:
        if self._entry is not None:
            await self._pool._give_back(self._entry, raised)


class PoolClosed(RuntimeError):
    """The pool was closed: it lends nothing any more."""


@dataclass(eq=False, slots=True)
class _Entry(Generic[C]):
    connection: C
    uses: int = 0
    idle_since: float = 0.0
    """The event loop's clock when it last came back to the pool."""


class ConnectionPool(Generic[C]):
    """Up to `max_connections` open connections, each lent for at most `max_uses` leases.

    A lease waits while every connection is busy and the limit is reached. Counting includes
    connections being opened and being closed, so the peer never sees more than the limit.

    Idle connections are kept most recent last and reused from there, so the oldest is first: one
    timer, set for when that one's `idle_timeout` ends, closes whatever has been idle that long
    (a timer per lease cost more than the lease's own bookkeeping).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[C]],
        *,
        max_connections: int,
        max_uses: int,
        idle_timeout: float,
    ) -> None:
        if max_connections < 1 or max_uses < 1:
            raise ValueError("max_connections and max_uses must be at least 1")
        self._connect = connect
        self._max_connections = max_connections
        self._max_uses = max_uses
        self._idle_timeout = idle_timeout
        self._idle: list[_Entry[C]] = []
        self._open = 0
        self._closed = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        """Leases waiting for a connection or a free slot, first come first served."""
        self._reaper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        """Connections open, being opened or being closed."""
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def lease(self) -> Lease[C]:
        """Lend a connection for one unit of work (one message): `async with pool.lease() as c`.

        The connection goes back to the pool when the block ends normally; it is closed when the
        block raises, when it reached `max_uses`, or when the pool was closed meanwhile.
        """
        return Lease(self)

    async def _give_back(self, entry: _Entry[C], raised: BaseException | None) -> None:
        if isinstance(raised, Exception):
            await self._retire(entry)
            return
        if raised is not None:
            entry.connection.abort()
            self._release_slot()
            return
        entry.uses += 1
        if self._closed or entry.uses >= self._max_uses or not entry.connection.alive:
            await self._retire(entry)
            return
        entry.idle_since = asyncio.get_running_loop().time()
        self._idle.append(entry)
        self._reap_later()
        self._wake_one()

    async def aclose(self) -> None:
        """Close the idle connections now and the busy ones when their lease ends."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        idle, self._idle = self._idle, []
        while self._waiters:
            self._wake_one()
        await asyncio.gather(*(self._retire(entry) for entry in idle))
        while self._closing:
            await asyncio.gather(*self._closing)

    async def _acquire(self) -> _Entry[C]:
        while True:
            if self._closed:
                raise PoolClosed("the connection pool is closed")
            while self._idle:
                entry = self._idle.pop()
                if entry.connection.alive:
                    return entry
                entry.connection.abort()
                self._open -= 1
            if self._open < self._max_connections:
                self._open += 1
                break
            await self._wait()
        try:
            return _Entry(await self._connect())
        except BaseException:
            self._release_slot()
            raise

    async def _wait(self) -> None:
        """Until a connection comes back, a slot frees or the pool closes."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif not waiter.cancelled():
                self._wake_one()  # woken, then cancelled: the next in line gets the turn
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _reap_later(self) -> None:
        if self._reaper is None and self._idle:
            when = self._idle[0].idle_since + self._idle_timeout
            self._reaper = asyncio.get_running_loop().call_at(when, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for `idle_timeout` (the oldest first), and wait for the
        next."""
        self._reaper = None
        deadline = asyncio.get_running_loop().time() - self._idle_timeout
        expired = 0
        while expired < len(self._idle) and self._idle[expired].idle_since <= deadline:
            expired += 1
        for entry in self._idle[:expired]:
            task = asyncio.get_running_loop().create_task(self._retire(entry))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        del self._idle[:expired]
        self._reap_later()

    async def _retire(self, entry: _Entry[C]) -> None:
        try:
            await entry.connection.aclose()
        finally:
            self._release_slot()

    def _release_slot(self) -> None:
        self._open -= 1
        self._wake_one()
