"""The application: create_app() wires settings, database, auth, routers and error handling."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app import migrate
from app.branding.router import router as branding_router
from app.config import Settings
from app.crypto import load_secret_box
from app.db import check_durability, create_engine, sessionmaker, transaction
from app.delivery.dispatcher import Dispatcher
from app.delivery.router import router as probe_router
from app.delivery.transports import TransportCache
from app.deps import Runtime, RuntimeDep
from app.egress import EgressPolicy, http_client, parse_networks
from app.errors import ERROR_RESPONSES, install_error_handlers
from app.limits import BodyLimit
from app.messages.intake import Intake
from app.messages.router import router as messages_router
from app.metrics import Metrics
from app.openapi import install as install_openapi
from app.security import Authenticator, RateLimit
from app.servers.router import router as servers_router
from app.themes.router import router as themes_router
from app.transports.base import TransportContext
from app.users import service as users
from app.users.router import router as users_router

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
            session, runtime.settings.admin_user, "admin", password
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
    intake = Intake(sessions, settings)
    try:
        await check_durability(engine)
        egress = egress_policy(settings)
        async with http_client(egress, settings.http_timeout) as http:
            box = load_secret_box(settings)
            context = TransportContext(http, egress, logging.getLogger("postroom.transport"))
            yield Runtime(
                settings=settings,
                engine=engine,
                sessions=sessions,
                box=box,
                egress=egress,
                auth=Authenticator(
                    sessions,
                    cache_seconds=settings.auth_cache_seconds,
                    failures_per_minute=settings.login_failures_per_minute,
                    lockout_failures=settings.account_lockout_failures,
                    lockout_seconds=settings.account_lockout_seconds,
                ),
                http=http,
                transport_context=context,
                transports=TransportCache(settings, box, context),
                metrics=Metrics(),
                test_sends=RateLimit(settings.test_sends_per_minute, "test sends"),
                sends=(
                    RateLimit(settings.send_rate_per_minute, "messages")
                    if settings.send_rate_per_minute
                    else None
                ),
                intake=intake,
            )
    finally:
        await intake.aclose()
        await engine.dispose()


@asynccontextmanager
async def running_dispatcher(runtime: Runtime) -> AsyncIterator[Dispatcher]:
    """Run the dispatcher in the background for the duration of the block, then stop it cleanly."""
    dispatcher = Dispatcher(runtime.sessions, runtime.settings, runtime.transports, runtime.metrics)
    stopping = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stopping))
    runtime.wake = dispatcher.notify
    try:
        yield dispatcher
    finally:
        stopping.set()
        await task
        await runtime.transports.aclose()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(open_runtime(settings))
        app.state.runtime = runtime
        if settings.dispatcher:
            await stack.enter_async_context(running_dispatcher(runtime))
        generated = await bootstrap_admin(runtime)
        if generated is not None:
            print(  # noqa: T201 - shown once, on purpose, on the console of the first start
                f"\nPostroom created the admin user.\n  user:     {settings.admin_user}\n"
                f"  password: {generated}\nIt is shown this once; keep it.\n",
                flush=True,
            )
        yield


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
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_message_bytes)
    app.include_router(messages_router)  # first: routes are matched in order, this is the hot one
    app.include_router(servers_router)
    app.include_router(branding_router)
    app.include_router(users_router)
    app.include_router(probe_router)
    app.include_router(themes_router)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics(runtime: RuntimeDep) -> PlainTextResponse:
        """Counters in Prometheus' text format."""
        return PlainTextResponse(runtime.metrics.render())

    @app.get("/healthz", tags=["health"], response_class=PlainTextResponse)
    async def healthz() -> PlainTextResponse:
        """Liveness: the process answers."""
        return PlainTextResponse("ok")

    @app.get("/readyz", tags=["health"])
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        """Readiness: the database answers."""
        try:
            async with runtime.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (OSError, SQLAlchemyError) as err:
            return JSONResponse({"status": "unavailable", "database": str(err)}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
