"""One-click unsubscribe (RFC 8058) end to end: the headers a real SMTP server receives, the page
a GET shows (changing nothing), the POST that suppresses for the profile, and forged links."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.delivery.dispatcher import Dispatcher
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.smtpd import SmtpServer, StartServer, Transaction

pytestmark = pytest.mark.anyio

PUBLIC = "https://mail.example.test/postroom"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.public_url = PUBLIC
    return settings


def link(transaction: Transaction) -> str | None:
    message = transaction.message
    if message["List-Unsubscribe"] is None:
        return None
    header = str(message["List-Unsubscribe"])
    assert f"\r\nList-Unsubscribe: {header}\r\n".encode() in transaction.data, "one line"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert header.startswith(f"<{PUBLIC}/u/")
    assert header.endswith(">")
    return header[1:-1].removeprefix(PUBLIC)


async def suppressions(admin: httpx.AsyncClient) -> list[tuple[str, str | None, str, str]]:
    items = (await admin.get("/api/v1/suppressions")).json()["items"]
    return [(e["address"], e["profile"], e["reason"], e["source"]) for e in items]


async def profiles(admin: httpx.AsyncClient, server: SmtpServer) -> None:
    await add_smtp_profile(admin, server, listUnsubscribe=True)
    await add_smtp_profile(admin, server, name="plain")


async def test_a_group_gets_a_link_each_and_a_post_unsubscribes(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await profiles(admin, server)
    patched = await admin.patch("/api/v1/servers/relay", json={"description": "bulk"})
    assert patched.json()["listUnsubscribe"] is True, "a PATCH keeps what it does not name"
    first = await send(sender, recipients=["ann@example.com", "bob@example.com"], server="relay")
    await dispatcher.drain()
    assert sorted(t.rcpt_tos[0] for t in server.transactions) == [
        "ann@example.com", "bob@example.com"
    ], "a message each, though a group goes in one envelope without the links"  # fmt: skip
    links = {t.rcpt_tos[0]: link(t) for t in server.transactions}
    assert None not in links.values()
    assert len(set(links.values())) == 2
    ann = links["ann@example.com"]
    assert ann is not None

    page = await anon.get(ann)
    assert page.status_code == 200
    assert "ann@example.com" in page.text
    assert 'method="post"' in page.text
    assert await suppressions(admin) == [], "a GET (a mail scanner's prefetch) changes nothing"

    done = await anon.post(ann, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200, done.text
    assert await suppressions(admin) == [("ann@example.com", "relay", "unsubscribe", "unsubscribe")]
    again = await anon.post(ann, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    assert len(await suppressions(admin)) == 1
    saved = await record(sender, first)
    [ann_row] = [r for r in saved["recipients"] if r["email"] == "ann@example.com"]
    assert [e["type"] for e in ann_row["events"]] == ["queued", "sent", "unsubscribed"]

    before = len(server.transactions)
    through_relay = await send(sender, to="ann@example.com", server="relay")
    through_plain = await send(sender, to="ann@example.com", server="plain")
    await dispatcher.drain()
    assert (await record(sender, through_relay))["status"] == "suppressed"
    assert (await record(sender, through_plain))["status"] == "sent", "only for that profile"
    [sent] = server.transactions[before:]
    assert link(sent) is None, "the plain profile carries no link"


async def test_which_messages_carry_the_link(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await profiles(admin, server)
    cases: dict[str, dict[str, Any]] = {
        "one visible recipient": {"to": "a@example.com", "server": "relay"},
        "visible, several": {"to": ["b@example.com", "c@example.com"], "server": "relay"},
        "turned off": {"to": "d@example.com", "server": "relay", "listUnsubscribe": False},
        "turned on": {"to": "e@example.com", "server": "plain", "listUnsubscribe": True,
                      "headers": {"List-Unsubscribe": "<mailto:old@example.com>"}},
    }  # fmt: skip
    for body in cases.values():
        await send(sender, **body)
    await dispatcher.drain()
    carried = {tuple(t.rcpt_tos): link(t) is not None for t in server.transactions}
    assert carried == {
        ("a@example.com",): True,
        ("b@example.com", "c@example.com"): False,
        ("d@example.com",): False,
        ("e@example.com",): True,
    }
    [e] = [t for t in server.transactions if t.rcpt_tos == ["e@example.com"]]
    assert e.message.get_all("List-Unsubscribe") == [f"<{PUBLIC}{link(e)}>"], "replaced, once"


async def test_forged_links_are_refused(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await profiles(admin, server)
    await send(sender, to="ann@example.com", server="relay")
    await dispatcher.drain()
    genuine = link(server.transactions[0])
    assert genuine is not None
    data, _, mac = genuine.removeprefix("/u/").partition(".")
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    other = base64.urlsafe_b64encode(raw.replace(b"ann@", b"bob@")).decode().rstrip("=")
    for forged in [f"/u/{other}.{mac}", f"/u/{data}.{mac[:-2]}AA", "/u/nonsense", "/u/%00.%00"]:
        for method in ("GET", "POST"):
            response = await anon.request(method, forged, data={"List-Unsubscribe": "One-Click"})
            assert response.status_code == 404, (forged, response.text)
            assert response.json()["error"]["details"][0]["field"] == "token"
    assert await suppressions(admin) == []
