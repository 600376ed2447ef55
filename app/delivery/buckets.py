"""Per-profile sending quotas: the arithmetic, with no database (app/delivery/quota.py keeps the
state in the profile's bucket row and calls this under the row's lock).

A rate limit has up to four windows (a second, a minute, an hour, a day), each allowing N units
(messages or recipients) in any stretch of that length: rolling windows, as Microsoft 365, Gmail
and Amazon SES count them. (A token bucket of N refilling N per window lets 2N through in the
window after a burst: enough to get a Gmail account suspended for a day.) A window keeps what was
spent per slot, a fiftieth of the window; a unit counts from its slot until one window after the
slot's end, so no stretch of a window's length ever counts more than N, and a unit comes back at
most a slot late: a steady backlog goes out at about 50/51 of the limit (19.5 a second for 20).

What fits now goes now. A message that does not is booked at the earliest time it fits: its
units are counted there, its due time is set to that time, and the booking, keyed by that time,
is redeemed when the message comes back, so it does not pay twice. Under a second or a minute
window (a rate) bookings are spaced evenly, one every window/N, rather than N at once each
window. Bookings reach two shortest windows ahead; further back in a backlog a message gets an
estimate (where it would fit after everything placed before it, not counted) and is placed
again when it comes due: a backlog becomes a schedule rather than being re-read on every claim.

A booked message counts at its booked time even when a busy worker picks it up late, up to half
the shortest window: lateness does not slow the profile down (counting at pick-up time did: 100
ms of random lateness halved a 20-a-second rate), and the provider may see that lateness' worth
of messages more in one window. Later than that, the booking lapses and the message is counted
when it goes, if it fits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from app.servers.schemas import WINDOWS, RateLimit

SLOTS = 50
"""Slots per window: the bound stays exact, and a unit comes back at most 1/SLOTS late."""
SECOND = 1_000_000
"""Times are integer microseconds since the epoch: exact, as both databases store them."""
PACED = 60 * SECOND
"""Windows up to a minute are rates: what they hold back is booked evenly spaced. Longer ones
are caps: what fits goes at once."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(when: datetime) -> int:
    return (when - _EPOCH) // _MICROSECOND


def moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    length: int
    """Microseconds."""
    limit: int

    @property
    def slot(self) -> int:
        return self.length // SLOTS


def windows_of(limit: RateLimit | None) -> list[Window]:
    if limit is None:
        return []
    return [Window(name, WINDOWS[name] * SECOND, n) for name, n in limit.windows().items()]


