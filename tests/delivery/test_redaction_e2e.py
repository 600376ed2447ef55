"""What the API stores and shows of a provider's error body: the profile's secrets redacted, at
most 1 KiB (the attempt log of GET /messages/{id}, the verify and test reports)."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from app.delivery.dispatcher import Dispatcher
from tests.delivery.conftest import record, send
from tests.servers.helpers import BODIES, body, create

pytestmark = pytest.mark.anyio

KEY = BODIES["sendgrid"]["settings"]["apiKey"]
ECHO = f"bad request, you sent Authorization: Bearer {KEY} " + "z" * 5000 + f" {KEY}"


def assert_scrubbed(text: str | None) -> None:
    assert text
    assert KEY[:10] not in text
    assert "[REDACTED]" in text
    assert len(text.encode()) <= 1024


async def test_an_echoed_key_is_neither_stored_nor_shown(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    dispatcher: Dispatcher,
    respx_mock: respx.MockRouter,
) -> None:
    respx_mock.route(host="api.sendgrid.com").respond(400, text=ECHO)
    await create(admin, body("sendgrid", "sg"))
    message_id = await send(sender, server="sg", to=["ann@example.com"], subject="Hi", text="Hi")

    await dispatcher.drain()

    saved = await record(sender, message_id)
    assert saved["status"] == "failed"
    [attempt] = saved["attemptLog"]
    assert_scrubbed(attempt["reply"])
    assert KEY not in json.dumps(saved)

    verify = await admin.post("/api/v1/servers/sg/verify", json={})
    assert verify.status_code == 200, verify.text
    assert KEY[:10] not in verify.text
    assert_scrubbed(verify.json()["steps"][-1]["detail"])

    test = await admin.post("/api/v1/servers/sg/test", json={"to": "bob@example.com"})
    assert test.status_code == 200, test.text
    assert KEY[:10] not in test.text
    assert_scrubbed(test.json()["reply"])
