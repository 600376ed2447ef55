"""Mandrill's webhook samples: a form with `mandrill_events`, signed over the configured URL."""

from __future__ import annotations

from typing import Any

import pytest

from tests.events.hooks.conftest import MANDRILL_KEY, MANDRILL_URL, Hooks
from tests.events.hooks.signing import mandrill_request, sample

pytestmark = pytest.mark.anyio

MANDRILL_ID = "fa239ebedd0a4831a3eefa59e880d8b2"
EMAIL = "example.webhook@mandrillapp.com"


def batch(*names: str) -> list[dict[str, Any]]:
    return [event for name in names for event in sample("mandrill", name)["events"]]


async def mandrill(hooks: Hooks) -> None:
    await hooks.profile("mandrill", "md", webhookKey=MANDRILL_KEY, webhookUrl=MANDRILL_URL)


async def test_a_signed_batch_is_stored_on_its_message_and_recipient(hooks: Hooks) -> None:
    await mandrill(hooks)
    message_pk = await hooks.sent([EMAIL], MANDRILL_ID)
    names = ("send", "deferral", "soft-bounce", "hard-bounce", "spam", "reject")
    body, headers = mandrill_request(MANDRILL_KEY, MANDRILL_URL, batch(*names))
    response = await hooks.post("md", body, headers)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 6
    stored = await hooks.events(message_pk)
    assert sorted((e.type, e.bounce_type or "") for e in stored) == sorted(
        [
            ("sent", ""),
            ("deferred", ""),
            ("bounced", "soft"),
            ("bounced", "hard"),
            ("complained", ""),
            ("rejected", ""),
        ]
    )
    assert all(e.recipient_pk is not None and e.email == EMAIL for e in stored)
    [hard] = [e for e in stored if e.bounce_type == "hard"]
    assert hard.reason == "bad_mailbox"
    assert hard.diagnostic_code is not None
    assert hard.diagnostic_code.startswith("smtp;550 5.1.1")


async def test_the_published_vector_verifies_with_its_url_and_key(hooks: Hooks) -> None:
    signed = sample("mandrill", "hard-bounce")["signed_request"]
    await hooks.profile(
        "mandrill", "md", webhookKey=signed["webhook_key"], webhookUrl=signed["webhook_url"]
    )
    headers = signed["headers"] | {"Content-Type": signed["content_type"]}
    response = await hooks.post("md", signed["raw_body"].encode(), headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 1, "recorded": 1, "unknown": 1, "note": None}


async def test_a_forged_signature_or_another_url_is_a_401_and_stores_nothing(
    hooks: Hooks,
) -> None:
    await mandrill(hooks)
    await hooks.sent([EMAIL], MANDRILL_ID)
    events = batch("hard-bounce")
    for key, url in [
        ("not-the-key", MANDRILL_URL),
        (MANDRILL_KEY, "http://postroom.test/api/v1/hooks/md/events"),  # as seen, not configured
    ]:
        body, headers = mandrill_request(key, url, events)
        response = await hooks.post("md", body, headers)
        assert response.status_code == 401, response.text
    body, headers = mandrill_request(MANDRILL_KEY, MANDRILL_URL, events)
    del headers["X-Mandrill-Signature"]
    assert (await hooks.post("md", body, headers)).status_code == 401
    assert await hooks.all_events() == []
    assert hooks.counted("mandrill", "refused") == 3


async def test_a_retried_batch_is_stored_once(hooks: Hooks) -> None:
    """Nothing Mandrill signs is a nonce: the event ids make a replay change nothing."""
    await mandrill(hooks)
    await hooks.sent([EMAIL], MANDRILL_ID)
    body, headers = mandrill_request(MANDRILL_KEY, MANDRILL_URL, batch("hard-bounce", "spam"))
    assert (await hooks.post("md", body, headers)).json()["recorded"] == 2
    again = await hooks.post("md", body, headers)
    assert again.status_code == 200
    assert again.json()["recorded"] == 0
    assert len(await hooks.all_events()) == 2


async def test_sync_events_are_skipped_and_malformed_events_named(hooks: Hooks) -> None:
    await mandrill(hooks)
    sync = {"type": "blacklist", "action": "add", "reject": {"email": EMAIL}}
    body, headers = mandrill_request(MANDRILL_KEY, MANDRILL_URL, [sync])
    response = await hooks.post("md", body, headers)
    assert response.status_code == 200
    assert response.json()["note"] == "1 allowlist/denylist sync events skipped"
    [event] = batch("spam")
    del event["ts"]
    body, headers = mandrill_request(MANDRILL_KEY, MANDRILL_URL, [event])
    response = await hooks.post("md", body, headers)
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "mandrill_events[0].ts"
    assert await hooks.all_events() == []


async def test_the_unsigned_head_check_is_answered(hooks: Hooks) -> None:
    await mandrill(hooks)
    assert (await hooks.client.head("/api/v1/hooks/md/events")).status_code == 200
    assert (await hooks.client.head("/api/v1/hooks/nope/events")).status_code == 404


async def test_the_webhook_key_is_write_only(hooks: Hooks) -> None:
    await mandrill(hooks)
    shown = (await hooks.admin.get("/api/v1/servers/md")).json()["settings"]
    assert shown["webhookKeySet"] is True
    assert shown["webhookUrl"] == MANDRILL_URL
    assert MANDRILL_KEY not in str(shown)
