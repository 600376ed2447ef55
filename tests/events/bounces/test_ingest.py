"""A message sent through a real SMTP server with a VERP envelope sender, then its bounce piped to
`postroom ingest` (a real process, on the test's database) or posted to /api/v1/hooks/dsn."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from app.events.models import EventRow
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.events.bounces.conftest import sample
from tests.smtpd import StartServer
from tests.test_cli import POSTROOM, environment

pytestmark = pytest.mark.anyio

BOUNCE_DOMAIN = "bounces.example.com"


def ingest(
    settings: Settings, raw: bytes, *args: str, **env: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [POSTROOM, "ingest", *args],
        input=raw,
        env=environment(settings, **env),
        capture_output=True,
        timeout=120,
        check=False,
    )


def dsn_events(saved: dict[str, Any], email: str) -> list[dict[str, Any]]:
    [recipient] = [r for r in saved["recipients"] if r["email"] == email]
    return [e for e in recipient["events"] if e["source"] in ("dsn", "arf")]


async def stored_events(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(EventRow)) or 0)


async def sent_with_verp(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    **body: Any,
) -> tuple[str, str]:
    """A message through an SMTP profile with a bounce domain: its id and envelope sender."""
    server = smtp_server_factory()
    await add_smtp_profile(admin, server, settings={"bounceDomain": BOUNCE_DOMAIN})
    message_id = await send(sender, **body)
    await dispatcher.drain()
    [transaction] = server.transactions
    return message_id, transaction.mail_from


async def test_a_postfix_dsn_piped_to_ingest_bounces_the_right_recipient(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    settings: Settings,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    message_id, envelope = await sent_with_verp(
        admin, sender, dispatcher, smtp_server_factory, to=["ann@example.com"]
    )
    assert envelope.startswith("bounces+")
    assert envelope.endswith("@" + BOUNCE_DOMAIN)
    # The relay reports the address it finally tried (a forward), under another Message-ID:
    # only the VERP token says which message and recipient it is about.
    raw = sample("postfix.eml", verp=envelope, message_id="<other@example.com>")

    done = ingest(settings, raw)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.decode().splitlines()
    assert message_id in line
    assert "bounced" in line

    [bounced] = dsn_events(await record(sender, message_id), "ann@example.com")
    assert bounced["type"] == "bounced"
    assert bounced["bounceType"] == "hard"
    assert bounced["diagnosticCode"] == "5.1.1"
    assert "User unknown" in bounced["reason"]

    again = ingest(settings, raw)  # the MTA delivers it twice: stored once
    assert again.returncode == 0, again.stderr
    assert "already recorded" in again.stdout.decode()
    assert len(dsn_events(await record(sender, message_id), "ann@example.com")) == 1


async def test_a_group_envelope_is_matched_by_final_recipient(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    settings: Settings,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    message_id, envelope = await sent_with_verp(
        admin,
        sender,
        dispatcher,
        smtp_server_factory,
        recipients=["ann@example.com", "bob@example.com"],
    )
    raw = sample("postfix.eml", verp=envelope, recipient=("nobody@example.org", "bob@example.com"))
    done = ingest(settings, raw)
    assert done.returncode == 0, done.stderr
    saved = await record(sender, message_id)
    assert [e["type"] for e in dsn_events(saved, "bob@example.com")] == ["bounced"]
    assert dsn_events(saved, "ann@example.com") == []


async def test_without_verp_the_message_id_finds_the_message(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["nobody@gmail.com"])
    await dispatcher.drain()
    [transaction] = server.transactions
    assert transaction.mail_from == "noreply@example.com"  # no bounce domain: no VERP
    header = transaction.message["Message-ID"]

    response = await admin.post(
        "/api/v1/hooks/dsn",
        content=sample("gmail.eml", message_id=header),
        headers={"Content-Type": "message/rfc822"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["messageId"] == message_id
    [event] = response.json()["events"]
    assert event == {
        "email": "nobody@gmail.com",
        "type": "bounced",
        "bounceType": "hard",
        "diagnosticCode": "5.1.1",
    }
    [bounced] = dsn_events(await record(sender, message_id), "nobody@gmail.com")
    assert bounced["type"] == "bounced"


@pytest.mark.parametrize(
    ("name", "email", "type_"),
    [
        ("exchange-online.eml", "ann@contoso.com", "bounced"),
        ("exim-delayed.eml", "dave@slow.example.net", "deferred"),
        ("arf-abuse.eml", "carol@mail.example.net", "complained"),
    ],
)
async def test_each_relays_report_through_the_hook(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    name: str,
    email: str,
    type_: str,
) -> None:
    message_id, envelope = await sent_with_verp(
        admin, sender, dispatcher, smtp_server_factory, to=[email]
    )
    response = await admin.post(
        "/api/v1/hooks/dsn", content=sample(name, verp=envelope, message_id="<x@example.com>")
    )
    assert response.status_code == 200, response.text
    [event] = dsn_events(await record(sender, message_id), email)
    assert event["type"] == type_
    assert event["source"] == ("arf" if name.startswith("arf") else "dsn")


async def test_a_report_about_no_known_message_is_stored_as_unknown_and_counted(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    response = await admin.post("/api/v1/hooks/dsn", content=sample("postfix.eml"))
    assert response.status_code == 200, response.text
    assert response.json()["messageId"] is None
    assert [e["type"] for e in response.json()["events"]] == ["unknown"]
    async with runtime.sessions() as session:
        [row] = await session.scalars(select(EventRow))
    assert (row.message_pk, row.type, row.email, row.source) == (
        None,
        "unknown",
        "nobody@example.org",
        "dsn",
    )
    assert runtime.metrics.value("postroom_delivery_events_total", type="unknown", profile="") == 1


async def test_a_forged_token_matches_nothing(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    message_id, envelope = await sent_with_verp(
        admin, sender, dispatcher, smtp_server_factory, to=["nobody@example.org"]
    )
    local, _, domain = envelope.partition("@")
    forged = local[:-2] + ("aa" if not local.endswith("aa") else "bb") + "@" + domain
    response = await admin.post(
        "/api/v1/hooks/dsn", content=sample("postfix.eml", verp=forged, message_id="<x@y.z>")
    )
    assert response.status_code == 200, response.text
    assert response.json()["messageId"] is None
    assert dsn_events(await record(sender, message_id), "nobody@example.org") == []


async def test_bad_input_is_a_4xx_and_changes_nothing(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, runtime: Core
) -> None:
    before = await stored_events(runtime)
    plain = await admin.post("/api/v1/hooks/dsn", content=b"Subject: hi\r\n\r\nhello\r\n")
    assert plain.status_code == 422
    assert plain.json()["error"]["details"][0]["field"] == "body"
    assert "multipart/report" in plain.json()["error"]["message"]

    big = await admin.post("/api/v1/hooks/dsn", content=b"x" * (1024 * 1024 + 1))
    assert big.status_code == 413
    assert "1048576" in big.json()["error"]["message"]

    forbidden = await sender.post("/api/v1/hooks/dsn", content=sample("postfix.eml"))
    assert forbidden.status_code == 403
    assert await stored_events(runtime) == before


def test_ingest_refuses_what_is_not_a_report_with_65(settings: Settings) -> None:
    done = ingest(settings, b"Subject: vacation\r\n\r\nI am away\r\n")
    assert done.returncode == 65
    assert b"not a delivery report" in done.stderr


def test_ingest_exits_75_when_the_database_does_not_answer(settings: Settings) -> None:
    done = ingest(
        settings,
        sample("postfix.eml"),
        POSTROOM_DATABASE_URL="postgresql+asyncpg://postroom@127.0.0.1:9/nowhere",
        POSTROOM_MIGRATE_ON_START="false",
    )
    assert done.returncode == 75, done.stderr
    assert b"Traceback" not in done.stderr
    assert b"cannot use the database" in done.stderr


@pytest.mark.parametrize("domain", ["a..example.com", "bounces@example.com", "-x.example.com"])
async def test_a_bounce_domain_that_is_no_domain_is_a_422(
    admin: httpx.AsyncClient, domain: str
) -> None:
    response = await admin.post(
        "/api/v1/servers",
        json={"name": "relay", "type": "smtp", "settings": {"bounceDomain": domain}},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "settings.bounceDomain"


def killed_while_reading(settings: Settings, raw: bytes) -> int:
    """`postroom ingest` killed with half the report read; its exit status."""
    process = subprocess.Popen(
        [POSTROOM, "ingest"], stdin=subprocess.PIPE, env=environment(settings)
    )
    assert process.stdin is not None
    process.stdin.write(raw[: len(raw) // 2])
    process.stdin.flush()
    process.kill()
    status = process.wait(30)
    process.stdin.close()
    return status


async def test_ingest_killed_while_reading_stores_nothing_and_the_retry_does(
    settings: Settings, runtime: Core
) -> None:
    raw = sample("postfix.eml")
    # Killed, it never exits 0: the MTA's pipe keeps the report and tries again.
    assert killed_while_reading(settings, raw) != 0
    assert await stored_events(runtime) == 0
    again = ingest(settings, raw)
    assert again.returncode == 0, again.stderr
    assert await stored_events(runtime) == 1
