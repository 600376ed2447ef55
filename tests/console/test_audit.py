"""The console's changes are in the audit log as the API's are, by the logged-in admin from the
browser's address (`via: console`); the audit log page lists and filters it, for admins only."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.audit.helpers import CONSOLE_ADDRESS, latest
from tests.conftest import ADMIN, SENDER, raw_dump
from tests.console.helpers import login

pytestmark = pytest.mark.anyio

RELAY = {
    "type": "smtp",
    "name": "relay",
    "description": "",
    "senderEmail": "postroom@example.com",
    "settings.host": "127.0.0.1",
    "settings.security": "starttls",
    "settings.user": "alice",
    "settings.pass": "console-pass-1",
}
THEME = {"name": "brand", "description": "", "html": "<div>{{ content }}</div>", "colors": "{}"}
TEMPLATE = {"name": "invoice", "description": "", "subject": "Invoice {{ n }}", "text": "Hi"}
HOOK = "http://127.0.0.1:9/hooks/postroom"


async def _in_console(admin: httpx.AsyncClient, action: str, target: str | None) -> dict[str, Any]:
    entry = await latest(admin, action)
    assert (entry["actor"], entry["via"], entry["address"]) == (
        ADMIN[0],
        "console",
        CONSOLE_ADDRESS,
    )
    assert entry["target"] == {"kind": action.partition(".")[0], "name": target}
    return entry


async def _post(
    client: httpx.AsyncClient, path: str, data: dict[str, Any], status: int = 303
) -> httpx.Response:
    response = await client.post(path, data=data)
    assert response.status_code == status, response.text
    return response


async def test_server_changes(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings
) -> None:
    csrf = await login(browser_client, *ADMIN)
    await _post(browser_client, "/console/servers/new", RELAY | {"csrf": csrf})
    created = await _in_console(admin, "server.create", "relay")
    assert created["changes"]["settings.pass"] == "changed"
    assert created["changes"]["settings.host"] == {"from": None, "to": "127.0.0.1"}

    kept = RELAY | {"csrf": csrf, "settings.host": "localhost", "settings.pass": ""}
    await _post(browser_client, "/console/servers/relay", kept)
    updated = await _in_console(admin, "server.update", "relay")
    assert updated["changes"] == {"settings.host": {"from": "127.0.0.1", "to": "localhost"}}

    copy = {"csrf": csrf, "name": "relay2", "settings.pass": "console-pass-2"}
    await _post(browser_client, "/console/servers/relay/duplicate", copy)
    await _in_console(admin, "server.create", "relay2")
    await _post(browser_client, "/console/servers/relay2/default", {"csrf": csrf})
    default = await _in_console(admin, "server.update", "relay2")
    assert default["changes"] == {"isDefault": {"from": False, "to": True}}
    await _post(browser_client, "/console/servers/relay/delete", {"csrf": csrf})
    await _in_console(admin, "server.delete", "relay")

    dump = await asyncio.to_thread(raw_dump, settings)
    assert b"console-pass-1" not in dump
    assert b"console-pass-2" not in dump


async def test_branding_templates_and_themes(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    csrf = await login(browser_client, *ADMIN)
    branding = {"csrf": csrf, "senderEmail": "noreply@example.com", "senderName": ""}
    await _post(browser_client, "/console/branding", branding)
    entry = await _in_console(admin, "branding.update", None)
    assert entry["changes"] == {"senderEmail": {"from": None, "to": "noreply@example.com"}}

    await _post(browser_client, "/console/themes/new", THEME | {"csrf": csrf})
    await _in_console(admin, "theme.create", "brand")
    await _post(browser_client, "/console/themes/brand", THEME | {"csrf": csrf, "footer": "ACME"})
    theme = await _in_console(admin, "theme.update", "brand")
    assert theme["changes"] == {"footer": {"from": None, "to": "ACME"}}

    await _post(browser_client, "/console/templates/new", TEMPLATE | {"csrf": csrf})
    await _in_console(admin, "template.create", "invoice")
    edit = TEMPLATE | {"csrf": csrf, "subject": "Bill {{ n }}"}
    await _post(browser_client, "/console/templates/invoice", edit)
    template = await _in_console(admin, "template.update", "invoice")
    assert template["changes"] == {"subject": {"from": "Invoice {{ n }}", "to": "Bill {{ n }}"}}


async def test_users(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings
) -> None:
    csrf = await login(browser_client, *ADMIN)
    made = {"csrf": csrf, "name": "clerk", "role": "sender", "password": ""}
    created = await _post(browser_client, "/console/users", made, 200)
    generated = re.search(r"password of clerk is <code>([^<]+)</code>", created.text)
    assert generated is not None
    entry = await _in_console(admin, "user.create", "clerk")
    assert entry["changes"]["password"] == "changed"
    await _post(browser_client, "/console/users/clerk", {"csrf": csrf, "role": "admin"})
    promoted = await _in_console(admin, "user.update", "clerk")
    assert promoted["changes"] == {"role": {"from": "sender", "to": "admin"}}
    await _post(browser_client, "/console/users/clerk/delete", {"csrf": csrf})
    await _in_console(admin, "user.delete", "clerk")
    assert generated.group(1).encode() not in await asyncio.to_thread(raw_dump, settings)


async def test_suppressions_and_webhooks(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings
) -> None:
    csrf = await login(browser_client, *ADMIN)
    added = {"csrf": csrf, "address": "gone@example.org", "profile": "", "reason": "complaint"}
    await _post(browser_client, "/console/suppressions", added)
    await _in_console(admin, "suppression.create", "gone@example.org")
    removed = {"csrf": csrf, "address": "gone@example.org", "profile": ""}
    await _post(browser_client, "/console/suppressions/remove", removed)
    await _in_console(admin, "suppression.delete", "gone@example.org")
    csv = b"address\na@example.org\nb@example.org\nc@example.org\n"
    imported = await browser_client.post(
        "/console/suppressions/import",
        data={"csrf": csrf},
        files={"file": ("list.csv", csv, "text/csv")},
    )
    assert imported.status_code == 200, imported.text
    entry = await _in_console(admin, "suppression.import", None)
    assert entry["changes"]["added"] == {"from": None, "to": 3}

    made = {"csrf": csrf, "url": HOOK, "eventTypes": ["bounced"]}
    page = await _post(browser_client, "/console/webhooks", made, 200)
    endpoint = re.search(r'action="/console/webhooks/([0-9a-f]{32})/test"', page.text)
    secret = re.search(r'<code id="secret">(whsec_[^<]+)</code>', page.text)
    assert endpoint is not None
    assert secret is not None
    hook = endpoint.group(1)
    assert (await _in_console(admin, "webhook.create", hook))["changes"]["secret"] == "changed"
    off = {"csrf": csrf, "enabled": "false"}
    await _post(browser_client, f"/console/webhooks/{hook}/enabled", off)
    switched = await _in_console(admin, "webhook.update", hook)
    assert switched["changes"] == {"enabled": {"from": True, "to": False}}
    rotated = await _post(browser_client, f"/console/webhooks/{hook}/rotate", {"csrf": csrf}, 200)
    new_secret = re.search(r'<code id="secret">(whsec_[^<]+)</code>', rotated.text)
    assert new_secret is not None
    assert (await _in_console(admin, "webhook.update", hook))["changes"] == {"secret": "changed"}
    await _post(browser_client, f"/console/webhooks/{hook}/delete", {"csrf": csrf})
    await _in_console(admin, "webhook.delete", hook)
    dump = await asyncio.to_thread(raw_dump, settings)
    assert secret.group(1).encode() not in dump
    assert new_secret.group(1).encode() not in dump


async def test_the_audit_log_page(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    for i in range(55):
        response = await admin.post(
            "/api/v1/suppressions", json={"address": f"p{i:02}@example.org"}
        )
        assert response.status_code == 201
    branding = {"emails": {"senderEmail": "ops@example.com"}}
    assert (await admin.post("/api/branding", json=branding)).status_code == 200
    await login(browser_client, *ADMIN)
    dashboard = await browser_client.get("/console/")
    assert 'href="/console/audit"' in dashboard.text

    first = await browser_client.get("/console/audit")
    assert first.status_code == 200
    rows = re.findall(r'<tr class="audit-entry">', first.text)
    assert len(rows) == 50
    assert first.text.index("branding.update") < first.text.index("p54@example.org")
    assert "ops@example.com" in first.text
    found = re.search(r'href="(/console/audit\?[^"]*cursor=[^"]+)"', first.text)
    assert found is not None
    second = await browser_client.get(found.group(1).replace("&amp;", "&"))
    assert "p00@example.org" in second.text
    assert "p54@example.org" not in second.text

    filtered = await browser_client.get(
        "/console/audit", params={"action": "branding.update", "actor": ADMIN[0]}
    )
    assert filtered.text.count('<tr class="audit-entry">') == 1
    by_target = await browser_client.get(
        "/console/audit", params={"target": "suppression:p07@example.org"}
    )
    assert by_target.text.count('<tr class="audit-entry">') == 1
    bad = await browser_client.get("/console/audit", params={"target": "printer", "from": "soon"})
    assert bad.status_code == 422
    assert 'id="l-from-err"' in bad.text
    bad_target = await browser_client.get("/console/audit", params={"target": "printer"})
    assert bad_target.status_code == 422
    assert 'id="l-target-err"' in bad_target.text


async def test_senders_cannot_read_it(
    browser_client: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    await login(browser_client, *SENDER)
    assert 'href="/console/audit"' not in (await browser_client.get("/console/")).text
    assert (await browser_client.get("/console/audit")).status_code == 403
