"""How a `postroom` command runs: its settings, logging, event loop and memory, and `run`, which
hands a command the process's `Core` (database, keys, HTTP client) as the service has it."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from app.cli_errors import check_secret_keys, user_errors
from app.config import Settings

if TYPE_CHECKING:
    from app.wiring import Core

T = TypeVar("T")


QUIET_AT_DEBUG = ("aiosqlite",)
"""Loggers kept at INFO when POSTROOM_LOG_LEVEL is DEBUG: aiosqlite logs every call it makes, 9 of
10 lines, burying the SMTP transcripts that DEBUG is asked for."""


def configure_logging(settings: Settings) -> None:
    """The root logger at POSTROOM_LOG_LEVEL; alembic no longer resets it (app/migrate.py)."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if logging.getLogger().level <= logging.DEBUG:
        for name in QUIET_AT_DEBUG:
            logging.getLogger(name).setLevel(logging.INFO)


def freeze_start_up_objects() -> None:
    """Take what start-up built (modules, schemas, mappers, routes) out of the garbage
    collector's sight. A full collection walked all of it, ~140 ms with every request waiting:
    that was the API's p99. Collections now walk only what requests and deliveries allocate."""
    gc.collect()
    gc.freeze()


def settings_of(**overrides: Any) -> Settings:
    """Settings from the environment; a bad value is one line naming its variable (exit 2)."""
    with user_errors():
        return Settings(**overrides)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run(work: Callable[[Core], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run `work` with the process's Core (database, keys, HTTP client), as the service has it."""
    settings = settings or settings_of()

    async def main() -> T:
        from app.schemas import local_domains
        from app.wiring import open_core

        with local_domains(settings.allow_local_domains):
            async with open_core(settings) as core:
                return await work(core)

    with user_errors(settings):
        check_secret_keys(settings)
        return run_loop(main())


M_ARENA_MAX = -8
"""glibc's mallopt parameter for the number of malloc arenas (malloc.h)."""


def limit_malloc_arenas(arenas: int = 2) -> None:
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
