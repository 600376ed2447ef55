"""GET /messages/{id}/raw: what storing each sent MIME would cost the dispatcher, against what
recomposing it costs the request (the choice made: recompose, app/messages/content.py).

Storing: one more INSERT in the finish transaction, a row per SMTP transaction with its bytes, for
a finish-sized batch (128 messages), timed alone in its own transaction, against the finish's own
writes for the same batch (the messages', recipients' and attempts' updates and inserts, as
Dispatcher._finish does them). Two message sizes: 2 KB (text and html) and 100 KB (an attachment).
Recomposing: the request's load and compose (content.composed) for one message, in process.
SQLite on a fresh file, and PostgreSQL (POSTROOM_BENCH_PG, a database it may empty; empty: skip).

    .venv/bin/python bench/raw_store.py [rounds]
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Column, LargeBinary, MetaData, String, Table, insert, select, text

from app import migrate
from app.config import Settings
from app.crypto import load_secret_box
from app.db import create_engine, new_id, sessionmaker, transaction, update_by_id, utcnow
from app.delivery.compose import compose, new_message_id
from app.delivery.grouping import Batch
from app.delivery.links import Links
from app.delivery.models import ATTEMPTS, MESSAGES, RECIPIENTS, Recipient
from app.messages.content import composed
from app.transports.base import Address

BATCH = 128
PG = os.environ.get(
    "POSTROOM_BENCH_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/postroom_bench"
)
RAW = Table(
    "bench_message_raw",
    MetaData(),
    Column("message_pk", String(32), primary_key=True),
    Column("recipient", String(320), primary_key=True),
    Column("mime", LargeBinary),
)


def payload(size: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"email": "noreply@example.com", "name": "Acme"},
        "to": [{"email": "ann@example.com"}],
        "subject": "Your invoice",
        "text": "Hello Ann,\n\n" + "Your invoice is attached. " * 30,
        "html": "<p>Hello Ann,</p>" + "<p>Your invoice is attached.</p>" * 30,
    }
    if size == "100 KB":
        content = base64.b64encode(os.urandom(75_000)).decode()
        body["attachments"] = [
            {"filename": "invoice.pdf", "contentType": "application/pdf", "content": content}
        ]
    return body


async def seed(sessions: Any, size: str) -> tuple[list[dict[str, Any]], list[int]]:
    """BATCH messages as a claim leaves them: their rows, and their recipients' ids."""
    now = utcnow()
    rows = []
    async with transaction(sessions) as session:
        for _ in range(BATCH):
            message_pk = new_id()
            rows.append(
                {
                    "id": message_pk,
                    "message_id": new_message_id("noreply@example.com"),
                    "status": "sending",
                    "sender": "noreply@example.com",
                    "subject": "Your invoice",
                    "payload": payload(size),
                    "created_by": "bench",
                    "attempts": 1,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            )
        await session.execute(insert(MESSAGES), rows)
        await session.execute(
            insert(RECIPIENTS),
            [
                {
                    "message_pk": r["id"],
                    "email": "ann@example.com",
                    "kind": "to",
                    "status": "pending",
                }
                for r in rows
            ],
        )
        recipient_ids = await session.scalars(
            select(Recipient.id).where(Recipient.message_pk.in_([r["id"] for r in rows]))
        )
        return rows, list(recipient_ids)


def mime_of(row: dict[str, Any]) -> bytes:
    outgoing = compose(
        row["payload"],
        sender=Address("noreply@example.com", "Acme"),
        batch=Batch("visible", ("ann@example.com",)),
        message_id=row["message_id"],
        date=row["created_at"],
    )
    return outgoing.mime


async def finish(sessions: Any, rows: list[dict[str, Any]], recipient_ids: list[int]) -> None:
    """The finish's own writes for the batch (without events): what storing is compared to."""
    now = utcnow()
    async with transaction(sessions) as session:
        await session.execute(
            *update_by_id(
                MESSAGES, [{"id": r["id"], "status": "sent", "sent_at": now} for r in rows]
            )
        )
        await session.execute(
            *update_by_id(
                RECIPIENTS,
                [
                    {"id": i, "status": "sent", "code": 250, "updated_at": now}
                    for i in recipient_ids
                ],
            )
        )
        await session.execute(
            insert(ATTEMPTS),
            [
                {
                    "message_pk": r["id"],
                    "number": 1,
                    "server": "relay",
                    "started_at": now,
                    "duration_ms": 1.0,
                    "outcome": "sent",
                    "recipients": 1,
                }
                for r in rows
            ],
        )


async def store(sessions: Any, rows: list[dict[str, Any]], mimes: list[bytes]) -> None:
    async with transaction(sessions) as session:
        await session.execute(
            insert(RAW),
            [
                {"message_pk": r["id"], "recipient": "ann@example.com", "mime": m}
                for r, m in zip(rows, mimes, strict=True)
            ],
        )


async def timed(call: Callable[[], Awaitable[None]], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def one_size(sessions: Any, links: Links, size: str, rounds: int) -> None:
    batches = [await seed(sessions, size) for _ in range(rounds)]
    composing = [[mime_of(r) for r in rows] for rows, _ in batches]
    mime_bytes = statistics.mean(len(m) for m in composing[0])
    finishing = iter(batches)
    storing = iter(zip(batches, composing, strict=True))
    some = batches[0][0][0]["id"]

    async def one_finish() -> None:
        await finish(sessions, *next(finishing))

    async def one_store() -> None:
        (rows, _), mimes = next(storing)
        await store(sessions, rows, mimes)

    async def recompose() -> None:
        async with sessions() as session:
            await composed(session, links, some, None)

    finish_ms = await timed(one_finish, rounds)
    store_ms = await timed(one_store, rounds)
    request_ms = await timed(recompose, rounds * 10)
    print(  # noqa: T201
        f"  {size:>6} (MIME {mime_bytes / 1024:.0f} KiB): finish writes {finish_ms:7.2f}, "
        f"+ storing the MIME {store_ms:7.2f} (+{store_ms / finish_ms:.0%}, "
        f"{store_ms * 1000 / BATCH:.0f} us/message, {mime_bytes * BATCH / 1e6:.1f} MB more "
        f"per batch); recomposing one at request time {request_ms:.2f} ms"
    )


async def bench(url: str | None, rounds: int) -> None:
    data = Path(tempfile.mkdtemp())
    settings = Settings(data_dir=data, database_url=url, _env_file=None)
    if url is not None:
        engine = create_engine(settings)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()
    await asyncio.to_thread(migrate.upgrade, settings)
    engine = create_engine(settings)
    async with engine.begin() as conn:
        await conn.run_sync(RAW.metadata.create_all)
    sessions = sessionmaker(engine)
    links = Links.of(settings, load_secret_box(settings))
    name = "PostgreSQL" if url else "SQLite"
    print(f"{name}: {BATCH} messages, ms per batch (median of {rounds})")  # noqa: T201
    for size in ("2 KB", "100 KB"):
        await one_size(sessions, links, size, rounds)
    await engine.dispose()


async def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    await bench(None, rounds)
    if PG:
        await bench(PG, rounds)


if __name__ == "__main__":
    asyncio.run(main())
