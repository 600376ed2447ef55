"""API tokens (issue 17 point 5): issued by an admin for a user, shown once, stored as a SHA-256,
listed with their last use, revoked; `Authorization: Bearer` acts as the user (role and sending
bounds) with no argon2, and a revoked or expired token, a deleted or demoted user, stop working
on every replica within a second. Two real `postroom serve` processes: test_token_replicas.py."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select

import app.users.passwords
from app.db import utcnow
from app.errors import Unauthorized
from app.users.models import ApiToken
from app.wiring import Core
from tests.conftest import ADMIN, SENDER, basic, raw_dump
from tests.console.helpers import csrf_of
from tests.test_auth import assert_challenge, client_of, replica, until_status

pytestmark = pytest.mark.anyio

TOKEN = re.compile(r"pr_[A-Za-z0-9_-]{43}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def issue(admin: httpx.AsyncClient, user: str, **body: Any) -> dict[str, Any]:
    created = await admin.post(f"/api/v1/users/{user}/tokens", json={"name": "ci", **body})
    assert created.status_code == 201, created.text
    answer: dict[str, Any] = created.json()
    return answer


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 verification from now on (the one function the Authenticator calls)."""
    calls: list[str] = []
    real = app.users.passwords.verify_password

    def counting(password: str, password_hash: str) -> bool:
        calls.append(password)
        return real(password, password_hash)

    monkeypatch.setattr("app.security.verify_password", counting)
    return calls


async def test_issue_list_and_revoke(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, sender: httpx.AsyncClient, runtime: Core
) -> None:
    expires = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    created = await issue(admin, "sender", name="billing service", expiresAt=expires.isoformat())
    token = created.pop("token")
    assert TOKEN.fullmatch(token), token
    assert created.pop("createdAt")
    assert created.pop("id")
    assert created == {
        "name": "billing service",
        "expiresAt": expires.isoformat().replace("+00:00", "Z"),
        "lastUsedAt": None,
        "revokedAt": None,
        "status": "active",
    }
    other = (await issue(admin, "sender", name="second"))["token"]
    assert other != token

    # the token works as the sender; the list never shows it again
    assert (await anon.get("/api/v1/messages/x", headers=bearer(token))).status_code == 404
    listed = await admin.get("/api/v1/users/sender/tokens")
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert [(t["name"], t["status"]) for t in items] == [
        ("billing service", "active"),
        ("second", "active"),
    ]
    assert token not in listed.text
    assert other not in listed.text
    assert "token" not in items[0]

    # the database holds its SHA-256, never the token
    dump = await asyncio.to_thread(raw_dump, runtime.settings)
    assert token.encode() not in dump
    assert hashlib.sha256(token.encode()).hexdigest().encode() in dump

    # revoke: refused at once here; the other token goes on; revoking again changes nothing
    first = items[0]["id"]
    assert (await admin.delete(f"/api/v1/users/sender/tokens/{first}")).status_code == 204
    assert_challenge(await anon.get("/api/v1/messages/x", headers=bearer(token)))
    assert (await anon.get("/api/v1/messages/x", headers=bearer(other))).status_code == 404
    revoked = (await admin.get("/api/v1/users/sender/tokens")).json()["items"][0]
    assert revoked["status"] == "revoked"
    assert revoked["revokedAt"] is not None
    assert (await admin.delete(f"/api/v1/users/sender/tokens/{first}")).status_code == 204
    again = (await admin.get("/api/v1/users/sender/tokens")).json()["items"][0]
    assert again["revokedAt"] == revoked["revokedAt"]

    # a token is revoked through its own user only; unknown ids and users are 404
    for path in [
        f"/api/v1/users/admin/tokens/{first}",
        "/api/v1/users/sender/tokens/" + "0" * 32,
        "/api/v1/users/sender/tokens/not-an-id",
        f"/api/v1/users/nobody/tokens/{first}",
    ]:
        missing = await admin.delete(path)
        assert missing.status_code == 404, (path, missing.text)
        assert missing.json()["error"]["code"] == "not_found"
    assert (await admin.get("/api/v1/users/nobody/tokens")).status_code == 404
    assert (await admin.post("/api/v1/users/nobody/tokens", json={"name": "x"})).status_code == 404

    # tokens are admin business, and a token of a sender is a sender
    assert (await sender.get("/api/v1/users/sender/tokens")).status_code == 403
    assert (await sender.post("/api/v1/users/sender/tokens", json={"name": "x"})).status_code == 403
    assert (await anon.get("/api/v1/users/sender/tokens", headers=bearer(other))).status_code == 403


