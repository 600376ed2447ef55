"""POST /api/v1/hooks/{profile}/events whatever the provider: which profiles have one, the body
limit, the write-only keys, the metrics, and the replay guard's table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.db import transaction, utcnow
from app.events.hooks.guard import first_use
from app.events.hooks.models import HookNonce
from app.events.hooks.service import MAX_BODY_BYTES
from app.events.providers.base import Nonce
from tests.events.hooks.conftest import MAILGUN_KEY, Hooks
from tests.events.hooks.signing import mailgun_body, sample

pytestmark = pytest.mark.anyio


async def test_no_profile_or_one_that_reports_nothing_is_a_404(hooks: Hooks) -> None:
    body = mailgun_body(MAILGUN_KEY, sample("mailgun", "complained")["body"]["event-data"])
    missing = await hooks.post("nope", body)
    assert missing.status_code == 404
    assert "no server profile 'nope'" in missing.json()["error"]["message"]
    await hooks.profile("smtp", "relay")
    await hooks.profile("msgraph", "graph")
    for name, type_ in (("relay", "smtp"), ("graph", "msgraph")):
        response = await hooks.post(name, body)
        assert response.status_code == 404
        assert f"of type {type_}: it receives no events" in response.json()["error"]["message"]
    assert hooks.counted("none", "not_found") == 1
    assert hooks.counted("smtp", "not_found") == 1


async def test_over_a_mebibyte_is_a_413_and_stores_nothing(hooks: Hooks) -> None:
    await hooks.profile("mailgun", "mg", webhookSigningKey=MAILGUN_KEY)
    data = sample("mailgun", "complained")["body"]["event-data"]
    data = dict(data, padding="x" * MAX_BODY_BYTES)
    response = await hooks.post("mg", mailgun_body(MAILGUN_KEY, data))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(5):
            yield b"x" * (MAX_BODY_BYTES // 4)

    streamed = await hooks.client.post("/api/v1/hooks/mg/events", content=chunks())
    assert streamed.status_code == 413
    assert await hooks.all_events() == []
    assert hooks.counted("mailgun", "too_large") == 2


async def test_malformed_json_is_a_400_naming_it(hooks: Hooks) -> None:
    await hooks.profile("mailgun", "mg", webhookSigningKey=MAILGUN_KEY)
    response = await hooks.post("mg", b'{"signature": ')
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "malformed_event"
    assert error["message"].startswith("body is not valid JSON")
    assert hooks.counted("mailgun", "malformed") == 1


async def test_webhook_keys_are_write_only_and_kept_on_update(hooks: Hooks) -> None:
    await hooks.profile("mailgun", "mg", webhookSigningKey=MAILGUN_KEY)
    shown = (await hooks.admin.get("/api/v1/servers/mg")).json()
    assert shown["settings"]["webhookSigningKeySet"] is True
    assert MAILGUN_KEY not in str(shown)
    changed = await hooks.admin.patch("/api/v1/servers/mg", json={"description": "changed"})
    assert changed.status_code == 200
    body = mailgun_body(MAILGUN_KEY, sample("mailgun", "complained")["body"]["event-data"])
    assert (await hooks.post("mg", body)).status_code == 200


async def test_the_metrics_count_hooks_by_provider_and_outcome(hooks: Hooks) -> None:
    await hooks.profile("mailgun", "mg", webhookSigningKey=MAILGUN_KEY)
    data = sample("mailgun", "complained")["body"]["event-data"]
    await hooks.post("mg", mailgun_body(MAILGUN_KEY, data))
    await hooks.post("mg", mailgun_body("forged", data))
    text = (await hooks.admin.get("/metrics")).text
    assert 'postroom_hooks_total{outcome="accepted",provider="mailgun"} 1.0' in text
    assert 'postroom_hooks_total{outcome="refused",provider="mailgun"} 1.0' in text


async def test_the_replay_guard_purges_what_has_expired(hooks: Hooks) -> None:
    now = utcnow()
    sessions = hooks.runtime.sessions
    later = now + timedelta(minutes=5)
    async with transaction(sessions) as session:
        assert await first_use(session, "mailgun", Nonce("old", now - timedelta(seconds=1)), now)
        assert await first_use(session, "mailgun", Nonce("new", later), now)
        assert not await first_use(session, "mailgun", Nonce("new", later), now)
        assert await first_use(session, "sendgrid", Nonce("new", later), now)
    async with transaction(sessions) as session:
        assert await first_use(session, "mailgun", Nonce("other", later), now)
        count = await session.scalar(select(func.count()).select_from(HookNonce))
    assert count == 3, "`old` expired and was purged"
