"""SendGrid's Event Webhook samples, signed with an ECDSA key made here."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from app.events.providers.base import Incoming, Refused
from app.events.providers.sendgrid import SIGNATURE, TIMESTAMP, SendgridReceiver
from app.transports.sendgrid import SendgridConfig
from tests.events.hooks.conftest import Hooks
from tests.events.hooks.signing import sample
from tests.servers.helpers import stored_config

pytestmark = pytest.mark.anyio

X_MESSAGE_ID = "14c5d75ce93.dfd.64b469"
"""What SendGrid's mail/send answered (X-Message-Id): the samples' sg_message_id starts with it."""
EMAIL = "example@test.com"


def batch(*names: str) -> list[dict[str, Any]]:
    return [event for name in names for event in sample("sendgrid", name)["body"]]


async def sendgrid(hooks: Hooks) -> None:
    await hooks.profile("sendgrid", "sg", webhookPublicKey=hooks.sendgrid.public)


async def post(hooks: Hooks, events: list[dict[str, Any]], at: float | None = None) -> Any:
    raw = json.dumps(events).encode()
    return await hooks.post("sg", raw, hooks.sendgrid.headers(raw, at=at))


async def test_a_signed_batch_is_stored_on_its_message_and_recipient(hooks: Hooks) -> None:
    await sendgrid(hooks)
    message_pk = await hooks.sent([EMAIL], X_MESSAGE_ID)
    names = ("processed", "deferred", "delivered", "bounce", "blocked", "dropped", "spamreport")
    events = batch(*names)
    events[4]["sg_event_id"] += "-blocked"  # the docs' `blocked` sample reuses the bounce's id
    response = await post(hooks, events)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == len(names)
    stored = await hooks.events(message_pk)
    assert [(e.type, e.bounce_type) for e in stored] == [
        ("sent", None),
        ("deferred", None),
        ("delivered", None),
        ("bounced", "hard"),
        ("bounced", "soft"),
        ("rejected", None),
        ("complained", None),
    ]
    assert {e.email for e in stored} == {EMAIL}
    assert all(e.recipient_pk is not None for e in stored)
    bounce = stored[3]
    assert (bounce.reason, bounce.diagnostic_code) == ("500 unknown recipient", "5.0.0")


async def test_without_the_provider_id_the_message_id_matches(hooks: Hooks) -> None:
    await sendgrid(hooks)
    message_pk = await hooks.sent([EMAIL], None)
    record = (await hooks.admin.get(f"/api/v1/messages/{message_pk}")).json()
    [event] = batch("bounce")
    event["smtp-id"] = record["messageId"]
    assert (await post(hooks, [event])).status_code == 200
    [stored] = await hooks.events(message_pk)
    assert stored.type == "bounced"


async def test_the_published_test_vector_verifies(hooks: Hooks) -> None:
    """SendGrid's own signed vector (sendgrid-python's test), at the time it was signed."""
    vector = sample("sendgrid", "signed-test-vector")
    await hooks.profile("sendgrid", "sg", webhookPublicKey=vector["public_key"])
    config = await stored_config(hooks.runtime, "sg")
    assert isinstance(config, SendgridConfig)
    receiver = SendgridReceiver(config)
    headers = {k.lower(): v for k, v in vector["headers"].items()}
    signed_at = datetime.fromtimestamp(int(headers[TIMESTAMP]), UTC)
    raw = vector["raw_body"].encode()
    received = await receiver.receive(Incoming(raw, headers, signed_at))
    assert [(e.type, e.provider_message_id) for e in received.events] == [
        ("rejected", "LRzXl_NHStOGhQ4kofSm_A")
    ]
    negative = vector["negative_cases"]
    for changed in (
        Incoming(raw, headers | {SIGNATURE: negative["wrong_signature"]}, signed_at),
        Incoming(negative["wrong_body"].encode(), headers, signed_at),
        Incoming(raw, headers | {TIMESTAMP: negative["wrong_timestamp"]}, signed_at),
    ):
        with pytest.raises(Refused):
            await receiver.receive(changed)
    response = await hooks.post("sg", raw, vector["headers"])
    assert response.status_code == 401, "signed in 2020: stale now"
    assert "stale" in response.json()["error"]["message"]


async def test_a_forged_or_missing_signature_is_a_401_and_stores_nothing(hooks: Hooks) -> None:
    await sendgrid(hooks)
    await hooks.sent([EMAIL], X_MESSAGE_ID)
    raw = json.dumps(batch("bounce")).encode()
    headers = hooks.sendgrid.headers(raw)
    tampered = raw.replace(b"5.0.0", b"2.0.0")
    assert (await hooks.post("sg", tampered, headers)).status_code == 401
    assert (await hooks.post("sg", raw, {"Content-Type": "application/json"})).status_code == 401
    other = type(hooks.sendgrid)()
    assert (await hooks.post("sg", raw, other.headers(raw))).status_code == 401
    assert await hooks.all_events() == []
    assert hooks.counted("sendgrid", "refused") == 3


async def test_a_stale_timestamp_is_refused(hooks: Hooks) -> None:
    await sendgrid(hooks)
    response = await post(hooks, batch("bounce"), at=time.time() - 301 - 5)
    assert response.status_code == 401
    assert "stale" in response.json()["error"]["message"]
    assert await hooks.all_events() == []


async def test_a_replayed_request_is_refused_and_a_retried_event_stored_once(hooks: Hooks) -> None:
    await sendgrid(hooks)
    await hooks.sent([EMAIL], X_MESSAGE_ID)
    raw = json.dumps(batch("bounce")).encode()
    headers = hooks.sendgrid.headers(raw)
    assert (await hooks.post("sg", raw, headers)).status_code == 200
    replayed = await hooks.post("sg", raw, headers)
    assert replayed.status_code == 409
    retried = await post(hooks, batch("bounce"))  # signed anew, as a retry is
    assert retried.status_code == 200
    assert retried.json()["recorded"] == 0
    assert len(await hooks.all_events()) == 1


async def test_a_malformed_body_is_a_400_naming_the_problem(hooks: Hooks) -> None:
    await sendgrid(hooks)
    raw = b'[{"event": "bounce",'
    response = await hooks.post("sg", raw, hooks.sendgrid.headers(raw))
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]
    [event] = batch("bounce")
    del event["sg_event_id"]
    response = await post(hooks, [batch("delivered")[0], event])
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "[1].sg_event_id"
    assert await hooks.all_events() == []


async def test_a_bad_public_key_is_a_422_naming_the_setting(hooks: Hooks) -> None:
    payload = {
        "type": "sendgrid",
        "name": "sg",
        "settings": {"apiKey": "SG.x", "webhookPublicKey": "bm90IGEga2V5"},
    }
    response = await hooks.admin.post("/api/v1/servers", json=payload)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "settings.webhookPublicKey"


async def test_values_no_column_holds_are_a_400_or_kept_apart(hooks: Hooks) -> None:
    """An address longer than any address is refused; an event id longer than the column is
    stored under its hash, still once."""
    await sendgrid(hooks)
    [event] = batch("bounce")
    response = await post(hooks, [dict(event, email="x" * 400 + "@example.com")])
    assert response.status_code == 400
    long_id = dict(event, sg_event_id="e" * 300)
    assert (await post(hooks, [long_id])).json()["recorded"] == 1
    assert (await post(hooks, [long_id])).json()["recorded"] == 0
    [stored] = await hooks.all_events()
    assert stored.provider_event_id is not None
    assert stored.provider_event_id.startswith("sha256:")
