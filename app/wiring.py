"""The composition root: builds what the process shares once (`open_core`), starts the loops it
runs, and hands each package the parts it declared (`install`). Only the entry points (app.main,
app.cli) see the `Core`; a router sees its package's parts, never this."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import dns.asyncresolver
import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import deps, migrate
from app.audit.service import SYSTEM
from app.config import Settings
from app.console.deps import PARTS, Parts
from app.crypto import SecretBox, load_secret_box
from app.db import check_durability, create_engine, sessionmaker, transaction
from app.delivery.deps import LINKS, PROBING, Probing
from app.delivery.dispatcher import Dispatcher
from app.delivery.events import Ledger
from app.delivery.links import Links
from app.delivery.notify import Notifier
from app.delivery.transports import TransportCache
from app.deps import Part
from app.dkim import lookup
from app.dkim.deps import KEYS, Keys
from app.egress import EgressPolicy, http_client, parse_networks
from app.events.bounces.deps import BOUNCES
from app.events.bounces.service import Bounces
from app.events.hooks.deps import HOOKS
from app.events.hooks.service import EventHooks
from app.events.providers.sns import Sns
from app.events.service import LEDGER
from app.messages.deps import SENDING, Sending
from app.messages.intake import Intake
from app.metrics import Metrics
from app.security import Authenticator
from app.servers.deps import PROFILES
from app.servers.service import Profiles
from app.suppressions import service as suppressions
from app.throttle import Throttle
from app.transports.base import TransportContext
from app.users import service as users
from app.webhooks.deps import ENDPOINTS, Endpoints
from app.webhooks.sender import Sender

LEASE_MARGIN = 1.0
"""Seconds a lease must outlast the attempt timeout: loading the job and writing its result."""


class StartupError(RuntimeError):
    """The settings cannot work together; the process refuses to start."""


def check_timeouts(settings: Settings) -> None:
    """Refuse a lease that a slow attempt could outlive (reliability check 14).

    The phase timeouts of SMTP (`connectionTimeout`, `greetingTimeout`, `socketTimeout`) are per
    profile and change at run time, and an attempt may hold many phases (a RCPT per recipient, a
    transaction per BCC chunk), so no sum of them is known here. The dispatcher bounds every
    attempt, whatever its phases, by POSTROOM_ATTEMPT_TIMEOUT (default 780 s: nodemailer's
    connection 120 s + greeting 30 s + socket 600 s, plus 30 s), and start-up checks that the lease
    outlasts that bound.
    """
    budget = settings.attempt_timeout + LEASE_MARGIN
    if settings.lease_seconds <= budget:
        raise StartupError(
            f"POSTROOM_LEASE_SECONDS={settings.lease_seconds:g} must be more than "
            f"POSTROOM_ATTEMPT_TIMEOUT={settings.attempt_timeout:g} + {LEASE_MARGIN:g} s: "
            "a message could be sent twice when a slow attempt outlives its lease"
        )


def egress_policy(settings: Settings) -> EgressPolicy:
    ports = frozenset(int(p) for p in settings.egress_ports.split(",") if p.strip())
    return EgressPolicy(
        deny=parse_networks(settings.egress_deny),
        allow=parse_networks(settings.egress_allow),
        ports=ports,
    )


@dataclass(slots=True)
class Core:
    """What the process builds once and shares; the lifespan, the CLI and the workers hand its
    parts to the packages that need them."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    box: SecretBox
    egress: EgressPolicy
    auth: Authenticator
    http: httpx.AsyncClient
    transport_context: TransportContext
    transports: TransportCache
    metrics: Metrics
    ledger: Ledger
    """Where the dispatcher records its events and reads the suppression list."""
    notifier: Notifier
    """Wakes this process's dispatcher when the intake, a retry or a resend queued a message."""
    intake: Intake
    """Stores POST /messages and SMTP submissions in shared transactions (group commit)."""
    test_sends: Throttle
    """Test sends per profile per minute, shared by every replica."""
    sends: Throttle | None
    """Per-user POST /messages limit, when configured, shared by every replica."""
    profiles: Profiles
    resolver: dns.asyncresolver.Resolver
    """For DKIM record checks: POSTROOM_DNS_SERVERS, else the system's resolvers."""


