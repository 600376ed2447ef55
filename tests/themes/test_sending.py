"""Templates, themes and signatures end to end: POST /messages -> dispatcher -> a real aiosmtpd."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, record
from tests.smtpd import SmtpServer, StartServer
from tests.themes.conftest import BRAND, RESET, create

pytestmark = pytest.mark.anyio

SIGNATURE = "Acme Support <support@acme.test>\n+1 555 0100"
DATA = {"name": "Ann & <Bob>", "link": "https://acme.test/reset?t=1&u=2"}


async def post(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/api/v1/messages", json=body)


async def send(client: httpx.AsyncClient, **body: Any) -> str:
    response = await post(client, **body)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def parts(mail: EmailMessage) -> tuple[str | None, str | None]:
    """The text and html parts as received, with LF line ends."""
    found = (mail.get_body(("plain",)), mail.get_body(("html",)))
    text, html = (p.get_content().replace("\r\n", "\n") if p is not None else None for p in found)
    return text, html


async def count_messages(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


@pytest.fixture
async def relay(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> tuple[SmtpServer, dict[str, Any]]:
    """A profile with the brand theme and a signature, and the password_reset template."""
    await create(admin, "templates", RESET)
    await create(admin, "themes", BRAND)
    server = smtp_server_factory()
    profile = await add_smtp_profile(admin, server, theme="brand", signature=SIGNATURE)
    return server, profile


async def test_a_templated_message_arrives_rendered_themed_and_signed(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    relay: tuple[SmtpServer, dict[str, Any]],
) -> None:
    server, _ = relay
    message_id = await send(sender, template="password_reset", data=DATA, to=["ann@example.com"])
    await dispatcher.drain()

    [transaction] = server.transactions
    mail = transaction.message
    assert mail["Subject"] == "Reset your password, Ann & <Bob>"
    assert mail.get_content_type() == "multipart/alternative"
    text, html = parts(mail)
    assert text is not None
    assert html is not None
    assert text.rstrip("\n") == (
        "Hello Ann & <Bob>,\nreset it here: https://acme.test/reset?t=1&u=2\n"
        "-- \nAcme Support <support@acme.test>\n+1 555 0100\n\n"
        "Acme Inc. <unsubscribe>"
    )
    assert html.startswith(
        '<html><body style="color: #336699"><img src="https://example.com/logo.png" alt="Acme">'
    )
    assert (
        '<div class="content"><p>Hello Ann &amp; &lt;Bob&gt;,</p>'
        '<p><a href="https://acme.test/reset?t=1&amp;u=2">Reset it</a></p>\n'
        '<p class="signature">Acme Support &lt;support@acme.test&gt;<br>\n+1 555 0100</p></div>'
    ) in html
    assert "<footer>Acme Inc. &lt;unsubscribe&gt;</footer></body></html>" in html

    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert (saved["template"], saved["theme"], saved["subject"]) == (
        "password_reset",
        "brand",
        "Reset your password, Ann & <Bob>",
    )


async def test_a_missing_variable_is_a_422_at_post_naming_it(
    sender: httpx.AsyncClient, runtime: Core, relay: tuple[SmtpServer, dict[str, Any]]
) -> None:
    response = await post(
        sender, template="password_reset", data={"name": "Ann"}, to=["ann@example.com"]
    )
    assert response.status_code == 422
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "data.link"
    assert "'link'" in detail["message"]
    assert await count_messages(runtime) == 0

    unknown = await post(sender, template="nope", data=DATA, to=["ann@example.com"])
    assert unknown.status_code == 422
    assert unknown.json()["error"]["details"][0]["field"] == "template"
    no_template = await post(sender, text="hi", data=DATA, to=["ann@example.com"])
    assert no_template.status_code == 422
    assert no_template.json()["error"]["details"][0]["field"] == "data"


async def test_the_message_s_own_fields_win_over_the_template(
    sender: httpx.AsyncClient, dispatcher: Dispatcher, relay: tuple[SmtpServer, dict[str, Any]]
) -> None:
    server, _ = relay
    await send(
        sender,
        template="password_reset",
        data={"name": "Ann"},
        subject="Mine",
        text="My text",
        html="<p>My html</p>",
        to=["ann@example.com"],
    )
    await dispatcher.drain()
    mail = server.transactions[0].message
    assert mail["Subject"] == "Mine"
    text, html = parts(mail)
    assert text is not None
    assert html is not None
    assert text.startswith("My text\n-- \n")
    assert '<div class="content"><p>My html</p>' in html


async def test_per_recipient_data_renders_a_message_each(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    await create(admin, "templates", RESET)
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    message_id = await send(
        sender,
        template="password_reset",
        data={"name": "everyone", "link": "https://acme.test/r"},
        recipients=[
            {"email": "ann@example.com", "name": "Ann", "data": {"name": "Ann"}},
            {"email": "bob@example.com", "data": {"name": "Bob", "link": "https://acme.test/b"}},
            "carl@example.com",
            "dora@example.com",
        ],
    )
    await dispatcher.drain()

    by_rcpt = {tuple(sorted(t.rcpt_tos)): t.message for t in server.transactions}
    assert set(by_rcpt) == {
        ("ann@example.com",),
        ("bob@example.com",),
        ("carl@example.com", "dora@example.com"),
    }
    ann = by_rcpt[("ann@example.com",)]
    assert (ann["To"], ann["Subject"]) == ("Ann <ann@example.com>", "Reset your password, Ann")
    assert parts(ann)[0] == "Hello Ann,\nreset it here: https://acme.test/r\n"
    bob = by_rcpt[("bob@example.com",)]
    assert bob["Subject"] == "Reset your password, Bob"
    assert 'href="https://acme.test/b"' in (parts(bob)[1] or "")
    shared = by_rcpt[("carl@example.com", "dora@example.com")]
    assert shared["To"] == "undisclosed-recipients:;"
    assert shared["Subject"] == "Reset your password, everyone"
    saved = await record(sender, message_id)
    assert saved["status"] == "sent"
    assert saved["subject"] == "Reset your password, everyone"


async def test_a_recipient_missing_a_variable_is_named(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, runtime: Core
) -> None:
    await create(admin, "templates", RESET)
    await admin.post("/api/branding", json={"emails": {"senderEmail": "noreply@example.com"}})
    response = await post(
        sender,
        template="password_reset",
        data={"link": "https://acme.test/r"},
        recipients=[
            {"email": "ann@example.com", "data": {"name": "Ann"}},
            {"email": "bob@example.com", "data": {"nick": "Bob"}},
        ],
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "recipients[1].data.name"
    assert await count_messages(runtime) == 0


async def test_html_only_gets_a_generated_text_part_and_text_only_gets_no_html(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    html = (
        "<h1>Weekly report</h1><p>Sales are <b>up</b>.<br>"
        'Details on <a href="https://bi.acme.test/d/7">the dashboard</a>.</p>'
    )
    await send(sender, subject="Report", html=html, to=["ann@example.com"])
    await send(sender, subject="Plain", text="Only text", to=["ann@example.com"])
    await dispatcher.drain()

    mails = {t.message["Subject"]: t.message for t in server.transactions}
    report, plain = mails["Report"], mails["Plain"]
    assert report.get_content_type() == "multipart/alternative"
    text, sent_html = parts(report)
    assert text == (
        "Weekly report\n\nSales are up.\nDetails on the dashboard (https://bi.acme.test/d/7).\n"
    )
    assert sent_html == html + "\n"
    assert plain.get_content_type() == "text/plain"
    assert parts(plain) == ("Only text\n", None)


async def test_records_are_found_by_template_name(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, relay: tuple[SmtpServer, dict[str, Any]]
) -> None:
    await create(admin, "templates", {"name": "welcome", "text": "Welcome {{ name }}"})
    first = await send(sender, template="password_reset", data=DATA, to=["a@example.com"])
    await send(sender, template="welcome", data={"name": "B"}, to=["b@example.com"])
    second = await send(sender, template="password_reset", data=DATA, to=["c@example.com"])
    await send(sender, subject="No template", text="x", to=["d@example.com"])

    found = await admin.get("/api/v1/messages", params={"template": "password_reset"})
    assert found.status_code == 200
    items = found.json()["items"]
    assert [i["id"] for i in items] == [second, first]
    assert {i["template"] for i in items} == {"password_reset"}
    welcome = await admin.get("/api/v1/messages", params={"template": "welcome"})
    assert [i["template"] for i in welcome.json()["items"]] == ["welcome"]


async def test_theme_null_disables_the_profile_theme_and_another_theme_replaces_it(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    relay: tuple[SmtpServer, dict[str, Any]],
) -> None:
    server, _ = relay
    await create(admin, "themes", {"name": "plain", "html": "<main>{{ content }}</main>"})
    bare = await send(sender, subject="Bare", html="<p>x</p>", theme=None, to=["a@example.com"])
    other = await send(
        sender, subject="Other", html="<p>y</p>", theme="plain", to=["a@example.com"]
    )
    unknown = await post(sender, subject="?", text="z", theme="nope", to=["a@example.com"])
    assert unknown.status_code == 422
    assert unknown.json()["error"]["details"][0]["field"] == "theme"
    await dispatcher.drain()

    mails = {t.message["Subject"]: t.message for t in server.transactions}
    text, html = parts(mails["Bare"])
    assert html == (
        '<p>x</p>\n<p class="signature">Acme Support &lt;support@acme.test&gt;<br>\n'
        "+1 555 0100</p>\n"
    )
    assert text is not None
    assert text.startswith("x\n-- \nAcme Support")
    assert "Acme Inc." not in text
    text, html = parts(mails["Other"])
    assert html is not None
    assert html.startswith('<main><p>y</p>\n<p class="signature">')
    assert (await record(sender, bare))["theme"] is None
    assert (await record(sender, other))["theme"] == "plain"


async def test_a_layout_that_fails_at_send_fails_the_message_without_a_retry(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    layout = "{% if subject == 'boom' %}{{ nope }}{% endif %}{{ content }}"
    await create(admin, "themes", {"name": "fragile", "html": layout})
    message_id = await send(sender, subject="boom", html="<p>x</p>", theme="fragile", to=["a@x.io"])
    await dispatcher.drain()

    assert server.transactions == []
    saved = await record(sender, message_id)
    assert saved["status"] == "failed"
    [attempt] = saved["attemptLog"]
    assert attempt["errorCode"] == "EMESSAGE"
    assert "'nope'" in attempt["error"]
