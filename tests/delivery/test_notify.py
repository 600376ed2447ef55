"""The dispatcher's wake-up: the Notifier is told once a message is due, and only once it is
committed (a dispatcher woken earlier would not see the rows)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text

from app.delivery.notify import Notifier
from app.wiring import Core

pytestmark = pytest.mark.anyio


async def test_after_commit_notifies_on_commit_and_not_on_rollback(runtime: Core) -> None:
    notifier = Notifier()
    async with runtime.sessions() as session, session.begin():
        notifier.after_commit(session)
        await session.execute(text("SELECT 1"))
        assert not notifier._due.is_set()  # not before the commit
    assert notifier._due.is_set()

    notifier.clear()
    async with runtime.sessions() as session:
        transaction = await session.begin()
        notifier.after_commit(session)
        await session.execute(text("SELECT 1"))
        await transaction.rollback()
    assert not notifier._due.is_set()


async def test_the_intake_notifies_once_it_stored_a_message(
    sender: httpx.AsyncClient, runtime: Core
) -> None:
    runtime.notifier.clear()
    response = await sender.post(
        "/api/v1/messages",
        json={"from": "me@example.com", "to": ["a@example.com"], "text": "t"},
        headers={"Idempotency-Key": "once"},
    )
    assert response.status_code == 202, response.text
    assert runtime.notifier._due.is_set()
    runtime.notifier.clear()
    again = await sender.post(
        "/api/v1/messages",
        json={"from": "me@example.com", "to": ["a@example.com"], "text": "t"},
        headers={"Idempotency-Key": "once"},
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert not runtime.notifier._due.is_set()  # a replayed answer queues nothing
