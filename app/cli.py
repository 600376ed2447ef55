"""The `postroom` command: serve, worker, migrate, users, send, verify, ingest, rotate-keys.

Each command imports what it needs when it runs: `postroom send` must start in well under 2 s, and
importing the whole app (FastAPI, every router, every transport) took most of that.

An error a user can cause (a bad setting or key, an unknown profile, a database that does not
answer) is one line on stderr and exit code 2 (a setting) or 1 (anything else), not a traceback:
app/cli_errors.py explains them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli_errors import check_secret_keys, fail, input_errors, user_errors
from app.cli_process import (
    configure_logging,
    freeze_start_up_objects,
    limit_malloc_arenas,
    run,
    run_loop,
    settings_of,
)

if TYPE_CHECKING:
    from app.delivery.probe import VerifyOutcome
    from app.identity import Actor
    from app.wiring import Core

cli = typer.Typer(
    help="Postroom: outgoing mail as a REST service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
users_cli = typer.Typer(help="Manage API users.", no_args_is_help=True)
cli.add_typer(users_cli, name="users")


@cli.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    dispatcher: Annotated[
        bool | None,
        typer.Option(help="Run the dispatcher in this process (default: POSTROOM_DISPATCHER)."),
    ] = None,
    bounce_port: Annotated[
        int | None,
        typer.Option(help="Take bounce reports over SMTP on this port (POSTROOM_BOUNCE_PORT)."),
    ] = None,
    submission_port: Annotated[
        int | None,
        typer.Option(
            help="Take mail to send over SMTP (STARTTLS, AUTH) on this port, 587 say"
            " (POSTROOM_SUBMISSION_PORT)."
        ),
    ] = None,
) -> None:
    """Run the API and, unless --no-dispatcher, the dispatcher."""
    import uvicorn

    from app.main import create_app
    from app.submission.listener import CertificateError, tls_context

    overrides: dict[str, Any] = {
        "dispatcher": dispatcher,
        "bounce_port": bounce_port,
        "submission_port": submission_port,
    }
    settings = settings_of(**{k: v for k, v in overrides.items() if v is not None})
    with user_errors(settings):
        check_secret_keys(settings)
    try:
        if settings.submission_port:
            tls_context(settings)  # said in one line here, not as the lifespan's traceback
    except CertificateError as err:
        fail(str(err), 2)
    configure_logging(settings)
    app = create_app(settings)
    freeze_start_up_objects()
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower())


@cli.command()
def worker(
    once: Annotated[
        bool, typer.Option(help="Deliver what is due now, purge what retention says, then exit.")
    ] = False,
) -> None:
    """Run the dispatcher, the webhook sender and the retention purge: several workers share a
    PostgreSQL outbox."""
    from app.delivery.dispatcher import Dispatcher
    from app.retention.purge import Purge
    from app.retention.running import running_purge
    from app.webhooks.sender import Sender
    from app.wiring import running_dispatcher, running_sender

    settings = settings_of()
    configure_logging(settings)

    async def work(core: Core) -> None:
        if once:
            dispatcher = Dispatcher(
                core.sessions, settings, core.transports, core.metrics, core.ledger
            )
            await dispatcher.drain()
            await core.transports.aclose()
            sender = Sender(core.sessions, settings, core.box, core.http, core.metrics)
            await sender.drain()
            await Purge(core.sessions, settings).step()
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with (  # supervised: they never die
            running_dispatcher(core, loop="worker"),
            running_sender(core),
            running_purge(core.sessions, settings, core.metrics),
        ):
            freeze_start_up_objects()
            await stop.wait()

    run(work, settings)


@cli.command()
def migrate(revision: str = "head") -> None:
    """Upgrade the database schema to REVISION (default: the latest)."""
    from app import migrate as migrations

    settings = settings_of()
    configure_logging(settings)
    with user_errors(settings):
        migrations.upgrade(settings, revision)


def _operator() -> Actor:
    """Who runs this command (the system's user name), as the audit log records its changes."""
    import getpass

    from app.identity import Actor

    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no USER variable and no passwd entry (a bare container)
        name = "unknown"
    return Actor(name, "cli")


@users_cli.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="admin or sender")] = "sender",
) -> None:
    """Add a user. Its password is read from stdin when piped, otherwise generated and printed."""
    from pydantic import ValidationError

    from app.db import transaction
    from app.users import service as users
    from app.users.schemas import UserCreate

    password = None if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n") or None
    try:
        body = UserCreate.model_validate({"name": name, "role": role, "password": password})
    except ValidationError as err:
        fail(f"invalid user: {input_errors(err)}", 2)

    async def work(core: Core) -> str | None:
        async with transaction(core.sessions) as session:
            _, generated = await users.create_user(
                session, body.name, body.role, body.password, actor=_operator()
            )
        return generated

    generated = run(work)
    typer.echo(f"created {role} {name}" + (f" with password {generated}" if generated else ""))


@users_cli.command("list")
def users_list() -> None:
    """List the users and their roles."""
    from app.db import transaction
    from app.users import service as users

    async def work(core: Core) -> list[tuple[str, str]]:
        async with transaction(core.sessions) as session:
            return [(u.name, u.role) for u in await users.list_users(session)]

    for name, role in run(work):
        typer.echo(f"{name}\t{role}")


