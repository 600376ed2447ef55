"""At dispatch, through a real SMTP server: a suppressed recipient is not sent to and ends
`suppressed` with the reason, its companions go on; a message whose every recipient is
suppressed says so in its 202 and is never sent; `ignoreSuppressions` is an admin's."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.db import transaction
from app.delivery.dispatcher import Dispatcher
from app.delivery.vocabulary import DeliveryEvent
from app.events.service import record_events
from app.wiring import Core
from tests.delivery.conftest import add_smtp_profile, record, send
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio


async def suppress(admin: httpx.AsyncClient, address: str, **body: str) -> None:
    response = await admin.post("/api/v1/suppressions", json={"address": address, **body})
    assert response.status_code == 201, response.text


def recipient(saved: dict[str, Any], email: str) -> dict[str, Any]:
    [found] = [r for r in saved["recipients"] if r["email"] == email]
    assert isinstance(found, dict)
    return found


async def test_a_suppressed_recipient_is_not_sent_to_and_its_companion_is(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    await suppress(admin, "BOB@xn--bcher-kva.example")  # spelt otherwise than the message will
    response = await sender.post(
        "/api/v1/messages",
        json={
            "to": ["ann@example.com", "Bob@Bücher.example"],
            "subject": "Hi",
            "text": "Hello",
        },
    )
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "queued"
    assert answer["suppressed"] == ["Bob@bücher.example"]

    await dispatcher.drain()

    [transaction_] = server.transactions
    assert transaction_.rcpt_tos == ["ann@example.com"]
    saved = await record(sender, answer["id"])
    assert saved["status"] == "sent", "every recipient that could be sent to was"
    ann, bob = recipient(saved, "ann@example.com"), recipient(saved, "Bob@bücher.example")
    assert ann["status"] == "sent"
    assert bob["status"] == "suppressed"
    assert bob["response"] == "on the suppression list: manual"
    assert [e["type"] for e in bob["events"]] == ["queued", "suppressed"]
    assert bob["events"][1]["reason"] == "on the suppression list: manual"
    assert (
        runtime.metrics.value("postroom_delivery_events_total", type="suppressed", profile="relay")
        == 1
    )
    found = await sender.get("/api/v1/messages", params={"event": "suppressed"})
    assert [m["id"] for m in found.json()["items"]] == [answer["id"]]


async def test_a_group_goes_on_without_its_suppressed_members(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    group = [f"member{n}@example.com" for n in range(5)]
    await suppress(admin, group[1])
    await suppress(admin, group[3], profile="relay")
    await suppress(admin, group[4], profile="builtin")  # another profile's: no effect here
    message_id = await send(sender, recipients=group)
    await dispatcher.drain()
    [transaction_] = server.transactions
    assert sorted(transaction_.rcpt_tos) == [group[0], group[2], group[4]]
    saved = await record(sender, message_id)
    assert [r["status"] for r in saved["recipients"]] == [
        "sent", "suppressed", "sent", "suppressed", "sent"
    ]  # fmt: skip
    assert recipient(saved, group[3])["response"] == (
        "on the suppression list of profile relay: manual"
    )


async def test_every_recipient_suppressed_says_so_and_sends_nothing(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    await suppress(admin, "ann@example.com", reason="complaint")
    await suppress(admin, "bob@example.com", reason="hard_bounce")
    response = await sender.post(
        "/api/v1/messages",
        json={"to": "ann@example.com", "cc": "Bob@Example.com", "text": "x", "subject": "x"},
    )
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "suppressed"
    assert answer["suppressed"] == ["ann@example.com", "Bob@example.com"]
    batch = await sender.post(
        "/api/v1/messages/batch",
        json={"messages": [{"to": "ann@example.com", "text": "x"}]},
    )
    [item] = batch.json()["results"]
    assert item["suppressed"] == ["ann@example.com"]
    await dispatcher.drain()
    assert server.transactions == []
    assert server.sessions == [], "not even a connection"
    saved = await record(sender, answer["id"])
    assert saved["status"] == "suppressed"
    assert saved["sentAt"] is None
    assert [r["status"] for r in saved["recipients"]] == ["suppressed", "suppressed"]
    assert recipient(saved, "ann@example.com")["response"] == ("on the suppression list: complaint")
    found = await sender.get("/api/v1/messages", params={"status": "suppressed"})
    assert {m["id"] for m in found.json()["items"]} == {answer["id"], item["id"]}


async def test_recorded_hard_bounces_and_complaints_suppress_the_next_message(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    first = await send(sender, to=["ann@example.com", "bob@example.com", "cat@example.com"])
    await dispatcher.drain()
    assert len(server.transactions) == 1
    async with transaction(runtime.sessions) as session:
        await record_events(
            session,
            [
                DeliveryEvent(first, "bounced", email="ann@example.com", bounce_type="hard",
                              source="ses", provider_event_id="b-1", profile="relay"),
                DeliveryEvent(first, "complained", email="bob@example.com", source="ses",
                              provider_event_id="c-1", profile="relay"),
            ],
        )  # fmt: skip
    second = await send(sender, to=["ann@example.com", "bob@example.com", "cat@example.com"])
    await dispatcher.drain()
    assert [t.rcpt_tos for t in server.transactions[1:]] == [["cat@example.com"]]
    saved = await record(sender, second)
    assert [r["status"] for r in saved["recipients"]] == ["suppressed", "suppressed", "sent"]
    assert recipient(saved, "ann@example.com")["response"] == (
        "on the suppression list: hard_bounce"
    )


async def test_ignore_suppressions_is_for_admins(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    await suppress(admin, "ann@example.com", reason="hard_bounce")
    body = {"to": "ann@example.com", "subject": "Reset", "text": "x", "ignoreSuppressions": True}
    refused = await sender.post("/api/v1/messages", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["details"][0]["field"] == "ignoreSuppressions"
    accepted = await admin.post("/api/v1/messages", json=body)
    assert accepted.status_code == 202
    assert accepted.json()["status"] == "queued"
    assert accepted.json()["suppressed"] == []
    await dispatcher.drain()
    [transaction_] = server.transactions
    assert transaction_.rcpt_tos == ["ann@example.com"]
    saved = await record(admin, accepted.json()["id"])
    assert saved["status"] == "sent"


async def test_suppressed_between_acceptance_and_dispatch(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    message_id = await send(sender, to="ann@example.com")
    await suppress(admin, "ann@example.com", profile="relay", reason="unsubscribe")
    await dispatcher.drain()
    assert server.transactions == []
    saved = await record(sender, message_id)
    assert saved["status"] == "suppressed"
