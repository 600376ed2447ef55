"""`postroom send`, `postroom worker --once` and `postroom verify`, on their own data dir."""

from __future__ import annotations

import asyncio
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.audit.service import SYSTEM
from app.cli import cli
from app.config import Settings
from app.db import transaction
from app.servers import service
from app.wiring import open_core
from tests.smtpd import StartServer


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cli-data"
    monkeypatch.setenv("POSTROOM_DATA_DIR", str(directory))
    monkeypatch.delenv("POSTROOM_DATABASE_URL", raising=False)
    monkeypatch.setenv("POSTROOM_ADMIN_PASSWORD", "cli-admin-password")
    return directory


def test_send_then_worker_once_delivers_through_the_builtin_server(data_dir: Path) -> None:
    runner = CliRunner()
    sent = runner.invoke(
        cli,
        [
            "send",
            "--to",
            "ann@example.com",
            "--from",
            "me@example.com",
            "--subject",
            "From the CLI",
            "--text",
            "hi",
        ],
    )
    assert sent.exit_code == 0, sent.output
    message_id = sent.stdout.strip()
    assert len(message_id) == 32
    assert not (data_dir / "outbox").exists()

    worked = runner.invoke(cli, ["worker", "--once"])
    assert worked.exit_code == 0, worked.output
    [eml] = (data_dir / "outbox").glob("*.eml")
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert mail["Subject"] == "From the CLI"
    assert mail["To"] == "ann@example.com"


def test_verify_prints_the_steps(data_dir: Path, smtp_server_factory: StartServer) -> None:
    server = smtp_server_factory()

    async def add_profile() -> None:
        async with open_core(Settings()) as runtime, transaction(runtime.sessions) as session:
            body = service.PROFILE_BODY.validate_python(
                {
                    "name": "relay",
                    "type": "smtp",
                    "settings": {"host": server.host, "port": server.port},
                }
            )
            await service.create_profile(session, runtime.profiles, body, SYSTEM)

    asyncio.run(add_profile())
    result = CliRunner().invoke(cli, ["verify", "relay"])
    assert result.exit_code == 0, result.output
    assert "ok   connect" in result.output
    assert "ok   ehlo" in result.output

    server.stop()
    failed = CliRunner().invoke(cli, ["verify", "relay"])
    assert failed.exit_code == 1
    assert "FAIL connect" in failed.output
    assert "hint:" in failed.output
