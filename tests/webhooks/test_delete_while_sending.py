"""Deleting an endpoint while the sender records a delivery to it, on PostgreSQL: the two
transactions take the endpoint's row and its deliveries' rows in the same order, so neither
deadlocks (the README walkthrough hit a 500 "deadlock detected" on DELETE /webhooks/{id})."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import httpx
import pytest

from app.wiring import Core
from tests.conftest import PG_URL
from tests.webhooks.conftest import Receiver, add_endpoint, sender_loop

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(PG_URL is None, reason="needs PostgreSQL: set POSTROOM_TEST_DATABASE_URL"),
]


async def test_an_endpoint_deleted_while_its_delivery_is_recorded_does_not_deadlock(
    admin: httpx.AsyncClient,
    runtime: Core,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert PG_URL is not None
    endpoint = await add_endpoint(admin, receiver)
    receiver.delay = 1.0
    assert (await admin.post(f"/api/v1/webhooks/{endpoint['id']}/test")).status_code == 202
    deleting = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
    try:
        async with sender_loop(runtime):
            await receiver.wait_for(1)  # the request is in flight; its result comes in 1 s
            async with deleting.transaction():
                # what DELETE /webhooks/{id} does, with time between its two steps: it takes the
                # endpoint's row, then (ON DELETE CASCADE) its deliveries'; meanwhile the sender
                # gets the answer and records it
                await deleting.execute(
                    "SELECT id FROM webhook_endpoints WHERE id = $1 FOR UPDATE", endpoint["id"]
                )
                await asyncio.sleep(1.5)
                await deleting.execute(
                    "DELETE FROM webhook_endpoints WHERE id = $1", endpoint["id"]
                )
            await asyncio.sleep(0.5)  # the sender's blocked finish goes on, and finds nothing
    finally:
        await deleting.close()
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert failures == []
    assert (await admin.get(f"/api/v1/webhooks/{endpoint['id']}")).status_code == 404