@asynccontextmanager
async def open_core(settings: Settings) -> AsyncIterator[Core]:
    """Everything the service shares: the database, keys, policies and the one HTTP client."""
    check_timeouts(settings)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, settings)
    engine = create_engine(settings)
    sessions = sessionmaker(engine)
    suppressions.configure(sessions, settings)
    notifier = Notifier()
    intake = Intake(sessions, settings, notifier)
    try:
        await check_durability(engine)
        egress = egress_policy(settings)
        async with http_client(egress, settings.http_timeout) as http:
            box = load_secret_box(settings)
            context = TransportContext(
                http, egress, logging.getLogger("postroom.transport"), settings.hostname
            )
            yield Core(
                settings=settings,
                engine=engine,
                sessions=sessions,
                box=box,
                egress=egress,
                auth=Authenticator(
                    engine,
                    pepper=box.derive("postroom trusted logins"),
                    cache_seconds=settings.auth_cache_seconds,
                    failures_per_minute=settings.login_failures_per_minute,
                    lockout_failures=settings.account_lockout_failures,
                    lockout_seconds=settings.account_lockout_seconds,
                ),
                http=http,
                transport_context=context,
                transports=TransportCache(settings, box, context),
                metrics=Metrics(),
                ledger=LEDGER,
                notifier=notifier,
                intake=intake,
                test_sends=Throttle(
                    engine,
                    name="test-send",
                    limit=settings.test_sends_per_minute,
                    what="test sends",
                ),
                sends=(
                    Throttle(
                        engine, name="send", limit=settings.send_rate_per_minute, what="messages"
                    )
                    if settings.send_rate_per_minute
                    else None
                ),
                profiles=Profiles(box, egress, settings.public_url),
                resolver=lookup.resolver(settings.resolvers),
            )
    finally:
        await intake.aclose()
        await engine.dispose()


def sending(core: Core) -> Sending:
    """What the messages API and the SMTP submission listener need."""
    return Sending(core.intake, core.notifier, core.metrics, core.sends)


def bounces(core: Core) -> Bounces:
    return Bounces(core.sessions, core.transports.verp, core.metrics)


CORE: Part[Core] = Part("core")
"""For the entry points and the tests: no package imports app.wiring (the layers contract)."""


def install(app: FastAPI, core: Core) -> None:
    """Hand each package the parts it declared (its `deps` module), for its routers to read."""
    CORE.set(app, core)
    probing = Probing(
        core.profiles,
        core.transport_context,
        core.resolver,
        core.test_sends,
        core.metrics,
        core.ledger,
    )
    endpoints = Endpoints(core.box, core.egress)
    deps.SESSIONS.set(app, core.sessions)
    deps.AUTH.set(app, core.auth)
    SENDING.set(app, sending(core))
    PROFILES.set(app, core.profiles)
    PROBING.set(app, probing)
    KEYS.set(app, Keys(core.box, core.resolver))
    LINKS.set(app, Links.of(core.settings, core.box))
    ENDPOINTS.set(app, endpoints)
    BOUNCES.set(app, bounces(core))
    HOOKS.set(app, EventHooks(core.sessions, core.box, core.metrics, Sns(core.http)))
    PARTS.set(
        app, Parts(core.sessions, core.settings, core.auth, core.profiles, endpoints, probing)
    )


async def bootstrap_admin(core: Core) -> str | None:
    """Create the first admin when there is no user at all; returns its generated password."""
    async with transaction(core.sessions) as session:
        if await users.count_users(session):
            return None
        password = core.settings.admin_password or None
        _, generated = await users.create_user(
            session, core.settings.admin_user, "admin", password, actor=SYSTEM
        )
        return generated


@asynccontextmanager
async def running_dispatcher(core: Core, loop: str = "dispatcher") -> AsyncIterator[Dispatcher]:
    """Run the dispatcher in the background for the duration of the block, then stop it cleanly;
    the core's notifier wakes it."""
    dispatcher = Dispatcher(
        core.sessions,
        core.settings,
        core.transports,
        core.metrics,
        core.ledger,
        notifier=core.notifier,
        loop=loop,
    )
    stopping = asyncio.Event()
    await dispatcher.heartbeats.beat(time.monotonic())
    dispatcher.task = asyncio.create_task(dispatcher.run(stopping))
    try:
        yield dispatcher
    finally:
        stopping.set()
        await asyncio.gather(dispatcher.task, return_exceptions=True)
        await core.transports.aclose()


@asynccontextmanager
async def running_sender(core: Core) -> AsyncIterator[Sender]:
    """Run the webhook sender in the background for the duration of the block."""
    sender = Sender(core.sessions, core.settings, core.box, core.http, core.metrics)
    stopping = asyncio.Event()
    await sender.heartbeats.beat(time.monotonic())
    sender.task = asyncio.create_task(sender.run(stopping))
    try:
        yield sender
    finally:
        stopping.set()
        await asyncio.gather(sender.task, return_exceptions=True)
