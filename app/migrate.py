"""Alembic, driven from code: `postroom migrate` and the embedded default's start-up.

A database already at the latest revision is recognised without importing alembic (the revision
files are read as text): that is every start but the first after an upgrade, and it keeps
`postroom send` quick.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import Settings

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "migrations" / "versions"
_REVISION = re.compile(r"^revision\b[^=]*=\s*['\"]([0-9A-Za-z_]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\b[^=]*=(.*)$", re.MULTILINE)
_QUOTED = re.compile(r"['\"]([0-9A-Za-z_]+)['\"]")


def alembic_config(settings: Settings) -> Config:
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", settings.url.replace("%", "%%"))
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    """Logging is Postroom's (POSTROOM_LOG_LEVEL, set up by the CLI): alembic.ini's fileConfig
    would put the root logger back to WARNING mid-start-up, hiding every debug transcript."""
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database to `revision`; blocking (call it from a thread in async code)."""
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    head = head_revision() if revision == "head" else None
    if head is not None and asyncio.run(current_revision(settings)) == head:
        return
    from alembic import command

    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(settings), revision)


def head_revision(versions: Path = VERSIONS) -> str | None:
    """The one revision no other revision builds on, read from the files; None unless exactly one
    (a branch, or files this reading does not understand: alembic then decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        text = path.read_text()
        revision = _REVISION.search(text)
        down = _DOWN_REVISION.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        parents.update(_QUOTED.findall(down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


async def current_revision(settings: Settings) -> str | None:
    """The database's revision; None when it has none yet. A database that cannot be reached
    raises, as it would for alembic."""
    from app.db import create_engine

    engine = create_engine(settings)
    try:
        return await revision_of(engine)
    finally:
        await engine.dispose()


async def revision_of(engine: AsyncEngine) -> str | None:
    """The revision of the database `engine` connects to; None when it has none yet."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    async with engine.connect() as conn:
        try:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        except DBAPIError:  # no alembic_version table: a new database
            return None
    return str(rows[0][0]) if len(rows) == 1 else None


async def is_current(engine: AsyncEngine) -> bool:
    """Whether the database is at the latest revision (False when that cannot be told)."""
    head = head_revision()
    return head is not None and await revision_of(engine) == head
