"""POST /api/v1/messages: validation, limits, idempotency, and what the records keep."""

from __future__ import annotations

import asyncio
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event, func, select

from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message
from app.wiring import Core

pytestmark = pytest.mark.anyio

BRANDING = {"emails": {"senderEmail": "reports@example.com", "senderName": "Reports"}}


@pytest.fixture
async def branded(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/api/branding", json=BRANDING)
    assert response.status_code == 200


async def drain(runtime: Core) -> None:
    await Dispatcher(
        runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
    ).drain()


async def count_messages(runtime: Core) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Message)) or 0)


def outbox_files(runtime: Core) -> list[Path]:
    return sorted(runtime.settings.outbox_dir.glob("*.eml"))


@pytest.mark.usefixtures("branded")
async def test_accepted_message_is_stored_and_delivered_through_builtin_server(
    sender: httpx.AsyncClient, runtime: Core
) -> None:
    response = await sender.post(
        "/api/v1/messages",
        json={
            "to": ["ann@example.com", {"email": "bob@example.com", "name": "Bob B"}],
            "cc": ["carl@example.com"],
            "bcc": ["dora@example.com"],
            "subject": "Report ✓",
            "text": "Hello\n.\nbye",
            "html": "<p>Hello</p>",
            "headers": {"X-Report": "weekly"},
            "resource": "dashboard/7",
        },
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["messageId"].startswith("<")
    assert accepted["messageId"].endswith("@example.com>")
    assert await count_messages(runtime) == 1

    await drain(runtime)

    record = (await sender.get(f"/api/v1/messages/{accepted['id']}")).json()
    assert record["status"] == "sent"
    assert record["createdBy"] == "sender"
    assert record["clientIp"] == "203.0.113.9"
    assert record["resource"] == "dashboard/7"
    assert {r["email"]: r["kind"] for r in record["recipients"]} == {
        "ann@example.com": "to",
        "bob@example.com": "to",
        "carl@example.com": "cc",
        "dora@example.com": "bcc",
    }
    assert [a["server"] for a in record["attemptLog"]] == ["builtin"]
    [eml] = outbox_files(runtime)
    raw = eml.read_bytes()
    assert max(raw) < 128, "the MIME is 7-bit clean"
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed.get_all("X-Postroom-Envelope-To") == [
        "<ann@example.com>",
        "<bob@example.com>",
        "<carl@example.com>",
        "<dora@example.com>",
    ]
    visible = [v for k, v in parsed.items() if not k.startswith("X-Postroom-Envelope")]
    assert not any("dora" in str(v) for v in visible), "Bcc is never in the headers"
    assert parsed["To"] == "ann@example.com, Bob B <bob@example.com>"
    assert parsed["Subject"] == "Report ✓"
    assert parsed["Message-ID"] == accepted["messageId"]
    assert parsed["X-Report"] == "weekly"
    plain = parsed.get_body(("plain",))
    assert plain is not None
    text = plain.get_content()
    assert text.replace("\r\n", "\n") == "Hello\n.\nbye\n"


@pytest.mark.usefixtures("branded")
async def test_group_through_builtin_server_is_one_message_per_recipient(
    sender: httpx.AsyncClient, runtime: Core
) -> None:
    response = await sender.post(
        "/api/v1/messages",
        json={
            "recipients": ["a@example.com", "b@example.com", "c@example.com"],
            "subject": "s",
            "text": "t",
        },
    )
    assert response.status_code == 202
    await drain(runtime)
    files = outbox_files(runtime)
    assert len(files) == 3
    to_headers = sorted(
        message_from_bytes(f.read_bytes(), policy=policy.default)["To"] for f in files
    )
    assert to_headers == ["a@example.com", "b@example.com", "c@example.com"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"to": ["a@example.com"], "subject": "x\r\nBcc: evil@example.com", "text": "t"},
            "subject",
        ),
        (
            {"to": ["a@example.com"], "subject": "x", "text": "t", "headers": {"X-A": "1\nB: 2"}},
            "headers.X-A",
        ),
        (
            {
                "to": ["a@example.com"],
                "subject": "x",
                "text": "t",
                "headers": {"Bcc": "x@example.com"},
            },
            "headers",
        ),
        (
            {"to": ["a@example.com"], "subject": "x", "text": "t", "headers": {"Bad Name": "v"}},
            "headers",
        ),
        ({"to": [{"email": "a@example.com", "name": "A\r\nB"}], "text": "t"}, "to[0].name"),
        ({"to": ["a@example.com\n"], "text": "t"}, "to[0].email"),
        ({"to": ["not-an-address"], "text": "t"}, "to[0].email"),
        ({"from": "x\x00@example.com", "to": ["a@example.com"], "text": "t"}, "from.email"),
        ({"to": ["a@example.com"], "recipients": ["b@example.com"], "text": "t"}, "body"),
        ({"subject": "no recipients", "text": "t"}, "body"),
        ({"to": ["a@example.com"], "subject": "no content"}, "body"),
        ({"to": ["a@example.com"], "text": "t", "status": "sent"}, "status"),
        (
            {
                "to": ["a@example.com"],
                "text": "t",
                "attachments": [{"filename": "a", "content": "%%%"}],
            },
            "attachments[0].content",
        ),
    ],
)
@pytest.mark.usefixtures("branded")
async def test_bad_messages_are_422_naming_the_field(
    sender: httpx.AsyncClient, runtime: Core, body: dict[str, object], field: str
) -> None:
    response = await sender.post("/api/v1/messages", json=body)
    assert response.status_code == 422, response.text
    fields = [d["field"] for d in response.json()["error"]["details"]]
    assert field in fields
    assert await count_messages(runtime) == 0


