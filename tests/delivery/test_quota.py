"""Per-profile rate limits through the claim, on the test database (SQLite, or PostgreSQL with
POSTROOM_TEST_DATABASE_URL): what fits is claimed, the rest goes back in the queue due at its
turn (not failed, not an attempt), concurrent claims share one bucket, a provider's throttle
holds the profile back for every dispatcher; and the profile API's `rateLimit`."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import transaction, utcnow
from app.delivery import outbox, quota
from app.delivery.dispatcher import Dispatcher
from app.delivery.models import Message, QuotaBucket
from app.transports.errors import Throttled
from app.transports.smtp.translate import throttling
from app.wiring import Core
from tests.conftest import allow_sender
from tests.delivery.conftest import add_smtp_profile, end_throttles, make_due, record, send
from tests.smtpd import StartServer

pytestmark = pytest.mark.anyio


async def rows(runtime: Core, ids: list[str]) -> list[Message]:
    async with runtime.sessions() as session:
        found = {m.id: m for m in await session.scalars(select(Message))}
    return [found[id_] for id_ in ids]


async def claim(runtime: Core, now: datetime, limit: int = 50) -> list[str]:
    async with transaction(runtime.sessions) as session:
        return [c.id for c in await outbox.claim(session, limit=limit, lease=60, now=now)]


async def buckets(runtime: Core) -> dict[str, QuotaBucket]:
    async with runtime.sessions() as session:
        return {b.profile: b for b in await session.scalars(select(QuotaBucket))}


def assert_held(message: Message, after: datetime) -> None:
    """Back in the queue as it was before the claim, due later: not failed, not an attempt."""
    assert message.status == "queued"
    assert message.attempts == 0
    assert message.lease_until is None
    assert message.next_attempt_at > after


async def test_a_claim_takes_what_fits_and_puts_the_rest_back_due_at_its_turn(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(admin, smtp_server_factory(), rateLimit={"perMinute": 3})
    ids = [await send(sender, to=[f"u{i}@example.com"], server="relay") for i in range(5)]
    now = utcnow()

    assert await claim(runtime, now) == ids[:3], "the oldest first"
    held = await rows(runtime, ids[3:])
    for message in held:
        assert_held(message, now + timedelta(seconds=60))
    first, second = (m.next_attempt_at for m in held)
    assert second - first == timedelta(seconds=20.4), "evenly: every (a minute and a slot) / 3"
    assert await claim(runtime, now) == [], "not looked at again before their turn"

    assert await claim(runtime, first) == ids[3:4], "its turn: it goes"
    assert await claim(runtime, second) == ids[4:]
    assert [m.attempts for m in await rows(runtime, ids)] == [1] * 5
    assert (await buckets(runtime))["relay"].held == 2


async def test_a_profile_without_a_limit_is_not_metered(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(admin, smtp_server_factory())
    ids = [await send(sender, to=[f"u{i}@example.com"], server="relay") for i in range(5)]
    assert await claim(runtime, utcnow()) == ids
    assert await buckets(runtime) == {}, "no bucket row, no lock"


async def test_a_limit_in_recipients_counts_each_message_s_recipients(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(
        admin, smtp_server_factory(), rateLimit={"perMinute": 5, "count": "recipients"}
    )
    first = await send(sender, to=[f"a{i}@example.com" for i in range(3)], server="relay")
    second = await send(sender, to=[f"b{i}@example.com" for i in range(3)], server="relay")
    third = await send(sender, to=["c@example.com"], server="relay")
    now = utcnow()
    assert await claim(runtime, now) == [first], "3 + 3 recipients would be 6"
    [held_second, held_third] = await rows(runtime, [second, third])
    assert_held(held_second, now)
    assert held_third.next_attempt_at >= held_second.next_attempt_at, "in line behind it"


async def test_concurrent_claims_share_the_profile_s_bucket(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    """Four claims at once (PostgreSQL: each holds its transaction open a while; SQLite: they
    queue for the write lock): the bucket row lock makes them take 10 between them."""
    await add_smtp_profile(admin, smtp_server_factory(), rateLimit={"perMinute": 10})
    ids = [await send(sender, to=[f"u{i}@example.com"], server="relay") for i in range(40)]
    now = utcnow()

    async def claim_some() -> list[str]:
        async with transaction(runtime.sessions) as session:
            claims = await outbox.claim(session, limit=10, lease=60, now=now)
            await asyncio.sleep(0.1)
            return [c.id for c in claims]

    taken = [c for batch in await asyncio.gather(*(claim_some() for _ in range(4))) for c in batch]
    assert len(taken) == 10
    assert len(set(taken)) == 10
    statuses = [m.status for m in await rows(runtime, ids)]
    assert statuses.count("sending") == 10
    assert statuses.count("queued") == 30


async def test_a_throttle_holds_the_profile_back_and_no_other(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory()
    await add_smtp_profile(admin, server, name="relay")
    await add_smtp_profile(admin, server, name="other")
    slowed = [await send(sender, to=[f"u{i}@example.com"], server="relay") for i in range(2)]
    other = await send(sender, to=["o@example.com"], server="other")
    now = utcnow()
    async with transaction(runtime.sessions) as session:
        await quota.throttle(session, [{"relay": 30.0}, {"relay": 10.0}], now)

    assert await claim(runtime, now) == [other]
    for message in await rows(runtime, slowed):
        assert_held(message, now)
        assert message.next_attempt_at == now + timedelta(seconds=30), "the longest wait"
    assert sorted(await claim(runtime, now + timedelta(seconds=30))) == sorted(slowed)


async def test_metrics_show_what_was_held_back_and_the_throttles(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(admin, smtp_server_factory(), rateLimit={"perSecond": 1})
    for i in range(3):
        await send(sender, to=[f"u{i}@example.com"], server="relay")
    await claim(runtime, utcnow())
    async with transaction(runtime.sessions) as session:
        await quota.throttle(session, [{"relay": 600.0}], utcnow())

    text = (await admin.get("/metrics")).text
    assert 'postroom_quota_held_back_total{profile="relay"} 2.0' in text
    [line] = [x for x in text.splitlines() if x.startswith("postroom_quota_throttled_seconds{")]
    assert line.startswith('postroom_quota_throttled_seconds{profile="relay"} ')
    assert 590 < float(line.split()[-1]) <= 600


async def test_deleting_a_profile_deletes_its_bucket(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    await add_smtp_profile(admin, smtp_server_factory(), rateLimit={"perSecond": 1})
    await send(sender, to=["u@example.com"], server="relay")
    await claim(runtime, utcnow())
    assert set(await buckets(runtime)) == {"relay"}
    assert (await admin.delete("/api/v1/servers/relay")).status_code == 204
    assert await buckets(runtime) == {}


# --- the profile API ----------------------------------------------------------------------------


async def test_rate_limit_is_shown_merged_and_cleared(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    created = await add_smtp_profile(
        admin, smtp_server_factory(), rateLimit={"perMinute": 30, "perDay": 10_000}
    )
    whole = {"perSecond": None, "perMinute": 30, "perHour": None, "perDay": 10_000}
    assert created["rateLimit"] == {**whole, "count": "messages"}
    assert (await admin.get("/api/v1/servers/relay")).json()["rateLimit"] == created["rateLimit"]

    patched = await admin.patch(
        "/api/v1/servers/relay", json={"rateLimit": {"perDay": None, "count": "recipients"}}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["rateLimit"] == {**whole, "perDay": None, "count": "recipients"}

    cleared = await admin.patch("/api/v1/servers/relay", json={"rateLimit": None})
    assert cleared.json()["rateLimit"] is None


@pytest.mark.parametrize(
    ("rate_limit", "field"),
    [
        ({"perSecond": 0}, "rateLimit.perSecond"),
        ({"perMinute": -5}, "rateLimit.perMinute"),
        ({"perDay": 1.5}, "rateLimit.perDay"),
        ({"perHour": "20"}, "rateLimit.perHour"),
        ({"perWeek": 100}, "rateLimit.perWeek"),
        ({"perSecond": 10, "count": "bytes"}, "rateLimit.count"),
        ({}, "rateLimit"),
        ({"count": "recipients"}, "rateLimit"),
        (20, "rateLimit"),
    ],
)
async def test_a_bad_rate_limit_is_a_422_naming_the_field_and_stores_nothing(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer, rate_limit: Any, field: str
) -> None:
    server = smtp_server_factory()
    body = {
        "name": "fresh",
        "type": "smtp",
        "settings": {"host": server.host, "port": server.port},
        "rateLimit": rate_limit,
    }
    refused = await admin.post("/api/v1/servers", json=body)
    assert refused.status_code == 422, refused.text
    assert field in [d["field"] for d in refused.json()["error"]["details"]]
    assert (await admin.get("/api/v1/servers/fresh")).status_code == 404

    await add_smtp_profile(admin, server, rateLimit={"perSecond": 5})
    replaced = await admin.put("/api/v1/servers/relay", json={**body, "name": "relay"})
    assert replaced.status_code == 422, replaced.text
    assert field in [d["field"] for d in replaced.json()["error"]["details"]]
    kept = (await admin.get("/api/v1/servers/relay")).json()
    assert kept["rateLimit"]["perSecond"] == 5
    assert kept["settings"]["ignoreTLS"] is True, "the rest of the body was not stored either"


async def test_a_patch_that_makes_the_limit_bad_is_a_422_and_keeps_it(
    admin: httpx.AsyncClient, smtp_server_factory: StartServer
) -> None:
    await add_smtp_profile(admin, smtp_server_factory(), rateLimit={"perSecond": 5})
    patch = {"description": "faster", "rateLimit": {"perSecond": 0}}
    patched = await admin.patch("/api/v1/servers/relay", json=patch)
    assert patched.status_code == 422, patched.text
    assert [d["field"] for d in patched.json()["error"]["details"]] == ["rateLimit.perSecond"]
    kept = (await admin.get("/api/v1/servers/relay")).json()
    assert (kept["rateLimit"]["perSecond"], kept["description"]) == (5, "")


async def test_the_rate_limit_is_in_the_openapi_document(admin: httpx.AsyncClient) -> None:
    schemas = (await admin.get("/openapi.json")).json()["components"]["schemas"]
    rate = schemas["RateLimit"]
    assert set(rate["properties"]) == {"perSecond", "perMinute", "perHour", "perDay", "count"}
    assert rate["additionalProperties"] is False


# --- a provider's throttle, through the dispatcher ----------------------------------------------

USER = "reports@example.com"
GRAPH_BUSY = {
    "error": {
        "code": "ApplicationThrottled",
        "message": "Application is over its MailboxConcurrency limit.",
    }
}


class FakeGraph(ThreadingHTTPServer):
    """Entra ID's token endpoint and Graph's sendMail, answering as provider-apis.md §5 says:
    202 with no body, or the queued `answers` first (status, headers, JSON body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), GraphHandler)
        self.answers: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        self.sent: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class GraphHandler(BaseHTTPRequestHandler):
    server: FakeGraph

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, headers: dict[str, str], body: dict[str, Any] | None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        content = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/oauth2/v2.0/token"):
            token = {"token_type": "Bearer", "expires_in": 3599, "access_token": "tok-1"}
            self._answer(200, {}, token)
        elif self.path == f"/v1.0/users/{USER}/sendMail":
            if self.server.answers:
                self._answer(*self.server.answers.pop(0))
            else:
                self.server.sent.append(content)
                self._answer(202, {}, None)
        else:
            self._answer(404, {}, {"error": {"code": "ResourceNotFound", "message": "?"}})


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    server = FakeGraph()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def dispatchers(runtime: Core, count: int) -> list[Dispatcher]:
    runtime.settings.dispatcher_batch = 1
    return [
        Dispatcher(
            runtime.sessions, runtime.settings, runtime.transports, runtime.metrics, runtime.ledger
        )
        for _ in range(count)
    ]