@dataclass(slots=True)
class Bucket:
    """One profile's windows, what each has counted (slot -> units), and the bookings not yet
    redeemed (due time -> units)."""

    windows: list[Window]
    count: str | None
    """What a unit is: a message, or a recipient."""
    spent: list[dict[int, int]]
    bookings: dict[int, int] = field(default_factory=dict)
    spread_until: int | None = None
    """The last estimate given: the next backlog's estimates start there."""

    @classmethod
    def load(cls, limit: RateLimit | None, state: dict[str, Any] | None, now: int) -> Bucket:
        """The bucket as stored, without what no longer counts at `now`. Counts in other units
        (the limit went from messages to recipients) are dropped: they cannot be converted."""
        windows = windows_of(limit)
        count = limit.count if limit is not None else None
        saved = state if state is not None and state.get("count") == count else {}
        counted = saved.get("windows", {})
        spent = [
            {
                slot: units
                for slot, units in counted.get(w.name, [])
                if slot >= now // w.slot - SLOTS
            }
            for w in windows
        ]
        longest = max((w.length for w in windows), default=0)
        bookings = {at: units for at, units in saved.get("bookings", []) if at >= now - longest}
        return cls(windows, count, spent, bookings, saved.get("spreadUntil"))

    def dump(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "windows": {
                w.name: sorted(s.items()) for w, s in zip(self.windows, self.spent, strict=True)
            },
            "bookings": sorted(self.bookings.items()),
            "spreadUntil": self.spread_until,
        }

    def redeem(self, due: int, cost: int, now: int | None) -> bool:
        """Whether a message due at `due`, booked for then, goes now. Its booking is used up
        either way. Picked up more than half the shortest window late, it is counted now if it
        fits; if it does not (or may not go at all, `now` None: a throttle), it is placed again
        like any other (`place`)."""
        left = self.bookings.get(due)
        if left is None or left < cost:
            return False
        if left == cost:
            del self.bookings[due]
        else:
            self.bookings[due] = left - cost
        if now is not None and now - due <= self.grace:
            return True
        self._count(due, cost, -1)
        if now is not None and self._fits(now, cost):
            self._count(now, cost, 1)
            return True
        return False

    @property
    def grace(self) -> int:
        """How late a booked message may be picked up and still count at its booked time."""
        return min(w.length for w in self.windows) // 2

    def place(self, costs: list[int], now: int, start: int, *, joining: int = 0) -> list[int]:
        """When each message may go (in line order, `costs` their units), none before `start`
        (a provider's throttle) nor before the one ahead of it: `now` when it fits now, or a
        booked time up to two shortest windows ahead, both counted; beyond, an estimate, not
        counted, behind the last estimate given (`spread_until`): the back of the line.

        Messages from index `joining` on are new to the queue: while a backlog has estimates
        ahead, they join it at the back even when there is room now (the backlog's estimates
        count on that room; the ones before them were waiting already)."""
        if not self.windows:
            return [start] * len(costs)
        shortest = min(self.windows, key=lambda w: w.length)
        horizon = now + 2 * shortest.length
        spacing = (shortest.length + shortest.slot) // shortest.limit
        """Under a rate (PACED), a unit every (window + slot) / N: what a backlog sustains."""
        if shortest.length > PACED:
            spacing = 0
        last = max(self.bookings, default=None)
        """The last time booked or estimated: the next goes `spacing` later at the earliest."""
        counted: list[dict[int, int]] | None = None
        """The real counts, kept aside once the estimates began (their counts are dropped)."""
        times: list[int] = []
        at = start
        rooms: list[int] | None = None
        for index, cost in enumerate(costs):
            while True:
                behind = self.spread_until is not None and at < self.spread_until
                if behind and (at > horizon or index >= joining):
                    at, last, rooms = self.spread_until or 0, self.spread_until, None
                if at > horizon and counted is None:
                    counted = copy.deepcopy(self.spent)
                if rooms is None:
                    rooms = [self._room(k, at) for k in range(len(self.windows))]
                if not all(self._units(k, cost) <= room for k, room in enumerate(rooms)):
                    at, rooms = self._next(at), None
                elif at > now and last is not None and at < last + spacing * max(cost, 1):
                    at, rooms = last + spacing * max(cost, 1), None
                else:
                    break
            for k in range(len(self.windows)):
                rooms[k] -= self._units(k, cost)
            self._count(at, cost, 1)
            if counted is None and at > now:
                self.bookings[at] = self.bookings.get(at, 0) + cost
            if at > now:
                last = at
            times.append(at)
        if counted is not None:
            self.spent = counted
            self.spread_until = max(times[-1], self.spread_until or 0)
        return times

    def _fits(self, at: int, cost: int) -> bool:
        return all(self._units(k, cost) <= self._room(k, at) for k in range(len(self.windows)))

    def _units(self, k: int, cost: int) -> int:
        """What a message counts in window k: a message bigger than the window's whole limit
        counts as the limit, so it goes once the window is empty rather than never."""
        return min(cost, self.windows[k].limit)

    def _count(self, at: int, cost: int, sign: int) -> None:
        for k, w in enumerate(self.windows):
            units = self._units(k, cost)
            if units:
                slot = at // w.slot
                left = self.spent[k].get(slot, 0) + sign * units
                if left:
                    self.spent[k][slot] = left
                else:
                    self.spent[k].pop(slot, None)

    def _room(self, k: int, at: int) -> int:
        """Units window k can still take at `at` without any stretch of its length, now or
        later (units booked ahead count there), going over its limit."""
        w, spent = self.windows[k], self.spent[k]
        u = at // w.slot
        items = sorted((s, n) for s, n in spent.items() if u - SLOTS <= s <= u + SLOTS)
        ends = [u, *(s for s, _ in items if s > u)]
        worst = total = low = high = 0
        for end in ends:
            while high < len(items) and items[high][0] <= end:
                total += items[high][1]
                high += 1
            while low < high and items[low][0] < end - SLOTS:
                total -= items[low][1]
                low += 1
            worst = max(worst, total)
        return w.limit - worst

    def _next(self, at: int) -> int:
        """The next time after `at` a window's count goes down: when a slot stops counting."""
        return min(
            leaves
            for w, spent in zip(self.windows, self.spent, strict=True)
            for slot in spent
            if (leaves := (slot + SLOTS + 1) * w.slot) > at
        )
