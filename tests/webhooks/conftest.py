"""A real webhook receiver (http.server on 127.0.0.1 in its own thread) that verifies every
request with the `standardwebhooks` package, and helpers to run the real sender loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.webhooks.sender import Sender
from app.wiring import Core
from tests.delivery.conftest import dispatcher

__all__ = ["dispatcher"]


@dataclass
class Delivery:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    """Whether `Webhook(secret).verify` accepted it."""
    answered: int
    at: float

    @property
    def event(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """Answers each POST with the next of `answers` (then `default`), after `delays` seconds."""

    port: int = 0
    secret: str | None = None
    answers: list[int] = field(default_factory=list)
    default: int = 200
    delay: float = 0.0
    received: list[Delivery] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/postroom?src=test"

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        verified = False
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        answer = self.answers.pop(0) if self.answers else self.default
        self.received.append(Delivery(headers, body, verified, answer, time.monotonic()))
        if self.delay:
            time.sleep(self.delay)
        return answer

    async def wait_for(self, count: int, within: float = 10.0) -> list[Delivery]:
        deadline = time.monotonic() + within
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the receiver got {len(self.received)} requests, not {count}, in {within} s"
                )
            await asyncio.sleep(0.02)
        return self.received


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = state.handle(headers, body)
            self.send_response(answer)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


async def add_endpoint(
    admin: httpx.AsyncClient, receiver: Receiver, **fields: Any
) -> dict[str, Any]:
    response = await admin.post("/api/v1/webhooks", json={"url": receiver.url, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    receiver.secret = created["secret"]
    return created


def fast(runtime: Core, **overrides: Any) -> Any:
    """The runtime's settings with a short retry schedule and poll."""
    return runtime.settings.model_copy(
        update={
            "webhook_retry_base": 0.2,
            "webhook_retry_max": 0.4,
            "poll_interval": 0.05,
            **overrides,
        }
    )


def make_sender(runtime: Core, **options: Any) -> Sender:
    settings = options.pop("settings", None) or fast(runtime)
    http = options.pop("http", None) or runtime.http
    return Sender(runtime.sessions, settings, runtime.box, http, runtime.metrics, **options)


@asynccontextmanager
async def sender_loop(runtime: Core, **options: Any) -> AsyncIterator[Sender]:
    """The real supervised loop, running in the background for the block."""
    sender = make_sender(runtime, **options)
    stopping = asyncio.Event()
    sender.task = asyncio.create_task(sender.run(stopping))
    try:
        yield sender
    finally:
        stopping.set()
        await asyncio.wait_for(sender.task, 15)


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)
