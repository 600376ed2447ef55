"""Mailgun's webhook samples, signed with a key made here, through POST /hooks/{profile}/events."""

from __future__ import annotations

import json
import time

import pytest

from tests.events.hooks.conftest import MAILGUN_KEY, Hooks
from tests.events.hooks.signing import mailgun_body, sample

pytestmark = pytest.mark.anyio


def event_data(name: str) -> dict[str, object]:
    data: dict[str, object] = sample("mailgun", name)["body"]["event-data"]
    return data


async def mailgun(hooks: Hooks) -> None:
    await hooks.profile("mailgun", "mg", webhookSigningKey=MAILGUN_KEY)


@pytest.mark.parametrize(
    ("name", "type_", "bounce"),
    [
        ("failed-permanent", "bounced", "hard"),
        ("failed-temporary", "deferred", None),
        ("complained", "complained", None),
        ("delivered", "delivered", None),
    ],
)
async def test_a_signed_sample_is_stored_on_its_message_and_recipient(
    hooks: Hooks, name: str, type_: str, bounce: str | None
) -> None:
    await mailgun(hooks)
    data = event_data(name)
    mailgun_id = f"<{data['message']['headers']['message-id']}>"  # type: ignore[index]
    recipient = str(data["recipient"])
    message_pk = await hooks.sent([recipient, "other@example.com"], mailgun_id)

    response = await hooks.post("mg", mailgun_body(MAILGUN_KEY, data))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 1, "recorded": 1, "unknown": 0, "note": None}

    [event] = await hooks.events(message_pk)
    assert (event.type, event.bounce_type, event.source) == (type_, bounce, "mailgun")
    assert event.email == recipient
    assert event.provider_event_id == data["id"]
    assert event.profile == "mg"
    record = (await hooks.admin.get(f"/api/v1/messages/{message_pk}")).json()
    [mine] = [r for r in record["recipients"] if r["email"] == recipient]
    assert type_ in [e["type"] for e in mine["events"]]  # ordered by when: the sample is old
    assert event.recipient_pk is not None
    [other] = [r for r in record["recipients"] if r["email"] == "other@example.com"]
    assert [e["type"] for e in other["events"]] == ["queued", "sent"]
    assert hooks.counted("mailgun", "accepted") == 1


async def test_the_bounce_carries_the_reason_and_code(hooks: Hooks) -> None:
    await mailgun(hooks)
    data = event_data("failed-permanent")
    await hooks.sent([str(data["recipient"])], f"<{data['message']['headers']['message-id']}>")  # type: ignore[index]
    assert (await hooks.post("mg", mailgun_body(MAILGUN_KEY, data))).status_code == 200
    [event] = await hooks.all_events()
    assert event.reason == "suppress-bounce: Not delivering to previously bounced address"
    assert event.diagnostic_code == "605"


async def test_a_forged_signature_is_a_401_and_stores_nothing(
    hooks: Hooks, caplog: pytest.LogCaptureFixture
) -> None:
    await mailgun(hooks)
    data = event_data("failed-permanent")
    await hooks.sent([str(data["recipient"])], f"<{data['message']['headers']['message-id']}>")  # type: ignore[index]
    forged = mailgun_body("not-the-key", data)
    response = await hooks.post("mg", forged)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    unsigned = json.dumps({"event-data": data}).encode()
    assert (await hooks.post("mg", unsigned)).status_code == 401
    assert await hooks.all_events() == []
    assert hooks.counted("mailgun", "refused") == 2
    [logged, _] = [r for r in caplog.records if r.name == "postroom.hooks"]
    assert logged.levelname == "WARNING"
    assert logged.getMessage() == (
        "mailgun hook for profile mg refused: the signature does not match the webhook signing key"
    )


async def test_the_signed_event_cannot_be_swapped_under_a_signature_it_does_not_cover(
    hooks: Hooks,
) -> None:
    """The signature covers timestamp + token only: a captured request's token is spent."""
    await mailgun(hooks)
    first = json.loads(mailgun_body(MAILGUN_KEY, event_data("delivered")))
    assert (await hooks.post("mg", json.dumps(first).encode())).status_code == 200
    first["event-data"] = event_data("failed-permanent")
    response = await hooks.post("mg", json.dumps(first).encode())
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "replayed"
    assert [e.type for e in await hooks.all_events()] == ["unknown"]
    assert hooks.counted("mailgun", "replayed") == 1


async def test_a_replayed_token_is_refused(hooks: Hooks) -> None:
    await mailgun(hooks)
    request = mailgun_body(MAILGUN_KEY, event_data("complained"))
    assert (await hooks.post("mg", request)).status_code == 200
    again = await hooks.post("mg", request)
    assert again.status_code == 409
    assert "received before" in again.json()["error"]["message"]
    assert len(await hooks.all_events()) == 1


async def test_a_stale_timestamp_is_refused(hooks: Hooks) -> None:
    await mailgun(hooks)
    stale = mailgun_body(MAILGUN_KEY, event_data("complained"), at=time.time() - 600)
    response = await hooks.post("mg", stale)
    assert response.status_code == 401
    assert "stale" in response.json()["error"]["message"]
    assert await hooks.all_events() == []


async def test_a_retried_event_is_stored_once(hooks: Hooks) -> None:
    """Mailgun retries with the event again (a new token): the event id makes it one row."""
    await mailgun(hooks)
    data = event_data("failed-permanent")
    await hooks.sent([str(data["recipient"])], f"<{data['message']['headers']['message-id']}>")  # type: ignore[index]
    assert (await hooks.post("mg", mailgun_body(MAILGUN_KEY, data))).json()["recorded"] == 1
    retried = await hooks.post("mg", mailgun_body(MAILGUN_KEY, data))
    assert retried.status_code == 200
    assert retried.json()["recorded"] == 0
    assert len(await hooks.all_events()) == 1


async def test_an_event_for_no_known_message_is_stored_as_unknown_and_counted(
    hooks: Hooks,
) -> None:
    await mailgun(hooks)
    response = await hooks.post("mg", mailgun_body(MAILGUN_KEY, event_data("failed-permanent")))
    assert response.status_code == 200
    assert response.json()["unknown"] == 1
    [event] = await hooks.events(None)
    assert event.type == "unknown"
    assert event.email == "slava@mailgun.com"
    assert event.reason is not None
    assert event.reason.startswith("bounced for no known message")
    assert (
        hooks.runtime.metrics.value("postroom_delivery_events_total", type="unknown", profile="mg")
        == 1
    )


async def test_a_signed_request_without_event_data_is_a_400_naming_it(hooks: Hooks) -> None:
    await mailgun(hooks)
    request = json.loads(mailgun_body(MAILGUN_KEY, {"event": "failed"}))
    response = await hooks.post("mg", json.dumps(request).encode())
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "event-data.severity"
    assert await hooks.all_events() == []


async def test_a_profile_without_a_signing_key_accepts_nothing(hooks: Hooks) -> None:
    await hooks.profile("mailgun", "mg")
    response = await hooks.post("mg", mailgun_body(MAILGUN_KEY, event_data("complained")))
    assert response.status_code == 401
    assert "webhookSigningKey" in response.json()["error"]["message"]
