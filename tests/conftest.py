"""Shared fixtures: a real migrated database (SQLite, or PostgreSQL when POSTROOM_TEST_DATABASE_URL
is set), the app with its lifespan, and HTTP clients for an admin and a sender."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app import migrate
from app.config import Settings
from app.deps import Runtime
from app.main import create_app
from app.tables import Base

pytest_plugins = ["tests.smtpd", "tests.imapd"]

_GIVEN_PG_URL = os.environ.get("POSTROOM_TEST_DATABASE_URL")
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
PG_URL = f"{_GIVEN_PG_URL}_{_XDIST_WORKER}" if _GIVEN_PG_URL and _XDIST_WORKER else _GIVEN_PG_URL
"""The PostgreSQL database of this run; under pytest-xdist each worker has its own next to the
given one (test_gw0, test_gw1, ...), created by pytest_configure."""
ADMIN = ("admin", "admin-password-123")
SENDER = ("sender", "sender-password-123")
SENDER_FROM = ["example.com"]
"""The test sender may send from any example.com address (tests/messages/test_sender_bounds.py
checks the bounds themselves, with users of its own)."""


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, bool]]:
    """uvloop, as `postroom serve` and `postroom worker` run: its transports differ from
    asyncio's in ways that matter (they cache the protocol's methods, for one)."""
    return ("asyncio", {"use_uvloop": True})


def basic(credentials: tuple[str, str]) -> dict[str, str]:
    token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def pytest_configure(config: pytest.Config) -> None:
    if _GIVEN_PG_URL is None or PG_URL is None or PG_URL == _GIVEN_PG_URL:
        return
    name = PG_URL.rsplit("/", 1)[1]
    if not _pg(_GIVEN_PG_URL, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
        _pg(_GIVEN_PG_URL, f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session")
def pg_migrated() -> Iterator[str | None]:
    """With PostgreSQL, the schema is dropped and migrated once per run."""
    if PG_URL is None:
        yield None
        return
    _reset_pg(PG_URL)
    migrate.upgrade(Settings(database_url=PG_URL, data_dir=Path("/tmp")))
    yield PG_URL


def _pg(url: str, statement: str) -> list[Any]:
    async def run() -> list[Any]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            if statement.lstrip().upper().startswith("SELECT"):
                return list(await conn.fetch(statement))
            await conn.execute(statement)
            return []
        finally:
            await conn.close()

    return asyncio.run(run())


def _reset_pg(url: str) -> None:
    _pg(url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;")


SINGLE_ROWS = {"mail_routing", "branding"}


def _truncate_pg(url: str) -> None:
    """Empty every table; the single-row tables go back to the state the migration left."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name not in SINGLE_ROWS)
    _pg(
        url,
        f"TRUNCATE {tables} RESTART IDENTITY CASCADE;"
        " INSERT INTO mail_routing VALUES (1, NULL, true)"
        " ON CONFLICT (id) DO UPDATE SET profile_id = NULL, builtin = true;"
        " INSERT INTO branding VALUES (1, NULL, NULL)"
        " ON CONFLICT (id) DO UPDATE SET sender_email = NULL, sender_name = NULL;",
    )


@pytest.fixture(scope="session")
def sqlite_migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per run, copied for each test: migrating a new file costs
    about 0.1 s of CPU, which over a thousand tests was a tenth of the suite."""
    data_dir = tmp_path_factory.mktemp("migrated")
    migrate.upgrade(Settings(data_dir=data_dir, _env_file=None))
    return data_dir / "postroom.db"


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest, pg_migrated: str | None) -> Settings:
    """Settings for one test: its own data dir; its own copy of a migrated SQLite file, or a
    truncated PostgreSQL."""
    data_dir = tmp_path / "data"
    if pg_migrated is not None:
        _truncate_pg(pg_migrated)
    else:
        data_dir.mkdir()
        shutil.copyfile(request.getfixturevalue("sqlite_migrated"), data_dir / "postroom.db")
    return Settings(
        data_dir=data_dir,
        database_url=pg_migrated,
        admin_user=ADMIN[0],
        admin_password=ADMIN[1],
        dispatcher=False,
        migrate_on_start=False,
        secret_keys="",
        egress_deny="169.254.0.0/16,fe80::/10",
        _env_file=None,
    )


@pytest.fixture
async def app_runtime(settings: Settings) -> AsyncIterator[tuple[Any, Runtime]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app, app.state.runtime


@pytest.fixture
def runtime(app_runtime: tuple[Any, Runtime]) -> Runtime:
    return app_runtime[1]


@pytest.fixture
async def anon(app_runtime: tuple[Any, Runtime]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_runtime[0], client=("203.0.113.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://postroom.test") as client:
        yield client


@pytest.fixture
async def admin(app_runtime: tuple[Any, Runtime]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_runtime[0], client=("203.0.113.8", 5555))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
    ) as client:
        yield client


@pytest.fixture
async def sender(
    admin: httpx.AsyncClient, app_runtime: tuple[Any, Runtime]
) -> AsyncIterator[httpx.AsyncClient]:
    response = await admin.post(
        "/api/v1/users",
        json={
            "name": SENDER[0],
            "role": "sender",
            "password": SENDER[1],
            "allowedFrom": SENDER_FROM,
        },
    )
    assert response.status_code == 201, response.text
    transport = httpx.ASGITransport(app=app_runtime[0], client=("203.0.113.9", 5555))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://postroom.test", headers=basic(SENDER)
    ) as client:
        yield client


def sqlite_file(settings: Settings) -> Path:
    return settings.data_dir / "postroom.db"


def raw_dump(settings: Settings) -> bytes:
    """Every byte the database holds: the SQLite file and its WAL, or every PostgreSQL row."""
    if settings.is_sqlite:
        files = [sqlite_file(settings), sqlite_file(settings).with_suffix(".db-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    rows: list[Any] = []
    for table in Base.metadata.sorted_tables:
        rows += _pg(settings.url, f"SELECT row_to_json(t)::text FROM {table.name} t")
    return "\n".join(row[0] for row in rows).encode()


async def allow_sender(admin: httpx.AsyncClient, *servers: str) -> None:
    """Let the test sender, when there is one, send through these profiles too: a sender may
    use only the default profile unless allowedServers names others."""
    current = await admin.get(f"/api/v1/users/{SENDER[0]}")
    if current.status_code == 404:
        return
    allowed = [*(current.json()["allowedServers"] or []), *servers]
    response = await admin.patch(f"/api/v1/users/{SENDER[0]}", json={"allowedServers": allowed})
    assert response.status_code == 200, response.text
