"""Secrets at rest: encrypted in the database, never in a response, an error or a log line; keys
rotate; the generated key file is private."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
import trustme
from cryptography.fernet import Fernet
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.crypto import KEY_FILE, SecretBoxError
from app.main import create_app
from app.servers import service
from app.servers.models import ServerProfile
from app.wiring import CORE, Core
from tests.conftest import ADMIN, basic, raw_dump
from tests.servers.helpers import BODIES, SECRETS, body, secret, stored_config

T = TypeVar("T")


def encodings(value: str) -> set[bytes]:
    """How a leaked secret could look: as is, base64 (both alphabets), URL-encoded, JSON-escaped."""
    raw = value.encode()
    forms = {
        raw,
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        urllib.parse.quote(value, safe="").encode(),
        urllib.parse.quote_plus(value).encode(),
        value.replace("\n", "\\n").encode(),
    }
    return {form for form in forms if len(form) >= 8}


def leaks(haystack: bytes | str, secrets: list[str]) -> list[str]:
    data = haystack.encode() if isinstance(haystack, str) else haystack
    return [s for s in secrets if any(form in data for form in encodings(s))]


def pem_needles(pem: str) -> list[str]:
    """A PEM is stored JSON-escaped: look for each of its base64 lines as well as the whole."""
    return [pem, *(line for line in pem.splitlines() if len(line) > 20)]


WEBHOOK_SECRETS = {"mandrill": ["webhookKey"], "mailgun": ["webhookSigningKey"]}
"""The keys that verify a provider's event webhooks (app/transports/hook_settings.py): secrets
too, tracked here rather than in the bodies every profile test copies."""


def tracked_secrets() -> tuple[list[dict[str, Any]], list[str], str]:
    """Profiles of every type with distinct secrets, and the list of those secrets."""
    ca = trustme.CA()
    leaf = ca.issue_cert("client.example")
    key_pem = leaf.private_key_pem.bytes().decode()
    cert_pem = leaf.cert_chain_pems[0].bytes().decode()
    payloads: list[dict[str, Any]] = []
    secrets: list[str] = []
    for n, type_ in enumerate(BODIES):
        payload = body(type_, f"p_{type_}")
        for key in [*SECRETS[type_], *WEBHOOK_SECRETS.get(type_, ())]:
            payload["settings"][key] = f"{type_}-{key}-Zq8{n}x/+=&#%?"
            secrets.append(payload["settings"][key])
        payloads.append(payload)
    smtp = body("smtp", "o365")
    smtp["settings"] |= {
        "pass": "o365-pass-Wv3#&",
        "authMethod": "xoauth2",
        "oauth2": {
            "tokenUrl": "https://login.example.com/token",
            "clientId": "client-visible",
            "clientSecret": "oauth-ClientSecret-Pk7",
            "refreshToken": "oauth-RefreshToken-Jm2",
        },
        "clientCertificate": cert_pem,
        "clientKey": key_pem,
        "proxy": "socks5://prx-user:Prx-Secret-Hq4@proxy.example:1080",
    }
    payloads.append(smtp)
    secrets += ["o365-pass-Wv3#&", "oauth-ClientSecret-Pk7", "oauth-RefreshToken-Jm2"]
    secrets += ["Prx-Secret-Hq4", "prx-user:Prx-Secret-Hq4@proxy.example"]
    secrets += pem_needles(key_pem)
    return payloads, secrets, key_pem


@pytest.mark.anyio
async def test_no_secret_is_stored_answered_or_logged(
    admin: httpx.AsyncClient,
    runtime: Core,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    payloads, secrets, key_pem = tracked_secrets()
    answers: list[httpx.Response] = []

    async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await admin.request(method, path, **kwargs)
        answers.append(response)
        return response

    for payload in payloads:
        created = await call("POST", "/api/v1/servers", json=payload)
        assert created.status_code == 201, created.text
    sisense = await call(
        "POST",
        "/api/v1/settings/email_server",
        json={"host": "smtp.example.org", "pass": "Sis-Pw1#"},
    )
    assert sisense.status_code == 200, sisense.text
    secrets.append("Sis-Pw1#")

    await call("GET", "/api/v1/servers")
    await call("GET", "/api/v1/settings/email_server")
    for payload in payloads:
        name = payload["name"]
        await call("GET", f"/api/v1/servers/{name}")
        assert (
            await call("PATCH", f"/api/v1/servers/{name}", json={"description": "x"})
        ).is_success
        assert (await call("PUT", f"/api/v1/servers/{name}", json=payload)).is_success
        # 4xx answers to bodies that carry the secrets
        bad = {**payload, "signature": "s" * 251}
        assert (await call("POST", "/api/v1/servers", json=payload)).status_code == 409
        assert (await call("POST", "/api/v1/servers", json=bad)).status_code == 422
        assert (await call("PUT", f"/api/v1/servers/{name}", json=bad)).status_code == 422
        assert (await call("PATCH", f"/api/v1/servers/{name}", json=bad)).status_code == 422
        bad_settings = {**payload, "settings": {**payload["settings"], "port": 0, "extra": 1}}
        assert (await call("PUT", f"/api/v1/servers/{name}", json=bad_settings)).status_code == 422
        renamed = await call("PUT", f"/api/v1/servers/{name}", json={**payload, "name": "other"})
        assert renamed.status_code == 422
        duplicate = await call("POST", f"/api/v1/servers/{name}/duplicate", json={})
        assert duplicate.status_code in (201, 422)
    for value in ("Sis-Pw1#", secrets[0]):
        for wrong in ({"port": 0}, {"ignoreTLS": True, "requireTLS": True}, {"bogus": 1}):
            answer = await call(
                "POST", "/api/v1/settings/email_server", json={**wrong, "pass": value}
            )
            assert answer.status_code == 422
        type_error = await call("POST", "/api/v1/settings/email_server", json={"pass": [value]})
        assert type_error.status_code == 422
    malformed = await call(
        "POST",
        "/api/v1/servers",
        content=f'{{"name": "m", "type": "smtp", "settings": {{"pass": "{secrets[0]}"'.encode(),
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 400

    assert {a.status_code for a in answers} >= {200, 201, 400, 409, 422}
    # the detector finds every secret in what was sent, so the checks below can fail
    assert leaks(json.dumps(payloads) + "Sis-Pw1#", secrets) == secrets
    for answer in answers:
        assert leaks(answer.text, secrets) == [], (answer.request.url, answer.text)
        assert leaks(str(answer.headers), secrets) == []

    # the stored profiles do hold them (so the checks below can fail)
    config = await stored_config(runtime, "p_smtp")
    assert secret(config, "pass") == secrets[0]
    key_config = await stored_config(runtime, "o365")
    assert secret(key_config, "clientKey") == key_pem

    dump = await asyncio.to_thread(raw_dump, settings)
    assert b"p_mandrill" in dump  # the dump is the real data
    assert leaks(dump, secrets) == []
    fernet_key = (settings.data_dir / KEY_FILE).read_text().strip()
    assert fernet_key.encode() not in dump
    assert base64.urlsafe_b64decode(fernet_key) not in dump

    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert leaks(logged, secrets) == []


def run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


async def with_app(
    settings: Settings, work: Callable[[httpx.AsyncClient, Core], Awaitable[T]]
) -> T:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
        ) as client:
            return await work(client, CORE.of(app))


async def tokens(runtime: Core) -> dict[str, str | None]:
    async with runtime.sessions() as session:
        rows = await session.execute(select(ServerProfile.name, ServerProfile.secrets))
        return {name: token for name, token in rows}


async def decrypted(runtime: Core) -> dict[str, dict[str, str]]:
    async with runtime.sessions() as session:
        profiles = list(await session.scalars(select(ServerProfile)))
        return {p.name: runtime.box.decrypt(p.secrets) for p in profiles if p.secrets is not None}


def test_key_rotation(settings: Settings, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    payloads = [body(type_, f"p_{type_}") for type_ in BODIES]
    expected = {p["name"]: {k: p["settings"][k] for k in SECRETS[p["type"]]} for p in payloads}

    async def store(client: httpx.AsyncClient, runtime: Core) -> dict[str, str | None]:
        for payload in payloads:
            assert (await client.post("/api/v1/servers", json=payload)).status_code == 201
        return await tokens(runtime)

    old_tokens = run(with_app(settings.model_copy(update={"secret_keys": old}), store))
    assert not (settings.data_dir / KEY_FILE).exists()

    async def read(client: httpx.AsyncClient, runtime: Core) -> dict[str, dict[str, str]]:
        listed = await client.get("/api/v1/servers")
        assert listed.status_code == 200, listed.text
        return await decrypted(runtime)

    both = settings.model_copy(update={"secret_keys": f"{new}, {old}"})
    assert run(with_app(both, read)) == expected

    monkeypatch.chdir(tmp_path)
    env = {
        "POSTROOM_DATA_DIR": str(settings.data_dir),
        "POSTROOM_SECRET_KEYS": f"{new},{old}",
        "POSTROOM_MIGRATE_ON_START": str(settings.migrate_on_start).lower(),
    }
    if settings.database_url:
        env["POSTROOM_DATABASE_URL"] = settings.database_url
    result = CliRunner().invoke(cli, ["rotate-keys"], env=env)
    assert result.exit_code == 0, result.output
    assert f"re-encrypted the secrets of {len(payloads)} profiles" in result.stdout

    new_only = settings.model_copy(update={"secret_keys": new})
    assert run(with_app(new_only, read)) == expected

    async def new_tokens(client: httpx.AsyncClient, runtime: Core) -> dict[str, str | None]:
        return await tokens(runtime)

    rotated = run(with_app(new_only, new_tokens))
    assert set(rotated) == set(old_tokens)
    assert all(rotated[name] != old_tokens[name] for name in rotated)

    async def old_fails(client: httpx.AsyncClient, runtime: Core) -> None:
        async with runtime.sessions() as session:
            profile = await service.get_profile(session, "p_smtp")
            with pytest.raises(SecretBoxError):
                service.config_of(profile, runtime.box)

    run(with_app(settings.model_copy(update={"secret_keys": old}), old_fails))


def test_generated_key_file_is_private_and_kept(settings: Settings) -> None:
    assert settings.secret_keys == ""

    async def store(client: httpx.AsyncClient, runtime: Core) -> None:
        assert (await client.post("/api/v1/servers", json=body("mandrill", "m"))).status_code == 201

    run(with_app(settings, store))
    key_file = settings.data_dir / KEY_FILE
    mode = stat.S_IMODE(os.stat(key_file).st_mode)
    assert mode == 0o600, oct(mode)
    key = key_file.read_text().strip()
    Fernet(key.encode())  # a valid key

    async def read(client: httpx.AsyncClient, runtime: Core) -> str | None:
        return secret(await stored_config(runtime, "m"), "apiKey")

    # a restart reads the same key back
    assert run(with_app(settings, read)) == BODIES["mandrill"]["settings"]["apiKey"]
    assert key_file.read_text().strip() == key
