"""The Microsoft Graph bounce poll against a local HTTP server that answers with Graph's
documented shapes: the client-credentials token, the Inbox listing (OData, paged with
@odata.nextLink) and a message's MIME at /messages/{id}/$value."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from app.config import Settings
from app.delivery.models import Heartbeat, Message
from app.events.bounces.graph import GraphPoller
from app.events.bounces.models import BounceCursor
from app.events.bounces.service import Bounces
from app.transports.errors import TemporaryError
from app.wiring import Core
from tests.conftest import allow_sender
from tests.delivery.conftest import record, send
from tests.events.bounces.conftest import sample
from tests.events.bounces.test_ingest import dsn_events, stored_events

pytestmark = pytest.mark.anyio

USER = "sender@example.com"


class FakeGraph(ThreadingHTTPServer):
    """Graph and Entra ID, as far as the poll uses them; records every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), GraphHandler)
        self.messages: list[tuple[str, datetime, bytes]] = []
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.fail_listing = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class GraphHandler(BaseHTTPRequestHandler):
    server: FakeGraph

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._answer(status, json.dumps(body).encode(), "application/json")

    def do_POST(self) -> None:
        self.server.requests.append(("POST", self.path, {}))
        self.rfile.read(int(self.headers["Content-Length"]))
        self._json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": "tok-1"})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.server.requests.append(("GET", url.path, query))
        if self.headers.get("Authorization") != "Bearer tok-1":
            self._json(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}})
            return
        prefix = f"/v1.0/users/{USER}"
        if url.path == f"{prefix}/mailFolders/inbox/messages":
            if self.server.fail_listing:
                self._json(503, {"error": {"code": "ServiceUnavailable", "message": "later"}})
                return
            since = datetime.fromisoformat(query["$filter"][0].split(" ge ")[1]) if query else None
            skip = int(query.get("$skip", ["0"])[0])
            listed = [
                {
                    "@odata.etag": f'W/"CQAAABYAAAA{n}"',
                    "id": id_,
                    "receivedDateTime": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "subject": "Undeliverable: Hello",
                }
                for n, (id_, at, _) in enumerate(self.server.messages)
                if since is None or at >= since
            ]
            body: dict[str, Any] = {
                "@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#users('{USER}')"
                "/mailFolders('inbox')/messages(id,receivedDateTime,subject)",
                "value": listed[skip : skip + 1],
            }
            if skip + 1 < len(listed):  # one per page: the poll must follow the next link
                body["@odata.nextLink"] = (
                    f"{self.server.url}{url.path}?%24skip={skip + 1}"
                    f"&%24filter={query['$filter'][0] if query else ''}"
                )
            self._json(200, body)
            return
        for id_, _, mime in self.server.messages:
            if url.path == f"{prefix}/messages/{id_}/$value":
                self._answer(200, mime, "text/plain")
                return
        self._json(404, {"error": {"code": "ErrorItemNotFound", "message": "not found"}})


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


async def add_graph_profile(admin: httpx.AsyncClient, graph: FakeGraph) -> None:
    response = await admin.post(
        "/api/v1/servers",
        json={
            "name": "m365",
            "type": "msgraph",
            "senderEmail": "noreply@example.com",
            "settings": {
                "tenantId": "tenant-1",
                "clientId": "client-1",
                "clientSecret": "secret-1",
                "userId": USER,
                "loginUrl": graph.url,
                "graphUrl": graph.url,
                "pollBounces": True,
            },
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["settings"]["pollBounces"] is True
    await allow_sender(admin, "m365")


def poller(runtime: Core) -> GraphPoller:
    bounces = Bounces(runtime.sessions, runtime.transports.verp, runtime.metrics)
    return GraphPoller(runtime.sessions, runtime.box, runtime.http, bounces)


async def test_a_non_delivery_report_in_the_sending_mailbox_bounces_the_recipient(
    admin: httpx.AsyncClient,
    sender: httpx.AsyncClient,
    runtime: Core,
    graph: FakeGraph,
) -> None:
    await add_graph_profile(admin, graph)
    message_id = await send(sender, to=["ann@contoso.com"], server="m365")
    async with runtime.sessions() as session:
        header = await session.scalar(select(Message.message_id).where(Message.id == message_id))
    assert header is not None
    now = datetime.now(UTC).replace(microsecond=0)
    graph.messages = [
        ("AAMkAGI2reply=", now - timedelta(minutes=2), b"Subject: thanks\r\n\r\nthanks!\r\n"),
        (
            "AAMkAGI2ndr1=",
            now - timedelta(minutes=1),
            sample("exchange-online.eml", message_id=header),
        ),
    ]
    assert await poller(runtime).poll() == 1
    [event] = dsn_events(await record(sender, message_id), "ann@contoso.com")
    assert (event["type"], event["bounceType"]) == ("bounced", "hard")

    async with runtime.sessions() as session:
        cursor = await session.get(BounceCursor, "graph:m365")
    assert cursor is not None
    assert cursor.position == now - timedelta(minutes=1)
    listings = [q for method, path, q in graph.requests if path.endswith("/inbox/messages")]
    assert listings[0]["$orderby"] == ["receivedDateTime asc"]

    graph.requests.clear()
    assert await poller(runtime).poll() == 0  # from the cursor: the NDR again, stored once
    assert await stored_events(runtime) == 1
    first = next(q for _, path, q in graph.requests if path.endswith("/inbox/messages"))
    since = (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert first["$filter"] == [f"receivedDateTime ge {since}"]


async def test_a_failing_graph_is_raised_for_the_loop_and_moves_no_cursor(
    admin: httpx.AsyncClient, runtime: Core, graph: FakeGraph
) -> None:
    await add_graph_profile(admin, graph)
    graph.fail_listing = True
    with pytest.raises(TemporaryError, match="later"):
        await poller(runtime).poll()
    async with runtime.sessions() as session:
        assert list(await session.scalars(select(BounceCursor))) == []


class TestInTheApp:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        """The app itself polls, every 0.2 s."""
        return settings.model_copy(update={"bounce_graph_poll": True, "bounce_poll_interval": 0.2})

    async def test_the_app_polls_in_a_supervised_loop(
        self, admin: httpx.AsyncClient, runtime: Core, graph: FakeGraph
    ) -> None:
        graph.messages = [("AAMkndr=", datetime.now(UTC), sample("postfix.eml"))]
        await add_graph_profile(admin, graph)
        deadline = time.monotonic() + 15
        while await stored_events(runtime) == 0:  # an NDR about no known message: unknown
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        async with runtime.sessions() as session:
            loops = set(await session.scalars(select(Heartbeat.loop)))
        assert "bounce-graph" in loops
