"""GET /api/v1/audit: admins only, filters, newest first, cursor paging; an entry is committed
with its change or not at all; purge deletes the oldest in batches."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.audit.service import SYSTEM
from app.branding import service as branding
from app.branding.schemas import BrandingBody
from app.db import transaction, utcnow
from app.identity import Actor
from app.wiring import Core
from tests.audit.helpers import count, entries
from tests.conftest import ADMIN, basic

pytestmark = pytest.mark.anyio

URL = "/api/v1/audit"
SENDER_BRANDING = BrandingBody.model_validate({"emails": {"senderEmail": "ops@example.com"}})


async def _suppress(admin: httpx.AsyncClient, *addresses: str) -> None:
    for address in addresses:
        response = await admin.post("/api/v1/suppressions", json={"address": address})
        assert response.status_code == 201, response.text


async def test_only_admins_read_it(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    assert (await sender.get(URL)).status_code == 403
    assert (await anon.get(URL)).status_code == 401
    assert (await admin.get(URL)).status_code == 200


async def test_the_first_admin_is_created_by_postroom(admin: httpx.AsyncClient) -> None:
    [first] = await entries(admin, action="user.create", target=f"user:{ADMIN[0]}")
    assert (first["actor"], first["via"], first["address"]) == ("postroom", "system", None)


async def test_newest_first_and_paged(admin: httpx.AsyncClient) -> None:
    addresses = [f"a{i}@example.com" for i in range(5)]
    await _suppress(admin, *addresses)
    seen: list[str] = []
    ids: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"action": "suppression.create", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await admin.get(URL, params=params)).json()
        seen += [item["target"]["name"] for item in page["items"]]
        ids += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(addresses))
    assert ids == sorted(ids, reverse=True)
    for cursor in ("not-a-cursor", "²"):  # a digit to str.isdigit, not to int()
        bad = await admin.get(URL, params={"cursor": cursor})
        assert bad.status_code == 400
        assert bad.json()["error"]["details"] == [{"field": "cursor", "message": "invalid"}]


async def test_filters(app_runtime: tuple[object, Core], admin: httpx.AsyncClient) -> None:
    made = {"name": "auditor", "role": "admin", "password": "auditor-password-1"}
    assert (await admin.post("/api/v1/users", json=made)).status_code == 201
    await _suppress(admin, "one@example.com", "two@example.com")
    transport = httpx.ASGITransport(app=app_runtime[0], client=("198.51.100.4", 4444))  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://postroom.test",
        headers=basic(("auditor", "auditor-password-1")),
    ) as auditor:
        branded = await auditor.post("/api/branding", json={"emails": {"senderName": "Ops"}})
        assert branded.status_code == 200

    [theirs] = await entries(admin, actor="auditor")
    assert (theirs["action"], theirs["address"]) == ("branding.update", "198.51.100.4")
    assert all(e["actor"] != "auditor" for e in await entries(admin, actor=ADMIN[0]))
    assert len(await entries(admin, action="suppression.create")) == 2
    [one] = await entries(admin, target="suppression:one@example.com")
    assert one["target"] == {"kind": "suppression", "name": "one@example.com"}
    assert {e["target"]["name"] for e in await entries(admin, target="suppression")} == {
        "one@example.com",
        "two@example.com",
    }
    assert [e["action"] for e in await entries(admin, target="branding")] == ["branding.update"]

    newest_first = await entries(admin)
    middle = newest_first[1]
    since = await entries(admin, since=middle["at"])
    assert [e["id"] for e in since] == [e["id"] for e in newest_first[:2]]
    until = await entries(admin, until=middle["at"])
    assert [e["id"] for e in until] == [e["id"] for e in newest_first[2:]]
    in_paris = datetime.fromisoformat(middle["at"]) + timedelta(hours=2)  # the same instant
    offset = in_paris.strftime("%Y-%m-%dT%H:%M:%S.%f+02:00")
    assert [e["id"] for e in await entries(admin, since=offset)] == [e["id"] for e in since]

    wrong_kind = await admin.get(URL, params={"target": "printer:lobby"})
    assert wrong_kind.status_code == 422
    assert wrong_kind.json()["error"]["details"][0]["field"] == "target"
    wrong_action = await admin.get(URL, params={"action": "server.explode"})
    assert wrong_action.status_code == 422
    wrong_time = await admin.get(URL, params={"since": "yesterday"})
    assert wrong_time.status_code == 422
    nul = await admin.get(URL, params={"actor": "ad\0min"})
    assert nul.status_code == 422


async def test_a_refused_change_leaves_no_entry(admin: httpx.AsyncClient, runtime: Core) -> None:
    before = await count(runtime)
    profile = {"name": "relay", "type": "smtp", "fallback": "nosuch", "settings": {}}
    assert (await admin.post("/api/v1/servers", json=profile)).status_code == 422
    assert (
        await admin.patch(f"/api/v1/users/{ADMIN[0]}", json={"role": "sender"})
    ).status_code == 409
    assert (await admin.delete("/api/v1/suppressions/nobody@example.com")).status_code == 404
    assert await count(runtime) == before


async def _change_then_fail(runtime: Core) -> None:
    async with transaction(runtime.sessions) as session:
        await branding.update_branding(session, SENDER_BRANDING, SYSTEM)
        raise RuntimeError("the request fails after the change")


async def test_the_entry_and_its_change_commit_together(runtime: Core) -> None:
    before = await count(runtime)
    with pytest.raises(RuntimeError):
        await _change_then_fail(runtime)
    assert await count(runtime) == before
    bogus = Actor("admin", "pigeon")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        async with transaction(runtime.sessions) as session:
            await branding.update_branding(session, SENDER_BRANDING, bogus)
    async with runtime.sessions() as session:
        assert (await branding.get_branding(session)).sender_email is None, (
            "no change without its entry"
        )
    async with transaction(runtime.sessions) as session:
        await branding.update_branding(session, SENDER_BRANDING, SYSTEM)
    assert await count(runtime) == before + 1


async def test_purge_deletes_the_oldest_in_batches(runtime: Core) -> None:
    now = utcnow()
    async with transaction(runtime.sessions) as session:
        for days in (400, 390, 380):
            session.add(
                AuditEntry(
                    at=now - timedelta(days=days),
                    actor="admin",
                    via="basic",
                    address="192.0.2.1",
                    action="branding.update",
                    target_kind="branding",
                    target_name=None,
                    changes={},
                )
            )
    total = await count(runtime)
    cutoff = now - timedelta(days=365)
    done = []
    while True:
        async with transaction(runtime.sessions) as session:
            done.append(await audit.purge(session, cutoff, limit=2))
        if done[-1] < 2:
            break
    assert done == [2, 1]
    assert await count(runtime) == total - 3
    async with runtime.sessions() as session:
        left = list(await session.scalars(select(AuditEntry.at)))
    assert all(at >= cutoff for at in left)
