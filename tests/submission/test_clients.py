"""Other real clients and a real process: swaks (Debian's package, see .ci/deps) against the
listener, and a `postroom serve --submission-port` process taking mail from smtplib and
delivering it with its own dispatcher."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from tests.conftest import ADMIN, SENDER
from tests.delivery.conftest import add_smtp_profile, record
from tests.events.bounces.test_listener import free_port
from tests.smtpd import StartServer
from tests.submission.conftest import Certificate, connected, mail, transact
from tests.test_readme import in_ci

SWAKS = shutil.which("swaks")
POSTROOM = str(Path(sys.executable).parent / "postroom")


def swaks_can_starttls() -> bool:
    if SWAKS is None:
        return False
    support = subprocess.run([SWAKS, "--support"], capture_output=True, text=True, check=False)
    return "=== TLS supported" in support.stdout + support.stderr


@pytest.mark.anyio
@pytest.mark.skipif(
    not swaks_can_starttls(), reason="needs swaks and Perl's IO::Socket::SSL (.ci/deps)"
)
async def test_swaks_sends_through_starttls_and_auth_login(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    settings: Settings,
    certificate: Certificate,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    if not swaks_can_starttls():  # CI=true: .ci/deps installs them, so a skip would hide it
        (pytest.fail if in_ci() else pytest.skip)("needs swaks and libio-socket-ssl-perl")
    assert SWAKS is not None
    relay = smtp_server_factory()
    await add_smtp_profile(admin, relay)
    command = [
        SWAKS,
        "--server", f"127.0.0.1:{settings.submission_port}",
        "--ehlo", "app.example.com",
        "--tls", "--tls-verify", "--tls-ca-path", str(certificate.ca),
        "--auth", "LOGIN", "--auth-user", SENDER[0], "--auth-password", SENDER[1],
        "--from", "app@example.com",
        "--to", "ann@example.org,audit@example.org",
        "--header", "To: ann@example.org",
        "--header", "Subject: sent with swaks",
        "--body", "Hello from swaks.",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [queued] = [line for line in done.stdout.splitlines() if "Ok: queued as" in line]
    message_id = queued.split("queued as ")[1].split()[0]

    await dispatcher.drain()
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert {(r["email"], r["kind"]) for r in saved["recipients"]} == {
        ("ann@example.org", "to"),
        ("audit@example.org", "bcc"),
    }
    [sent] = relay.transactions
    assert sorted(sent.rcpt_tos) == ["ann@example.org", "audit@example.org"]
    assert sent.message["Subject"] == "sent with swaks"
    assert "Hello from swaks." in sent.data.decode()


@pytest.fixture
def serve(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`postroom serve --submission-port` on the test's database, dispatcher on (the built-in
    server writes each message to data/outbox); yields its API's URL."""
    assert settings.submission_tls_cert is not None
    assert settings.submission_tls_key is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env |= {
        "POSTROOM_DATA_DIR": str(settings.data_dir),
        "POSTROOM_ADMIN_PASSWORD": ADMIN[1],
        "POSTROOM_SUBMISSION_TLS_CERT": str(settings.submission_tls_cert),
        "POSTROOM_SUBMISSION_TLS_KEY": str(settings.submission_tls_key),
        "POSTROOM_POLL_INTERVAL": "0.2",
    }
    if settings.database_url:
        env |= {"POSTROOM_DATABASE_URL": settings.database_url, "POSTROOM_MIGRATE_ON_START": "0"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [POSTROOM, "serve", "--port", str(port), "--submission-port",
             str(settings.submission_port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.processes
def test_a_postroom_serve_process_takes_mail_on_its_submission_port(
    serve: str, settings: Settings, certificate: Certificate
) -> None:
    with connected(settings, certificate, credentials=ADMIN, mechanism="LOGIN") as smtp:
        assert smtp.has_extn("size")
        code, reply = transact(smtp, mail(sender="admin@example.com"), ["ann@example.org"],
                               "admin@example.com")  # fmt: skip
    assert code == 250, reply
    message_id = reply.split()[4]

    deadline = time.monotonic() + 30
    while True:
        saved = httpx.get(f"{serve}/api/v1/messages/{message_id}", auth=ADMIN, timeout=5).json()
        if saved["status"] == "sent":
            break
        assert time.monotonic() < deadline, saved
        time.sleep(0.2)
    [eml] = list((settings.data_dir / "outbox").glob("*.eml"))
    assert b"Subject: Invoice 42" in eml.read_bytes()

    with (
        pytest.raises(smtplib.SMTPAuthenticationError) as refused,
        connected(settings, certificate, credentials=(ADMIN[0], "wrong")),
    ):
        pass
    assert refused.value.smtp_code == 535
