"""Exactly one default profile while any exists; switched atomically; deleting it leaves none."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import allow_sender
from tests.servers.helpers import body, create, defaults

pytestmark = pytest.mark.anyio

MESSAGE = {"from": "app@example.com", "to": ["ann@example.com"], "subject": "hi", "text": "hello"}


async def test_a_new_install_sends_through_the_builtin_server(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    assert await defaults(admin) == (None, True, [])
    accepted = await sender.post("/api/v1/messages", json=MESSAGE)
    assert accepted.status_code == 202, accepted.text


async def test_the_first_profile_becomes_the_default(admin: httpx.AsyncClient) -> None:
    first = await create(admin, body("sendgrid", "first"))
    assert first["isDefault"] is True
    second = await create(admin, body("mailgun", "second"))
    assert second["isDefault"] is False
    assert await defaults(admin) == ("first", False, ["first"])


async def test_creating_with_is_default_switches_it(admin: httpx.AsyncClient) -> None:
    await create(admin, body("sendgrid", "first"))
    second = await create(admin, body("mailgun", "second", isDefault=True))
    assert second["isDefault"] is True
    assert (await admin.get("/api/v1/servers/first")).json()["isDefault"] is False
    assert await defaults(admin) == ("second", False, ["second"])


async def test_patch_and_put_switch_the_default(admin: httpx.AsyncClient) -> None:
    for name in ("a", "b", "c"):
        await create(admin, body("sendgrid", name))
    patched = await admin.patch("/api/v1/servers/b", json={"isDefault": True})
    assert patched.status_code == 200, patched.text
    assert patched.json()["isDefault"] is True
    assert await defaults(admin) == ("b", False, ["b"])

    put = await admin.put("/api/v1/servers/c", json=body("sendgrid", "c", isDefault=True))
    assert put.status_code == 200, put.text
    assert await defaults(admin) == ("c", False, ["c"])

    # an update that does not mention isDefault leaves the default alone
    await admin.patch("/api/v1/servers/c", json={"description": "still default"})
    await admin.put("/api/v1/servers/c", json=body("sendgrid", "c"))
    assert await defaults(admin) == ("c", False, ["c"])


async def test_the_default_cannot_be_unset_without_naming_another(
    admin: httpx.AsyncClient,
) -> None:
    await create(admin, body("sendgrid", "only"))
    response = await admin.patch("/api/v1/servers/only", json={"isDefault": False})
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == ["isDefault"]
    assert await defaults(admin) == ("only", False, ["only"])
    # a profile that is not the default may say so
    await create(admin, body("sendgrid", "other"))
    ok = await admin.patch("/api/v1/servers/other", json={"isDefault": False})
    assert ok.status_code == 200, ok.text
    assert await defaults(admin) == ("only", False, ["only"])


async def test_concurrent_switches_leave_exactly_one_default(admin: httpx.AsyncClient) -> None:
    names = ["a", "b", "c", "d"]
    for name in names:
        await create(admin, body("sendgrid", name))
    for left, right in [("b", "c"), ("d", "a"), ("c", "d"), ("a", "b")]:
        answers = await asyncio.gather(
            admin.patch(f"/api/v1/servers/{left}", json={"isDefault": True}),
            admin.patch(f"/api/v1/servers/{right}", json={"isDefault": True}),
        )
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
        default, builtin, flagged = await defaults(admin)
        assert builtin is False
        assert flagged == [default]
        assert default in (left, right)


async def test_deleting_the_default_leaves_none(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    await create(admin, body("sendgrid", "main"))
    await create(admin, body("mailgun", "spare"))
    assert (await admin.delete("/api/v1/servers/main")).status_code == 204
    assert await defaults(admin) == (None, False, [])

    refused = await sender.post("/api/v1/messages", json=MESSAGE)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert [d["field"] for d in error["details"]] == ["server"]
    assert "default" in error["message"]

    await allow_sender(admin, "spare")
    named = await sender.post("/api/v1/messages", json={**MESSAGE, "server": "spare"})
    assert named.status_code == 202, named.text

    # a new default can be chosen; a new profile does not silently become it
    await create(admin, body("sendgrid", "later"))
    assert await defaults(admin) == (None, False, [])
    await admin.patch("/api/v1/servers/spare", json={"isDefault": True})
    assert await defaults(admin) == ("spare", False, ["spare"])
    assert (await sender.post("/api/v1/messages", json=MESSAGE)).status_code == 202


async def test_deleting_the_last_profile_leaves_none_too(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    await create(admin, body("sendgrid", "main"))
    assert (await admin.delete("/api/v1/servers/main")).status_code == 204
    assert await defaults(admin) == (None, False, [])
    refused = await sender.post("/api/v1/messages", json=MESSAGE)
    assert refused.status_code == 422
    assert [d["field"] for d in refused.json()["error"]["details"]] == ["server"]
    # the next profile created becomes the default again
    again = await create(admin, body("sendgrid", "again"))
    assert again["isDefault"] is True
    assert (await sender.post("/api/v1/messages", json=MESSAGE)).status_code == 202