@cli.command()
def send(
    to: Annotated[list[str], typer.Option(help="A recipient (repeat for more).")],
    subject: str = "",
    text: str = "",
    sender: Annotated[str | None, typer.Option("--from", help="The sender address.")] = None,
    server: Annotated[str | None, typer.Option(help="A profile name (default profile).")] = None,
) -> None:
    """Queue a message, as POST /api/v1/messages would; a running dispatcher delivers it.

    It needs the database only, not the service's core (keys, HTTP client, transports): it
    opens just that, so it starts quickly."""
    from pydantic import ValidationError

    from app.messages.schemas import MessageIn
    from app.schemas import local_domains

    settings = settings_of()
    try:
        with local_domains(settings.allow_local_domains):
            body = MessageIn.model_validate(
                {"to": to, "subject": subject, "text": text, "from": sender, "server": server}
            )
    except ValidationError as err:
        fail(f"invalid message: {input_errors(err)}", 2)

    async def work() -> str:
        from app import migrate as migrations
        from app.db import create_engine, sessionmaker, transaction
        from app.identity import Principal
        from app.messages import service as messages
        from app.messages.service import Caller

        if settings.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings)
        try:
            if settings.migrate_on_start and not await migrations.is_current(engine):
                await asyncio.to_thread(migrations.upgrade, settings)
            async with transaction(sessionmaker(engine)) as session:
                caller = Caller(Principal("cli", "admin"), None)
                taken = await messages.enqueue(session, settings, caller, body)
        finally:
            await engine.dispose()
        return taken.answer.id

    with user_errors(settings):
        typer.echo(run_loop(work()))


@cli.command()
def verify(name: str) -> None:
    """Check a profile step by step (connect, TLS, AUTH, ...) without sending."""
    from app.db import transaction
    from app.delivery import probe

    async def work(core: Core) -> VerifyOutcome:
        async with transaction(core.sessions) as session:
            found = await probe.candidate(session, core.profiles, name, {})
        return await probe.verify(found, core.transport_context, core.resolver)

    outcome = run(work)
    for step in outcome.steps:
        mark = "ok  " if step.ok else "FAIL"
        typer.echo(f"{mark} {step.name:<10} {step.duration_ms:8.1f} ms  {step.detail}")
    for check in outcome.dkim:
        mark = "ok  " if check.status == "match" else "FAIL"
        typer.echo(f"{mark} dkim {check.slot:<6} {check.detail}")
    for item in outcome.unchecked:
        typer.echo(f"not checked: {item}")
    if outcome.hint:
        typer.echo(f"hint: {outcome.hint}")
    raise typer.Exit(0 if outcome.ok else 1)


EX_DATAERR = 65
EX_TEMPFAIL = 75
"""sysexits.h: what an MTA's pipe transport understands. 75 makes Postfix or Exim keep the report
and try again later; 65 returns it (it is not a report, and never will be)."""


@cli.command()
def ingest(
    recipient: Annotated[
        list[str] | None,
        typer.Option(help="The address the report was sent to (Postfix: ${original_recipient})."),
    ] = None,
) -> None:
    """Record a bounce report (RFC 3464 DSN or RFC 5965 ARF) read from stdin, as an MTA pipes it.

    Prints one line. Exit 0 only once its events are committed; 65 when stdin is not a report
    (or is over 1 MiB); 75 (EX_TEMPFAIL: the MTA retries) for anything else, a database that
    does not answer included."""
    from app.events.bounces.dsn import MAX_REPORT_BYTES, NotAReport, parse
    from app.events.bounces.service import Ingested
    from app.wiring import bounces

    raw = sys.stdin.buffer.read(MAX_REPORT_BYTES + 1)
    try:
        report = parse(raw)
    except NotAReport as err:
        fail(str(err), EX_DATAERR)

    async def work(core: Core) -> Ingested:
        return await bounces(core).record(report, recipient or ())

    try:
        done = run(work)
    except typer.Exit as err:  # the one line is said: only the code changes
        raise typer.Exit(EX_TEMPFAIL) from err
    except Exception as err:
        logging.getLogger("postroom.ingest").exception("the report was not recorded")
        fail(f"the report was not recorded ({type(err).__name__}); try again later", EX_TEMPFAIL)
    typer.echo(done.summary())


@cli.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored secret (DKIM private keys included) with the first key of
    POSTROOM_SECRET_KEYS."""
    from sqlalchemy import or_, select

    from app.db import transaction
    from app.servers.models import ServerProfile

    async def work(core: Core) -> int:
        async with transaction(core.sessions) as session:
            profiles = list(
                await session.scalars(
                    select(ServerProfile).where(
                        or_(
                            ServerProfile.secrets.is_not(None), ServerProfile.dkim_keys.is_not(None)
                        )
                    )
                )
            )
            for profile in profiles:
                if profile.secrets is not None:
                    profile.secrets = core.box.rotate(profile.secrets)
                if profile.dkim_keys is not None:
                    profile.dkim_keys = core.box.rotate(profile.dkim_keys)
        return len(profiles)

    typer.echo(f"re-encrypted the secrets of {run(work)} profiles")


def main() -> None:
    limit_malloc_arenas()
    cli()
