"""Senders are bounded: each reads only its own records, and sends only from the addresses and
through the profiles an admin gave it (or the defaults: the branding sender, the default
profile); anything else is a 403 that says which rule refused it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.security import RECHECK_SECONDS
from app.users.models import User
from app.wiring import Core
from tests.conftest import basic
from tests.servers.helpers import body, create

pytestmark = pytest.mark.anyio

BRANDING = {"emails": {"senderEmail": "reports@example.com", "senderName": "Reports"}}
PASSWORD = "bounded-password-1"


@pytest.fixture
def add_sender(
    admin: httpx.AsyncClient, app_runtime: tuple[Any, Core]
) -> Callable[..., Awaitable[httpx.AsyncClient]]:
    """Makes a sender user with the given bounds, and a client that calls as it."""

    async def make(name: str, **bounds: Any) -> httpx.AsyncClient:
        created = await admin.post(
            "/api/v1/users",
            json={"name": name, "role": "sender", "password": PASSWORD, **bounds},
        )
        assert created.status_code == 201, created.text
        transport = httpx.ASGITransport(app=app_runtime[0], client=("203.0.113.10", 5555))
        return httpx.AsyncClient(
            transport=transport, base_url="http://postroom.test", headers=basic((name, PASSWORD))
        )

    return make


AddSender = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def profiles(admin: httpx.AsyncClient) -> None:
    """main (the default, sender main@example.com), other (other@example.net), and the
    branding sender reports@example.com."""
    await create(admin, body("sendgrid", "main", senderEmail="main@example.com"))
    await create(admin, body("sendgrid", "other", senderEmail="other@example.net"))
    assert (await admin.post("/api/branding", json=BRANDING)).status_code == 200


def message(**fields: Any) -> dict[str, Any]:
    return {"to": ["ann@example.org"], "subject": "s", "text": "t", **fields}


def refusal(response: httpx.Response, field: str) -> str:
    """The 403's message, after checking it names `field`."""
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert [d["field"] for d in error["details"]] == [field]
    text: str = error["message"]
    return text


async def test_a_sender_lists_and_reads_only_its_own_messages(
    admin: httpx.AsyncClient, add_sender: AddSender
) -> None:
    billing = await add_sender("billing", allowedFrom=["example.com"])
    alerts = await add_sender("alerts", allowedFrom=["example.com"])
    async with billing, alerts:
        posted: dict[str, list[str]] = {"billing": [], "alerts": [], "admin": []}
        for who, client in [("billing", billing), ("alerts", alerts), ("admin", admin)] * 3:
            answer = await client.post(
                "/api/v1/messages", json=message(**{"from": f"{who}@example.com"})
            )
            assert answer.status_code == 202, answer.text
            posted[who].append(answer.json()["id"])

        async def listed(client: httpx.AsyncClient, **query: Any) -> list[str]:
            seen: list[str] = []
            cursor = None
            while True:
                params = {"limit": 2, **query, **({"cursor": cursor} if cursor else {})}
                page = await client.get("/api/v1/messages", params=params)
                assert page.status_code == 200, page.text
                seen += [item["id"] for item in page.json()["items"]]
                if (cursor := page.json()["nextCursor"]) is None:
                    return seen

        assert await listed(billing) == posted["billing"][::-1]
        assert await listed(alerts) == posted["alerts"][::-1]
        assert len(await listed(admin)) == 9, "an admin sees every record"
        assert await listed(admin, createdBy="alerts") == posted["alerts"][::-1]
        # filters narrow a sender's own records, never widen them
        assert await listed(billing, sender="alerts@example.com") == []
        assert await listed(billing, createdBy="alerts") == []
        assert await listed(billing, createdBy="billing") == posted["billing"][::-1]
        assert await listed(billing, status="queued") == posted["billing"][::-1]

        own = await billing.get(f"/api/v1/messages/{posted['billing'][0]}")
        assert own.status_code == 200
        assert own.json()["createdBy"] == "billing"
        for other in (posted["alerts"][0], posted["admin"][0]):
            hidden = await billing.get(f"/api/v1/messages/{other}")
            unknown = await billing.get("/api/v1/messages/no-such-id")
            assert hidden.status_code == unknown.status_code == 404, hidden.text
            assert hidden.json()["error"]["code"] == "not_found"
        assert (await admin.get(f"/api/v1/messages/{posted['alerts'][0]}")).status_code == 200