@pytest.mark.usefixtures("branded")
async def test_recipient_limits(sender: httpx.AsyncClient, runtime: Core) -> None:
    many = [f"user{i}@example.com" for i in range(101)]
    response = await sender.post("/api/v1/messages", json={"to": many, "text": "t"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "to"
    group = [f"user{i}@example.com" for i in range(10_001)]
    response = await sender.post("/api/v1/messages", json={"recipients": group, "text": "t"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "recipients"
    response = await sender.post("/api/v1/messages", json={"to": many[:100], "text": "t"})
    assert response.status_code == 202


async def test_no_resolvable_sender_is_422_at_post_time(
    sender: httpx.AsyncClient, runtime: Core
) -> None:
    response = await sender.post("/api/v1/messages", json={"to": ["a@example.com"], "text": "t"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "from"
    assert await count_messages(runtime) == 0


async def test_unknown_server_is_422(sender: httpx.AsyncClient) -> None:
    body = {"from": "me@example.com", "to": ["a@example.com"], "text": "t", "server": "nope"}
    response = await sender.post("/api/v1/messages", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "server"


async def test_body_over_the_limit_is_413(sender: httpx.AsyncClient, runtime: Core) -> None:
    huge = "A" * (runtime.settings.max_message_bytes + 10)
    body = {"from": "me@example.com", "to": ["a@example.com"], "text": huge}
    response = await sender.post("/api/v1/messages", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert await count_messages(runtime) == 0


@pytest.mark.usefixtures("branded")
async def test_idempotent_replay_returns_the_same_answer(
    sender: httpx.AsyncClient, runtime: Core
) -> None:
    body = {"to": ["a@example.com"], "subject": "once", "text": "t"}
    headers = {"Idempotency-Key": "order-1"}
    answers = [await sender.post("/api/v1/messages", json=body, headers=headers) for _ in range(5)]
    assert {a.status_code for a in answers} == {202}
    assert len({a.content for a in answers}) == 1
    assert await count_messages(runtime) == 1
    assert answers[1].headers.get("Idempotent-Replayed") == "true"

    other = await sender.post(
        "/api/v1/messages", json={**body, "subject": "changed"}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["details"][0]["field"] == "Idempotency-Key"
    assert await count_messages(runtime) == 1

    too_long = await sender.post(
        "/api/v1/messages", json=body, headers={"Idempotency-Key": "k" * 256}
    )
    assert too_long.status_code == 400
    assert await count_messages(runtime) == 1


@pytest.mark.usefixtures("branded")
async def test_idempotency_keys_are_per_user(
    sender: httpx.AsyncClient, admin: httpx.AsyncClient, runtime: Core
) -> None:
    body = {"to": ["a@example.com"], "text": "t"}
    first = await sender.post("/api/v1/messages", json=body, headers={"Idempotency-Key": "k1"})
    second = await admin.post("/api/v1/messages", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]


@pytest.mark.usefixtures("branded")
async def test_concurrent_requests_with_one_key_store_one_message(
    sender: httpx.AsyncClient, runtime: Core
) -> None:
    body = {"to": ["a@example.com"], "text": "race"}
    answers = await asyncio.gather(
        *(
            sender.post("/api/v1/messages", json=body, headers={"Idempotency-Key": "race"})
            for _ in range(20)
        )
    )
    codes = [a.status_code for a in answers]
    assert set(codes) <= {202, 409}, codes
    ids = {a.json()["id"] for a in answers if a.status_code == 202}
    assert len(ids) == 1
    assert await count_messages(runtime) == 1


@pytest.mark.usefixtures("branded")
async def test_requests_that_arrive_together_share_one_commit(
    sender: httpx.AsyncClient, runtime: Core
) -> None:
    """Group commit: requests that come in one after the other while the loop is busy share a
    transaction; the first of them does not go alone into its own."""
    first = await sender.post("/api/v1/messages", json={"to": ["a@example.com"], "text": "0"})
    assert first.status_code == 202, first.text  # its password is now verified and cached
    commits: list[int] = []
    event.listen(runtime.engine.sync_engine, "commit", lambda _: commits.append(1))

    async def post(i: int) -> httpx.Response:
        for _ in range(i):  # request i arrives i turns of the event loop after the first
            await asyncio.sleep(0)
        return await sender.post("/api/v1/messages", json={"to": [f"r{i}@x.org"], "text": "."})

    answers = await asyncio.gather(*(post(i) for i in range(20)))
    assert [a.status_code for a in answers] == [202] * 20
    assert len({a.json()["id"] for a in answers}) == 20
    assert len(commits) == 1
    assert await count_messages(runtime) == 21


@pytest.mark.usefixtures("branded")
async def test_a_sender_reads_only_its_own_messages(
    sender: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    mine = (
        await admin.post("/api/v1/messages", json={"to": ["a@example.com"], "text": "t"})
    ).json()
    # someone else's message is as unknown to a sender as one that does not exist
    assert (await sender.get(f"/api/v1/messages/{mine['id']}")).status_code == 404
    assert (await admin.get(f"/api/v1/messages/{mine['id']}")).status_code == 200
    assert (await admin.get("/api/v1/messages/nope")).status_code == 404
    listed = await sender.get("/api/v1/messages")
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == []
