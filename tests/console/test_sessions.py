"""Console login: the API's users and throttle, sessions in the database, CSRF, headers, roles."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from app.console import sessions
from app.console.models import ConsoleSession
from app.db import transaction, utcnow
from app.wiring import Core
from tests.conftest import ADMIN, SENDER
from tests.console.helpers import csrf_of, login

pytestmark = pytest.mark.anyio


async def test_login_sets_a_session_cookie_and_security_headers(
    browser_client: httpx.AsyncClient, runtime: Core
) -> None:
    page = await browser_client.get("/console/login")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    response = await browser_client.post(
        "/console/login",
        data={"csrf": csrf_of(page.text), "name": ADMIN[0], "password": ADMIN[1]},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/console/"
    cookie = response.headers["set-cookie"]
    assert "postroom_console=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    dashboard = await browser_client.get("/console/")
    assert dashboard.status_code == 200
    assert "Dashboard" in dashboard.text
    async with runtime.sessions() as session:
        rows = list(await session.scalars(select(ConsoleSession)))
    assert len(rows) == 1
    token = browser_client.cookies["postroom_console"]
    assert rows[0].token_hash == sessions.token_hash(token) != token  # only the hash is stored


async def test_the_cookie_is_secure_over_tls(app_runtime: tuple[Any, Core]) -> None:
    transport = httpx.ASGITransport(app=app_runtime[0], client=("203.0.113.21", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="https://postroom.test") as client:
        page = await client.get("/console/login")
        response = await client.post(
            "/console/login",
            data={"csrf": csrf_of(page.text), "name": ADMIN[0], "password": ADMIN[1]},
        )
    assert "Secure" in response.headers["set-cookie"]


async def test_x_forwarded_proto_counts_only_when_trusted(
    browser_client: httpx.AsyncClient, runtime: Core
) -> None:
    headers = {"X-Forwarded-Proto": "https"}
    page = await browser_client.get("/console/login")
    data = {"csrf": csrf_of(page.text), "name": ADMIN[0], "password": ADMIN[1]}
    untrusted = await browser_client.post("/console/login", data=data, headers=headers)
    assert "Secure" not in untrusted.headers["set-cookie"]
    runtime.settings.console_trust_forwarded_proto = True
    page = await browser_client.get("/console/login")
    data["csrf"] = csrf_of(page.text)
    trusted = await browser_client.post("/console/login", data=data, headers=headers)
    assert "Secure" in trusted.headers["set-cookie"]


async def test_wrong_password_and_the_shared_throttle(
    browser_client: httpx.AsyncClient, anon: httpx.AsyncClient, runtime: Core
) -> None:
    page = await browser_client.get("/console/login")
    data = {"csrf": csrf_of(page.text), "name": ADMIN[0], "password": "wrong"}
    refused = await browser_client.post("/console/login", data=data)
    assert refused.status_code == 401
    assert "Wrong user name or password" in refused.text
    assert "postroom_console=" not in refused.headers.get("set-cookie", "")
    # the API's failed logins and the console's count in the same throttle, per client address
    limit = runtime.settings.login_failures_per_minute
    for _ in range(limit - 1):
        await browser_client.post("/console/login", data=data)
    throttled = await browser_client.post("/console/login", data=data | {"password": ADMIN[1]})
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"]


async def test_a_post_without_the_csrf_token_is_refused(
    browser_client: httpx.AsyncClient, runtime: Core
) -> None:
    no_token = await browser_client.post(
        "/console/login", data={"name": ADMIN[0], "password": ADMIN[1]}
    )
    assert no_token.status_code == 403
    csrf = await login(browser_client, *ADMIN)
    for path in ("/console/logout", "/console/servers/new"):
        refused = await browser_client.post(path, data={"type": "smtp", "name": "x"})
        assert refused.status_code == 403, path
        assert "CSRF" in refused.text
        wrong = await browser_client.post(path, data={"csrf": csrf + "x", "type": "smtp"})
        assert wrong.status_code == 403
    assert (await browser_client.get("/console/")).status_code == 200  # still logged in
    logout = await browser_client.post("/console/logout", data={"csrf": csrf})
    assert logout.status_code == 303
    after = await browser_client.get("/console/")
    assert after.status_code == 303
    assert after.headers["location"].startswith("/console/login")
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ConsoleSession)) == 0


async def test_an_idle_session_expires_and_a_revoked_one_ends(
    browser_client: httpx.AsyncClient, runtime: Core
) -> None:
    await login(browser_client, *ADMIN)
    async with transaction(runtime.sessions) as session:
        await session.execute(
            update(ConsoleSession).values(seen_at=utcnow() - timedelta(hours=11, minutes=59))
        )
    assert (await browser_client.get("/console/")).status_code == 200  # and it is touched
    async with transaction(runtime.sessions) as session:
        seen = await session.scalar(select(ConsoleSession.seen_at))
        assert seen is not None
        assert utcnow() - seen < timedelta(minutes=1)
        await session.execute(update(ConsoleSession).values(seen_at=utcnow() - timedelta(hours=12)))
    expired = await browser_client.get("/console/servers")
    assert expired.status_code == 303
    assert expired.headers["location"] == "/console/login?next=%2Fconsole%2Fservers"
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ConsoleSession)) == 0

    await login(browser_client, *ADMIN)
    async with transaction(runtime.sessions) as session:
        assert await sessions.revoke_user(session, ADMIN[0]) == 1
    assert (await browser_client.get("/console/")).status_code == 303


async def test_a_password_change_ends_the_session(
    browser_client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await login(browser_client, *ADMIN)
    changed = await admin.patch(
        f"/api/v1/users/{ADMIN[0]}", json={"password": "another-password-456"}
    )
    assert changed.status_code == 200, changed.text
    assert (await browser_client.get("/console/")).status_code == 303


async def test_a_sender_sees_its_own_pages_only(
    browser_client: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    await login(browser_client, *SENDER)
    home = await browser_client.get("/console/")
    assert home.status_code == 200
    assert "Welcome, sender" in home.text
    assert 'href="/console/servers"' not in home.text
    for path in ("/console/servers", "/console/servers/new?type=smtp"):
        refused = await browser_client.get(path)
        assert refused.status_code == 403, path
        assert "for admins" in refused.text


async def test_next_is_a_console_page_only(browser_client: httpx.AsyncClient) -> None:
    page = await browser_client.get("/console/login")
    data = {"csrf": csrf_of(page.text), "name": ADMIN[0], "password": ADMIN[1]}
    elsewhere = await browser_client.post(
        "/console/login", data=data | {"next": "//evil.example/console/"}
    )
    assert elsewhere.headers["location"] == "/console/"
