"""Metrics in Prometheus' text format (prometheus_client), at GET /metrics.

Two kinds: counters and histograms of what this process did (Prometheus scrapes every replica and
sums them), and gauges of the shared state read from the database at scrape time (`Snapshot`), so
that every replica reports the same queue, the same loops and the same profiles.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86_400)
"""Accept to final status: seconds for a healthy relay, hours when retries are at work."""

M = TypeVar("M", Counter, Histogram)

ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """This process's counters and histograms, each in its own registry (tests run many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.transactions = Counter(
            "postroom_transactions",
            "SMTP transactions and provider API calls, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.messages = Counter(
            "postroom_messages",
            "Messages that reached a final status in this process, by status.",
            ["status"],
            registry=r,
        )
        self.ambiguous = Counter(
            "postroom_ambiguous_attempts",
            "Transactions whose content may have been delivered though no reply came back.",
            registry=r,
        )
        self.configuration_errors = Counter(
            "postroom_configuration_errors",
            "Attempts refused for a profile's configuration (credentials, TLS, DNS), by profile.",
            ["profile", "code"],
            registry=r,
        )
        self.internal_errors = Counter(
            "postroom_internal_errors",
            "Unexpected exceptions while delivering one message (recorded as a deferred attempt).",
            registry=r,
        )
        self.loop_errors = Counter(
            "postroom_loop_errors",
            "Exceptions a supervised loop survived (it logs them, backs off and goes on).",
            ["loop"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "postroom_delivery_latency_seconds",
            "From a message's acceptance to its final status (sent, partially_sent or failed).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempt_duration = Histogram(
            "postroom_attempt_duration_seconds",
            "One SMTP transaction or provider API call, by profile type.",
            ["type"],
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.delivery_events = Counter(
            "postroom_delivery_events",
            "Delivery events recorded by this process (Postroom's own and reported ones), by "
            "event type and server profile.",
            ["type", "profile"],
            registry=r,
        )
        self._children: dict[tuple[object, ...], Any] = {}
        """Labelled children by (metric, label values): `labels()` costs 2 us (a lock, a tuple of
        validated strings), and the hot paths count several per message."""
        self.webhook_deliveries = Counter(
            "postroom_webhook_deliveries",
            "Webhook delivery attempts finished in this process, by outcome: delivered, retry "
            "(failed, tried again later), failed (given up), lost (its lease had expired).",
            ["outcome"],
            registry=r,
        )
        self.webhook_endpoints_disabled = Counter(
            "postroom_webhook_endpoints_disabled",
            "Webhook endpoints this process disabled (continuous failures, or 410 Gone).",
            registry=r,
        )

        self.hooks = Counter(
            "postroom_hooks",
            "Provider webhook requests (POST /api/v1/hooks/{profile}/events), by provider and "
            "outcome: accepted, refused (bad or no signature, stale), replayed, malformed, "
            "too_large, unavailable (SNS unreachable), not_found.",
            ["provider", "outcome"],
            registry=r,
        )

    def _child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, kept after the first call."""
        key = (metric, *values)
        child: M | None = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def count_events(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Add committed delivery events, counted by (type, profile)."""
        for (type_, profile), count in counts.items():
            self._child(self.delivery_events, type_, profile).inc(count)

    def transaction(self, outcome: str, profile_type: str, seconds: float) -> None:
        """Count one SMTP transaction or API call and time it."""
        self._child(self.transactions, outcome).inc()
        self._child(self.attempt_duration, profile_type).observe(seconds)

    def finished(self, status: str, seconds: float) -> None:
        """Count a message that reached a final status, `seconds` after it was due to start."""
        self.ended(status)
        self.delivery_latency.observe(seconds)

    def ended(self, status: str) -> None:
        """Count a message that reached a final status without a delivery (a cancellation)."""
        self._child(self.messages, status).inc()

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when it has none yet), by its exposed name."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self, snapshot: Snapshot | None) -> bytes:
        """This process's metrics, then the database's gauges when they could be read."""
        text = generate_latest(self.registry)
        if snapshot is not None:
            shared = CollectorRegistry()
            shared.register(_SnapshotCollector(snapshot))
            text += generate_latest(shared)
        return text


@dataclass(frozen=True, slots=True)
class LoopBeat:
    id: str
    loop: str
    host: str
    age: float
    """Seconds since its last heartbeat."""


@dataclass(frozen=True, slots=True)
class FailingProfile:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The shared state, read from the database at scrape time."""

    messages: dict[str, int]
    """Messages by status."""
    oldest_due: float
    """Seconds the oldest due queued message has waited past its due time (0: none)."""
    loops: list[LoopBeat]
    stale_after: float
    profiles: dict[str, int]
    """Profiles by health."""
    failing: list[FailingProfile] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)
    """Messages each profile's rate limit or throttle held back, ever (app/delivery/quota.py)."""
    throttled: dict[str, float] = field(default_factory=dict)
    """Seconds each throttled profile still waits, as its provider asked."""


DISPATCHER_LOOPS = ("dispatcher", "worker")
"""The loop names of dispatchers (in `postroom serve`, or a `postroom worker`)."""
STATUSES = ("queued", "sending", "sent", "partially_sent", "failed")
HEALTHS = ("unknown", "ok", "failing")


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        yield _family(
            "postroom_queue_messages",
            "Messages in the database, by status.",
            ["status"],
            ((st, s.messages.get(st, 0)) for st in STATUSES),
        )
        yield GaugeMetricFamily(
            "postroom_queue_oldest_due_seconds",
            "How long the oldest due queued message has waited past its due time.",
            value=s.oldest_due,
        )
        live = collections.Counter(beat.loop for beat in s.loops if beat.age <= s.stale_after)
        yield GaugeMetricFamily(
            "postroom_dispatchers_live",
            f"Dispatchers and workers whose heartbeat is at most {s.stale_after:g} s old.",
            value=sum(live[loop] for loop in DISPATCHER_LOOPS),
        )
        yield _family(
            "postroom_loops_live",
            f"Supervised loops whose heartbeat is at most {s.stale_after:g} s old, by loop.",
            ["loop"],
            sorted(live.items()),
        )
        ages = GaugeMetricFamily(
            "postroom_dispatcher_heartbeat_age_seconds",
            "Seconds since each supervised loop (dispatcher, worker, webhooks, ...) last beat.",
            labels=["id", "loop", "host"],
        )
        for beat in s.loops:
            ages.add_metric([beat.id, beat.loop, beat.host], beat.age)
        yield ages
        yield _family(
            "postroom_profiles",
            "Server profiles, by health.",
            ["health"],
            ((h, s.profiles.get(h, 0)) for h in HEALTHS),
        )
        failing = GaugeMetricFamily(
            "postroom_profile_failing",
            "1 for each profile whose health is failing (the reason is on the profile).",
            labels=["profile", "type"],
        )
        for profile in s.failing:
            failing.add_metric([profile.name, profile.type], 1)
        yield failing
        held = CounterMetricFamily(
            "postroom_quota_held_back",
            "Messages a profile's rate limit or its provider's throttle held back (put back in "
            "the queue, due at their turn; not attempts), by profile, counted by every worker.",
            labels=["profile"],
        )
        for name, count in sorted(s.held.items()):
            held.add_metric([name], count)
        yield held
        throttled = GaugeMetricFamily(
            "postroom_quota_throttled_seconds",
            "Seconds a profile still waits because its provider said too many (HTTP 429, SMTP "
            "421 4.7.x), by profile; absent when none is throttled.",
            labels=["profile"],
        )
        for name, seconds in sorted(s.throttled.items()):
            throttled.add_metric([name], seconds)
        yield throttled


def _family(
    name: str, documentation: str, labels: list[str], values: Iterable[tuple[str, int]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label, value in values:
        family.add_metric([label], value)
    return family
