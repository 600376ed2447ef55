"""Models and migrations agree; every revision goes down and up again; the database is durable."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import migrate
from app.config import Settings
from app.db import DurabilityError, check_durability, create_engine
from app.tables import Base
from app.wiring import Core
from tests.conftest import PG_URL

TABLES = {t.name for t in Base.metadata.sorted_tables}


def differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def revisions() -> list[str]:
    """Every revision id, oldest first."""
    script = ScriptDirectory.from_config(migrate.alembic_config(Settings(_env_file=None)))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


async def schema(settings: Settings) -> tuple[set[str], list[Any], str | None]:
    """The tables, the differences from the models, and the Alembic version."""
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            diff = await conn.run_sync(differences) if tables >= TABLES else []
            version = None
            if "alembic_version" in tables:
                version = (
                    await conn.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar()
            return tables, diff, version
    finally:
        await engine.dispose()


def walk_down_and_up(settings: Settings) -> None:
    """For every revision: upgrade to it, downgrade one step, upgrade again; the head matches."""
    revs = revisions()
    assert revs, "no migrations"
    for index, rev in enumerate(revs):
        previous = revs[index - 1] if index else "base"
        migrate.upgrade(settings, rev)
        assert asyncio.run(schema(settings))[2] == rev
        migrate.downgrade(settings, previous)
        tables, _, version = asyncio.run(schema(settings))
        if previous == "base":
            assert tables <= {"alembic_version"}, tables
            assert version is None
        else:
            assert version == previous
        migrate.upgrade(settings, rev)
    tables, diff, version = asyncio.run(schema(settings))
    assert version == revs[-1]
    assert tables >= TABLES
    assert diff == []


@pytest.mark.anyio
async def test_models_and_migrations_agree(runtime: Core) -> None:
    async with runtime.engine.connect() as conn:
        diff = await conn.run_sync(differences)
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert diff == []
    assert version == revisions()[-1]


def test_the_comparison_sees_a_difference(tmp_path: Path) -> None:
    """compare_metadata is not vacuous: a missing table is reported."""
    settings = Settings(data_dir=tmp_path, _env_file=None)
    migrate.upgrade(settings)

    async def drop_and_compare() -> list[Any]:
        engine = create_engine(settings)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DROP TABLE branding"))
            async with engine.connect() as conn:
                return await conn.run_sync(differences)
        finally:
            await engine.dispose()

    diff = asyncio.run(drop_and_compare())
    assert [d[0] for d in diff] == ["add_table"]


def test_downgrade_and_upgrade_every_revision_on_sqlite(tmp_path: Path) -> None:
    walk_down_and_up(Settings(data_dir=tmp_path, _env_file=None))


@pytest.fixture
def scratch_pg_database() -> Iterator[str]:
    """A database of its own on the test PostgreSQL server, dropped afterwards."""
    if PG_URL is None:
        pytest.skip("needs PostgreSQL: set POSTROOM_TEST_DATABASE_URL")
    name = f"postroom_migrations_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin_url = PG_URL.replace("postgresql+asyncpg", "postgresql")

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_downgrade_and_upgrade_every_revision_on_postgresql(
    scratch_pg_database: str, tmp_path: Path
) -> None:
    walk_down_and_up(Settings(data_dir=tmp_path, database_url=scratch_pg_database, _env_file=None))


@pytest.mark.anyio
async def test_sqlite_pragmas_on_every_pooled_connection(runtime: Core) -> None:
    if runtime.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    engine = runtime.engine
    seen: list[object] = []
    for _ in range(2):  # the pooled connection, then a new one after the pool is emptied
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            seen.append(raw)
            pragmas = []
            for name in ("journal_mode", "synchronous", "foreign_keys"):
                async with raw.execute(f"PRAGMA {name}") as cursor:
                    row = await cursor.fetchone()
                    assert row is not None
                    pragmas.append(row[0])
            assert pragmas == ["wal", 2, 1]
        await engine.dispose()
    assert seen[0] is not seen[1]


@pytest.mark.anyio
async def test_foreign_keys_are_enforced(runtime: Core) -> None:
    if runtime.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    async with runtime.engine.connect() as conn:
        with pytest.raises(Exception, match="FOREIGN KEY"):
            await conn.execute(text("UPDATE mail_routing SET profile_id = 999 WHERE id = 1"))
        await conn.rollback()


async def _refused(engine: AsyncEngine) -> None:
    try:
        with pytest.raises(DurabilityError):
            await check_durability(engine)
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_durability_check_refuses_a_non_wal_sqlite(tmp_path: Path) -> None:
    await _refused(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'rollback.db'}"))

    relaxed = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'relaxed.db'}")

    @event.listens_for(relaxed.sync_engine, "connect")
    def _wal_but_normal(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    await _refused(relaxed)


@pytest.mark.anyio
async def test_durability_check_accepts_the_service_engine(runtime: Core) -> None:
    await check_durability(runtime.engine)


@pytest.mark.anyio
async def test_durability_check_refuses_asynchronous_commit_on_postgresql() -> None:
    if PG_URL is None:
        pytest.skip("needs PostgreSQL: set POSTROOM_TEST_DATABASE_URL")
    engine = create_async_engine(
        PG_URL, connect_args={"server_settings": {"synchronous_commit": "off"}}
    )
    await _refused(engine)


@pytest.mark.anyio
@pytest.mark.parametrize("column", ["server", "template", "resource"])
async def test_the_optional_search_columns_are_indexed_only_where_set(
    runtime: Core, column: str
) -> None:
    """A message without a profile, template or resource is written to none of their indexes,
    and the records search's `column = value` still uses them (both databases)."""
    name = f"ix_messages_{column}"
    query = f"SELECT id FROM messages WHERE {column} = 'x'"
    async with runtime.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            definition = await conn.scalar(
                text("SELECT sql FROM sqlite_master WHERE name = :name"), {"name": name}
            )
            plan = " ".join(
                str(row[-1]) for row in await conn.execute(text(f"EXPLAIN QUERY PLAN {query}"))
            )
        else:
            definition = await conn.scalar(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"), {"name": name}
            )
            await conn.execute(text("SET LOCAL enable_seqscan = off"))  # an empty table
            plan = " ".join(str(row[0]) for row in await conn.execute(text(f"EXPLAIN {query}")))
        await conn.rollback()
    assert definition is not None
    bare = definition.replace("(", "").replace(")", "")  # PostgreSQL adds parentheses
    assert f"WHERE {column} IS NOT NULL" in bare, definition
    assert name in plan, plan
