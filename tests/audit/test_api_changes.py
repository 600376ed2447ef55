"""Every kind of change made through the API is in the audit log with its actor, the client's
address and the fields that changed; a secret only as "changed", its value nowhere in the log."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.wiring import Core
from tests.audit.helpers import ADMIN_ADDRESS, entries, latest, stored
from tests.conftest import ADMIN, raw_dump

pytestmark = pytest.mark.anyio

RELAY: dict[str, Any] = {
    "name": "relay",
    "type": "smtp",
    "senderEmail": "postroom@example.com",
    "settings": {"host": "127.0.0.1", "port": 2525, "user": "alice", "pass": "relay-pass-one"},
}


def _by_admin(entry: dict[str, object], action: str, target: str | None) -> None:
    assert entry["action"] == action
    assert entry["actor"] == ADMIN[0]
    assert entry["via"] == "basic"
    assert entry["address"] == ADMIN_ADDRESS
    assert entry["target"] == {"kind": action.partition(".")[0], "name": target}


async def test_server_profiles(admin: httpx.AsyncClient, runtime: Core, settings: Settings) -> None:
    assert (await admin.post("/api/v1/servers", json=RELAY)).status_code == 201
    created = await latest(admin, "server.create")
    _by_admin(created, "server.create", "relay")
    changes = created["changes"]
    assert changes["settings.host"] == {"from": None, "to": "127.0.0.1"}
    assert changes["settings.user"] == {"from": None, "to": "alice"}
    assert changes["settings.pass"] == "changed"
    assert changes["isDefault"] == {"from": None, "to": True}

    kept = {**RELAY, "settings": {**RELAY["settings"], "host": "localhost"}}
    del kept["settings"]["pass"]
    assert (await admin.put("/api/v1/servers/relay", json=kept)).status_code == 200
    updated = await latest(admin, "server.update")
    _by_admin(updated, "server.update", "relay")
    assert updated["changes"] == {"settings.host": {"from": "127.0.0.1", "to": "localhost"}}

    patch = {"description": "office", "settings": {"pass": "relay-pass-two"}}
    assert (await admin.patch("/api/v1/servers/relay", json=patch)).status_code == 200
    assert (await latest(admin, "server.update"))["changes"] == {
        "description": {"from": "", "to": "office"},
        "settings.pass": "changed",
    }

    copy = {"name": "relay2", "settings": {"pass": "relay-pass-three"}}
    assert (await admin.post("/api/v1/servers/relay/duplicate", json=copy)).status_code == 201
    duplicated = await latest(admin, "server.create")
    _by_admin(duplicated, "server.create", "relay2")
    assert duplicated["changes"]["settings.pass"] == "changed"
    assert duplicated["changes"]["isDefault"] == {"from": None, "to": False}

    assert (await admin.delete("/api/v1/servers/relay2")).status_code == 204
    deleted = await latest(admin, "server.delete")
    _by_admin(deleted, "server.delete", "relay2")
    assert deleted["changes"]["settings.host"] == {"from": "localhost", "to": None}
    assert deleted["changes"]["settings.pass"] == "changed"

    dump = await asyncio.to_thread(raw_dump, settings)
    for secret in ("relay-pass-one", "relay-pass-two", "relay-pass-three"):
        assert secret.encode() not in dump


async def test_dkim_keys(admin: httpx.AsyncClient, runtime: Core) -> None:
    assert (await admin.post("/api/v1/servers", json=RELAY)).status_code == 201
    key = {"selector": "s1", "algorithm": "ed25519-sha256"}
    assert (await admin.post("/api/v1/servers/relay/dkim", json=key)).status_code == 201
    created = await latest(admin, "dkim.create")
    _by_admin(created, "dkim.create", "relay")
    assert created["changes"]["active.selector"] == {"from": None, "to": "s1"}
    assert created["changes"]["active.privateKey"] == "changed"
    assert "PRIVATE KEY" not in await stored(runtime)
    assert (await admin.delete("/api/v1/servers/relay/dkim")).status_code == 204
    deleted = await latest(admin, "dkim.delete")
    assert deleted["changes"]["active.selector"] == {"from": "s1", "to": None}


async def test_the_sisense_email_server_settings(
    admin: httpx.AsyncClient, runtime: Core, settings: Settings
) -> None:
    body = {"enable": True, "host": "127.0.0.1", "port": 2525, "user": "u", "pass": "sisense-pw"}
    assert (await admin.post("/api/v1/settings/email_server", json=body)).status_code == 200
    first = await latest(admin, "email_server.update")
    _by_admin(first, "email_server.update", None)
    assert first["changes"]["host"] == {"from": "localhost", "to": "127.0.0.1"}
    assert first["changes"]["enable"] == {"from": False, "to": True}
    assert first["changes"]["pass"] == "changed"
    assert await entries(admin, target="server") == [], "one entry, in the endpoint's terms"

    off = {"enable": False, "port": 2526}
    assert (await admin.post("/api/v1/settings/email_server", json=off)).status_code == 200
    assert (await latest(admin, "email_server.update"))["changes"] == {
        "enable": {"from": True, "to": False},
        "port": {"from": 2525, "to": 2526},
    }
    assert b"sisense-pw" not in await asyncio.to_thread(raw_dump, settings)


async def test_branding(admin: httpx.AsyncClient) -> None:
    body = {"emails": {"senderEmail": "noreply@example.com", "senderName": "Example"}}
    assert (await admin.post("/api/branding", json=body)).status_code == 200
    entry = await latest(admin, "branding.update")
    _by_admin(entry, "branding.update", None)
    assert entry["changes"] == {
        "senderEmail": {"from": None, "to": "noreply@example.com"},
        "senderName": {"from": None, "to": "Example"},
    }


async def test_users(admin: httpx.AsyncClient, runtime: Core, settings: Settings) -> None:
    body = {"name": "clerk", "role": "sender", "password": "clerk-password-1"}
    assert (await admin.post("/api/v1/users", json=body)).status_code == 201
    created = await latest(admin, "user.create")
    _by_admin(created, "user.create", "clerk")
    assert created["changes"] == {"role": {"from": None, "to": "sender"}, "password": "changed"}

    patch = {"role": "admin", "password": "clerk-password-2", "allowedFrom": ["example.com"]}
    assert (await admin.patch("/api/v1/users/clerk", json=patch)).status_code == 200
    assert (await latest(admin, "user.update"))["changes"] == {
        "role": {"from": "sender", "to": "admin"},
        "password": "changed",
        "allowedFrom": {"from": None, "to": ["example.com"]},
    }
    assert (await admin.delete("/api/v1/users/clerk")).status_code == 204
    deleted = await latest(admin, "user.delete")
    _by_admin(deleted, "user.delete", "clerk")
    assert deleted["changes"]["role"] == {"from": "admin", "to": None}

    log = await stored(runtime)
    assert "$argon2" not in log, "not even the hash"
    dump = await asyncio.to_thread(raw_dump, settings)
    assert b"clerk-password-1" not in dump
    assert b"clerk-password-2" not in dump


async def test_api_tokens(admin: httpx.AsyncClient, runtime: Core) -> None:
    body = {"name": "nightly", "expiresAt": "2031-01-01T00:00:00Z"}
    answer = await admin.post(f"/api/v1/users/{ADMIN[0]}/tokens", json=body)
    assert answer.status_code == 201, answer.text
    token, token_id = answer.json()["token"], answer.json()["id"]
    created = await latest(admin, "token.create")
    _by_admin(created, "token.create", ADMIN[0])
    assert created["changes"]["name"] == {"from": None, "to": "nightly"}
    assert created["changes"]["id"] == {"from": None, "to": token_id}

    bearer = {"Authorization": f"Bearer {token}"}
    gone = await admin.delete(f"/api/v1/users/{ADMIN[0]}/tokens/{token_id}", headers=bearer)
    assert gone.status_code == 204
    revoked = await latest(admin, "token.revoke")
    assert revoked["via"] == "token", "revoked with the token itself"
    assert revoked["changes"]["name"] == {"from": "nightly", "to": None}
    again = await admin.delete(f"/api/v1/users/{ADMIN[0]}/tokens/{token_id}")
    assert again.status_code == 204
    assert len(await entries(admin, action="token.revoke")) == 1, "revoked once, logged once"
    assert token not in await stored(runtime)


async def test_templates_and_themes(admin: httpx.AsyncClient) -> None:
    template = {"name": "welcome", "subject": "Hi {{ name }}", "text": "Hello"}
    assert (await admin.post("/api/v1/templates", json=template)).status_code == 201
    created = await latest(admin, "template.create")
    _by_admin(created, "template.create", "welcome")
    assert created["changes"]["subject"] == {"from": None, "to": "Hi {{ name }}"}
    patch = {"subject": "Welcome {{ name }}"}
    assert (await admin.patch("/api/v1/templates/welcome", json=patch)).status_code == 200
    assert (await latest(admin, "template.update"))["changes"] == {
        "subject": {"from": "Hi {{ name }}", "to": "Welcome {{ name }}"}
    }
    replaced = {"subject": "Welcome", "text": "Hello"}
    assert (await admin.put("/api/v1/templates/welcome", json=replaced)).status_code == 200
    assert (await latest(admin, "template.update"))["changes"] == {
        "subject": {"from": "Welcome {{ name }}", "to": "Welcome"}
    }
    assert (await admin.delete("/api/v1/templates/welcome")).status_code == 204
    _by_admin(await latest(admin, "template.delete"), "template.delete", "welcome")

    theme = {"name": "plain", "html": "<div>{{ content }}</div>", "colors": {"accent": "#123"}}
    assert (await admin.post("/api/v1/themes", json=theme)).status_code == 201
    _by_admin(await latest(admin, "theme.create"), "theme.create", "plain")
    recolour = {"colors": {"accent": "#456"}}
    assert (await admin.patch("/api/v1/themes/plain", json=recolour)).status_code == 200
    updated = await latest(admin, "theme.update")
    assert updated["changes"] == {"colors.accent": {"from": "#123", "to": "#456"}}
    assert (await admin.delete("/api/v1/themes/plain")).status_code == 204
    _by_admin(await latest(admin, "theme.delete"), "theme.delete", "plain")


async def test_suppressions(admin: httpx.AsyncClient) -> None:
    url = "/api/v1/suppressions"
    body = {"address": "Gone@Example.org", "reason": "complaint"}
    assert (await admin.post(url, json=body)).status_code == 201
    added = await latest(admin, "suppression.create")
    _by_admin(added, "suppression.create", "gone@example.org")
    assert added["changes"] == {"reason": {"from": None, "to": "complaint"}}

    assert (await admin.delete(f"{url}/gone@example.org")).status_code == 204
    removed = await latest(admin, "suppression.delete")
    _by_admin(removed, "suppression.delete", "gone@example.org")
    assert removed["changes"] == {"reason": {"from": "complaint", "to": None}}

    csv = "address,profile,reason\nann@example.com,,manual\nbob@example.com,,manual\n"
    headers = {"Content-Type": "text/csv"}
    assert (await admin.post(f"{url}/import", content=csv, headers=headers)).status_code == 200
    assert (await admin.post(f"{url}/import", content=csv, headers=headers)).status_code == 200
    imports = await entries(admin, action="suppression.import")
    assert len(imports) == 2, "one entry per import, not per row"
    _by_admin(imports[0], "suppression.import", None)
    assert imports[0]["changes"] == {
        "rows": {"from": None, "to": 2},
        "added": {"from": None, "to": 0},
    }
    assert imports[1]["changes"]["added"] == {"from": None, "to": 2}


async def test_webhooks(admin: httpx.AsyncClient, runtime: Core, settings: Settings) -> None:
    body = {"url": "http://127.0.0.1:9/hooks", "eventTypes": ["bounced", "complained"]}
    response = await admin.post("/api/v1/webhooks", json=body)
    assert response.status_code == 201
    endpoint, first_secret = response.json()["id"], response.json()["secret"]
    created = await latest(admin, "webhook.create")
    _by_admin(created, "webhook.create", endpoint)
    assert created["changes"]["url"] == {"from": None, "to": "http://127.0.0.1:9/hooks"}
    assert created["changes"]["eventTypes"] == {"from": None, "to": ["bounced", "complained"]}
    assert created["changes"]["secret"] == "changed"

    patch = {"enabled": False, "description": "crm"}
    assert (await admin.patch(f"/api/v1/webhooks/{endpoint}", json=patch)).status_code == 200
    assert (await latest(admin, "webhook.update"))["changes"] == {
        "description": {"from": "", "to": "crm"},
        "enabled": {"from": True, "to": False},
    }
    rotated = await admin.post(f"/api/v1/webhooks/{endpoint}/rotate-secret")
    assert rotated.status_code == 200
    assert (await latest(admin, "webhook.update"))["changes"] == {"secret": "changed"}
    assert (await admin.delete(f"/api/v1/webhooks/{endpoint}")).status_code == 204
    _by_admin(await latest(admin, "webhook.delete"), "webhook.delete", endpoint)

    dump = await asyncio.to_thread(raw_dump, settings)
    for secret in (first_secret, rotated.json()["secret"]):
        assert secret.encode() not in dump
        assert secret.removeprefix("whsec_").encode() not in dump