async def test_a_429_with_retry_after_holds_the_profile_back_for_every_worker(
    admin: httpx.AsyncClient, sender: httpx.AsyncClient, runtime: Core, graph: FakeGraph
) -> None:
    response = await admin.post(
        "/api/v1/servers",
        json={
            "name": "m365",
            "type": "msgraph",
            "senderEmail": USER,
            "settings": {
                "tenantId": "tenant-1",
                "clientId": "client-1",
                "clientSecret": "secret-1",
                "userId": USER,
                "loginUrl": graph.url,
                "graphUrl": graph.url,
            },
        },
    )
    assert response.status_code == 201, response.text
    await allow_sender(admin, "m365")
    graph.answers.append((429, {"Retry-After": "2"}, GRAPH_BUSY))
    ids = [await send(sender, to=[f"u{i}@example.com"], server="m365") for i in range(3)]
    first, second = dispatchers(runtime, 2)

    await first.drain()
    throttled = await record(sender, ids[0])
    [attempt] = throttled["attemptLog"]
    assert (attempt["outcome"], attempt["replyCode"]) == ("deferred", 429)
    assert "ApplicationThrottled" in attempt["reply"]
    until = (await buckets(runtime))["m365"].throttled_until
    assert until is not None
    await second.drain()
    assert graph.sent == [], "the other worker waits too"
    for message in await rows(runtime, ids[1:]):
        assert_held(message, until - timedelta(microseconds=1))

    await asyncio.sleep(max((until - utcnow()).total_seconds(), 0) + 0.05)
    await second.drain()
    assert len(graph.sent) == 2
    assert [(await record(sender, id_))["status"] for id_ in ids] == ["queued", "sent", "sent"]
    assert [(await record(sender, id_))["attempts"] for id_ in ids] == [1, 1, 1]


