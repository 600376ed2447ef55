"""GET /api/v1/messages: the sending records, filtered and cursor-paginated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, **body: object) -> str:
    body.setdefault("text", "t")
    response = await client.post("/api/v1/messages", json=body)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


async def ids(admin: httpx.AsyncClient, **query: str) -> list[str]:
    response = await admin.get("/api/v1/messages", params=query)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_records_filter_by_each_field(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient
) -> None:
    a = await post(
        sender, **{"from": "a#b&c@example.com"}, to=["x@example.com"], resource="report/1"
    )
    b = await post(
        admin, **{"from": "other@example.com"}, recipients=["y@example.com", "x@example.com"]
    )
    c = await post(
        sender, **{"from": "other@example.com"}, to=["z@example.com"], resource="report/2"
    )

    assert await ids(admin) == [c, b, a], "newest first"
    assert await ids(admin, sender="a#b&c@example.com") == [a]
    assert await ids(admin, recipient="x@example.com") == [b, a]
    assert await ids(admin, resource="report/2") == [c]
    assert await ids(admin, status="queued") == [c, b, a]
    assert await ids(admin, status="sent") == []
    assert await ids(admin, server="nope") == []
    assert await ids(admin, theme="nope") == []
    now = datetime.now(UTC)
    assert await ids(admin, createdFrom=(now - timedelta(minutes=5)).isoformat()) == [c, b, a]
    assert await ids(admin, createdTo=(now - timedelta(minutes=5)).isoformat()) == []

    record = (await admin.get("/api/v1/messages")).json()["items"][0]
    assert record["createdBy"] == "sender"
    assert record["clientIp"] == "203.0.113.9"


async def test_records_paginate_with_a_cursor(admin: httpx.AsyncClient) -> None:
    posted = [
        await post(admin, **{"from": "me@example.com"}, to=[f"u{i}@example.com"]) for i in range(7)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await admin.get("/api/v1/messages", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(posted))


async def test_bad_filters_are_4xx(admin: httpx.AsyncClient) -> None:
    assert (await admin.get("/api/v1/messages", params={"status": "bogus"})).status_code == 422
    assert (await admin.get("/api/v1/messages", params={"limit": 0})).status_code == 422
    assert (await admin.get("/api/v1/messages", params={"cursor": "%%%"})).status_code == 400
    assert (
        await admin.get("/api/v1/messages", params={"createdFrom": "yesterday"})
    ).status_code == 422