__all__ = ["replica"]  # a fixture


async def test_bad_input_is_422_naming_the_field_and_stores_nothing(
    admin: httpx.AsyncClient, runtime: Core
) -> None:
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    for body, field in [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "a\r\nb"}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x", "expiresAt": past}, "expiresAt"),
        ({"name": "x", "expiresAt": "2099-01-01T00:00:00"}, "expiresAt"),  # no time zone
        ({"name": "x", "expiresAt": "next year"}, "expiresAt"),
        ({"name": "x", "expiresAt": "9999-12-31T23:59:59-14:00"}, "expiresAt"),  # year 10000
        ({"name": "x", "token": "pr_chosen"}, "token"),
    ]:
        response = await admin.post("/api/v1/users/admin/tokens", json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert [d["field"] for d in error["details"]] == [field], (body, error)
    async with runtime.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(ApiToken)) == 0


async def test_bearer_acts_as_the_user_with_its_role_and_bounds(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    """Wherever Basic works, Bearer does, as the same user: the admin's token on admin
    endpoints; the sender's on sender endpoints only, and inside the sender's From bounds."""
    admin_token = (await issue(admin, ADMIN[0]))["token"]
    sender_token = (await issue(admin, SENDER[0]))["token"]
    as_admin, as_sender = bearer(admin_token), bearer(sender_token)

    assert (await anon.get("/api/v1/servers", headers=as_admin)).status_code == 200
    assert (await anon.get("/api/v1/users", headers=as_admin)).status_code == 200
    assert (await anon.get("/api/v1/servers", headers=as_sender)).status_code == 403
    assert (await anon.get("/api/v1/users", headers=as_sender)).status_code == 403

    message = {"to": ["ann@example.org"], "subject": "s", "text": "t"}
    sent = await anon.post(
        "/api/v1/messages", json=message | {"from": "billing@example.com"}, headers=as_sender
    )
    assert sent.status_code == 202, sent.text
    record = await anon.get(f"/api/v1/messages/{sent.json()['id']}", headers=as_sender)
    assert record.status_code == 200
    assert record.json()["createdBy"] == SENDER[0]
    forged = await anon.post(
        "/api/v1/messages", json=message | {"from": "ceo@example.org"}, headers=as_sender
    )
    assert forged.status_code == 403, forged.text
    assert [d["field"] for d in forged.json()["error"]["details"]] == ["from"]
    # the admin's own records are not the sender's
    by_admin = await anon.post(
        "/api/v1/messages", json=message | {"from": "a@example.com"}, headers=as_admin
    )
    assert by_admin.status_code == 202
    hidden = await anon.get(f"/api/v1/messages/{by_admin.json()['id']}", headers=as_sender)
    assert hidden.status_code == 404


async def test_no_argon2_on_the_bearer_path(
    admin: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    app_runtime: tuple[Any, Core],
    argon2_calls: list[str],
) -> None:
    """Not on first use, not on the next requests, not from a new address, not through
    `verify` (the SMTP submission's AUTH), and not for a token that is refused."""
    token = (await issue(admin, ADMIN[0]))["token"]
    calls_before = len(argon2_calls)  # the admin client's own Basic login
    answers = await asyncio.gather(
        *(anon.get("/api/v1/servers", headers=bearer(token)) for _ in range(10))
    )
    assert [a.status_code for a in answers] == [200] * 10
    for _ in range(10):
        assert (await anon.get("/api/v1/servers", headers=bearer(token))).status_code == 200
    runtime = app_runtime[1]
    async with client_of(app_runtime[0], "198.51.100.1") as elsewhere:
        assert (await elsewhere.get("/api/v1/servers", headers=bearer(token))).status_code == 200
    principal = await runtime.auth.verify(ADMIN[0], token, "192.0.2.1")
    assert principal.name == ADMIN[0]
    assert principal.is_admin
    unknown = "pr_" + "A" * 43
    assert_challenge(await anon.get("/api/v1/servers", headers=bearer(unknown)))
    assert argon2_calls[calls_before:] == []
    # a password not seen before is verified with argon2 (the counter counts)
    assert_challenge(await anon.get("/api/v1/servers", headers=basic((ADMIN[0], "not-it"))))
    assert argon2_calls[calls_before:] == ["not-it"]


async def test_verify_takes_a_token_as_the_users_password(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, runtime: Core
) -> None:
    """What an SMTP submission's AUTH PLAIN/LOGIN calls: the user's name and one of its tokens
    log in; another user's token, a revoked one, do not."""
    sender_token = await issue(admin, SENDER[0])
    principal = await runtime.auth.verify(SENDER[0], sender_token["token"], "192.0.2.2")
    assert (principal.name, principal.role) == (SENDER[0], "sender")
    assert principal.allowed_from == ("example.com",)
    with pytest.raises(Unauthorized):
        await runtime.auth.verify(ADMIN[0], sender_token["token"], "192.0.2.2")
    gone = await admin.delete(f"/api/v1/users/sender/tokens/{sender_token['id']}")
    assert gone.status_code == 204
    with pytest.raises(Unauthorized):
        await runtime.auth.verify(SENDER[0], sender_token["token"], "192.0.2.2")
    # the password still works, and a password shaped like a token is still a password
    assert (await runtime.auth.verify(*SENDER, "192.0.2.2")).name == SENDER[0]
    shaped = "pr_" + "b" * 43
    assert (await admin.patch("/api/v1/users/sender", json={"password": shaped})).is_success
    assert (await runtime.auth.verify(SENDER[0], shaped, "192.0.2.3")).name == SENDER[0]


async def test_the_console_login_takes_passwords_only(
    admin: httpx.AsyncClient, app_runtime: tuple[Any, Core]
) -> None:
    """A console session outlives nothing it was opened with but the password: a token, which
    can be revoked alone, does not open one."""
    token = (await issue(admin, ADMIN[0]))["token"]
    async with client_of(app_runtime[0], "203.0.113.30") as browser:
        page = await browser.get("/console/login")
        data = {"csrf": csrf_of(page.text), "name": ADMIN[0], "password": token, "next": ""}
        refused = await browser.post("/console/login", data=data)
        assert refused.status_code == 401, refused.text
        assert "Wrong user name or password." in refused.text


async def test_an_expired_token_is_refused_with_the_reason_in_the_log_only(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="postroom.auth")
    expires = utcnow() + timedelta(seconds=1.5)
    created = await issue(admin, ADMIN[0], expiresAt=expires.isoformat())
    token = created["token"]
    assert (await anon.get("/api/v1/servers", headers=bearer(token))).status_code == 200
    await until_status(anon, "/api/v1/servers", 401, within=3.0, headers=bearer(token))
    assert utcnow() >= expires
    refused = await anon.get("/api/v1/servers", headers=bearer(token))
    wrong = await anon.get("/api/v1/servers", headers=basic((ADMIN[0], "not-the-password")))
    assert_challenge(refused)
    assert refused.json() == wrong.json(), "the answer does not tell why"
    assert "expired" not in refused.text
    logged = [r.getMessage() for r in caplog.records if r.name == "postroom.auth"]
    assert any(
        created["id"] in line and "expired at" in line and "203.0.113.7" in line for line in logged
    ), logged
    listed = (await admin.get("/api/v1/users/admin/tokens")).json()["items"]
    assert [t["status"] for t in listed] == ["expired"]


async def test_a_revoked_token_is_logged_as_revoked(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="postroom.auth")
    created = await issue(admin, ADMIN[0])
    assert (await anon.get("/api/v1/servers", headers=bearer(created["token"]))).is_success
    assert (await admin.delete(f"/api/v1/users/admin/tokens/{created['id']}")).is_success
    refused = await anon.get("/api/v1/servers", headers=bearer(created["token"]))
    assert_challenge(refused)
    assert "revoked" not in refused.text
    unknown = await anon.get("/api/v1/servers", headers=bearer("pr_" + "Z" * 43))
    assert_challenge(unknown)
    assert unknown.json() == refused.json()
    logged = [r.getMessage() for r in caplog.records if r.name == "postroom.auth"]
    assert any(created["id"] in line and "revoked at" in line for line in logged), logged
    assert any("no such token" in line for line in logged), logged


async def test_a_deleted_or_demoted_users_tokens_stop_on_the_other_replica_within_a_second(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, replica: Any, runtime: Core
) -> None:
    """Two apps on one database (the real processes: test_token_replicas.py). The token is
    cached on B; the change is made through A."""
    ops = {"name": "ops", "role": "admin", "password": "ops-password-123"}
    assert (await admin.post("/api/v1/users", json=ops)).status_code == 201
    token = (await issue(admin, "ops"))["token"]
    async with client_of(replica, "203.0.113.40") as on_b:
        as_ops = bearer(token)
        assert (await on_b.get("/api/v1/users", headers=as_ops)).status_code == 200
        assert (await admin.patch("/api/v1/users/ops", json={"role": "sender"})).is_success
        assert await until_status(on_b, "/api/v1/users", 403, headers=as_ops) < 1.0
        assert (await on_b.get("/api/v1/messages/x", headers=as_ops)).status_code == 404
        assert (await admin.delete("/api/v1/users/ops")).status_code == 204
        assert await until_status(on_b, "/api/v1/messages/x", 401, headers=as_ops) < 1.0
    async with runtime.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(ApiToken)) == 0, (
            "deleting a user deletes its tokens"
        )


