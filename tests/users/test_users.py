"""The users API: generated passwords shown once, roles, and the last admin protected."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ADMIN, basic
from tests.test_auth import until_status

pytestmark = pytest.mark.anyio


async def test_create_with_generated_password_shown_once(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    created = await admin.post("/api/v1/users", json={"name": "billing", "role": "sender"})
    assert created.status_code == 201, created.text
    body = created.json()
    password = body["password"]
    assert isinstance(password, str)
    assert len(password) >= 16
    assert body["name"] == "billing"
    assert body["role"] == "sender"
    assert "createdAt" in body

    shown = await admin.get("/api/v1/users/billing")
    assert shown.status_code == 200
    assert "password" not in shown.json()
    assert password not in shown.text
    listed = await admin.get("/api/v1/users")
    assert [u["name"] for u in listed.json()["items"]] == ["admin", "billing"]
    assert password not in listed.text

    # the generated password works, for a sender's endpoint
    ok = await anon.get("/api/v1/messages/nope", headers=basic(("billing", password)))
    assert ok.status_code == 404


async def test_create_with_given_password_returns_none(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    created = await admin.post(
        "/api/v1/users",
        json={"name": "ops", "role": "admin", "password": "a-long-password-1"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["password"] is None
    assert "a-long-password-1" not in created.text
    ok = await anon.get("/api/v1/users", headers=basic(("ops", "a-long-password-1")))
    assert ok.status_code == 200


async def test_invalid_user_bodies_are_422(admin: httpx.AsyncClient) -> None:
    for body, field in [
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "x"}, "role"),
        ({"role": "sender"}, "name"),
        ({"name": "", "role": "sender"}, "name"),
        ({"name": "a b", "role": "sender"}, "name"),
        ({"name": "n" * 51, "role": "sender"}, "name"),
        ({"name": "x", "role": "sender", "password": "tiny-Pw9"}, "password"),
        ({"name": "x", "role": "sender", "isAdmin": True}, "isAdmin"),
    ]:
        response = await admin.post("/api/v1/users", json=body)
        assert response.status_code == 422, (body, response.text)
        assert [d["field"] for d in response.json()["error"]["details"]] == [field], body
        assert "tiny-Pw9" not in response.text
    assert [u["name"] for u in (await admin.get("/api/v1/users")).json()["items"]] == ["admin"]


async def test_duplicate_user_is_409(admin: httpx.AsyncClient) -> None:
    first = await admin.post("/api/v1/users", json={"name": "dup", "role": "sender"})
    assert first.status_code == 201
    again = await admin.post("/api/v1/users", json={"name": "dup", "role": "admin"})
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "conflict"
    assert (await admin.get("/api/v1/users/dup")).json()["role"] == "sender"


async def test_unknown_user_is_404(admin: httpx.AsyncClient) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await admin.request(method, "/api/v1/users/ghost", json={})
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"]["code"] == "not_found"


async def test_change_role_and_password(admin: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    await admin.post(
        "/api/v1/users", json={"name": "svc", "role": "sender", "password": "first-password-1"}
    )
    old = basic(("svc", "first-password-1"))
    assert (await anon.get("/api/v1/users", headers=old)).status_code == 403
    promoted = await admin.patch("/api/v1/users/svc", json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin"
    # cached credentials re-read their user row every 0.5 s, on every replica
    await until_status(anon, "/api/v1/users", 200, headers=old)

    changed = await admin.patch("/api/v1/users/svc", json={"password": "second-password-2"})
    assert changed.status_code == 200
    await until_status(anon, "/api/v1/users", 401, headers=old)
    new = basic(("svc", "second-password-2"))
    assert (await anon.get("/api/v1/users", headers=new)).status_code == 200


async def test_last_admin_cannot_be_demoted_or_deleted(admin: httpx.AsyncClient) -> None:
    demoted = await admin.patch("/api/v1/users/admin", json={"role": "sender"})
    assert demoted.status_code == 422, demoted.text
    assert [d["field"] for d in demoted.json()["error"]["details"]] == ["role"]
    deleted = await admin.delete("/api/v1/users/admin")
    assert deleted.status_code == 409, deleted.text
    assert (await admin.get("/api/v1/users/admin")).json()["role"] == "admin"


async def test_an_admin_can_go_when_another_remains(
    admin: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    second = ("root2", "root2-password-1")
    await admin.post(
        "/api/v1/users", json={"name": second[0], "role": "admin", "password": second[1]}
    )
    assert (await admin.delete("/api/v1/users/admin")).status_code == 204
    # the deleted admin's cached credentials no longer work
    assert (await anon.get("/api/v1/users", headers=basic(ADMIN))).status_code == 401
    listed = await anon.get("/api/v1/users", headers=basic(second))
    assert [u["name"] for u in listed.json()["items"]] == ["root2"]
    last = await anon.delete("/api/v1/users/root2", headers=basic(second))
    assert last.status_code == 409


async def test_deleted_sender_is_locked_out(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    assert (await sender.get("/api/v1/messages/nope")).status_code == 404
    assert (await admin.delete("/api/v1/users/sender")).status_code == 204
    await until_status(sender, "/api/v1/messages/nope", 401)
