"""The quota arithmetic (app/delivery/buckets.py), with no database: rolling windows that never
go over their limit whatever the claims' timing, bookings redeemed once, estimates not counted,
and a backlog drained at the limit's rate."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.delivery.buckets import SECOND, SLOTS, Bucket, micros, moment
from app.servers.schemas import RateLimit

T0 = 1_800_000_000 * SECOND
"""Some time in 2027, in microseconds."""


def limit(**windows: Any) -> RateLimit:
    return RateLimit.model_validate(windows)


def stored(bucket: Bucket) -> dict[str, Any]:
    """What the database gives back: the dump through JSON."""
    state: dict[str, Any] = json.loads(json.dumps(bucket.dump()))
    return state


@dataclass
class Queued:
    id: int
    cost: int
    due: int
    created: int


class Queue:
    """Messages and the bucket state between claims; `claim` does what `quota.admit` does: a
    booked message redeems, the others are placed, those waiting already ahead of new ones."""

    def __init__(self, rate: RateLimit, arrivals: list[tuple[int, int]]) -> None:
        self.rate = rate
        self.queue = [Queued(n, cost, at, at) for n, (at, cost) in enumerate(arrivals)]
        self.state: dict[str, Any] | None = None
        self.sent: list[tuple[int, int]] = []
        """When each message went, and its cost."""
        self.counted: list[tuple[int, int]] = []
        """When each message counted: its booked time, when it was picked up a little late."""
        self.order: list[int] = []
        self.looked = 0

    def claim(self, now: int) -> int:
        """Claim every due message at `now`; how many went."""
        due = sorted((m for m in self.queue if m.due <= now), key=lambda m: (m.due, m.id))
        self.looked += len(due)
        bucket = Bucket.load(self.rate, self.state, now)
        counted_at = {}
        left = []
        for m in due:
            if bucket.redeem(m.due, m.cost, now):
                counted_at[m.id] = m.due if now - m.due <= bucket.grace else now
            else:
                left.append(m)
        waiting = [m for m in left if m.due != m.created]
        line = waiting + [m for m in left if m.due == m.created]
        times = bucket.place([m.cost for m in line], now, now, joining=len(waiting))
        for m, at in zip(line, times, strict=True):
            m.due = at
        went = [m for m in due if m.due <= now]
        for m in went:
            self.sent.append((now, m.cost))
            self.counted.append((counted_at.get(m.id, now), m.cost))
            self.order.append(m.id)
            self.queue.remove(m)
        self.state = stored(bucket)
        return len(went)

    def next_due(self) -> int | None:
        return min((m.due for m in self.queue), default=None)


def work(
    rate: RateLimit,
    arrivals: list[tuple[int, int]],
    until: int,
    lateness: Callable[[], int] = lambda: 5_000,
) -> Queue:
    """A worker as the dispatcher runs: after a claim that sent something it looks again 20 ms
    later, otherwise at the next due time or after a second; each claim `lateness()` late."""
    queue = Queue(rate, arrivals)
    now = min(at for at, _ in arrivals)
    while now <= until:
        if queue.claim(now):
            now += 20_000
        else:
            due = queue.next_due()
            now = min(now + SECOND, max(due, now) if due is not None else now + SECOND)
        now += lateness()
    return queue


def worst(sent: list[tuple[int, int]], length: int) -> int:
    """The most units sent in any stretch of `length` microseconds."""
    return max(sum(c for t, c in sent if start <= t < start + length) for start, _ in sent)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 400_000), min_size=20, max_size=150),
    arrivals=st.lists(st.tuples(st.integers(0, 149), st.integers(0, 7)), min_size=1, max_size=80),
    per_second=st.integers(1, 12),
    per_minute=st.integers(5, 80),
    recipients=st.booleans(),
)
def test_no_window_ever_counts_more_than_its_limit(
    gaps: list[int],
    arrivals: list[tuple[int, int]],
    per_second: int,
    per_minute: int,
    recipients: bool,
) -> None:
    """Whatever the arrivals and the claims' timing: no second counts more than perSecond units
    and no minute more than perMinute; a message counted at its booked time went at most half a
    second (half the shortest window) after it."""
    rate = limit(
        perSecond=per_second,
        perMinute=per_minute,
        count="recipients" if recipients else "messages",
    )
    claims = [T0]
    for gap in gaps:
        claims.append(claims[-1] + gap)
    queue = Queue(rate, [(claims[n % len(claims)], c if recipients else 1) for n, c in arrivals])
    for now in claims:
        queue.claim(now)
    counted = [(at, min(c, per_second)) for at, c in queue.counted]
    if counted:
        assert worst(counted, SECOND) <= per_second
        assert worst([(at, min(c, per_minute)) for at, c in counted], 60 * SECOND) <= per_minute
    late = [sent - at for (sent, _), (at, _) in zip(queue.sent, queue.counted, strict=True)]
    assert all(0 <= d <= SECOND // 2 for d in late)


@pytest.mark.parametrize("lateness", [0, 50_000, 250_000])
def test_a_worker_s_lateness_neither_slows_the_rate_nor_bursts_it(lateness: int) -> None:
    """Claims up to `lateness` late at random: 20 a second is kept, and the provider sees at
    most a few more than 20 in any second (counting at pick-up time, 100 ms of lateness halved
    the rate)."""
    rng = random.Random(lateness)
    queue = work(
        limit(perSecond=20), [(T0, 1)] * 1500, T0 + 200 * SECOND, lambda: rng.randint(0, lateness)
    )
    sent = queue.sent
    assert len(sent) == 1500
    per_second = (len(sent) - 20) / ((sent[-1][0] - sent[0][0]) / SECOND)
    assert 19.0 <= per_second <= 20, per_second
    assert worst(sent, SECOND) <= 20 + -(-lateness * 20 // SECOND) + 2


def test_a_backlog_goes_out_at_the_limit_and_becomes_a_schedule() -> None:
    """3,000 messages queued at once, 20 a second: 19.6 a second (a slot's worth below the
    limit: a unit counts a window after its slot's end), no second over 20, and each message
    looked at about twice (when queued, when its turn comes), not on every claim."""
    rate = limit(perSecond=20)
    queue = work(rate, [(T0, 1)] * 3000, until=T0 + 200 * SECOND)
    sent = queue.sent
    assert len(sent) == 3000
    assert worst(sent, SECOND) <= 20
    per_second = (len(sent) - 20) / ((sent[-1][0] - sent[0][0]) / SECOND)
    assert 19.0 <= per_second <= 20, per_second
    assert queue.looked < 3000 * 2.5, queue.looked


def test_a_message_with_no_room_joins_the_back_of_the_line() -> None:
    """A backlog of 200 at 10 a second was given its schedule; a message that comes half a second
    later, when the window has no room, is estimated after the whole backlog."""
    rate = limit(perSecond=10)
    bucket = Bucket.load(rate, None, T0)
    backlog = bucket.place([1] * 200, T0, T0)
    assert bucket.spread_until == backlog[-1] > T0 + 19 * SECOND
    later = T0 + SECOND // 2
    bucket = Bucket.load(rate, stored(bucket), later)
    [when] = bucket.place([1], later, later)
    assert when > backlog[-1]


def test_a_token_bucket_would_let_twice_the_limit_through_this_does_not() -> None:
    """A burst of N, then N more as the window refills: a token bucket of N refilling N a minute
    sends 2N in the minute after the burst; a rolling window holds the second N back until the
    first has left it."""
    rate = limit(perMinute=30)
    claims = [T0 + n * SECOND for n in range(0, 200)]
    queue = Queue(rate, [(T0, 1)] * 30 + [(T0 + 30 * SECOND, 1)] * 30)
    for now in claims:
        queue.claim(now)
    sent = queue.sent
    assert len(sent) == 60
    assert worst(sent, 60 * SECOND) == 30
    assert {t for t, _ in sent[:30]} == {T0}
    assert min(t for t, _ in sent[30:]) >= T0 + 60 * SECOND


def test_what_fits_goes_now_the_rest_is_booked_then_estimated() -> None:
    rate = limit(perSecond=10)
    bucket = Bucket.load(rate, None, T0)
    times = bucket.place([1] * 35, T0, T0)
    assert times[:10] == [T0] * 10
    slot = SECOND // SLOTS
    booked = T0 + SECOND + slot
    paced = [booked + n * (SECOND + slot) // 10 for n in range(10)]
    assert times[10:20] == paced, "evenly spaced, from when the first ten stop counting"
    assert bucket.bookings == dict.fromkeys(paced, 1)
    assert all(t > T0 + SECOND for t in times[20:]), "beyond a window ahead: estimates"
    assert times[20:] == sorted(times[20:])
    assert bucket.spread_until == times[-1]
    state = stored(bucket)
    assert sum(units for _, units in state["windows"]["perSecond"]) == 20, "estimates not counted"


def test_a_booking_is_redeemed_once() -> None:
    rate = limit(perSecond=1)
    bucket = Bucket.load(rate, None, T0)
    [now, later] = bucket.place([1, 1], T0, T0)
    assert now == T0
    assert later > T0
    bucket = Bucket.load(rate, stored(bucket), later)
    assert bucket.redeem(later, 1, later)
    assert not bucket.redeem(later, 1, later), "used up"
    assert not bucket.redeem(later + 1, 1, later), "a message not booked for then pays"


def test_a_throttle_gives_the_booking_back() -> None:
    rate = limit(perSecond=1)
    bucket = Bucket.load(rate, None, T0)
    [_, later] = bucket.place([1, 1], T0, T0)
    assert not bucket.redeem(later, 1, None)
    assert bucket.bookings == {}
    assert sum(bucket.spent[0].values()) == 1, "only the message that went still counts"


def test_a_message_bigger_than_a_window_waits_for_an_empty_one() -> None:
    rate = limit(perMinute=30, count="recipients")
    bucket = Bucket.load(rate, None, T0)
    [small, big] = bucket.place([5, 60], T0, T0)
    assert small == T0
    assert T0 + 60 * SECOND < big <= T0 + 62 * SECOND


def test_a_message_with_no_recipient_left_costs_nothing() -> None:
    rate = limit(perSecond=1, count="recipients")
    bucket = Bucket.load(rate, None, T0)
    assert bucket.place([1, 0, 0], T0, T0) == [T0, T0, T0]


def test_no_window_and_a_throttle_hold_everything_until_it_ends() -> None:
    bucket = Bucket.load(None, None, T0)
    assert bucket.place([1, 1], T0, T0 + 7 * SECOND) == [T0 + 7 * SECOND] * 2


def test_what_no_longer_counts_is_dropped_and_a_new_unit_starts_afresh() -> None:
    bucket = Bucket.load(limit(perSecond=5), None, T0)
    bucket.place([1] * 5, T0, T0)
    state = stored(bucket)
    assert Bucket.load(limit(perSecond=5), state, T0 + 3 * SECOND).spent == [{}]
    assert Bucket.load(limit(perSecond=5, count="recipients"), state, T0).spent == [{}]
    assert sum(Bucket.load(limit(perSecond=9), state, T0).spent[0].values()) == 5


def test_times_round_trip_exactly() -> None:
    when = moment(T0 + 123_457)
    assert micros(when) == T0 + 123_457
