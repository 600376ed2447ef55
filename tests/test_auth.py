"""HTTP Basic on every endpoint but health: 401/403/429, the credential cache, argon2id hashes."""

from __future__ import annotations

import asyncio
import base64
import re
import time

import httpx
import pytest
from sqlalchemy import select

import app.users.passwords
from app.deps import Runtime
from app.security import VERIFYING_AT_ONCE
from app.users.models import User
from tests.conftest import ADMIN, SENDER, basic

pytestmark = pytest.mark.anyio


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def assert_challenge(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].lower().startswith("basic")
    assert response.json()["error"]["code"] == "unauthorized"


BAD_HEADERS = [
    "",
    "Bearer abc",
    "Basic",
    "Basic !!!not-base64!!!",
    f"Basic {_b64(b'no-colon-here')}",
    f"Basic {_b64(bytes([0xFF, 0xFE, 0x3A, 0x41]))}",
    f"Basic {_b64(b'admin:wrong-password')}",
    f"Basic {_b64(b':')}",
]


async def test_missing_or_bad_credentials_are_401_with_challenge(anon: httpx.AsyncClient) -> None:
    assert_challenge(await anon.get("/api/v1/servers"))
    for header in BAD_HEADERS:
        response = await anon.get("/api/v1/servers", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert_challenge(response)


async def test_every_api_endpoint_needs_credentials(anon: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/v1/servers"),
        ("POST", "/api/v1/servers"),
        ("GET", "/api/v1/servers/x"),
        ("PATCH", "/api/v1/servers/x"),
        ("POST", "/api/v1/servers/x/duplicate"),
        ("GET", "/api/v1/settings/email_server"),
        ("POST", "/api/v1/settings/email_server"),
        ("GET", "/api/branding"),
        ("POST", "/api/branding"),
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/messages"),
        ("GET", "/api/v1/messages"),
    ]:
        response = await anon.request(method, path, json={})
        assert response.status_code == 401, (method, path)
        assert_challenge(response)


async def test_unknown_user_and_wrong_password_look_the_same(anon: httpx.AsyncClient) -> None:
    unknown = await anon.get("/api/v1/servers", headers=basic(("nobody", ADMIN[1])))
    wrong = await anon.get("/api/v1/servers", headers=basic((ADMIN[0], "not-the-password")))
    assert_challenge(unknown)
    assert_challenge(wrong)
    assert unknown.json() == wrong.json()


async def test_health_endpoints_need_no_auth(anon: httpx.AsyncClient) -> None:
    live = await anon.get("/healthz")
    assert live.status_code == 200
    assert live.text == "ok"
    ready = await anon.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_admin_is_let_in(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/api/v1/servers")
    assert response.status_code == 200, response.text


async def test_sender_on_admin_endpoints_is_403(sender: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/v1/servers"),
        ("POST", "/api/v1/servers"),
        ("GET", "/api/v1/settings/email_server"),
        ("POST", "/api/v1/settings/email_server"),
        ("GET", "/api/branding"),
        ("GET", "/api/v1/users"),
        ("DELETE", "/api/v1/users/admin"),
    ]:
        response = await sender.request(method, path)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["code"] == "forbidden"


async def test_verified_credentials_are_cached(
    admin: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = app.users.passwords.verify_password

    def counting(password: str, password_hash: str) -> bool:
        calls.append(password)
        return real(password, password_hash)

    monkeypatch.setattr("app.security.verify_password", counting)
    assert (await admin.get("/api/v1/servers")).status_code == 200
    assert len(calls) == 1
    for _ in range(3):
        assert (await admin.get("/api/v1/servers")).status_code == 200
    assert len(calls) == 1, "argon2 ran again for cached credentials"
    # a different password for the same user is not served from the cache
    bad = await admin.get("/api/v1/servers", headers=basic((ADMIN[0], "other-password")))
    assert bad.status_code == 401
    assert len(calls) == 2


async def test_concurrent_requests_verify_a_credential_once(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a credential is not cached (first use, or expired under load), the requests that
    carry it meanwhile do not each run argon2 (19 MiB and ~50 ms of CPU each), and wrong
    passwords run it at most VERIFYING_AT_ONCE at a time."""
    running, most, calls = 0, 0, list[str]()
    real = app.users.passwords.verify_password

    def counting(password: str, password_hash: str) -> bool:
        nonlocal running, most
        running += 1
        most = max(most, running)
        calls.append(password)
        try:
            time.sleep(0.05)
            return real(password, password_hash)
        finally:
            running -= 1

    monkeypatch.setattr("app.security.verify_password", counting)
    answers = await asyncio.gather(*(admin.get("/api/v1/servers") for _ in range(12)))
    assert [a.status_code for a in answers] == [200] * 12
    assert calls == [ADMIN[1]]

    wrong = [basic((ADMIN[0], f"wrong-{i}")) for i in range(6)]
    answers = await asyncio.gather(*(anon.get("/api/v1/servers", headers=h) for h in wrong))
    assert [a.status_code for a in answers] == [401] * 6
    assert len(calls) == 7
    assert most == VERIFYING_AT_ONCE


async def test_cache_is_dropped_when_a_password_changes(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    assert (await sender.get("/api/v1/messages/unknown")).status_code == 404
    changed = await admin.patch("/api/v1/users/sender", json={"password": "a-new-password-456"})
    assert changed.status_code == 200, changed.text
    assert_challenge(await sender.get("/api/v1/messages/unknown"))
    fresh = await sender.get(
        "/api/v1/messages/unknown", headers=basic((SENDER[0], "a-new-password-456"))
    )
    assert fresh.status_code == 404


async def test_eleventh_failed_login_in_a_minute_is_429(anon: httpx.AsyncClient) -> None:
    wrong = basic((ADMIN[0], "wrong-password"))
    for _ in range(10):
        assert_challenge(await anon.get("/api/v1/servers", headers=wrong))
    throttled = await anon.get("/api/v1/servers", headers=wrong)
    assert throttled.status_code == 429, throttled.text
    assert 1 <= int(throttled.headers["retry-after"]) <= 61
    assert throttled.json()["error"]["code"] == "too_many_requests"
    # the right password from the same client is throttled too until the window passes
    right = await anon.get("/api/v1/servers", headers=basic(ADMIN))
    assert right.status_code == 429


async def test_throttle_is_per_client(anon: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    wrong = basic((ADMIN[0], "wrong-password"))
    for _ in range(11):
        await anon.get("/api/v1/servers", headers=wrong)
    assert (await anon.get("/api/v1/servers", headers=wrong)).status_code == 429
    # the admin client has another address
    assert (await admin.get("/api/v1/servers")).status_code == 200


async def test_password_hashes_are_argon2id_with_owasp_parameters(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, runtime: Runtime
) -> None:
    async with runtime.sessions() as session:
        hashes = list(await session.scalars(select(User.password_hash)))
    assert len(hashes) == 2
    for stored in hashes:
        assert ADMIN[1] not in stored
        assert SENDER[1] not in stored
        match = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[^$]+\$[^$]+", stored)
        assert match, stored
        memory, rounds, lanes = map(int, match.groups())
        assert memory >= 19_456
        assert rounds >= 2
        assert lanes >= 1
