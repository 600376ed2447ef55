"""Sending records in the console: the API's search, scoped to the caller, with cursor paging."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import ADMIN, SENDER
from tests.console.helpers import login

pytestmark = pytest.mark.anyio


async def _post(client: httpx.AsyncClient, to: str, subject: str) -> str:
    response = await client.post(
        "/api/v1/messages",
        json={"from": "app@example.com", "to": [to], "subject": subject, "text": "x"},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_search_page_and_open_a_message(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    first = await _post(sender, "a@example.org", "First")
    second = await _post(sender, "a@example.org", "Second")
    await _post(admin, "b@example.org", "Admin's own")
    await login(browser_client, *ADMIN)

    page = await browser_client.get("/console/records", params={"recipient": "a@example.org"})
    assert page.status_code == 200
    assert "Second" in page.text
    assert "First" in page.text
    assert "Admin&#39;s own" not in page.text

    one = await browser_client.get(
        "/console/records", params={"recipient": "a@example.org", "limit": 1}
    )
    assert "Second" in one.text  # newest first
    assert "First" not in one.text
    found = re.search(r'href="(/console/records\?[^"]*cursor=[^"]+)"', one.text)
    assert found is not None
    following = await browser_client.get(found.group(1).replace("&amp;", "&"))
    assert "First" in following.text
    assert "Second" not in following.text

    queued = await browser_client.get("/console/records", params={"status": "sent"})
    assert "First" not in queued.text  # no dispatcher here: nothing was sent
    bad = await browser_client.get("/console/records", params={"from": "yesterday"})
    assert bad.status_code == 422
    assert 'id="q-from-err"' in bad.text

    message = await browser_client.get(f"/console/records/{first}")
    assert message.status_code == 200
    assert "a@example.org" in message.text
    assert "queued" in message.text
    assert "No attempt yet." in message.text
    assert second not in message.text


async def test_a_sender_sees_only_its_own_records(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    mine = await _post(sender, "c@example.org", "Mine")
    theirs = await _post(admin, "c@example.org", "Theirs")
    await login(browser_client, *SENDER)
    page = await browser_client.get("/console/records", params={"recipient": "c@example.org"})
    assert "Mine" in page.text
    assert "Theirs" not in page.text
    other = await browser_client.get(
        "/console/records", params={"createdBy": ADMIN[0], "recipient": "c@example.org"}
    )
    assert "Theirs" not in other.text
    assert (await browser_client.get(f"/console/records/{mine}")).status_code == 200
    assert (await browser_client.get(f"/console/records/{theirs}")).status_code == 404
