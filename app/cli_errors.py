"""What a user of the `postroom` command can get wrong, said in one line: an error they can cause
(a bad setting or key, an unknown profile, a database that does not answer) becomes a message on
stderr and exit code 2 (a setting) or 1 (anything else), not a traceback. A bug keeps its
traceback.

It imports what it checks for only when an error is being explained: `postroom send` must start
quickly (app/cli.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

from app.config import Settings


class Failure(Exception):
    """An error the user can fix: shown as one line, the process exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def explain(err: BaseException, settings: Settings | None = None) -> Failure | None:
    """The one line for an error a user can cause; None for a bug (it keeps its traceback)."""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    from app.crypto import SecretBoxError
    from app.errors import AppError

    if isinstance(err, Failure):
        return err
    if isinstance(err, AppError):
        return Failure(err.message)
    if isinstance(err, SecretBoxError):
        return Failure(
            f"{err}: put the key that encrypted them in the list (the first key encrypts, every"
            " key decrypts), then run `postroom rotate-keys`",
            2,
        )
    if isinstance(err, ValidationError) and err.title == "Settings":
        return Failure(f"invalid setting: {_settings_errors(err)}", 2)
    wiring = sys.modules.get("app.wiring")  # loaded whenever a StartupError can have been raised
    if wiring is not None and isinstance(err, wiring.StartupError):
        return Failure(str(err), 2)
    where = _database(settings)
    if isinstance(err, DBAPIError) and _missing_schema(err):
        return Failure(
            f"the database {where} has no Postroom schema, or an old one: run `postroom"
            " migrate` (or set POSTROOM_MIGRATE_ON_START=true)"
        )
    if isinstance(err, DBAPIError | OSError | TimeoutError):
        reason = str(err.orig if isinstance(err, DBAPIError) else err).strip().splitlines()
        return Failure(
            f"cannot use the database {where}: {reason[0] if reason else type(err).__name__}"
            " (check POSTROOM_DATABASE_URL and that the server is up)"
        )
    return None


def _settings_errors(err: Any) -> str:
    return "; ".join(
        f"POSTROOM_{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg']}"
        for e in err.errors()
    )


def _database(settings: Settings | None) -> str:
    if settings is None:
        return "(POSTROOM_DATABASE_URL)"
    from sqlalchemy.engine import make_url

    try:
        return make_url(settings.url).render_as_string(hide_password=True)
    except ValueError:
        return "(POSTROOM_DATABASE_URL)"


def _missing_schema(err: Any) -> bool:
    text = str(err.orig).lower()
    sqlstate = getattr(err.orig, "sqlstate", None)
    return "no such table" in text or "no such column" in text or sqlstate in ("42P01", "42703")


@contextmanager
def user_errors(settings: Settings | None = None) -> Iterator[None]:
    """Turn an error the user can cause into one line on stderr and an exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as err:
        failure = explain(err, settings)
        if failure is None:
            raise
        fail(failure.message, failure.exit_code)


def fail(message: str, exit_code: int) -> NoReturn:
    """Say what went wrong in one line on stderr and exit."""
    typer.echo(f"postroom: {message}", err=True)
    raise typer.Exit(exit_code)


def check_secret_keys(settings: Settings) -> None:
    """Each key of POSTROOM_SECRET_KEYS must be a Fernet key: said before anything runs."""
    from cryptography.fernet import Fernet

    keys = [k.strip() for k in settings.secret_keys.split(",") if k.strip()]
    for number, key in enumerate(keys, 1):
        try:
            Fernet(key.encode())
        except ValueError as err:
            raise Failure(
                f"POSTROOM_SECRET_KEYS: key {number} of {len(keys)} is not a Fernet key (32"
                " url-safe base64-encoded bytes; make one with `python -c 'from cryptography."
                "fernet import Fernet; print(Fernet.generate_key().decode())'`)",
                2,
            ) from err


def input_errors(err: Any) -> str:
    """Pydantic's errors on one line, each naming its field ("to.0.email: ...")."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    )
