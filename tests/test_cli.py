"""The `postroom` command: users add (piped or generated password), users list, migrate."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.errors import Unauthorized
from app.main import open_runtime
from app.security import Principal
from tests.conftest import basic

runner = CliRunner()


@pytest.fixture
def cli_env(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment the command reads: the test's data dir and database, no .env file."""
    monkeypatch.chdir(tmp_path)
    for name in ("POSTROOM_DATABASE_URL", "POSTROOM_SECRET_KEYS", "POSTROOM_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    env = {"POSTROOM_DATA_DIR": str(settings.data_dir), "POSTROOM_SECRET_KEYS": ""}
    if settings.database_url:
        env["POSTROOM_DATABASE_URL"] = settings.database_url
    return env


def login(settings: Settings, name: str, password: str) -> Principal:
    async def check() -> Principal:
        async with open_runtime(settings) as runtime:
            header = basic((name, password))["Authorization"]
            return await runtime.auth.authenticate(header, "cli-test")

    return asyncio.run(check())


def test_users_add_reads_a_piped_password(settings: Settings, cli_env: dict[str, str]) -> None:
    result = runner.invoke(
        cli,
        ["users", "add", "billing", "--role", "sender"],
        input="piped-password-1\n",
        env=cli_env,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "created sender billing"
    assert "piped-password-1" not in result.output
    assert login(settings, "billing", "piped-password-1") == Principal("billing", "sender")
    with pytest.raises(Unauthorized):
        login(settings, "billing", "another-password")


def test_users_add_generates_a_password_when_stdin_is_empty(
    settings: Settings, cli_env: dict[str, str]
) -> None:
    result = runner.invoke(cli, ["users", "add", "ops", "--role", "admin"], input="", env=cli_env)
    assert result.exit_code == 0, result.output
    match = re.fullmatch(r"created admin ops with password (\S+)\n", result.stdout)
    assert match, result.output
    assert login(settings, "ops", match.group(1)) == Principal("ops", "admin")

    listed = runner.invoke(cli, ["users", "list"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    assert "ops\tadmin" in listed.stdout.splitlines()


def test_users_add_refuses_an_unknown_role(cli_env: dict[str, str]) -> None:
    result = runner.invoke(cli, ["users", "add", "x", "--role", "root"], input="", env=cli_env)
    assert result.exit_code != 0
    assert "role" in result.output
    assert "'admin' or 'sender'" in result.output


def test_migrate_creates_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POSTROOM_DATABASE_URL", raising=False)
    data = tmp_path / "fresh"
    result = runner.invoke(cli, ["migrate"], env={"POSTROOM_DATA_DIR": str(data)})
    assert result.exit_code == 0, result.output
    with sqlite3.connect(data / "postroom.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"users", "server_profiles", "mail_routing", "branding", "messages"} <= tables
    assert version is not None
    # running it again is a no-op
    again = runner.invoke(cli, ["migrate"], env={"POSTROOM_DATA_DIR": str(data)})
    assert again.exit_code == 0, again.output
