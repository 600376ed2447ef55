"""The application: create_app() wires settings, database, auth, routers and error handling."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app import migrate
from app.audit.router import router as audit_router
from app.audit.service import SYSTEM
from app.branding.router import router as branding_router
from app.config import Settings
from app.console.router import install as install_console
from app.crypto import load_secret_box
from app.db import check_durability, create_engine, sessionmaker, transaction
from app.delivery import liveness
from app.delivery.dispatcher import Dispatcher
from app.delivery.router import router as probe_router
from app.delivery.transports import TransportCache
from app.deps import Runtime, RuntimeDep
from app.dkim.router import router as dkim_router
from app.egress import EgressPolicy, http_client, parse_networks
from app.errors import ERROR_RESPONSES
from app.events.bounces.router import router as bounces_router
from app.events.bounces.running import running_bounce_loops
from app.events.hooks.router import router as hooks_router
from app.events.hooks.service import EventHooks
from app.events.providers.sns import Sns
from app.handlers import install_error_handlers
from app.limits import BodyLimit
from app.messages.intake import Intake
from app.messages.router import router as messages_router
from app.metrics import Metrics
from app.openapi import install as install_openapi
from app.retention.running import running_purge
from app.schemas import LocalDomains
from app.security import Authenticator
from app.servers.router import router as servers_router
from app.servers.schemas import PROFILE_TYPES
from app.submission.listener import running_submission
from app.suppressions import service as suppressions
from app.suppressions.router import router as suppressions_router
from app.suppressions.router import unsubscribe_router
from app.themes.router import router as themes_router
from app.throttle import Throttle
from app.transports.base import TransportContext
from app.users import service as users
from app.users.router import router as users_router
from app.webhooks.router import events as webhook_events
from app.webhooks.router import router as webhooks_router
from app.webhooks.sender import Sender

log = logging.getLogger("postroom")

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


async def bootstrap_admin(runtime: Runtime) -> str | None:
    """Create the first admin when there is no user at all; returns its generated password."""
    async with transaction(runtime.sessions) as session:
        if await users.count_users(session):
            return None
        password = runtime.settings.admin_password or None
        _, generated = await users.create_user(
            session, runtime.settings.admin_user, "admin", password, actor=SYSTEM
        )
        return generated


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Everything the service shares: the database, keys, policies and the one HTTP client."""
    check_timeouts(settings)
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, settings)
    engine = create_engine(settings)
    sessions = sessionmaker(engine)
    suppressions.configure(sessions, settings)
    intake = Intake(sessions, settings)
    try:
        await check_durability(engine)
        egress = egress_policy(settings)
        async with http_client(egress, settings.http_timeout) as http:
            box = load_secret_box(settings)
            context = TransportContext(
                http, egress, logging.getLogger("postroom.transport"), settings.hostname
            )
            yield Runtime(
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
                intake=intake,
            )
    finally:
        await intake.aclose()
        await engine.dispose()


@asynccontextmanager
async def running_dispatcher(
    runtime: Runtime, loop: str = "dispatcher"
) -> AsyncIterator[Dispatcher]:
    """Run the dispatcher in the background for the duration of the block, then stop it cleanly."""
    dispatcher = Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, loop=loop
    )
    stopping = asyncio.Event()
    await dispatcher.heartbeats.beat(time.monotonic())
    dispatcher.task = asyncio.create_task(dispatcher.run(stopping))
    runtime.wake = dispatcher.notify
    runtime.dispatcher = dispatcher
    try:
        yield dispatcher
    finally:
        runtime.dispatcher = None
        stopping.set()
        await asyncio.gather(dispatcher.task, return_exceptions=True)
        await runtime.transports.aclose()


