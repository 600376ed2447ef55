"""Server profiles: CRUD for every type, the field limits, Sage X3's security modes, secrets kept or
cleared on update, refused fields, type changes and fallbacks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.servers import service
from app.transports.smtp import SmtpConfig
from app.wiring import Core
from tests.servers.helpers import BODIES, SECRETS, body, create, secret, stored_config

pytestmark = pytest.mark.anyio

TYPES = list(BODIES)
READ_ONLY = {"createdAt", "updatedAt", "health"}


def fields(response: httpx.Response) -> list[str]:
    return [detail["field"] for detail in response.json()["error"]["details"]]


def assert_422(response: httpx.Response, *expected: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    for field in expected:
        assert field in fields(response), (field, response.text)


@pytest.mark.parametrize("type_", TYPES)
async def test_crud_for_every_type(admin: httpx.AsyncClient, runtime: Core, type_: str) -> None:
    payload = body(type_, f"main_{type_}")
    created = await create(admin, payload)

    assert created["name"] == f"main_{type_}"
    assert created["type"] == type_
    assert created["isDefault"] is True  # the first profile
    assert created["health"] == {"status": "unknown", "error": None, "checkedAt": None}
    assert created["createdAt"] <= created["updatedAt"]
    for key in ("description", "senderEmail", "senderName", "signature"):
        assert created[key] == payload.get(key, "" if key == "description" else None)
    shown = created["settings"]
    for key, value in payload["settings"].items():
        if key in SECRETS[type_]:
            assert key not in shown
            assert shown[f"{key}Set"] is True
            assert value not in str(created)
        else:
            assert shown[key] == value, key

    got = await admin.get(f"/api/v1/servers/main_{type_}")
    assert got.status_code == 200
    assert got.json() == created
    listed = (await admin.get("/api/v1/servers")).json()
    assert listed["items"] == [created]
    assert listed["default"] == f"main_{type_}"
    assert listed["builtinDefault"] is False

    # PUT replaces the whole profile; the secrets it does not mention are kept
    replacement = body(type_, f"main_{type_}", description="replaced")
    replacement.pop("senderName", None)
    for key in SECRETS[type_]:
        del replacement["settings"][key]
    replaced = await admin.put(f"/api/v1/servers/main_{type_}", json=replacement)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["description"] == "replaced"
    assert replaced.json()["senderName"] is None
    assert replaced.json()["isDefault"] is True
    config = await stored_config(runtime, f"main_{type_}")
    for key in SECRETS[type_]:
        assert secret(config, key) == payload["settings"][key]

    patched = await admin.patch(
        f"/api/v1/servers/main_{type_}", json={"description": "patched", "senderName": "Ops"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["description"] == "patched"
    assert patched.json()["senderName"] == "Ops"
    assert patched.json()["senderEmail"] == payload["senderEmail"]
    assert patched.json()["settings"] == replaced.json()["settings"]

    assert (await admin.delete(f"/api/v1/servers/main_{type_}")).status_code == 204
    gone = await admin.get(f"/api/v1/servers/main_{type_}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"
    assert (await admin.get("/api/v1/servers")).json()["items"] == []


async def test_every_type_side_by_side(admin: httpx.AsyncClient) -> None:
    for type_ in TYPES:
        await create(admin, body(type_, f"p_{type_}"))
    listed = (await admin.get("/api/v1/servers")).json()
    assert [(item["name"], item["type"]) for item in listed["items"]] == sorted(
        (f"p_{t}", t) for t in TYPES
    )
    assert listed["default"] == "p_smtp"
    assert [item["name"] for item in listed["items"] if item["isDefault"]] == ["p_smtp"]


FIELD_LIMITS: list[tuple[dict[str, Any], bool]] = [
    ({"name": "a" * 50}, True),
    ({"name": "Relay_2_EU"}, True),
    ({"name": "a" * 51}, False),
    ({"name": ""}, False),
    ({"name": "has space"}, False),
    ({"name": "dash-ed"}, False),
    ({"name": "dot.ted"}, False),
    ({"name": "ünï"}, False),
    ({"description": "d" * 1000}, True),
    ({"description": "d" * 1001}, False),
    ({"signature": "s" * 250}, True),
    ({"signature": "s" * 251}, False),
    ({"senderEmail": "reports#1&2@example.com"}, True),
    ({"senderEmail": "not-an-address"}, False),
    ({"senderEmail": "a@example.com\r\nBcc: x@example.com"}, False),
    ({"senderName": "Ops\r\nBcc: x@example.com"}, False),
    ({"maxRecipientsPerMessage": 0}, False),
    ({"maxRecipientsPerMessage": 1}, True),
]


async def test_field_limits(admin: httpx.AsyncClient) -> None:
    for changes, ok in FIELD_LIMITS:
        payload = {**body("sendgrid", "limits"), **changes}
        response = await admin.post("/api/v1/servers", json=payload)
        if ok:
            assert response.status_code == 201, (changes, response.text)
            for key, value in changes.items():
                assert response.json()[key] == value
            name = response.json()["name"]
            assert (await admin.delete(f"/api/v1/servers/{name}")).status_code == 204
        else:
            assert_422(response, *changes)
        assert (await admin.get("/api/v1/servers")).json()["items"] == [], changes


SECURITY_MODES = [
    ("none", False, True, False, 25),
    ("starttls", False, False, False, 25),
    ("starttls_required", False, False, True, 25),
    ("tls", True, False, False, 465),
]


async def test_sage_x3_security_modes_map_onto_the_flags(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    for mode, *flags, port in SECURITY_MODES:
        created = await create(
            admin,
            {
                "name": f"x3_{mode}",
                "type": "smtp",
                "settings": {"host": "relay.lan", "security": mode},
            },
        )
        settings = created["settings"]
        assert "security" not in settings
        assert [settings["secure"], settings["ignoreTLS"], settings["requireTLS"]] == flags, mode
        assert settings["port"] == port, mode
        config = await stored_config(runtime, f"x3_{mode}")
        assert isinstance(config, SmtpConfig)
        assert [config.secure, config.ignore_tls, config.require_tls] == flags, mode


async def test_unknown_security_mode_is_422(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/api/v1/servers", json={"name": "x3", "type": "smtp", "settings": {"security": "ssl3"}}
    )
    assert response.status_code == 422
    assert any(f.startswith("settings") for f in fields(response))
    assert "security" in response.json()["error"]["details"][0]["message"]


async def test_port_defaults(admin: httpx.AsyncClient) -> None:
    for n, (given, port) in enumerate(
        [
            ({}, 25),
            ({"secure": False}, 25),
            ({"secure": True}, 465),
            ({"secure": True, "port": 2465}, 2465),
            ({"port": 587}, 587),
        ]
    ):
        created = await create(admin, {"name": f"ports{n}", "type": "smtp", "settings": given})
        assert created["settings"]["port"] == port, given
        assert created["settings"]["host"] == "localhost"


async def test_a_defaulted_port_follows_secure(admin: httpx.AsyncClient) -> None:
    await create(admin, {"name": "p", "type": "smtp", "settings": {"host": "relay.lan"}})
    patched = await admin.patch("/api/v1/servers/p", json={"settings": {"secure": True}})
    assert patched.json()["settings"]["port"] == 465


BAD_SMTP_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"port": 0}, "settings.port"),
    ({"port": 65536}, "settings.port"),
    ({"port": "smtp"}, "settings.port"),
    ({"connectionTimeout": 0}, "settings.connectionTimeout"),
    ({"greetingTimeout": -1}, "settings.greetingTimeout"),
    ({"socketTimeout": 0}, "settings.socketTimeout"),
    ({"host": ""}, "settings.host"),
    ({"host": "a b"}, "settings.host"),
    ({"host": "169.254.169.254"}, "settings.host"),
    ({"authMethod": "ntlm"}, "settings.authMethod"),
    ({"proxy": "ftp://proxy"}, "settings.proxy"),
    ({"maxConnections": 0}, "settings.maxConnections"),
    ({"oauth2": {"clientId": "x"}}, "settings.oauth2.tokenUrl"),
    ({"caCertificates": "not a pem"}, "settings.caCertificates"),
    ({"caCertificates": "\u00f3\u00f1z"}, "settings.caCertificates"),  # not ASCII: was a 500
    ({"clientCertificate": "\u00e9", "clientKey": "k"}, "settings.clientCertificate"),
    ({"ignoreTls": True}, "settings.ignoreTls"),
    ({"ignoreTLS": True, "requireTLS": True}, "settings.requireTLS"),
]


async def test_bad_smtp_settings_are_422(admin: httpx.AsyncClient) -> None:
    for given, field in BAD_SMTP_SETTINGS:
        response = await admin.post(
            "/api/v1/servers", json={"name": "bad", "type": "smtp", "settings": given}
        )
        assert_422(response, field)
    assert (await admin.get("/api/v1/servers")).json()["items"] == []


async def test_bad_provider_settings_are_422(admin: httpx.AsyncClient) -> None:
    for type_, given, field in [
        ("mandrill", {"apiKey": None}, "settings.apiKey"),
        ("ses", {"secretAccessKey": None}, "settings.secretAccessKey"),
        ("ses", {"region": "moon"}, "settings.region"),
        ("ses", {"accessKeyId": "short"}, "settings.accessKeyId"),
        ("mailgun", {"region": "asia"}, "settings.region"),
        ("mailgun", {"domain": None}, "settings.domain"),
        ("msgraph", {"tenantId": "a/b"}, "settings.tenantId"),
        ("msgraph", {"graphUrl": "file:///etc/passwd"}, "settings.graphUrl"),
        ("sendgrid", {"apiKey": ""}, "settings.apiKey"),
    ]:
        payload = body(type_, "bad")
        payload["settings"] = {
            k: v for k, v in (payload["settings"] | given).items() if v is not None
        }
        assert_422(await admin.post("/api/v1/servers", json=payload), field)
    assert (await admin.get("/api/v1/servers")).json()["items"] == []


async def test_refused_create_bodies(admin: httpx.AsyncClient) -> None:
    for payload, field in [
        ({"name": "t", "type": "postfix"}, "type"),
        ({"name": "t"}, "type"),
        ({"type": "smtp"}, "name"),
        ({"name": "t", "type": "smtp", "colour": "blue"}, "colour"),
        ({"name": "t", "type": "smtp", "settings": {"apiKey": "x"}}, "settings.apiKey"),
        (
            {"name": "t", "type": "sendgrid", "settings": {"apiKey": "k", "pass": "x"}},
            "settings.pass",
        ),
        ({"name": "t", "type": "smtp", "id": 7}, "id"),
        ({"name": "t", "type": "smtp", "createdAt": "2026-01-01T00:00:00Z"}, "createdAt"),
        ({"name": "t", "type": "smtp", "health": {"status": "ok"}}, "health"),
        ({"name": "t", "type": "smtp", "settings": {"passSet": True}}, "settings.passSet"),
        ({"name": "t", "type": "smtp", "isDefault": "maybe"}, "isDefault"),
    ]:
        assert_422(await admin.post("/api/v1/servers", json=payload), field)
    assert (await admin.get("/api/v1/servers")).json()["items"] == []


async def test_read_only_and_unknown_fields_leave_the_row_unchanged(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    created = await create(admin, body("smtp", "relay"))
    extras: list[dict[str, Any]] = [
        {"id": 1},
        {"createdAt": "2020-01-01T00:00:00Z"},
        {"updatedAt": "2020-01-01T00:00:00Z"},
        {"health": {"status": "ok", "error": None, "checkedAt": None}},
        {"unknown": True},
        {"settings": {"passSet": False}},
        {"settings": {"bogus": 1}},
    ]
    for extra in extras:
        key = next(iter(extra))
        field = key if key != "settings" else f"settings.{next(iter(extra[key]))}"
        patch = {"description": "changed", **extra}
        assert_422(await admin.patch("/api/v1/servers/relay", json=patch), field)
        whole = body("smtp", "relay", description="changed")
        whole["settings"] = {**whole["settings"], **extra.get("settings", {})}
        whole |= {k: v for k, v in extra.items() if k != "settings"}
        assert_422(await admin.put("/api/v1/servers/relay", json=whole), field)
        assert (await admin.get("/api/v1/servers/relay")).json() == created
    assert secret(await stored_config(runtime, "relay"), "pass") == "Smtp-Pa55word!#&"


async def test_a_get_answer_is_not_a_valid_put_body(admin: httpx.AsyncClient) -> None:
    """What GET shows (health, timestamps, passSet) is read-only: sending it back is a 422."""
    created = await create(admin, body("smtp", "relay"))
    response = await admin.put("/api/v1/servers/relay", json=created)
    assert_422(response, *READ_ONLY, "settings.passSet")


async def test_omitted_secret_is_kept_and_null_clears_it(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    await create(admin, body("smtp", "relay"))
    patched = await admin.patch("/api/v1/servers/relay", json={"settings": {"port": 2525}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["settings"]["port"] == 2525
    assert patched.json()["settings"]["passSet"] is True
    assert secret(await stored_config(runtime, "relay"), "pass") == "Smtp-Pa55word!#&"

    changed = await admin.patch("/api/v1/servers/relay", json={"settings": {"pass": "n3w-pass"}})
    assert changed.json()["settings"]["passSet"] is True
    assert "n3w-pass" not in changed.text
    assert secret(await stored_config(runtime, "relay"), "pass") == "n3w-pass"

    cleared = await admin.patch("/api/v1/servers/relay", json={"settings": {"pass": None}})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["settings"]["passSet"] is False
    assert cleared.json()["settings"]["user"] == "reports@contoso.example"
    assert secret(await stored_config(runtime, "relay"), "pass") is None

    # PUT: the same rules
    whole = body("smtp", "relay")
    put = await admin.put("/api/v1/servers/relay", json=whole)
    assert put.json()["settings"]["passSet"] is True
    del whole["settings"]["pass"]
    kept = await admin.put("/api/v1/servers/relay", json=whole)
    assert kept.json()["settings"]["passSet"] is True
    assert secret(await stored_config(runtime, "relay"), "pass") == "Smtp-Pa55word!#&"
    whole["settings"]["pass"] = None
    put_cleared = await admin.put("/api/v1/servers/relay", json=whole)
    assert put_cleared.status_code == 200, put_cleared.text
    assert put_cleared.json()["settings"]["passSet"] is False
    assert secret(await stored_config(runtime, "relay"), "pass") is None


async def test_nested_secrets_are_kept_and_cleared(admin: httpx.AsyncClient, runtime: Core) -> None:
    oauth2 = {
        "tokenUrl": "https://login.example.com/oauth2/v2.0/token",
        "clientId": "client-1",
        "clientSecret": "oauth-Cl1ent-Secret",
        "refreshToken": "oauth-Refr3sh-Token",
    }
    payload = body("smtp", "o365")
    payload["settings"] |= {"authMethod": "xoauth2", "oauth2": oauth2}
    created = await create(admin, payload)
    assert created["settings"]["oauth2"]["clientSecretSet"] is True
    assert created["settings"]["oauth2"]["refreshTokenSet"] is True
    assert "oauth-" not in str(created)

    patched = await admin.patch(
        "/api/v1/servers/o365", json={"settings": {"oauth2": {"clientId": "client-2"}}}
    )
    assert patched.status_code == 200, patched.text
    config = await stored_config(runtime, "o365")
    assert isinstance(config, SmtpConfig)
    assert config.oauth2 is not None
    assert config.oauth2.client_id == "client-2"
    assert config.oauth2.client_secret is not None
    assert config.oauth2.client_secret.get_secret_value() == "oauth-Cl1ent-Secret"

    cleared = await admin.patch(
        "/api/v1/servers/o365", json={"settings": {"oauth2": {"refreshToken": None}}}
    )
    assert cleared.json()["settings"]["oauth2"]["refreshTokenSet"] is False
    assert cleared.json()["settings"]["oauth2"]["clientSecretSet"] is True


async def test_patch_can_change_the_type(admin: httpx.AsyncClient, runtime: Core) -> None:
    await create(admin, body("smtp", "relay"))
    missing = await admin.patch("/api/v1/servers/relay", json={"type": "sendgrid"})
    assert_422(missing, "settings.apiKey")
    assert (await admin.get("/api/v1/servers/relay")).json()["type"] == "smtp"

    changed = await admin.patch(
        "/api/v1/servers/relay", json={"type": "sendgrid", "settings": {"apiKey": "SG.new.key"}}
    )
    assert changed.status_code == 200, changed.text
    out = changed.json()
    assert out["type"] == "sendgrid"
    assert out["settings"] == {
        "apiKeySet": True,
        "baseUrl": "https://api.sendgrid.com",
        "webhookPublicKey": None,
    }
    assert out["senderEmail"] == "reports@contoso.example"  # common fields stay
    assert out["isDefault"] is True
    config = await stored_config(runtime, "relay")
    assert secret(config, "apiKey") == "SG.new.key"
    assert "pass" not in config.model_dump(by_alias=True)


async def test_put_can_change_the_type_without_carrying_secrets(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    await create(admin, body("mandrill", "api"))
    response = await admin.put("/api/v1/servers/api", json=body("sendgrid", "api"))
    assert response.status_code == 200, response.text
    assert (
        secret(await stored_config(runtime, "api"), "apiKey")
        == (BODIES["sendgrid"]["settings"]["apiKey"])
    )
    # sendgrid needs its own key: the mandrill one is not carried over
    bare = body("mandrill", "api")
    bare["settings"] = {}
    assert_422(await admin.put("/api/v1/servers/api", json=bare), "settings.apiKey")


async def test_a_profile_cannot_be_renamed(admin: httpx.AsyncClient) -> None:
    await create(admin, body("sendgrid", "one"))
    assert_422(await admin.patch("/api/v1/servers/one", json={"name": "two"}), "name")
    assert_422(await admin.put("/api/v1/servers/one", json=body("sendgrid", "two")), "name")
    # the name in a PUT may repeat the path
    same = await admin.put("/api/v1/servers/one", json=body("sendgrid", "one"))
    assert same.status_code == 200
    assert (await admin.get("/api/v1/servers/two")).status_code == 404


async def test_names_are_unique(admin: httpx.AsyncClient) -> None:
    await create(admin, body("sendgrid", "one"))
    again = await admin.post("/api/v1/servers", json=body("mailgun", "one"))
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "conflict"
    assert (await admin.get("/api/v1/servers/one")).json()["type"] == "sendgrid"


async def test_fallback_must_name_another_existing_profile(admin: httpx.AsyncClient) -> None:
    assert_422(
        await admin.post("/api/v1/servers", json=body("smtp", "primary", fallback="ghost")),
        "fallback",
    )
    assert_422(
        await admin.post("/api/v1/servers", json=body("smtp", "primary", fallback="primary")),
        "fallback",
    )
    assert_422(
        await admin.post("/api/v1/servers", json=body("smtp", "primary", fallback="bad name")),
        "fallback",
    )
    await create(admin, body("sendgrid", "backup"))
    primary = await create(admin, body("smtp", "primary", fallback="backup"))
    assert primary["fallback"] == "backup"
    assert_422(
        await admin.patch("/api/v1/servers/primary", json={"fallback": "primary"}), "fallback"
    )
    assert_422(await admin.patch("/api/v1/servers/backup", json={"fallback": "backup"}), "fallback")

    # deleting the fallback clears the reference
    assert (await admin.delete("/api/v1/servers/backup")).status_code == 204
    assert (await admin.get("/api/v1/servers/primary")).json()["fallback"] is None


async def test_unknown_profile_is_404(admin: httpx.AsyncClient) -> None:
    for method, path, payload in [
        ("GET", "/api/v1/servers/ghost", None),
        ("PUT", "/api/v1/servers/ghost", body("sendgrid", "ghost")),
        ("PATCH", "/api/v1/servers/ghost", {"description": "x"}),
        ("DELETE", "/api/v1/servers/ghost", None),
        ("POST", "/api/v1/servers/ghost/duplicate", {}),
    ]:
        response = await admin.request(method, path, json=payload)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"]["code"] == "not_found"


PROXY = "http://proxy%20user:Pr0xy-S3cret%21@proxy.example:3128"


async def test_the_smtp_proxy_is_a_secret(admin: httpx.AsyncClient, runtime: Core) -> None:
    """The proxy URL may carry user:pass: encrypted at rest, never answered, `proxySet`."""
    payload = body("smtp", "relay")
    payload["settings"]["proxy"] = PROXY
    created = await create(admin, payload)

    assert "proxy" not in created["settings"]
    assert created["settings"]["proxySet"] is True
    assert "Pr0xy" not in str(created)
    assert "proxy.example" not in str(created)
    async with runtime.sessions() as session:
        row = await service.get_profile(session, "relay")
    assert "proxy" not in row.settings
    assert "proxy" in runtime.box.decrypt(row.secrets or "")
    assert secret(await stored_config(runtime, "relay"), "proxy") == PROXY

    # omitted: kept (PATCH and PUT); null: cleared
    patched = await admin.patch("/api/v1/servers/relay", json={"settings": {"port": 2525}})
    assert patched.json()["settings"]["proxySet"] is True
    del payload["settings"]["proxy"]
    put = await admin.put("/api/v1/servers/relay", json=payload)
    assert put.json()["settings"]["proxySet"] is True
    assert secret(await stored_config(runtime, "relay"), "proxy") == PROXY
    cleared = await admin.patch("/api/v1/servers/relay", json={"settings": {"proxy": None}})
    assert cleared.json()["settings"]["proxySet"] is False
    assert secret(await stored_config(runtime, "relay"), "proxy") is None

    # a bad URL is a 422 that does not echo it
    bad = await admin.patch(
        "/api/v1/servers/relay", json={"settings": {"proxy": "ftp://u:Leak3d-pw@proxy"}}
    )
    assert_422(bad, "settings.proxy")
    assert "Leak3d" not in bad.text


async def test_a_proxy_stored_in_clear_reads_as_the_secret(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    """Rows from before the proxy became a secret hold it in the public settings: it reads as
    set (never shown), sends use it, an update that omits it keeps it, and the next save
    encrypts it. No migration."""
    await create(admin, body("smtp", "old"))
    async with runtime.sessions() as session, session.begin():
        row = await service.get_profile(session, "old")
        row.settings = {**row.settings, "proxy": PROXY}

    got = (await admin.get("/api/v1/servers/old")).json()
    assert got["settings"]["proxySet"] is True
    assert "proxy" not in got["settings"]
    assert "Pr0xy" not in str(got)
    assert secret(await stored_config(runtime, "old"), "proxy") == PROXY

    replacement = body("smtp", "old", description="saved again")
    put = await admin.put("/api/v1/servers/old", json=replacement)
    assert put.status_code == 200, put.text
    assert put.json()["settings"]["proxySet"] is True
    async with runtime.sessions() as session:
        row = await service.get_profile(session, "old")
    assert "proxy" not in row.settings
    assert runtime.box.decrypt(row.secrets or "")["proxy"] == PROXY
    assert secret(await stored_config(runtime, "old"), "proxy") == PROXY