@pytest.mark.usefixtures("profiles")
async def test_default_bounds_are_the_branding_sender_and_the_default_profile(
    admin: httpx.AsyncClient, add_sender: AddSender
) -> None:
    async with await add_sender("billing") as billing:
        for allowed in [
            message(),  # main's sender
            message(**{"from": "main@example.com"}),
            message(**{"from": {"email": "MAIN@Example.com", "name": "Main"}}),
            message(**{"from": "reports@example.com"}),  # the branding's
            message(server="main", **{"from": "reports@example.com"}),
        ]:
            answer = await billing.post("/api/v1/messages", json=allowed)
            assert answer.status_code == 202, (allowed, answer.text)

        forged = refusal(
            await billing.post("/api/v1/messages", json=message(**{"from": "ceo@example.com"})),
            "from",
        )
        assert forged.startswith("user billing may not send from ceo@example.com: allowed are")
        assert "main@example.com" in forged
        assert "reports@example.com" in forged
        assert "set allowedFrom on the user" in forged
        # the sender of a profile it may not use is not its to use either
        other_from = message(**{"from": "other@example.net"})
        assert "other@example.net:" in refusal(
            await billing.post("/api/v1/messages", json=other_from), "from"
        )

        through = refusal(
            await billing.post("/api/v1/messages", json=message(server="other")), "server"
        )
        assert through.startswith("user billing may not send through server other:")
        assert "the default server only (main)" in through
        assert "set allowedServers on the user" in through

        listed = await billing.get("/api/v1/messages")
        assert len(listed.json()["items"]) == 5, "what was refused was not stored"


async def test_on_a_new_install_the_builtin_server_and_the_branding_are_allowed(
    admin: httpx.AsyncClient, add_sender: AddSender
) -> None:
    async with await add_sender("billing") as billing:
        nobody = refusal(
            await billing.post("/api/v1/messages", json=message(**{"from": "me@example.com"})),
            "from",
        )
        assert "none is set" in nobody
        assert (await admin.post("/api/branding", json=BRANDING)).status_code == 200
        assert (await billing.post("/api/v1/messages", json=message())).status_code == 202
        branded = message(**{"from": "reports@example.com"})
        assert (await billing.post("/api/v1/messages", json=branded)).status_code == 202


@pytest.mark.usefixtures("profiles")
async def test_allowed_lists_replace_the_defaults(
    admin: httpx.AsyncClient, add_sender: AddSender
) -> None:
    bounds = {
        "allowedFrom": ["billing@example.com", "billing.example.org", "bücher.example"],
        "allowedServers": ["other"],
    }
    async with await add_sender("billing", **bounds) as billing:
        for allowed in [
            message(server="other", **{"from": "billing@example.com"}),
            message(server="other", **{"from": "Billing@EXAMPLE.com"}),
            message(server="other", **{"from": "anyone@billing.example.org"}),
            message(server="other", **{"from": "x@xn--bcher-kva.example"}),
        ]:
            answer = await billing.post("/api/v1/messages", json=allowed)
            assert answer.status_code == 202, (allowed, answer.text)

        for refused in ["x@sub.billing.example.org", "reports@example.com", "main@example.com"]:
            text = refusal(
                await billing.post(
                    "/api/v1/messages", json=message(server="other", **{"from": refused})
                ),
                "from",
            )
            assert f"may not send from {refused}: allowed are billing@example.com, " in text
            assert "(allowedFrom)" in text
        # the From an admin gave the profile is not a forgery: without `from`, or given as is
        for own in [
            message(server="other"),
            message(server="other", **{"from": "other@example.net"}),
        ]:
            answer = await billing.post("/api/v1/messages", json=own)
            assert answer.status_code == 202, answer.text

        default = refusal(
            await billing.post("/api/v1/messages", json=message(**{"from": "billing@example.com"})),
            "server",
        )
        assert "may not send through the default server main: allowed are other" in default
        assert "name an allowed one in `server`" in default

        # allowedFrom back to the default: the senders of the profiles it may use, and branding
        reset = await admin.patch("/api/v1/users/billing", json={"allowedFrom": None})
        assert reset.status_code == 200, reset.text
        assert reset.json()["allowedServers"] == ["other"], "what the PATCH omits stays"
        own_again = await billing.post("/api/v1/messages", json=message(server="other"))
        assert own_again.status_code == 202, own_again.text
        for sender, status in [
            ("other@example.net", 202),
            ("reports@example.com", 202),
            ("main@example.com", 403),
            ("billing@example.com", 403),
        ]:
            answer = await billing.post(
                "/api/v1/messages", json=message(server="other", **{"from": sender})
            )
            assert answer.status_code == status, (sender, answer.text)