@asynccontextmanager
async def running_sender(runtime: Runtime) -> AsyncIterator[Sender]:
    """Run the webhook sender in the background for the duration of the block."""
    sender = Sender(runtime.sessions, runtime.settings, runtime.box, runtime.http, runtime.metrics)
    stopping = asyncio.Event()
    await sender.heartbeats.beat(time.monotonic())
    sender.task = asyncio.create_task(sender.run(stopping))
    runtime.sender = sender
    try:
        yield sender
    finally:
        runtime.sender = None
        stopping.set()
        await asyncio.gather(sender.task, return_exceptions=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(open_runtime(settings))
        stack.push_async_callback(runtime.auth.aclose)  # before the engine is disposed
        app.state.runtime = runtime
        app.state.hooks = EventHooks(
            runtime.sessions, runtime.box, runtime.metrics, Sns(runtime.http)
        )
        if settings.dispatcher:
            await stack.enter_async_context(running_dispatcher(runtime))
            await stack.enter_async_context(running_sender(runtime))
            await stack.enter_async_context(running_purge(runtime))
        await stack.enter_async_context(running_bounce_loops(runtime))
        await stack.enter_async_context(running_submission(runtime))
        generated = await bootstrap_admin(runtime)
        if generated is not None:
            print(  # noqa: T201 - shown once, on purpose, on the console of the first start
                f"\nPostroom created the admin user.\n  user:     {settings.admin_user}\n"
                f"  password: {generated}\nIt is shown this once; keep it.\n",
                flush=True,
            )
        yield


async def readiness(runtime: Runtime) -> dict[str, Any]:
    """What /readyz answers: `ready`, or `unavailable` with the reasons."""
    dispatcher = runtime.dispatcher
    reasons: list[str] = []
    answer: dict[str, Any] = {}
    try:
        async with runtime.sessions() as session:
            await session.execute(text("SELECT 1"))
            age = None
            if dispatcher is not None:
                age = await liveness.heartbeat_age(session, dispatcher.heartbeats.id)
    except (OSError, SQLAlchemyError) as err:
        return {"status": "unavailable", "reasons": [f"the database does not answer: {err}"]}
    if runtime.settings.dispatcher:
        if dispatcher is None or dispatcher.task is None or dispatcher.task.done():
            reasons.append("the dispatcher is not running")
        elif age is None or age > liveness.STALE_AFTER:
            since = "its row is gone" if age is None else f"the last was {age:.0f} s ago"
            reasons.append(
                f"the dispatcher's heartbeat is stale ({since}; "
                f"stale after {liveness.STALE_AFTER:g} s)"
            )
        if dispatcher is not None:
            answer["dispatcher"] = {"id": dispatcher.heartbeats.id, "heartbeatAge": age}
            if dispatcher.last_error:
                answer["dispatcher"]["lastError"] = dispatcher.last_error
    sender = runtime.sender
    if runtime.settings.dispatcher and (
        sender is None or sender.task is None or sender.task.done()
    ):
        reasons.append("the webhook sender is not running")
    purge = runtime.purge
    if runtime.settings.dispatcher and (purge is None or purge.task.done()):
        reasons.append("the retention purge is not running")
    if purge is not None and purge.supervised.last_error:
        answer["purge"] = {"lastError": purge.supervised.last_error}
    if runtime.submission is not None and (problem := runtime.submission.problem()):
        reasons.append(problem)
    if reasons:
        return {"status": "unavailable", "reasons": reasons} | answer
    return {"status": "ready"} | answer


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Postroom",
        version="0.1.0",
        summary="Outgoing mail as a REST service.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    install_error_handlers(app, union_tags=PROFILE_TYPES)
    install_openapi(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_message_bytes)
    if settings.allow_local_domains:
        app.add_middleware(LocalDomains)
    app.include_router(messages_router)  # first: routes are matched in order, this is the hot one
    app.include_router(servers_router)
    app.include_router(branding_router)
    app.include_router(users_router)
    app.include_router(probe_router)
    app.include_router(dkim_router)
    app.include_router(themes_router)
    app.include_router(webhooks_router)
    app.webhooks.include_router(webhook_events)
    app.include_router(hooks_router)
    app.include_router(suppressions_router)
    app.include_router(unsubscribe_router)
    app.include_router(audit_router)
    app.include_router(bounces_router)
    install_console(app)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics(runtime: RuntimeDep) -> Response:
        """Prometheus' text format: this process's counters and histograms, and the queue,
        loops and profiles as read from the database (the same on every replica)."""
        try:
            async with runtime.sessions() as session:
                shared = await liveness.snapshot(session)
        except (OSError, SQLAlchemyError) as err:
            log.warning("/metrics: the database could not be read: %s", err)
            shared = None
        return Response(runtime.metrics.render(shared), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"], response_class=PlainTextResponse)
    async def healthz() -> PlainTextResponse:
        """Liveness: the process answers."""
        return PlainTextResponse("ok")

    @app.get("/readyz", tags=["health"])
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        """Readiness: the database answers, and this process's dispatcher (when it runs one)
        is running and has beaten within the last 30 s. A 503 says why."""
        ready = await readiness(runtime)
        return JSONResponse(ready, status_code=200 if ready["status"] == "ready" else 503)

    return app
