"""The `postroom` command: serve, worker, migrate, users, send, verify, rotate-keys."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
import uvloop
from pydantic import ValidationError
from sqlalchemy import select

from app import migrate as migrations
from app.config import Settings
from app.db import transaction
from app.delivery import probe
from app.delivery.dispatcher import Dispatcher
from app.deps import Runtime
from app.main import create_app, open_runtime, running_dispatcher
from app.messages import service as messages
from app.messages.schemas import MessageIn
from app.messages.service import Caller
from app.security import Principal
from app.servers.models import ServerProfile
from app.users import service as users
from app.users.schemas import UserCreate

cli = typer.Typer(help="Postroom: outgoing mail as a REST service.", no_args_is_help=True)
users_cli = typer.Typer(help="Manage API users.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")

T = TypeVar("T")


QUIET_AT_DEBUG = ("aiosqlite",)
"""Loggers kept at INFO when POSTROOM_LOG_LEVEL is DEBUG: aiosqlite logs every call it makes, 9 of
10 lines, burying the SMTP transcripts that DEBUG is asked for."""


def _logging(settings: Settings) -> None:
    """The root logger at POSTROOM_LOG_LEVEL; alembic no longer resets it (app/migrate.py)."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if logging.getLogger().level <= logging.DEBUG:
        for name in QUIET_AT_DEBUG:
            logging.getLogger(name).setLevel(logging.INFO)


def _freeze_start_up_objects() -> None:
    """Take what start-up built (modules, schemas, mappers, routes) out of the garbage
    collector's sight. A full collection walked all of it, ~140 ms with every request waiting:
    that was the API's p99. Collections now walk only what requests and deliveries allocate."""
    gc.collect()
    gc.freeze()


def _run(work: Callable[[Runtime], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_runtime(Settings()) as runtime:
            return await work(runtime)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


@cli.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    dispatcher: Annotated[
        bool | None,
        typer.Option(help="Run the dispatcher in this process (default: POSTROOM_DISPATCHER)."),
    ] = None,
) -> None:
    """Run the API and, unless --no-dispatcher, the dispatcher."""
    import uvicorn

    settings = Settings() if dispatcher is None else Settings(dispatcher=dispatcher)
    _logging(settings)
    app = create_app(settings)
    _freeze_start_up_objects()
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower())


@cli.command()
def worker(
    once: Annotated[bool, typer.Option(help="Deliver what is due now, then exit.")] = False,
) -> None:
    """Run the dispatcher alone: several workers share a PostgreSQL outbox."""
    settings = Settings()
    _logging(settings)

    async def work(runtime: Runtime) -> None:
        if once:
            dispatcher = Dispatcher(runtime.sessions, settings, runtime.transports, runtime.metrics)
            await dispatcher.drain()
            await runtime.transports.aclose()
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running_dispatcher(runtime):
            _freeze_start_up_objects()
            await stop.wait()

    _run(work)


@cli.command()
def migrate(revision: str = "head") -> None:
    """Upgrade the database schema to REVISION (default: the latest)."""
    settings = Settings()
    _logging(settings)
    migrations.upgrade(settings, revision)


@users_cli.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="admin or sender")] = "sender",
) -> None:
    """Add a user. Its password is read from stdin when piped, otherwise generated and printed."""
    password = None if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n") or None
    try:
        body = UserCreate.model_validate({"name": name, "role": role, "password": password})
    except ValidationError as err:
        raise typer.BadParameter(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        ) from err

    async def work(runtime: Runtime) -> str | None:
        async with transaction(runtime.sessions) as session:
            _, generated = await users.create_user(session, body.name, body.role, body.password)
        return generated

    generated = _run(work)
    typer.echo(f"created {role} {name}" + (f" with password {generated}" if generated else ""))


@users_cli.command("list")
def users_list() -> None:
    """List the users and their roles."""

    async def work(runtime: Runtime) -> list[tuple[str, str]]:
        async with transaction(runtime.sessions) as session:
            return [(u.name, u.role) for u in await users.list_users(session)]

    for name, role in _run(work):
        typer.echo(f"{name}\t{role}")


@cli.command()
def send(
    to: Annotated[list[str], typer.Option(help="A recipient (repeat for more).")],
    subject: str = "",
    text: str = "",
    sender: Annotated[str | None, typer.Option("--from", help="The sender address.")] = None,
    server: Annotated[str | None, typer.Option(help="A profile name (default profile).")] = None,
) -> None:
    """Queue a message, as POST /api/v1/messages would; a running dispatcher delivers it."""
    body = MessageIn.model_validate(
        {"to": to, "subject": subject, "text": text, "from": sender, "server": server}
    )

    async def work(runtime: Runtime) -> str:
        caller = Caller(Principal("cli", "admin"), None)
        async with transaction(runtime.sessions) as session:
            accepted, _ = await messages.enqueue(session, runtime.settings, caller, body)
        return accepted.id

    typer.echo(_run(work))


@cli.command()
def verify(name: str) -> None:
    """Check a profile step by step (connect, TLS, AUTH, ...) without sending."""

    async def work(runtime: Runtime) -> probe.VerifyOutcome:
        async with transaction(runtime.sessions) as session:
            found = await probe.candidate(session, runtime.profiles, name, {})
        return await probe.verify(found, runtime.transport_context)

    outcome = _run(work)
    for step in outcome.steps:
        mark = "ok  " if step.ok else "FAIL"
        typer.echo(f"{mark} {step.name:<10} {step.duration_ms:8.1f} ms  {step.detail}")
    for item in outcome.unchecked:
        typer.echo(f"not checked: {item}")
    if outcome.hint:
        typer.echo(f"hint: {outcome.hint}")
    raise typer.Exit(0 if outcome.ok else 1)


@cli.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored secret with the first key of POSTROOM_SECRET_KEYS."""

    async def work(runtime: Runtime) -> int:
        async with transaction(runtime.sessions) as session:
            profiles = list(
                await session.scalars(
                    select(ServerProfile).where(ServerProfile.secrets.is_not(None))
                )
            )
            for profile in profiles:
                assert profile.secrets is not None
                profile.secrets = runtime.box.rotate(profile.secrets)
        return len(profiles)

    typer.echo(f"re-encrypted the secrets of {_run(work)} profiles")


M_ARENA_MAX = -8
"""glibc's mallopt parameter for the number of malloc arenas (malloc.h)."""


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads malloc arenas of their own and seldom hands their memory back: filling
    a queue of 100,000 messages grew the process by ~100 MiB in them (aiosqlite runs every query
    on its own thread). Two arenas keep it at its start-up size. MALLOC_ARENA_MAX, when set, wins;
    elsewhere than glibc this does nothing."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_ARENA_MAX, arenas)


def main() -> None:
    _limit_malloc_arenas()
    cli()