@pytest.mark.usefixtures("profiles")
async def test_the_batch_form_is_bounded_item_by_item(
    admin: httpx.AsyncClient, add_sender: AddSender
) -> None:
    async with await add_sender("billing") as billing:
        answer = await billing.post(
            "/api/v1/messages/batch",
            json={
                "messages": [
                    message(),
                    message(**{"from": "ceo@example.com"}),
                    message(server="other"),
                    message(**{"from": "reports@example.com"}),
                ]
            },
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["accepted"], result["rejected"]) == (2, 2)
        statuses = [item["status"] for item in result["results"]]
        assert statuses == [202, 403, 403, 202]
        forged, other = result["results"][1]["error"], result["results"][2]["error"]
        assert forged["details"][0]["field"] == "from"
        assert "may not send from ceo@example.com" in forged["message"]
        assert other["details"][0]["field"] == "server"
        assert "may not send through server other" in other["message"]
        assert len((await billing.get("/api/v1/messages")).json()["items"]) == 2


@pytest.mark.usefixtures("profiles")
async def test_admins_are_not_bounded(admin: httpx.AsyncClient) -> None:
    for unbounded in [
        message(**{"from": "anyone@anywhere.example"}),
        message(server="other", **{"from": "ceo@example.com"}),
    ]:
        answer = await admin.post("/api/v1/messages", json=unbounded)
        assert answer.status_code == 202, answer.text


@pytest.mark.usefixtures("profiles")
async def test_a_change_binds_at_once_here_and_within_a_second_elsewhere(
    admin: httpx.AsyncClient, add_sender: AddSender, runtime: Core
) -> None:
    """Through the API on this replica: the next request. Written by another replica (here:
    straight into the database, which this process's cache knows nothing of): within 1 s."""
    async with await add_sender("billing", allowedFrom=["example.org"]) as billing:
        mine = message(**{"from": "billing@example.org"})
        assert (await billing.post("/api/v1/messages", json=mine)).status_code == 202
        patched = await admin.patch("/api/v1/users/billing", json={"allowedFrom": ["example.net"]})
        assert patched.status_code == 200, patched.text
        refusal(await billing.post("/api/v1/messages", json=mine), "from")

        moved = message(**{"from": "billing@example.net"})
        assert (await billing.post("/api/v1/messages", json=moved)).status_code == 202
        async with runtime.sessions() as session, session.begin():
            await session.execute(
                update(User).where(User.name == "billing").values(allowed_from=["example.com"])
            )
        await asyncio.sleep(2 * RECHECK_SECONDS + 0.05)  # no row read over a second ago lets it in
        refusal(await billing.post("/api/v1/messages", json=moved), "from")
        back = message(**{"from": "billing@example.com"})
        assert (await billing.post("/api/v1/messages", json=back)).status_code == 202
