"""Mail through a profile with a DKIM key arrives signed, and dkimpy's verifier, reading the key
from the (test) DNS, finds every signature good: plain mail, BCC groups, attachments, non-ASCII
headers, List-Unsubscribe, RSA and Ed25519, before and after a rotation, and test mails."""

from __future__ import annotations

import base64

import httpx
import pytest

from app.delivery.dispatcher import Dispatcher
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, make_due, record, send
from tests.dkim.conftest import add_key, publish, signed_headers, tags, verified
from tests.dnsd import DnsServer
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio

ALGORITHMS = ["rsa-sha256", "ed25519-sha256"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_plain_mail_is_signed_and_verifies(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    dns_server: DnsServer,
    algorithm: str,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    answer = await add_key(admin, algorithm=algorithm)
    publish(dns_server, answer)
    await send(sender, to=["ann@example.org"], cc=["bob@example.org"], replyTo=["help@example.com"])
    await dispatcher.drain()

    [transaction] = server.transactions
    assert transaction.data.startswith(b"DKIM-Signature: ")
    assert verified(transaction.data, dns_server)
    found = tags(transaction.data)
    assert (found["a"], found["c"], found["d"], found["s"]) == (
        algorithm,
        "relaxed/relaxed",
        "example.com",
        "s1",
    )
    assert "l" not in found, "never l=: anything appended to the body must break the signature"
    signed = signed_headers(transaction.data)
    for name in ("from", "to", "cc", "reply-to", "subject", "date", "message-id"):
        assert signed.count(name) == 2, f"{name} is signed and oversigned: {signed}"
    for name in ("mime-version", "content-type", "content-transfer-encoding"):
        assert name in signed
    tampered = transaction.data.replace(b"Hello", b"Hullo")
    assert tampered != transaction.data
    assert not verified(tampered, dns_server), "the verifier is not fooled"


async def test_bcc_groups_each_chunk_verifies_and_bcc_is_never_signed(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    dns_server: DnsServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server, maxRecipientsPerMessage=2)
    publish(dns_server, await add_key(admin))
    await send(sender, recipients=[f"user{i}@example.org" for i in range(5)])
    await send(sender, to=["ann@example.org"], bcc=["hidden@example.org"])
    await dispatcher.drain()

    assert len(server.transactions) == 4  # 2 + 2 + 1, and the visible one
    for transaction in server.transactions:
        assert verified(transaction.data, dns_server)
        assert "bcc" not in signed_headers(transaction.data)
    groups = [t for t in server.transactions if t.message["To"] == "undisclosed-recipients:;"]
    assert len(groups) == 3


async def test_attachments_html_and_non_ascii_headers_verify(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    dns_server: DnsServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server, senderName="Jörg Müller")
    publish(dns_server, await add_key(admin, algorithm="ed25519-sha256"))
    pdf = base64.b64encode(bytes(range(256)) * 200).decode()
    await send(
        sender,
        to=[{"email": "zoe@bücher.example", "name": "Zoë Ångström"}],
        subject="Grüße aus Köln \u2013 20 % Rabatt 🎉 " + "lang " * 30,
        text="Grüße,\n  trailing spaces   \n\n\n",
        html="<p>Grüße <b>🎉</b></p>",
        attachments=[
            {"filename": "Bericht März.pdf", "contentType": "application/pdf", "content": pdf},
            {"filename": "notes.txt", "contentType": "text/plain", "content": "aGk="},
        ],
        headers={"X-Campaign": "Frühling", "In-Reply-To": "<earlier@example.com>"},
    )
    await dispatcher.drain()

    [transaction] = server.transactions
    assert verified(transaction.data, dns_server)
    assert "in-reply-to" in signed_headers(transaction.data)
    assert transaction.message["Subject"].startswith("Grüße aus Köln")


async def test_list_unsubscribe_is_signed(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    dns_server: DnsServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server, listUnsubscribe=True)
    publish(dns_server, await add_key(admin))
    await send(sender, to=["ann@example.org"])
    await dispatcher.drain()

    [transaction] = server.transactions
    assert transaction.message["List-Unsubscribe"]
    assert verified(transaction.data, dns_server)
    signed = signed_headers(transaction.data)
    assert signed.count("list-unsubscribe") == 2
    assert signed.count("list-unsubscribe-post") == 2, "RFC 8058 4: both fields are signed"


async def test_rotation_switches_the_signing_key_and_old_mail_still_verifies(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    dns_server: DnsServer,
    runtime: Core,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    publish(dns_server, await add_key(admin, selector="s1"))
    await send(sender, to=["ann@example.org"], subject="before")
    await dispatcher.drain()

    staged = await add_key(admin, selector="s2", algorithm="ed25519-sha256")
    assert staged["active"]["selector"] == "s1", "a second key waits as the next one"
    assert staged["next"]["selector"] == "s2"
    await send(sender, to=["ann@example.org"], subject="staged")
    await dispatcher.drain()
    publish(dns_server, staged, "next")
    rotated = await admin.post("/api/v1/servers/relay/dkim/rotate")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["active"]["selector"] == "s2"
    assert rotated.json()["next"]["selector"] == "s1"
    await send(sender, to=["ann@example.org"], subject="after")
    await dispatcher.drain()

    before, staged_mail, after = server.transactions
    assert [tags(t.data)["s"] for t in server.transactions] == ["s1", "s1", "s2"]
    assert tags(after.data)["a"] == "ed25519-sha256"
    for transaction in (before, staged_mail, after):
        assert verified(transaction.data, dns_server), "both records stay published"


async def test_retries_and_removed_keys(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    dns_server: DnsServer,
    runtime: Core,
) -> None:
    """A retry is signed again (a new signature over the same bytes); once the keys are deleted,
    mail goes out unsigned."""
    server = smtp_server_factory(replies={"DATA_END": "451 4.3.0 try later"})
    await add_smtp_profile(admin, server)
    publish(dns_server, await add_key(admin))
    message_id = await send(sender, to=["ann@example.org"])
    await dispatcher.drain()
    server.replies.clear()
    await make_due(runtime)
    await dispatcher.drain()
    first, second = server.transactions
    assert verified(first.data, dns_server)
    assert verified(second.data, dns_server)
    assert (await record(sender, message_id))["status"] == "sent"

    assert (await admin.delete("/api/v1/servers/relay/dkim")).status_code == 204
    await send(sender, to=["ann@example.org"])
    await dispatcher.drain()
    assert b"DKIM-Signature" not in server.transactions[-1].data


async def test_the_test_mail_is_signed(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer, dns_server: DnsServer
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    publish(dns_server, await add_key(admin))
    response = await admin.post("/api/v1/servers/relay/test", json={"to": "me@example.org"})
    assert response.status_code == 200, response.text
    assert response.json()["ok"], response.text
    [transaction] = server.transactions
    assert verified(transaction.data, dns_server)
