"""Webhooks out, end to end: a real send through the dispatcher to an aiosmtpd sink records
events, the real sender loop POSTs them to a real HTTP receiver that verifies each with the
`standardwebhooks` package; retries after 500, in order per message, at least once across a
restart of the sender, the delivery log, the test event."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks import Webhook, WebhookVerificationError

from app.config import Settings
from app.db import utcnow
from app.delivery.dispatcher import Dispatcher
from app.main import LOOPS, create_app
from app.webhooks.models import WebhookDelivery
from app.webhooks.schemas import WebhookEvent
from app.wiring import Core
from tests.conftest import ADMIN, basic
from tests.delivery.conftest import add_smtp_profile, make_due, send
from tests.smtpd import StartServer
from tests.webhooks.conftest import Receiver, add_endpoint, make_sender, sender_loop, until

pytestmark = pytest.mark.anyio


async def log_of(admin: httpx.AsyncClient, endpoint: dict[str, Any], **query: Any) -> Any:
    response = await admin.get(f"/api/v1/webhooks/{endpoint['id']}/deliveries", params=query)
    assert response.status_code == 200, response.text
    return response.json()


async def test_events_of_a_real_send_arrive_signed_and_verify(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    receiver: Receiver,
) -> None:
    server = smtp_server_factory(rcpt_replies={"gone@example.com": "550 5.1.1 no such user"})
    await add_smtp_profile(admin, server)
    endpoint = await add_endpoint(admin, receiver, eventTypes=["sent", "rejected"])
    other = await admin.post(  # an endpoint that takes none of these types gets nothing
        "/api/v1/webhooks", json={"url": receiver.url, "eventTypes": ["opened"]}
    )
    assert other.status_code == 201
    message_id = await send(sender, to=["ann@example.com", "gone@example.com"])
    await dispatcher.drain()
    assert len(server.transactions) == 1

    async with sender_loop(runtime):
        got = await receiver.wait_for(2)
        await asyncio.sleep(0.3)  # nothing more comes
    assert len(receiver.received) == 2
    assert (await log_of(admin, other.json()))["items"] == []
    assert all(d.verified for d in got), "standardwebhooks refused a delivery"
    by_recipient = {d.event["data"]["recipient"]: d for d in got}
    sent, rejected = by_recipient["ann@example.com"], by_recipient["gone@example.com"]
    assert sent.event["type"] == "message.sent"
    assert rejected.event["type"] == "message.rejected"
    assert sent.event["data"] == {
        "messageId": message_id,
        "recipient": "ann@example.com",
        "event": "sent",
        "bounceType": None,
        "reason": sent.event["data"]["reason"],
        "diagnosticCode": "250",
        "source": "postroom",
        "profile": "relay",
        "providerEventId": None,
    }
    assert rejected.event["data"]["diagnosticCode"] == "550"
    assert "no such user" in rejected.event["data"]["reason"]
    for delivery in got:
        WebhookEvent.model_validate_json(delivery.body)  # the documented shape
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.id.startswith("msg_")
        assert len(delivery.id) == 36
        assert abs(int(delivery.headers["webhook-timestamp"]) - utcnow().timestamp()) < 30
        assert delivery.headers["webhook-signature"].startswith("v1,")
        assert b": " not in delivery.body, "minified JSON"
    assert sent.id != rejected.id
    occurred = datetime.fromisoformat(sent.event["timestamp"])
    assert occurred.tzinfo is not None

    log = await log_of(admin, endpoint)
    assert [(d["status"], d["attempts"], d["responseCode"]) for d in log["items"]] == [
        ("delivered", 1, 200),
        ("delivered", 1, 200),
    ]
    assert {d["webhookId"] for d in log["items"]} == {sent.id, rejected.id}
    assert {d["messageId"] for d in log["items"]} == {message_id}
    assert log["nextBefore"] is None
    assert runtime.metrics.value("postroom_webhook_deliveries_total", outcome="delivered") == 2

    tampered = dict(sent.headers, **{"webhook-id": rejected.id})
    with pytest.raises(WebhookVerificationError):  # the receiver's check can fail
        Webhook(endpoint["secret"]).verify(sent.body, tampered)


async def test_a_500_is_retried_with_backoff_and_a_message_s_events_stay_in_order(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    receiver: Receiver,
) -> None:
    server = smtp_server_factory(replies={"MAIL": "451 4.3.0 try again later"})
    await add_smtp_profile(admin, server)
    endpoint = await add_endpoint(admin, receiver, eventTypes=["deferred", "sent"])
    receiver.answers = [500, 500]
    message_id = await send(sender, to=["ann@example.com"])
    await dispatcher.drain()  # deferred
    server.replies.clear()
    await make_due(runtime)
    await dispatcher.drain()  # sent

    async with sender_loop(runtime):
        got = await receiver.wait_for(4)
        await asyncio.sleep(0.3)
    assert len(receiver.received) == 4
    assert all(d.verified for d in got)
    assert [(d.event["type"], d.answered) for d in got] == [
        ("message.deferred", 500),
        ("message.deferred", 500),
        ("message.deferred", 200),
        ("message.sent", 200),
    ], "the sent event waited for the deferred one"
    assert len({d.id for d in got[:3]}) == 1, "a retry keeps its webhook-id"
    waits = [later.at - earlier.at for earlier, later in itertools.pairwise(got[:3])]
    assert all(wait >= 0.2 * 0.75 for wait in waits), waits
    log = await log_of(admin, endpoint)
    assert [(d["eventType"], d["status"], d["attempts"]) for d in log["items"]] == [
        ("message.sent", "delivered", 1),
        ("message.deferred", "delivered", 3),
    ]
    assert {d["messageId"] for d in log["items"]} == {message_id}
    assert runtime.metrics.value("postroom_webhook_deliveries_total", outcome="retry") == 2


async def test_the_log_shows_a_failing_delivery_waiting_for_its_retry(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(admin, receiver)
    receiver.default = 503
    queued = await admin.post(f"/api/v1/webhooks/{endpoint['id']}/test")
    assert queued.status_code == 202
    sender = make_sender(runtime, settings=runtime.settings)  # the real schedule: 10 s first
    await sender.drain()
    [only] = (await log_of(admin, endpoint))["items"]
    assert only["status"] == "queued"
    assert only["attempts"] == 1
    assert only["responseCode"] == 503
    assert only["error"] == "HTTP 503: ok"
    wait = (datetime.fromisoformat(only["nextAttemptAt"]) - utcnow()).total_seconds()
    assert 5 < wait <= 12.5
    assert only["webhookId"] == queued.json()["webhookId"]


async def test_at_least_once_across_a_restart_of_the_sender(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    """The first sender dies after the receiver got the event and before recording it: once the
    lease expires, the next sender delivers it again with the same webhook-id."""
    endpoint = await add_endpoint(admin, receiver)
    receiver.delay = 1.0
    await admin.post(f"/api/v1/webhooks/{endpoint['id']}/test")
    first = make_sender(runtime, lease=1.0)
    stopping = asyncio.Event()
    task = asyncio.create_task(first.run(stopping))
    await receiver.wait_for(1)
    task.cancel()  # killed mid-request, its result unrecorded
    with pytest.raises(asyncio.CancelledError):
        await task
    async with runtime.sessions() as session:
        [row] = await session.scalars(select(WebhookDelivery))
        assert (row.status, row.attempts) == ("sending", 1)

    receiver.delay = 0.0
    async with sender_loop(runtime, lease=1.0):
        got = await receiver.wait_for(2, within=15)
    assert got[0].id == got[1].id
    assert all(d.verified for d in got)
    [only] = (await log_of(admin, endpoint))["items"]
    assert (only["status"], only["attempts"]) == ("delivered", 2)


async def test_a_test_event_goes_out_even_to_a_disabled_endpoint(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(admin, receiver, enabled=False)
    queued = await admin.post(f"/api/v1/webhooks/{endpoint['id']}/test")
    assert queued.status_code == 202
    await make_sender(runtime).drain()
    [got] = receiver.received
    assert got.verified
    assert got.event["type"] == "webhook.test"
    assert got.event["data"]["endpointId"] == endpoint["id"]
    assert got.id == queued.json()["webhookId"]
    [logged] = (await log_of(admin, endpoint))["items"]
    assert logged["id"] == queued.json()["deliveryId"]
    assert logged["status"] == "delivered"
    assert logged["eventType"] == "webhook.test"
    assert logged["messageId"] is None


async def test_the_delivery_log_pages_newest_first(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(admin, receiver)
    ids = [
        (await admin.post(f"/api/v1/webhooks/{endpoint['id']}/test")).json()["deliveryId"]
        for _ in range(5)
    ]
    first = await log_of(admin, endpoint, limit=2)
    assert [d["id"] for d in first["items"]] == ids[::-1][:2]
    second = await log_of(admin, endpoint, limit=2, before=first["nextBefore"])
    assert [d["id"] for d in second["items"]] == ids[::-1][2:4]
    last = await log_of(admin, endpoint, limit=2, before=second["nextBefore"])
    assert [d["id"] for d in last["items"]] == ids[:1]
    assert last["nextBefore"] is None
    bad = await admin.get(f"/api/v1/webhooks/{endpoint['id']}/deliveries", params={"limit": 0})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "limit"


async def test_outgoing_calls_obey_the_egress_policy_at_connect_time(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    """A name that resolved to an allowed address at save may not reach a denied one later."""
    from app.egress import EgressPolicy, http_client, parse_networks

    endpoint = await add_endpoint(admin, receiver)
    await admin.post(f"/api/v1/webhooks/{endpoint['id']}/test")
    denying = EgressPolicy(deny=parse_networks("127.0.0.0/8"))
    async with http_client(denying, 5.0) as http:
        await make_sender(runtime, http=http).drain()
    assert receiver.received == []
    [logged] = (await log_of(admin, endpoint))["items"]
    assert logged["status"] == "queued"
    assert logged["responseCode"] is None
    assert "POSTROOM_EGRESS_DENY" in logged["error"]


async def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(admin, receiver)
    receiver.delay = 3.0
    await admin.post(f"/api/v1/webhooks/{endpoint['id']}/test")
    await make_sender(runtime, timeout=0.3).drain()
    [logged] = (await log_of(admin, endpoint))["items"]
    assert logged["status"] == "queued"
    assert "timed out" in logged["error"] or "no answer" in logged["error"]
    assert logged["durationMs"] < 2000  # cut at 0.3 s, slack for a loaded CI; not the 3 s


async def test_no_delivery_is_queued_for_a_disabled_endpoint(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    dispatcher: Dispatcher,
    smtp_server_factory: StartServer,
    receiver: Receiver,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server)
    endpoint = await add_endpoint(admin, receiver, eventTypes=["sent"], enabled=False)
    await send(sender, to=["ann@example.com"])
    await dispatcher.drain()
    assert (await log_of(admin, endpoint))["items"] == []

    await admin.patch(f"/api/v1/webhooks/{endpoint['id']}", json={"enabled": True})
    await send(sender, to=["bob@example.com"])
    await dispatcher.drain()
    [queued] = (await log_of(admin, endpoint))["items"]
    assert queued["eventType"] == "message.sent"


async def test_an_endpoint_failing_for_the_whole_window_is_disabled_with_the_reason(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(admin, receiver)
    path = f"/api/v1/webhooks/{endpoint['id']}"
    receiver.default = 500
    for _ in range(2):
        await admin.post(f"{path}/test")

    async def disabled() -> bool:
        return (await admin.get(path)).json()["enabled"] is False

    async with sender_loop(runtime, disable_after=timedelta(seconds=1.5)):
        await until(disabled, 15, "the endpoint to be disabled")
        tried = len(receiver.received)
        await asyncio.sleep(0.8)
        assert len(receiver.received) == tried, "nothing is sent to a disabled endpoint"
    shown = (await admin.get(path)).json()
    assert shown["disabledReason"].startswith("every delivery failed since ")
    assert "(1.5 s)" in shown["disabledReason"]
    assert shown["disabledReason"].endswith("the last: HTTP 500: ok")
    assert shown["disabledAt"] is not None
    since = datetime.fromisoformat(shown["failingSince"])
    assert (datetime.fromisoformat(shown["disabledAt"]) - since).total_seconds() >= 1.5
    assert tried >= 3, "it was retried before it was given up on"
    assert all(d.verified for d in receiver.received)
    log = (await log_of(admin, endpoint))["items"]
    assert {d["status"] for d in log} == {"paused"}
    assert runtime.metrics.value("postroom_webhook_endpoints_disabled_total") == 1

    receiver.default = 200  # fixed: enabling it again sends what waited
    response = await admin.patch(path, json={"enabled": True})
    assert response.json()["disabledReason"] is None
    assert response.json()["failingSince"] is None
    await make_sender(runtime).drain()
    log = (await log_of(admin, endpoint))["items"]
    assert {d["status"] for d in log} == {"delivered"}


async def test_410_gone_disables_the_endpoint_at_once(
    admin: httpx.AsyncClient, runtime: Core, receiver: Receiver
) -> None:
    endpoint = await add_endpoint(admin, receiver)
    receiver.default = 410
    await admin.post(f"/api/v1/webhooks/{endpoint['id']}/test")
    await make_sender(runtime).drain()
    shown = (await admin.get(f"/api/v1/webhooks/{endpoint['id']}")).json()
    assert shown["enabled"] is False
    assert "410 Gone" in shown["disabledReason"]
    [logged] = (await log_of(admin, endpoint))["items"]
    assert (logged["status"], logged["responseCode"]) == ("failed", 410)


async def test_the_service_runs_the_sender_beside_its_dispatcher(
    settings: Settings, smtp_server_factory: StartServer, receiver: Receiver
) -> None:
    """As `postroom serve` runs: the lifespan starts both loops; /readyz and /metrics see the
    sender; a message sent through the API ends up at the receiver, verified."""
    settings = settings.model_copy(update={"dispatcher": True, "poll_interval": 0.1})
    server = smtp_server_factory()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://postroom.test", headers=basic(ADMIN)
        ) as admin:
            await add_smtp_profile(admin, server, isDefault=True)
            await add_endpoint(admin, receiver, eventTypes=["sent"])
            ready = await admin.get("/readyz")
            assert ready.status_code == 200, ready.text
            await send(admin, to=["ann@example.com"], **{"from": "me@example.com"})
            [got] = await receiver.wait_for(1)
            assert got.verified
            assert got.event["type"] == "message.sent"
            # the receiver answers before the sender records the outcome: give it a moment
            delivered = 'postroom_webhook_deliveries_total{outcome="delivered"} 1.0'
            for _ in range(50):
                metrics = (await admin.get("/metrics")).text
                if delivered in metrics:
                    break
                await asyncio.sleep(0.05)
            assert 'postroom_loops_live{loop="webhooks"} 1.0' in metrics
            assert delivered in metrics
            running = LOOPS.of(app).sender
            assert running is not None
            assert running.task is not None
            running.task.cancel()
            await asyncio.sleep(0.05)
            ready = await admin.get("/readyz")
            assert ready.status_code == 503
            assert "the webhook sender is not running" in ready.json()["reasons"]
