"""POST /servers/{name}/duplicate: everything but the secrets, which the body must give anew."""

from __future__ import annotations

import httpx
import pytest

from app.transports.smtp import SmtpConfig
from app.wiring import Core
from tests.servers.helpers import body, create, secret, stored_config

pytestmark = pytest.mark.anyio

COPIED = ("type", "description", "senderEmail", "senderName", "signature")


def details(response: httpx.Response) -> list[str]:
    return sorted(d["field"] for d in response.json()["error"]["details"])


async def test_duplicate_copies_everything_but_secrets(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    await create(admin, body("sendgrid", "backup"))
    payload = body("smtp", "relay", fallback="backup", isDefault=True)
    payload["settings"] |= {
        "authMethod": "xoauth2",
        "oauth2": {
            "tokenUrl": "https://login.example.com/token",
            "clientId": "client-1",
            "clientSecret": "Oauth-Secret-1",
            "refreshToken": "Oauth-Refresh-1",
        },
    }
    original = await create(admin, payload)

    none_given = await admin.post("/api/v1/servers/relay/duplicate", json={})
    assert none_given.status_code == 422, none_given.text
    assert details(none_given) == [
        "settings.oauth2.clientSecret",
        "settings.oauth2.refreshToken",
        "settings.pass",
    ]
    some_given = await admin.post(
        "/api/v1/servers/relay/duplicate", json={"settings": {"pass": "Copy-Pass-1"}}
    )
    assert some_given.status_code == 422
    assert details(some_given) == ["settings.oauth2.clientSecret", "settings.oauth2.refreshToken"]
    assert "Copy-Pass-1" not in some_given.text

    secrets = {
        "pass": "Copy-Pass-1",
        "oauth2": {"clientSecret": "Copy-Secret-1", "refreshToken": "Copy-Refresh-1"},
    }
    response = await admin.post("/api/v1/servers/relay/duplicate", json={"settings": secrets})
    assert response.status_code == 201, response.text
    copy = response.json()
    assert copy["name"] == "relay_copied"
    assert copy["isDefault"] is False
    for key in (*COPIED, "maxRecipientsPerMessage", "fallback", "settings"):
        assert copy[key] == original[key], key
    assert "Copy-" not in response.text

    config = await stored_config(runtime, "relay_copied")
    assert isinstance(config, SmtpConfig)
    assert secret(config, "pass") == "Copy-Pass-1"
    assert config.oauth2 is not None
    assert config.oauth2.client_secret is not None
    assert config.oauth2.client_secret.get_secret_value() == "Copy-Secret-1"
    # the original keeps its own secrets and stays the default
    assert secret(await stored_config(runtime, "relay"), "pass") == "Smtp-Pa55word!#&"
    assert (await admin.get("/api/v1/servers/relay")).json() == original
    listed = (await admin.get("/api/v1/servers")).json()
    assert listed["default"] == "relay"


async def test_copies_are_named_copied_then_copied2(admin: httpx.AsyncClient) -> None:
    await create(admin, body("mandrill", "api"))
    names = []
    for n in range(3):
        response = await admin.post(
            "/api/v1/servers/api/duplicate", json={"settings": {"apiKey": f"key-{n}"}}
        )
        assert response.status_code == 201, response.text
        names.append(response.json()["name"])
    assert names == ["api_copied", "api_copied2", "api_copied3"]
    # a copy of a copy
    again = await admin.post(
        "/api/v1/servers/api_copied/duplicate", json={"settings": {"apiKey": "k"}}
    )
    assert again.json()["name"] == "api_copied_copied"
    listed = [item["name"] for item in (await admin.get("/api/v1/servers")).json()["items"]]
    assert listed == ["api", "api_copied", "api_copied2", "api_copied3", "api_copied_copied"]


async def test_a_freed_name_is_reused(admin: httpx.AsyncClient) -> None:
    await create(admin, body("mandrill", "api"))
    for _ in range(2):
        await admin.post("/api/v1/servers/api/duplicate", json={"settings": {"apiKey": "k"}})
    assert (await admin.delete("/api/v1/servers/api_copied")).status_code == 204
    response = await admin.post("/api/v1/servers/api/duplicate", json={"settings": {"apiKey": "k"}})
    assert response.json()["name"] == "api_copied"


async def test_a_long_name_still_fits(admin: httpx.AsyncClient) -> None:
    long = "n" * 50
    await create(admin, body("mandrill", long))
    first = await admin.post(
        f"/api/v1/servers/{long}/duplicate", json={"settings": {"apiKey": "k"}}
    )
    second = await admin.post(
        f"/api/v1/servers/{long}/duplicate", json={"settings": {"apiKey": "k"}}
    )
    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert first.json()["name"] == "n" * 40 + "_copied"
    assert second.json()["name"] == "n" * 40 + "_copied2"


async def test_the_copy_may_be_named(admin: httpx.AsyncClient) -> None:
    await create(admin, body("mandrill", "api"))
    named = await admin.post(
        "/api/v1/servers/api/duplicate", json={"name": "api_eu", "settings": {"apiKey": "k"}}
    )
    assert named.status_code == 201, named.text
    assert named.json()["name"] == "api_eu"
    taken = await admin.post(
        "/api/v1/servers/api/duplicate", json={"name": "api_eu", "settings": {"apiKey": "k"}}
    )
    assert taken.status_code == 409, taken.text
    bad = await admin.post(
        "/api/v1/servers/api/duplicate", json={"name": "bad name", "settings": {"apiKey": "k"}}
    )
    assert bad.status_code == 422
    assert details(bad) == ["name"]


async def test_a_profile_without_secrets_needs_no_body(admin: httpx.AsyncClient) -> None:
    await create(
        admin, {"name": "lan", "type": "smtp", "settings": {"host": "relay.lan", "ignoreTLS": True}}
    )
    response = await admin.post("/api/v1/servers/lan/duplicate", json={})
    assert response.status_code == 201, response.text
    assert response.json()["settings"]["ignoreTLS"] is True
    assert response.json()["settings"]["passSet"] is False


async def test_bad_duplicate_bodies(admin: httpx.AsyncClient) -> None:
    await create(admin, body("mandrill", "api"))
    unknown = await admin.post(
        "/api/v1/servers/api/duplicate", json={"settings": {"apiKey": "k"}, "isDefault": True}
    )
    assert unknown.status_code == 422
    assert details(unknown) == ["isDefault"]
    wrong_setting = await admin.post(
        "/api/v1/servers/api/duplicate", json={"settings": {"apiKey": "k", "pass": "x"}}
    )
    assert wrong_setting.status_code == 422
    assert details(wrong_setting) == ["settings.pass"]
    assert [i["name"] for i in (await admin.get("/api/v1/servers")).json()["items"]] == ["api"]
