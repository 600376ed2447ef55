"""GET /messages/{id}/raw and /rendered: the message recomposed as it went out, byte for byte the
same as what a real SMTP server received."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from app.config import Settings
from app.db import transaction, utcnow
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, send
from tests.smtpd import StartServer, Transaction
from tests.themes.conftest import BRAND, RESET, create

pytestmark = pytest.mark.anyio

PUBLIC = "https://mail.example.com"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.public_url = PUBLIC  # one-click unsubscribe links, which the raw must carry too
    return settings


def received(server_transactions: list[Transaction], rcpt: str) -> bytes:
    [data] = [t.data for t in server_transactions if rcpt in t.rcpt_tos]
    return data


async def test_the_raw_message_is_the_bytes_that_were_sent(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await create(admin, "themes", BRAND)
    await add_smtp_profile(admin, server, signature="-- Acme billing", theme="brand")
    message_id = await send(
        sender,
        to=["ann@example.com"],
        bcc=["hidden@example.com"],
        subject="Invoice é",
        text="Pay me",
        html="<p>Pay me</p>",
        attachments=[{"filename": "a.txt", "contentType": "text/plain", "content": "aGVsbG8="}],
    )
    await dispatcher.drain()
    response = await admin.get(f"/api/v1/messages/{message_id}/raw")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "message/rfc822"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert f'filename="{message_id}.eml"' in response.headers["content-disposition"]
    assert response.content == received(server.transactions, "ann@example.com")
    assert b"hidden@example.com" not in response.content
    assert b"Acme billing" in response.content

    rendered = await admin.get(f"/api/v1/messages/{message_id}/rendered")
    assert rendered.status_code == 200, rendered.text
    parts = rendered.json()
    assert parts["recipient"] == "ann@example.com"
    assert parts["subject"] == "Invoice é"
    assert "#336699" in parts["html"]
    assert "Pay me" in parts["html"]
    assert parts["text"].startswith("Pay me")
    assert "Acme billing" in parts["text"]
    assert parts["attachments"] == [{"filename": "a.txt", "contentType": "text/plain", "size": 5}]


async def test_each_group_member_s_own_message(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    await create(admin, "templates", RESET)
    body = {
        "template": "password_reset",
        "data": {"link": "https://acme.test/r"},
        "listUnsubscribe": True,
        "recipients": [
            {"email": "ann@example.com", "data": {"name": "Ann"}},
            {"email": "bob@example.com", "name": "Bob", "data": {"name": "Bob"}},
        ],
    }
    posted = await sender.post("/api/v1/messages", json=body)
    assert posted.status_code == 202, posted.text
    message_id = posted.json()["id"]
    await dispatcher.drain()
    for rcpt in ("ann@example.com", "BOB@example.com"):
        response = await admin.get(f"/api/v1/messages/{message_id}/raw", params={"recipient": rcpt})
        assert response.status_code == 200, response.text
        assert response.content == received(server.transactions, rcpt.lower())
        assert f"List-Unsubscribe: <{PUBLIC}/".encode() in response.content
    rendered = await admin.get(
        f"/api/v1/messages/{message_id}/rendered", params={"recipient": "bob@example.com"}
    )
    assert rendered.json()["subject"] == "Reset your password, Bob"
    missing = await admin.get(
        f"/api/v1/messages/{message_id}/raw", params={"recipient": "eve@example.com"}
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["details"][0]["field"] == "recipient"


async def test_a_scheduled_message_shows_how_it_will_go(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    await create(admin, "themes", BRAND)
    await add_smtp_profile(admin, smtp_server_factory(), theme="brand")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    message_id = await send(sender, to=["ann@example.com"], sendAt=later)
    assert (await sender.get(f"/api/v1/messages/{message_id}")).json()["status"] == "scheduled"
    rendered = await admin.get(f"/api/v1/messages/{message_id}/rendered")
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["text"] == "Hello\n\nAcme Inc. <unsubscribe>"


async def test_raw_and_rendered_are_for_admins_and_refuse_what_is_not_kept(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to=["ann@example.com"])
    for view in ("raw", "rendered"):
        assert (await sender.get(f"/api/v1/messages/{message_id}/{view}")).status_code == 403
        assert (await admin.get(f"/api/v1/messages/{'0' * 32}/{view}")).status_code == 404
    test = await admin.post("/api/v1/servers/relay/test", json={"to": "ann@example.com"})
    assert test.status_code == 200, test.text
    records = (await admin.get("/api/v1/messages", params={"server": "relay"})).json()["items"]
    [test_mail] = [m["id"] for m in records if m["id"] != message_id]
    refused = await admin.get(f"/api/v1/messages/{test_mail}/raw")
    assert refused.status_code == 409
    assert "test mail" in refused.json()["error"]["message"]

    async with transaction(runtime.sessions) as session:
        await session.execute(
            update(Message).where(Message.id == message_id).values(body_purged_at=utcnow())
        )
    for view in ("raw", "rendered"):
        gone = await admin.get(f"/api/v1/messages/{message_id}/{view}")
        assert gone.status_code == 410
        assert gone.json()["error"]["code"] == "gone"
        assert "was purged on" in gone.json()["error"]["message"]


def without_dkim(data: bytes) -> bytes:
    """The message without its leading DKIM-Signature field (and the field's folded lines)."""
    assert data.startswith(b"DKIM-Signature:"), data[:80]
    lines = data.split(b"\r\n")
    rest = 1
    while lines[rest][:1] in (b" ", b"\t"):
        rest += 1
    return b"\r\n".join(lines[rest:])


async def test_a_dkim_signed_message_is_the_bytes_that_were_signed(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    """The signature was made at send time (its time and key are not kept): the raw message is
    what was signed, without the DKIM-Signature field."""
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    key = await admin.post("/api/v1/servers/relay/dkim", json={"selector": "s1"})
    assert key.status_code == 201, key.text
    message_id = await send(sender, to=["ann@example.com"], html="<p>Signed</p>")
    await dispatcher.drain()
    response = await admin.get(f"/api/v1/messages/{message_id}/raw")
    assert response.status_code == 200, response.text
    assert not response.content.startswith(b"DKIM-Signature:")
    assert response.content == without_dkim(received(server.transactions, "ann@example.com"))