async def test_a_revoked_token_stops_on_the_other_replica_within_a_second(
    admin: httpx.AsyncClient, replica: Any
) -> None:
    created = await issue(admin, ADMIN[0])
    async with client_of(replica, "203.0.113.41") as on_b:
        as_token = bearer(created["token"])
        assert (await on_b.get("/api/v1/servers", headers=as_token)).status_code == 200
        revoked = await admin.delete(f"/api/v1/users/admin/tokens/{created['id']}")
        assert revoked.status_code == 204
        assert await until_status(on_b, "/api/v1/servers", 401, headers=as_token) < 1.0


async def test_refused_tokens_count_in_the_failed_login_throttle_of_every_replica(
    anon: httpx.AsyncClient, replica: Any
) -> None:
    async with client_of(replica, "203.0.113.7") as anon_b:
        for n in range(10):
            client = anon if n % 2 else anon_b
            guess = bearer(f"pr_{n:043d}")
            assert_challenge(await client.get("/api/v1/servers", headers=guess))
        eleventh = await anon_b.get("/api/v1/servers", headers=bearer("pr_" + "x" * 43))
        assert eleventh.status_code == 429, eleventh.text
        mixed = await anon.get("/api/v1/servers", headers=basic(ADMIN))
        assert mixed.status_code == 429, "Bearer and Basic failures share the throttle"


async def test_malformed_bearer_headers_are_401(anon: httpx.AsyncClient) -> None:
    for header in ["Bearer", "Bearer ", "Bearer pr_short", "Bearer " + "x" * 46, "bearer a b"]:
        assert_challenge(await anon.get("/api/v1/servers", headers={"Authorization": header}))
    answer = await anon.get("/api/v1/servers")
    assert "Bearer" in answer.headers["www-authenticate"]


async def test_last_use_is_recorded_at_most_once_a_minute_after_the_request(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient, runtime: Core
) -> None:
    created = await issue(admin, ADMIN[0])
    writes: list[str] = []

    def saw(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_TOKENS"):
            writes.append(statement)

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", saw)
    try:
        before = utcnow()
        for _ in range(30):
            assert (await anon.get("/api/v1/servers", headers=bearer(created["token"]))).is_success
        await runtime.auth.aclose()  # the write is in the background: let it end
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", saw)
    assert len(writes) == 1, writes
    listed = (await admin.get("/api/v1/users/admin/tokens")).json()["items"][0]
    assert listed["lastUsedAt"] is not None
    used = datetime.fromisoformat(listed["lastUsedAt"])
    assert before - timedelta(seconds=1) <= used <= utcnow()
