"""Idempotency-Key on POST /api/v1/messages: reliability checks 5, 6 and 7."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from app.delivery.models import Message
from app.wiring import Core
from tests.reliability.conftest import FakeClock, Report

pytestmark = pytest.mark.anyio

BODY = {"from": "billing@example.com", "to": ["ann@example.com"], "subject": "Invoice 1042"}


async def rows(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


async def test_sequential_replays_answer_the_same_bytes(
    sender: httpx.AsyncClient, runtime: Core, report: Report
) -> None:
    """Check 5: the same key and body 5 times -> 1 outbox row, 5 identical answers."""
    headers = {"Idempotency-Key": "invoice-1042"}
    answers = [
        await sender.post("/api/v1/messages", json={**BODY, "text": "t"}, headers=headers)
        for _ in range(5)
    ]
    assert {a.status_code for a in answers} == {202}
    assert len({a.content for a in answers}) == 1
    assert len({a.json()["messageId"] for a in answers}) == 1
    assert [a.headers.get("Idempotent-Replayed") for a in answers] == [None] + ["true"] * 4
    count = await rows(runtime)
    assert count == 1
    report(5, f"5 requests -> {count} row, {len({a.content for a in answers})} distinct answer")


async def test_concurrent_requests_with_one_key(
    sender: httpx.AsyncClient, runtime: Core, report: Report
) -> None:
    """Check 6: 20 concurrent requests, one key and body -> exactly 1 row; every answer is the
    original 202 or a 409; none >= 500."""
    headers = {"Idempotency-Key": "race-1"}
    answers = await asyncio.gather(
        *(
            sender.post("/api/v1/messages", json={**BODY, "text": "race"}, headers=headers)
            for _ in range(20)
        )
    )
    codes = Counter(a.status_code for a in answers)
    assert set(codes) <= {202, 409}, codes
    accepted = {a.content for a in answers if a.status_code == 202}
    assert len(accepted) == 1
    count = await rows(runtime)
    assert count == 1
    report(6, f"20 concurrent -> {count} row, answers {dict(codes)}, 0 >= 500")


async def test_misuse_and_the_24_hour_window(
    sender: httpx.AsyncClient, runtime: Core, clock: FakeClock, report: Report
) -> None:
    """Check 7: another body under the key -> 422, no row; a 256-character key -> 400; a replay at
    T+23 h 59 min (fake clock) answers the original; the key is kept until 24 h have passed."""
    headers = {"Idempotency-Key": "key-7"}
    body = {**BODY, "text": "first"}
    original = await sender.post("/api/v1/messages", json=body, headers=headers)
    assert original.status_code == 202

    other = await sender.post("/api/v1/messages", json={**body, "text": "other"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["details"][0]["field"] == "Idempotency-Key"
    long_key = await sender.post(
        "/api/v1/messages", json=body, headers={"Idempotency-Key": "k" * 256}
    )
    assert long_key.status_code == 400
    longest = await sender.post(
        "/api/v1/messages", json=body, headers={"Idempotency-Key": "k" * 255}
    )
    assert longest.status_code == 202
    assert await rows(runtime) == 2

    clock.advance(23 * 3600 + 59 * 60)
    replay = await sender.post("/api/v1/messages", json=body, headers=headers)
    assert replay.status_code == 202
    assert replay.content == original.content
    async with runtime.sessions() as session:
        kept = await session.scalar(select(func.count()).where(Message.idempotency_key == "key-7"))
    assert kept == 1
    assert await rows(runtime) == 2

    clock.advance(61 + 1)
    fresh = await sender.post("/api/v1/messages", json=body, headers=headers)
    assert fresh.status_code == 202
    assert fresh.json()["id"] != original.json()["id"]
    assert await rows(runtime) == 3
    report(
        7,
        f"other body -> {other.status_code}, 256-char key -> {long_key.status_code}, replay at "
        f"T+23:59 -> same answer ({replay.content == original.content}), key kept; at T+24:00:02 "
        "a new message",
    )
