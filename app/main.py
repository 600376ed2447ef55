"""The application: create_app() wires settings, database, auth, routers and error handling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.router import router as audit_router
from app.branding.router import router as branding_router
from app.config import Settings
from app.console.router import install as install_console
from app.delivery import liveness
from app.delivery.dispatcher import Dispatcher
from app.delivery.router import router as probe_router
from app.delivery.supervised import Readiness, Supervised
from app.deps import SETTINGS, Part, SessionsDep
from app.dkim.router import router as dkim_router
from app.errors import ERROR_RESPONSES
from app.events.bounces.router import router as bounces_router
from app.events.bounces.running import running_bounce_loops
from app.events.hooks.router import router as hooks_router
from app.events.unsubscribe import unsubscribe_router
from app.handlers import install_error_handlers
from app.limits import BodyLimit
from app.messages.router import router as messages_router
from app.metrics import Metrics
from app.openapi import install as install_openapi
from app.retention.running import running_purge
from app.schemas import LocalDomains
from app.servers.router import router as servers_router
from app.servers.schemas import PROFILE_TYPES
from app.submission.listener import SubmissionListener, running_submission
from app.suppressions.router import router as suppressions_router
from app.themes.router import router as themes_router
from app.users.router import router as users_router
from app.webhooks.router import events as webhook_events
from app.webhooks.router import router as webhooks_router
from app.webhooks.sender import Sender
from app.wiring import (
    bootstrap_admin,
    bounces,
    install,
    open_core,
    running_dispatcher,
    running_sender,
    sending,
)

log = logging.getLogger("postroom")


class Reporting(Protocol):
    """A running loop: it tells /readyz whether it does its work (app/delivery/supervised.py)."""

    async def readiness(self, session: AsyncSession) -> Readiness: ...


@dataclass(slots=True)
class Loops:
    """The loops this process runs, for /readyz (None: this process does not run it)."""

    dispatcher: Dispatcher | None = None
    sender: Sender | None = None
    purge: Supervised | None = None
    submission: SubmissionListener | None = None
    bounces: list[Supervised] = field(default_factory=list)
    closing: bool = False
    """Set first thing at shutdown: /readyz fails from then on."""

    def running(self) -> dict[str, Reporting]:
        """Each loop by the name /readyz shows it under."""
        named: dict[str, Reporting | None] = {
            "dispatcher": self.dispatcher,
            "webhooks": self.sender,
            "purge": self.purge,
            "submission": self.submission,
        }
        loops = {name: loop for name, loop in named.items() if loop is not None}
        return loops | {loop.heartbeats.loop: loop for loop in self.bounces}

    def stopping(self) -> None:
        self.closing = True


LOOPS: Part[Loops] = Part("loops")
LoopsDep = Annotated[Loops, Depends(LOOPS.dependency())]
METRICS: Part[Metrics] = Part("metrics")
MetricsDep = Annotated[Metrics, Depends(METRICS.dependency())]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = SETTINGS.of(app)
    async with AsyncExitStack() as stack:
        core = await stack.enter_async_context(open_core(settings))
        stack.push_async_callback(core.auth.aclose)  # before the engine is disposed
        install(app, core)
        METRICS.set(app, core.metrics)
        loops = Loops()
        LOOPS.set(app, loops)
        if settings.dispatcher:
            loops.dispatcher = await stack.enter_async_context(running_dispatcher(core))
            loops.sender = await stack.enter_async_context(running_sender(core))
            loops.purge = await stack.enter_async_context(
                running_purge(core.sessions, settings, core.metrics)
            )
        loops.bounces = await stack.enter_async_context(
            running_bounce_loops(settings, bounces(core), core.box, core.http)
        )
        loops.submission = await stack.enter_async_context(
            running_submission(settings, core.sessions, core.auth, sending(core))
        )
        stack.callback(loops.stopping)  # first thing at shutdown: /readyz says they stop
        generated = await bootstrap_admin(core)
        if generated is not None:
            print(  # noqa: T201 - shown once, on purpose, on the console of the first start
                f"\nPostroom created the admin user.\n  user:     {settings.admin_user}\n"
                f"  password: {generated}\nIt is shown this once; keep it.\n",
                flush=True,
            )
        yield


async def readiness(sessions: async_sessionmaker[AsyncSession], loops: Loops) -> dict[str, Any]:
    """What /readyz answers: `ready`, or `unavailable` with the reasons; and what each loop
    shows of itself (the dispatcher's heartbeat, a loop's last error)."""
    if loops.closing:
        return {"status": "unavailable", "reasons": ["the service is shutting down"]}
    try:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))
            reports = {
                name: await loop.readiness(session) for name, loop in loops.running().items()
            }
    except (OSError, SQLAlchemyError) as err:
        return {"status": "unavailable", "reasons": [f"the database does not answer: {err}"]}
    reasons = [report.problem for report in reports.values() if report.problem]
    shown = {name: report.shown for name, report in reports.items() if report.shown}
    if reasons:
        return {"status": "unavailable", "reasons": reasons} | shown
    return {"status": "ready"} | shown


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Postroom",
        version="0.1.0",
        summary="Outgoing mail as a REST service.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    SETTINGS.set(app, settings)
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
    async def metrics(sessions: SessionsDep, metrics: MetricsDep) -> Response:
        """Prometheus' text format: this process's counters and histograms, and the queue,
        loops and profiles as read from the database (the same on every replica)."""
        try:
            async with sessions() as session:
                shared = await liveness.snapshot(session)
        except (OSError, SQLAlchemyError) as err:
            log.warning("/metrics: the database could not be read: %s", err)
            shared = None
        return Response(metrics.render(shared), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"], response_class=PlainTextResponse)
    async def healthz() -> PlainTextResponse:
        """Liveness: the process answers."""
        return PlainTextResponse("ok")

    @app.get("/readyz", tags=["health"])
    async def readyz(sessions: SessionsDep, loops: LoopsDep) -> JSONResponse:
        """Readiness: the database answers, this process's dispatcher (when it runs one) is
        running and has beaten within the last 30 s, and every other loop it runs (the webhook
        sender, the retention purge, the bounce and submission listeners) is running. A 503
        says why."""
        ready = await readiness(sessions, loops)
        return JSONResponse(ready, status_code=200 if ready["status"] == "ready" else 503)

    return app
