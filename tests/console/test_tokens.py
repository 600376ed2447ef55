"""API tokens on a user's console page: issued (shown on the answering page only), listed with
their state, revoked; the form's errors name the field and store nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest

from app.db import utcnow
from tests.conftest import ADMIN, SENDER
from tests.console.helpers import login

pytestmark = pytest.mark.anyio

SHOWN = re.compile(r'<code id="token">(pr_[A-Za-z0-9_-]{43})</code>')


async def test_issue_and_revoke_a_token_from_the_users_page(
    browser_client: httpx.AsyncClient, anon: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    csrf = await login(browser_client, *ADMIN)
    page = await browser_client.get(f"/console/users/{ADMIN[0]}")
    assert page.status_code == 200
    assert "No tokens." in page.text

    expires = (utcnow() + timedelta(days=10)).date().isoformat()
    issued = await browser_client.post(
        f"/console/users/{ADMIN[0]}/tokens",
        data={"csrf": csrf, "name": "nightly report", "expiresAt": expires},
    )
    assert issued.status_code == 200, issued.text
    shown = SHOWN.search(issued.text)
    assert shown is not None, issued.text
    token = shown.group(1)
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await anon.get("/api/v1/servers", headers=bearer)).status_code == 200

    listed = (await admin.get(f"/api/v1/users/{ADMIN[0]}/tokens")).json()["items"]
    assert [(t["name"], t["expiresAt"], t["status"]) for t in listed] == [
        ("nightly report", f"{expires}T00:00:00Z", "active")
    ]
    again = await browser_client.get(f"/console/users/{ADMIN[0]}")
    assert token not in again.text, "shown once"
    assert "nightly report" in again.text
    assert f"{expires} 00:00 UTC" in again.text

    revoked = await browser_client.post(
        f"/console/users/{ADMIN[0]}/tokens/{listed[0]['id']}/revoke", data={"csrf": csrf}
    )
    assert revoked.status_code == 303
    assert revoked.headers["location"] == f"/console/users/{ADMIN[0]}#tokens"
    assert (await anon.get("/api/v1/servers", headers=bearer)).status_code == 401
    after = await browser_client.get(f"/console/users/{ADMIN[0]}")
    assert re.search(r"<td>revoked \(", after.text), after.text
    assert "Revoke nightly report" not in after.text


async def test_the_token_form_names_the_bad_field_and_stores_nothing(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    csrf = await login(browser_client, *ADMIN)
    yesterday = (utcnow() - timedelta(days=1)).date().isoformat()
    for data, field in [
        ({"name": "", "expiresAt": ""}, "t-name-err"),
        ({"name": "x" * 101, "expiresAt": ""}, "t-name-err"),
        ({"name": "old", "expiresAt": yesterday}, "t-expires-err"),
        ({"name": "odd", "expiresAt": "someday"}, "t-expires-err"),
    ]:
        answer = await browser_client.post(
            f"/console/users/{ADMIN[0]}/tokens", data={"csrf": csrf} | data
        )
        assert answer.status_code == 422, (data, answer.text)
        assert f'id="{field}"' in answer.text, data
        assert 'id="token"' not in answer.text
    assert (await admin.get(f"/api/v1/users/{ADMIN[0]}/tokens")).json()["items"] == []
    missing = await browser_client.post(
        "/console/users/nobody/tokens", data={"csrf": csrf, "name": "x"}
    )
    assert missing.status_code == 404


async def test_a_sender_cannot_issue_or_revoke_tokens(
    browser_client: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    csrf = await login(browser_client, *SENDER)
    for path in (
        f"/console/users/{SENDER[0]}/tokens",
        f"/console/users/{SENDER[0]}/tokens/x/revoke",
    ):
        refused = await browser_client.post(path, data={"csrf": csrf, "name": "mine"})
        assert refused.status_code == 403, path
