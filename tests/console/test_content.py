"""Templates, themes, branding and users in the console: the API's services, the API's rules."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import ADMIN, SENDER
from tests.console.helpers import login

pytestmark = pytest.mark.anyio

THEME = {
    "name": "brand",
    "description": "",
    "html": '<div style="color: {{ colors.ink }}">{{ content }}</div><p>{{ footer }}</p>',
    "text": "",
    "logoUrl": "",
    "colors": '{"ink": "#123456"}',
    "footer": "ACME Ltd",
}


async def test_templates_themes_and_the_preview_of_an_unsaved_edit(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    csrf = await login(browser_client, *ADMIN)
    theme = await browser_client.post("/console/themes/new", data=THEME | {"csrf": csrf})
    assert theme.status_code == 303, theme.text
    assert (await admin.get("/api/v1/themes/brand")).json()["colors"] == {"ink": "#123456"}
    form = {
        "csrf": csrf,
        "name": "invoice",
        "description": "",
        "subject": "Invoice {{ number }}",
        "text": "",
        "html": "<p>Hello {{ name }}</p>",
    }
    created = await browser_client.post("/console/templates/new", data=form)
    assert created.status_code == 303, created.text
    stored = (await admin.get("/api/v1/templates/invoice")).json()
    assert stored["subject"] == "Invoice {{ number }}"
    assert stored["text"] is None  # an empty part is no part

    unsaved = form | {
        "html": "<p>Dear {{ name }}</p>",
        "data": '{"number": 7, "name": "<Ann>"}',
        "theme": "brand",
    }
    preview = await browser_client.post("/console/templates/invoice/preview", data=unsaved)
    assert preview.status_code == 200
    assert "Invoice 7" in preview.text
    assert "<p>Dear &lt;Ann&gt;</p>" in preview.text  # the unsaved html, autoescaped
    assert "#123456" in preview.text  # inside the theme
    assert "sandbox" in preview.headers["content-security-policy"]
    assert preview.headers["x-frame-options"] == "SAMEORIGIN"
    stored = (await admin.get("/api/v1/templates/invoice")).json()
    assert stored["html"] == "<p>Hello {{ name }}</p>"  # preview saved nothing

    missing = await browser_client.post(
        "/console/templates/invoice/preview", data=unsaved | {"data": "{}"}
    )
    assert missing.status_code == 422
    assert "data.number" in missing.text

    broken = await browser_client.post(
        "/console/templates/invoice", data=form | {"html": "<p>{{ name </p>"}
    )
    assert broken.status_code == 422
    assert 'id="t-html-err"' in broken.text


async def test_branding(browser_client: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    csrf = await login(browser_client, *ADMIN)
    data = {"csrf": csrf, "senderEmail": "noreply@example.com", "senderName": "ACME"}
    saved = await browser_client.post("/console/branding", data=data)
    assert saved.status_code == 303
    body = (await admin.get("/api/branding")).json()
    assert body["emails"] == {"senderEmail": "noreply@example.com", "senderName": "ACME"}
    bad = await browser_client.post("/console/branding", data=data | {"senderEmail": "nope"})
    assert bad.status_code == 422
    assert 'id="b-senderEmail-err"' in bad.text


async def test_users_bounds_and_the_last_admin(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    csrf = await login(browser_client, *ADMIN)
    created = await browser_client.post(
        "/console/users",
        data={
            "csrf": csrf,
            "name": "clerk",
            "role": "sender",
            "password": "",
            "allowedFrom": "billing@example.com\nexample.org",
        },
    )
    assert created.status_code == 200
    generated = re.search(r"password of clerk is <code>([^<]+)</code>", created.text)
    assert generated is not None
    user = (await admin.get("/api/v1/users/clerk")).json()
    assert user["allowedFrom"] == ["billing@example.com", "example.org"]
    assert user["allowedServers"] is None
    async with httpx.AsyncClient(
        transport=browser_client._transport, base_url="http://postroom.test"
    ) as clerk:
        await login(clerk, "clerk", generated.group(1))
        assert (await clerk.get("/console/users")).status_code == 403
        ended = await browser_client.post("/console/users/clerk/signout", data={"csrf": csrf})
        assert ended.status_code == 303
        assert (await clerk.get("/console/")).status_code == 303  # signed out

    demote = await browser_client.post(
        f"/console/users/{ADMIN[0]}", data={"csrf": csrf, "role": "sender"}
    )
    assert demote.status_code == 409
    assert "last admin" in demote.text
    deleted = await browser_client.post("/console/users/clerk/delete", data={"csrf": csrf})
    assert deleted.status_code == 303
    assert (await admin.get("/api/v1/users/clerk")).status_code == 404


async def test_a_sender_cannot_reach_the_admin_pages(
    browser_client: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    await login(browser_client, *SENDER)
    for path in ("/console/templates", "/console/branding", "/console/users"):
        assert (await browser_client.get(path)).status_code == 403, path
