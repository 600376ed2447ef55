"""POSTROOM_LOG_LEVEL holds after the schema is migrated at start-up.

Alembic's env.py used to run `fileConfig(alembic.ini)` on every upgrade, which put the root logger
back to WARNING with alembic's own handler: after `postroom serve` had migrated, an SMTP profile
with `debug: true` logged its transcript into the void. A real `postroom serve` process here
migrates a new data dir, then verifies a profile against a local aiosmtpd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.crash import free_port
from tests.smtpd import SmtpServer

pytestmark = pytest.mark.processes

POSTROOM = str(Path(sys.executable).parent / "postroom")
ADMIN = ("admin", "logging-admin-password")


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env |= {
        "POSTROOM_DATA_DIR": str(data_dir),
        "POSTROOM_ADMIN_PASSWORD": ADMIN[1],
        "POSTROOM_DISPATCHER": "false",
        "POSTROOM_EGRESS_ALLOW": "127.0.0.0/8",
    }
    return env | extra


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[str, Path]]]:
    """Start `postroom serve` (migrating on start); returns its URL and its log file."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> tuple[str, Path]:
        port = free_port()
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [POSTROOM, "serve", "--port", str(port), "--no-dispatcher"],
                env=environment(tmp_path / "data", **env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return url, log
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"postroom serve did not start: {log.read_text()}")

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_debug_transcript_is_logged_after_migrating_on_start(
    serve: Callable[..., tuple[str, Path]], smtp_server_factory: Callable[..., SmtpServer]
) -> None:
    smtp = smtp_server_factory()
    url, log = serve(POSTROOM_LOG_LEVEL="DEBUG", POSTROOM_MIGRATE_ON_START="true")
    profile: dict[str, Any] = {
        "name": "debugged",
        "type": "smtp",
        "settings": {"host": "127.0.0.1", "port": smtp.port, "debug": True},
    }
    with httpx.Client(base_url=url, auth=ADMIN, timeout=30) as client:
        created = client.post("/api/v1/servers", json=profile)
        assert created.status_code == 201, created.text
        verified = client.post("/api/v1/servers/debugged/verify", json={})
        assert verified.status_code == 200, verified.text
        assert verified.json()["ok"], verified.text

    deadline = time.monotonic() + 5
    output = log.read_text()
    while "C: QUIT" not in output and time.monotonic() < deadline:
        time.sleep(0.1)
        output = log.read_text()
    assert "Running upgrade" in output, output[-3000:]  # it did migrate, and said so
    assert "smtp debugged #1 C: EHLO" in output, output[-3000:]
    assert "smtp debugged #1 S: 250" in output, output[-3000:]
    assert "C: QUIT" in output, output[-3000:]


def test_migrate_command_reports_each_revision(tmp_path: Path) -> None:
    """`postroom migrate` configures logging itself, now that alembic no longer does."""
    completed = subprocess.run(
        [POSTROOM, "migrate"],
        env=environment(tmp_path / "data", POSTROOM_LOG_LEVEL="INFO"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Running upgrade  -> " in completed.stderr, completed.stderr