async def test_an_smtp_421_4_7_holds_the_profile_back_for_every_worker(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    smtp_server_factory: StartServer,
) -> None:
    server = smtp_server_factory(replies={"MAIL": "421 4.7.0 Try again later, closing connection."})
    await add_smtp_profile(admin, server)
    ids = [await send(sender, to=[f"u{i}@example.com"], server="relay") for i in range(2)]
    first, second = dispatchers(runtime, 2)

    before = utcnow()
    await first.drain()
    [attempt] = (await record(sender, ids[0]))["attemptLog"]
    assert (attempt["outcome"], attempt["replyCode"]) == ("deferred", 421)
    until = (await buckets(runtime))["relay"].throttled_until
    assert until is not None
    wait = Throttled.DEFAULT_WAIT
    assert before + timedelta(seconds=wait) <= until <= utcnow() + timedelta(seconds=wait)
    await second.drain()
    [held] = await rows(runtime, ids[1:])
    assert_held(held, until - timedelta(microseconds=1))
    assert len(server.sessions) == 1, "nobody tried again"

    server.replies.clear()
    await end_throttles(runtime)
    await make_due(runtime)
    await second.drain()
    assert len(server.transactions) == 2
    assert {(await record(sender, id_))["status"] for id_ in ids} == {"sent"}


@pytest.mark.parametrize(
    ("code", "reply", "slow_down"),
    [
        (421, "4.7.0 Try again later, closing connection.", True),
        (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", True),
        (454, "Throttling failure: Maximum sending rate exceeded.", True),
        (421, "4.7.0 mx.example.com Error: too many connections from 192.0.2.1", True),
        (432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", True),
        (451, "4.7.1 Rate limit reached, slow down", True),
        (452, "4.5.3 Too many recipients", False),
        (450, "4.2.0 Greylisted, please try again later", False),
        (421, "4.3.2 Service shutting down", False),
        (451, "4.7.1 Client host rejected: cannot find your hostname", False),
        (550, "5.4.5 Daily user sending quota exceeded", False),
        (None, None, False),
    ],
)
def test_which_smtp_replies_ask_to_slow_down(
    code: int | None, reply: str | None, slow_down: bool
) -> None:
    assert throttling(code, reply) is slow_down
