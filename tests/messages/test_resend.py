"""POST /messages/{id}/resend: a failed or bounced message sent again as a new, linked message,
through the intake's checks, to a real SMTP server."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import func, select, update

from app.db import transaction, utcnow
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message, Recipient
from app.delivery.vocabulary import DeliveryEvent
from app.events.service import record_events
from app.wiring import Core
from tests.conftest import SENDER
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.smtpd import StartServer
from tests.themes.conftest import RESET, create

pytestmark = pytest.mark.anyio

REFUSED = {"bad@example.com": "550 5.1.1 no such user"}


def plain(mail: EmailMessage) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def resend(client: httpx.AsyncClient, message_id: str) -> httpx.Response:
    return await client.post(f"/api/v1/messages/{message_id}/resend")


async def bounce(runtime: Core, message_id: str, email: str, kind: str = "soft") -> None:
    async with transaction(runtime.sessions) as session:
        recipient_pk = await session.scalar(
            select(Recipient.id).where(Recipient.message_pk == message_id, Recipient.email == email)
        )
        event = DeliveryEvent(
            message_id,
            "bounced",
            recipient_pk=recipient_pk,
            email=email,
            source="dsn",
            bounce_type=kind,  # type: ignore[arg-type]
            reason="mailbox full",
        )
        await record_events(session, [event])


async def messages(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


async def test_a_failed_recipient_gets_the_same_mail_again_as_a_linked_message(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies=dict(REFUSED))
    await add_smtp_profile(admin, server)
    attachment = {"filename": "a.txt", "contentType": "text/plain", "content": "aGVsbG8="}
    old = await send(
        sender,
        to=["ann@example.com"],
        cc=["bad@example.com"],
        subject="Invoice",
        text="Pay me",
        html="<p>Pay me</p>",
        attachments=[attachment],
        headers={"X-Campaign": "q4"},
        resource="invoice/7",
    )
    await dispatcher.drain()
    assert (await record(sender, old))["status"] == "partially_sent"
    first = server.transactions[0].message

    server.rcpt_replies.clear()
    response = await resend(sender, old)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["resentFrom"] == old
    assert answer["recipients"] == ["bad@example.com"]
    assert answer["status"] == "queued"
    new = answer["id"]
    assert (await record(sender, old))["resentAs"] == new
    saved = await record(sender, new)
    assert (saved["resentFrom"], saved["createdBy"], saved["resource"]) == (
        old,
        SENDER[0],
        "invoice/7",
    )
    assert saved["subject"] == "Invoice"
    assert [r["email"] for r in saved["recipients"]] == ["bad@example.com"]
    assert [r["kind"] for r in saved["recipients"]] == ["cc"]

    await dispatcher.drain()
    assert (await record(sender, new))["status"] == "sent"
    again = server.transactions[-1]
    assert again.rcpt_tos == ["bad@example.com"]
    mail = again.message
    assert mail["Cc"] == "bad@example.com"
    assert mail["To"] is None
    assert mail["Message-ID"] == saved["messageId"] != first["Message-ID"]
    for header in ("Subject", "X-Campaign", "From"):
        assert mail[header] == first[header]
    assert plain(mail) == plain(first)
    [part] = list(mail.iter_attachments())
    assert part.get_content() == "hello"

    twice = await resend(sender, old)
    assert twice.status_code == 409
    assert f"resent already, as {new}" in twice.json()["error"]["message"]


async def test_a_bounced_recipient_of_a_sent_message_is_sent_to_again(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    old = await send(sender, to=["ann@example.com", "bob@example.com"])
    await dispatcher.drain()
    refused = await resend(sender, old)
    assert refused.status_code == 409
    assert "no recipient failed or bounced" in refused.json()["error"]["message"]
    await bounce(runtime, old, "bob@example.com")
    response = await resend(sender, old)
    assert response.status_code == 202, response.text
    assert response.json()["recipients"] == ["bob@example.com"]
    await dispatcher.drain()
    assert server.transactions[-1].rcpt_tos == ["bob@example.com"]


async def test_a_hard_bounced_address_stays_suppressed(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    old = await send(sender, to=["bob@example.com"])
    await dispatcher.drain()
    await bounce(runtime, old, "bob@example.com", "hard")
    response = await resend(sender, old)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "suppressed"
    assert response.json()["suppressed"] == ["bob@example.com"]
    await dispatcher.drain()
    assert len(server.transactions) == 1
    assert (await record(sender, response.json()["id"]))["status"] == "suppressed"


async def test_per_recipient_content_is_carried_over(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies=dict(REFUSED))
    await add_smtp_profile(admin, server)
    await create(admin, "templates", RESET)
    body = {
        "template": "password_reset",
        "data": {"link": "https://acme.test/r"},
        "recipients": [
            {"email": "ann@example.com", "data": {"name": "Ann"}},
            {"email": "bad@example.com", "name": "Bad", "data": {"name": "Bea"}},
        ],
    }
    posted = await sender.post("/api/v1/messages", json=body)
    assert posted.status_code == 202, posted.text
    old = posted.json()["id"]
    await dispatcher.drain()
    server.rcpt_replies.clear()
    response = await resend(sender, old)
    assert response.status_code == 202, response.text
    saved = await record(sender, response.json()["id"])
    assert saved["template"] == "password_reset"
    assert saved["subject"] == "Reset your password, Ann"  # the old record's subject
    await dispatcher.drain()
    mail = server.transactions[-1].message
    assert mail["Subject"] == "Reset your password, Bea"
    assert mail["To"] == "Bad <bad@example.com>"
    assert "Hello Bea" in plain(mail)


async def test_resend_goes_through_the_senders_bounds(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies=dict(REFUSED))
    await add_smtp_profile(admin, server)
    old = await send(sender, to=["bad@example.com"])
    await dispatcher.drain()
    revoked = await admin.patch(f"/api/v1/users/{SENDER[0]}", json={"allowedServers": []})
    assert revoked.status_code == 200, revoked.text
    await asyncio.sleep(0.6)  # the credential's bounds are read again every half second
    response = await resend(sender, old)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["details"][0]["field"] == "server"
    assert (await record(sender, old))["resentAs"] is None


async def test_resend_refuses_what_cannot_be_resent(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies=dict(REFUSED))
    await add_smtp_profile(admin, server)
    queued = await send(sender, to=["bad@example.com"])
    refused = await resend(sender, queued)
    assert refused.status_code == 409
    assert "still being delivered" in refused.json()["error"]["message"]
    assert refused.json()["error"]["details"] == [{"field": "status", "message": "queued"}]
    await dispatcher.drain()
    assert (await record(sender, queued))["status"] == "failed"

    async with transaction(runtime.sessions) as session:
        await session.execute(
            update(Message).where(Message.id == queued).values(body_purged_at=utcnow())
        )
    before = await messages(runtime)
    gone = await resend(sender, queued)
    assert gone.status_code == 410, gone.text
    assert "its body was purged on" in gone.json()["error"]["message"]
    assert await messages(runtime) == before


async def test_a_cancelled_message_is_not_resent(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    await add_smtp_profile(admin, smtp_server_factory())
    message_id = await send(sender, to=["bob@example.com"])
    assert (await sender.post(f"/api/v1/messages/{message_id}/cancel")).status_code == 200
    response = await resend(sender, message_id)
    assert response.status_code == 409
    assert "was cancelled" in response.json()["error"]["message"]


async def test_two_resends_at_once_make_one_message(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(rcpt_replies=dict(REFUSED))
    await add_smtp_profile(admin, server)
    old = await send(sender, to=["bad@example.com"])
    await dispatcher.drain()
    before = await messages(runtime)
    answers = await asyncio.gather(*(resend(sender, old) for _ in range(4)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202, 409, 409, 409], [a.text for a in answers]
    assert await messages(runtime) == before + 1
    [made] = [a.json()["id"] for a in answers if a.status_code == 202]
    assert (await record(sender, old))["resentAs"] == made
