"""How the submission listener runs: supervised (a port it cannot take shows in /readyz until
it can), never AUTH in clear unless told, a certificate that does not load refuses the start,
and stopping closes the connections left open."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.delivery.models import Heartbeat
from app.main import LOOPS, create_app
from app.submission.listener import SubmissionListener
from app.wiring import Core
from tests.events.bounces.test_listener import free_port
from tests.submission.conftest import Certificate, connected, logged_in, mail, transact

pytestmark = pytest.mark.anyio


@pytest.fixture
def taken(settings: Settings) -> socket.socket:
    """Something else listens on the submission port when Postroom starts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", settings.submission_port or 0))
    sock.listen()
    return sock


async def test_a_port_it_cannot_take_shows_in_readyz_until_it_can(
    taken: socket.socket,
    anon: httpx.AsyncClient,
    app_runtime: tuple[Any, Core],
    settings: Settings,
) -> None:
    app, runtime = app_runtime
    where = f"127.0.0.1:{settings.submission_port}"
    try:
        ready = await anon.get("/readyz")
        assert ready.status_code == 503
        [reason] = ready.json()["reasons"]
        assert reason.startswith(f"the submission listener is not listening on {where}")
        for _ in range(100):  # the loop's first retry says why
            if "address already in use" in reason.lower():
                break
            await asyncio.sleep(0.05)
            [reason] = (await anon.get("/readyz")).json()["reasons"]
        assert "address already in use" in reason.lower(), reason
    finally:
        taken.close()
    deadline = time.monotonic() + 20  # backing off: 1 s, 2 s, 4 s, ...
    while (ready := await anon.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        await asyncio.sleep(0.2)
    while True:  # its first heartbeat follows the step that opened the port
        async with runtime.sessions() as session:
            loops = set(await session.scalars(select(Heartbeat.loop)))
        if "submission-listener" in loops:
            break
        assert time.monotonic() < deadline, loops
        await asyncio.sleep(0.05)

    listener = LOOPS.of(app).submission
    assert isinstance(listener, SubmissionListener)
    assert listener.task is not None
    listener.task.cancel()  # as if the loop itself had died
    await asyncio.gather(listener.task, return_exceptions=True)
    ready = await anon.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["reasons"] == ["the submission listener is not running"]


def test_without_a_certificate_it_does_not_start_unless_told_to_take_passwords_in_clear() -> None:
    with pytest.raises(ValidationError, match="POSTROOM_SUBMISSION_INSECURE_AUTH=true"):
        Settings(submission_port=2587, _env_file=None)
    with pytest.raises(ValidationError, match="go together"):
        Settings(submission_port=2587, submission_tls_cert=Path("cert.pem"), _env_file=None)
    Settings(submission_port=2587, submission_insecure_auth=True, _env_file=None)


def another(settings: Settings, **changes: Any) -> Settings:
    """The settings of a second app on the same database, with a listener of its own."""
    return settings.model_copy(
        update={"submission_port": free_port(), "migrate_on_start": False, **changes}
    )


async def test_insecure_auth_offers_auth_in_clear_and_nothing_else_changes(
    sender: httpx.AsyncClient, settings: Settings
) -> None:
    clear = another(
        settings, submission_tls_cert=None, submission_tls_key=None, submission_insecure_auth=True
    )

    def submit() -> tuple[dict[str, str], tuple[int, str]]:
        with connected(clear, None) as smtp:
            features = dict(smtp.esmtp_features)
            return features, transact(smtp, mail(), ["ann@example.org"], "app@example.com")

    app = create_app(clear)
    async with app.router.lifespan_context(app):
        features, (code, reply) = await asyncio.to_thread(submit)
    assert "starttls" not in features
    assert features["auth"].split() == ["LOGIN", "PLAIN"]
    assert code == 250, reply


async def test_without_the_setting_no_auth_goes_in_clear_even_unchecked(
    sender: httpx.AsyncClient, settings: Settings
) -> None:
    """The listener holds the rule too, should settings come unvalidated (model_copy)."""
    clear = another(settings, submission_tls_cert=None, submission_tls_key=None)

    def try_auth() -> tuple[dict[str, str], tuple[int, bytes]]:
        with connected(clear, None, credentials=None) as smtp:
            features = dict(smtp.esmtp_features)
            return features, smtp.docmd("AUTH", "PLAIN AHNlbmRlcgBzZW5kZXItcGFzc3dvcmQtMTIz")

    app = create_app(clear)
    async with app.router.lifespan_context(app):
        features, answer = await asyncio.to_thread(try_auth)
    assert "auth" not in features
    assert answer[0] == 538


def test_serve_refuses_a_certificate_that_does_not_load(
    tmp_path: Path, certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "POSTROOM_DATA_DIR": str(tmp_path / "data"),
        "POSTROOM_SUBMISSION_TLS_CERT": str(certificate.ca),  # a certificate, not its key's
        "POSTROOM_SUBMISSION_TLS_KEY": str(certificate.key),
    }
    result = CliRunner().invoke(cli, ["serve", "--submission-port", "2587"], env=env)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"postroom: POSTROOM_SUBMISSION_TLS_CERT={certificate.ca} and _TLS_KEY=")
    assert "cannot be loaded" in line


async def test_stopping_closes_the_connections_left_open(
    sender: httpx.AsyncClient, settings: Settings, certificate: Certificate
) -> None:
    """An app's pooled connection, idle after its AUTH, does not hold the shutdown."""
    own = another(settings)
    app = create_app(own)
    async with app.router.lifespan_context(app):
        idle = await asyncio.to_thread(logged_in, own, certificate)
    try:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            await asyncio.to_thread(idle.noop)
    finally:
        idle.close()
