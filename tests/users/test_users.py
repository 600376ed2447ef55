"""The users API: generated passwords shown once, roles, and the last admin protected."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN, basic
from tests.servers.helpers import body as profile
from tests.servers.helpers import create
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
    assert demoted.status_code == 409, demoted.text
    error = demoted.json()["error"]
    assert error["code"] == "conflict"
    assert error["message"].startswith("admin is the last admin and cannot lose the admin role")
    deleted = await admin.delete("/api/v1/users/admin")
    assert deleted.status_code == 409, deleted.text
    assert "last admin" in deleted.json()["error"]["message"]
    assert (await admin.get("/api/v1/users/admin")).json()["role"] == "admin"
    # the refused PATCH changed nothing else it carried either
    both = await admin.patch(
        "/api/v1/users/admin", json={"role": "sender", "password": "never-stored-1"}
    )
    assert both.status_code == 409
    assert (await admin.get("/api/v1/users")).status_code == 200, "the old password still works"


@pytest.mark.parametrize("change", ["demote", "delete"])
async def test_two_admins_going_at_once_leave_one(admin: httpx.AsyncClient, change: str) -> None:
    """Two requests that each remove one of the last two admins, at the same time: one wins,
    the other is a 409 (the admin rows are locked before they are counted), several rounds."""
    for round_ in range(5):
        names = [f"a{round_}", f"b{round_}"]
        for name in names:
            created = await admin.post(
                "/api/v1/users", json={"name": name, "role": "admin", "password": "x" * 12}
            )
            assert created.status_code == 201, created.text
        if round_ == 0:
            assert (await admin.delete("/api/v1/users/admin")).status_code == 204
        else:  # the one left from the round before
            left = [u for u in (await list_admins(admin)) if u not in names]
            assert len(left) == 1
            assert (await admin.delete(f"/api/v1/users/{left[0]}")).status_code == 204
        admin.headers.update(basic((names[0], "x" * 12)))

        async def remove(name: str) -> int:
            if change == "demote":
                response = await admin.patch(f"/api/v1/users/{name}", json={"role": "sender"})
            else:
                response = await admin.delete(f"/api/v1/users/{name}")
            return response.status_code

        statuses = sorted(await asyncio.gather(*(remove(name) for name in names)))
        assert statuses[1] == 409, statuses
        assert statuses[0] in (200, 204), statuses
        remaining = await admin_rows(admin, names)
        assert len(remaining) == 1, remaining
        admin.headers.update(basic((remaining[0], "x" * 12)))


async def list_admins(admin: httpx.AsyncClient) -> list[str]:
    listed = await admin.get("/api/v1/users")
    assert listed.status_code == 200, listed.text
    return [u["name"] for u in listed.json()["items"] if u["role"] == "admin"]


async def admin_rows(admin: httpx.AsyncClient, names: list[str]) -> list[str]:
    """Which of `names` are still admins, asked as whichever of them still is one."""
    for name in names:
        listed = await admin.get("/api/v1/users", headers=basic((name, "x" * 12)))
        if listed.status_code == 200:
            return [u["name"] for u in listed.json()["items"] if u["role"] == "admin"]
    raise AssertionError(f"none of {names} is an admin any more")


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


async def test_a_senders_bounds_are_set_shown_and_reset(admin: httpx.AsyncClient) -> None:
    await create(admin, profile("sendgrid", "main"))
    await create(admin, profile("sendgrid", "billing_ses"))
    created = await admin.post(
        "/api/v1/users",
        json={
            "name": "billing",
            "role": "sender",
            "allowedFrom": ["Billing@Example.com", "example.org", "example.org"],
            "allowedServers": ["billing_ses"],
        },
    )
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["allowedFrom"] == ["Billing@example.com", "example.org"], "deduplicated"
    assert answer["allowedServers"] == ["billing_ses"]
    shown = (await admin.get("/api/v1/users/billing")).json()
    assert (shown["allowedFrom"], shown["allowedServers"]) == (
        answer["allowedFrom"],
        ["billing_ses"],
    )

    servers = await admin.patch("/api/v1/users/billing", json={"allowedServers": ["main"]})
    assert servers.status_code == 200, servers.text
    assert servers.json()["allowedServers"] == ["main"]
    assert servers.json()["allowedFrom"] == answer["allowedFrom"], "what a PATCH omits stays"
    cleared = await admin.patch("/api/v1/users/billing", json={"allowedFrom": None})
    assert (cleared.json()["allowedFrom"], cleared.json()["allowedServers"]) == (None, ["main"])
    nothing = await admin.patch("/api/v1/users/billing", json={"allowedServers": []})
    assert nothing.json()["allowedServers"] == []
    listed = (await admin.get("/api/v1/users")).json()["items"]
    assert {u["name"]: u["allowedServers"] for u in listed} == {"admin": None, "billing": []}


async def test_invalid_bounds_are_422_naming_the_entry(admin: httpx.AsyncClient) -> None:
    await create(admin, profile("sendgrid", "main"))
    await admin.post("/api/v1/users", json={"name": "billing", "role": "sender"})
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"allowedFrom": ["a@example.com", "not an address"]}, ["allowedFrom[1]"]),
        ({"allowedFrom": ["@example.com"]}, ["allowedFrom[0]"]),
        ({"allowedFrom": ["*.example.com"]}, ["allowedFrom[0]"]),
        ({"allowedFrom": ["localhost"]}, ["allowedFrom[0]"]),
        ({"allowedFrom": ["a@b\r\nBcc: x@example.com"]}, ["allowedFrom[0]"]),
        ({"allowedFrom": "example.com"}, ["allowedFrom"]),
        ({"allowedFrom": ["example.com"] * 201}, ["allowedFrom"]),
        ({"allowedServers": ["main", "no such"]}, ["allowedServers[1]"]),
        (
            {"allowedServers": ["main", "ghost", "main", "spook"]},
            ["allowedServers[1]", "allowedServers[3]"],
        ),
        ({"allowedServers": [7]}, ["allowedServers[0]"]),
    ]
    for bounds, fields in cases:
        for method, url, extra in [
            ("POST", "/api/v1/users", {"name": "x", "role": "sender"}),
            ("PATCH", "/api/v1/users/billing", {}),
        ]:
            response = await admin.request(method, url, json={**extra, **bounds})
            assert response.status_code == 422, (method, bounds, response.text)
            assert [d["field"] for d in response.json()["error"]["details"]] == fields, bounds
    shown = (await admin.get("/api/v1/users/billing")).json()
    assert (shown["allowedFrom"], shown["allowedServers"]) == (None, None)
    assert [u["name"] for u in (await admin.get("/api/v1/users")).json()["items"]] == [
        "admin",
        "billing",
    ]
