"""POST /api/v1/messages/batch: many messages in one request, each with its own result."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.wiring import Core

pytestmark = pytest.mark.anyio


async def test_each_item_gets_its_own_result(sender: httpx.AsyncClient, runtime: Core) -> None:
    good = {"from": "me@example.com", "to": ["a@example.com"], "subject": "s", "text": "t"}
    response = await sender.post(
        "/api/v1/messages/batch",
        json={
            "messages": [
                good,
                {**good, "subject": "bad\r\nBcc: x@example.com"},
                {**good, "server": "nope"},
                {**good, "to": ["b@example.com"]},
            ]
        },
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 2)
    first, injected, unknown, last = answer["results"]
    assert first["status"] == last["status"] == 202
    assert first["id"] != last["id"]
    assert first["messageId"].startswith("<")
    assert injected["status"] == 422
    assert injected["error"]["details"][0]["field"] == "subject"
    assert unknown["status"] == 422
    assert unknown["error"]["details"][0]["field"] == "server"

    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Message)) == 2
    await Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    ).drain()
    for item in (first, last):
        record = (await sender.get(f"/api/v1/messages/{item['id']}")).json()
        assert record["status"] == "sent"


async def test_batch_limits(sender: httpx.AsyncClient) -> None:
    assert (await sender.post("/api/v1/messages/batch", json={"messages": []})).status_code == 422
    many = [{"from": "me@example.com", "to": ["a@example.com"], "text": "t"}] * 1001
    too_many = await sender.post("/api/v1/messages/batch", json={"messages": many})
    assert too_many.status_code == 422
    assert too_many.json()["error"]["details"][0]["field"] == "messages"


async def test_batch_needs_a_sender_role(anon: httpx.AsyncClient) -> None:
    assert (await anon.post("/api/v1/messages/batch", json={"messages": [{}]})).status_code == 401
